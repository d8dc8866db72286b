// The demo's service worker: on a Web Push it opens the page's store as the notification
// extension, fetches and decrypts what waits, and shows one notification per message.
//
// The relay's push carries no message (its payload is a constant wake-up, and the browser
// has already decrypted it, RFC 8291): everything shown comes from the mailbox, decrypted
// here. When a page of the app holds the device's connection, the relay refuses this
// fetch (`appActive`) and the page shows the message itself.
//
// The page registers this worker as a module with its database name:
// `navigator.serviceWorker.register('sw.js?db=' + encodeURIComponent(DB), { type: 'module' })`.
import init, { SottoNotificationExtension } from '../../generated/wasm/web/sotto_wasm.js';

const DB = new URL(self.location.href).searchParams.get('db');
// Where the page keeps the store key, wrapped under a non-extractable WebCrypto key
// (demo.js).
const KEYS_DB = 'sotto-demo-keys';
/** How long one fetch may read the mailbox. */
const FETCH_MS = 20000;

let wasm = null;

function idbRequest(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** The store key, unwrapped; null when the page holds none. */
async function loadStoreKey() {
  const open = indexedDB.open(KEYS_DB, 1);
  open.onupgradeneeded = () => open.result.createObjectStore('keys');
  const db = await idbRequest(open);
  try {
    const rec = await idbRequest(db.transaction('keys', 'readonly').objectStore('keys').get(DB));
    if (!rec) return null;
    return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: rec.iv }, rec.wrapKey, rec.wrapped));
  } finally {
    db.close();
  }
}

/** Fetches what waits and shows it; resolves once every notification is shown. */
async function showWaiting() {
  // A failed load is not kept: the next push tries again.
  wasm ??= init().catch((e) => {
    wasm = null;
    throw e;
  });
  await wasm;
  const key = DB && (await loadStoreKey());
  if (!key) return;
  let extension;
  try {
    extension = await SottoNotificationExtension.open(DB, key);
  } finally {
    key.fill(0);
  }
  try {
    const fetched = await extension.fetch(FETCH_MS);
    if (fetched.appActive) return; // an open page receives and shows it
    for (const n of fetched.notifications) {
      const title = n.groupTitle ?? (n.senderName || 'New message');
      const body = n.groupTitle ? `${n.senderName || 'Someone'}: ${n.body}` : n.body;
      await self.registration.showNotification(title, {
        body,
        tag: n.key,
        timestamp: n.timestampMs,
        data: { conversation: n.conversation, key: n.key },
      });
    }
  } finally {
    extension.free();
  }
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  event.waitUntil(
    showWaiting().catch((e) => {
      // What waits stays in the mailbox (nothing uncommitted was acknowledged): the page,
      // or the next push, gets it.
      console.error('sotto: the notification fetch failed', e);
      return self.registration.showNotification('New message', { tag: 'sotto' });
    }),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(
    (async () => {
      const open = await self.clients.matchAll({ type: 'window' });
      if (open.length > 0) return open[0].focus();
      return self.clients.openWindow(`${self.registration.scope}?db=${encodeURIComponent(DB)}`);
    })(),
  );
});
