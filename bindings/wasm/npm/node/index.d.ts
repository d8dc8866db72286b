export * from './sotto_wasm.js';

/** Options of {@link useStoreDirectory}. */
export interface StoreDirectoryOptions {
  /** The least journal size, in bytes, that makes a store write a new snapshot (4 MiB). */
  compactAfterBytes?: number;
}

/**
 * Keeps every store this process opens in `dir` (created if missing): call it once, before
 * `SottoClient.createAccount` or `SottoClient.open`. Without it, stores live in memory and
 * are gone when the process exits. A commit is on disk (fsynced) before the SDK goes on.
 */
export function useStoreDirectory(dir: string, options?: StoreDirectoryOptions): Promise<void>;
