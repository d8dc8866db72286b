// The package's entry for node: the nodejs build of sotto-wasm (loaded from disk, no
// init() needed), the IndexedDB it stores in (fake-indexeddb, in memory until
// `useStoreDirectory` makes it durable), and `useStoreDirectory` itself.
import { installDurableIndexedDB } from './durable-idb.mjs';

export * from './sotto_wasm.js';

/**
 * Keeps every store this process opens in `dir` (created if missing): call it once, before
 * `SottoClient.createAccount` or `SottoClient.open`. Without it, stores live in memory and
 * are gone when the process exits.
 */
export function useStoreDirectory(dir, options) {
  return installDurableIndexedDB(dir, options);
}
