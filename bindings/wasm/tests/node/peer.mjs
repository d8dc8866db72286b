// A client in its own node process with a durable store (npm/node/durable-idb.mjs), for
// restart.test.mjs. It prints one JSON object per line on stdout.
//
//   node peer.mjs create <dir> <contact link> <n>   create an account, add the contact,
//        print {account, link}, then send "a-1".."a-<n>" (one every 20 ms), printing
//        {sent: text} after each; then wait (to be killed)
//   node peer.mjs resume <dir> <contact id> <n>     open the account again, wait until
//        "b-1".."b-<n>" are in the timeline and nothing of its own is queued, print
//        {timeline: [{key, text, mine, state}]} and exit
import { installDurableIndexedDB } from '../../npm/node/durable-idb.mjs';

const [mode, dir, contact, n] = process.argv.slice(2);
await installDurableIndexedDB(dir);
const { RELAY, SottoClient, TIMEOUT_MS, storeKey, track } = await import('./helpers.mjs');
const { readFileSync, writeFileSync, existsSync } = await import('node:fs');
const path = await import('node:path');

const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const keyFile = path.join(dir, 'store.key');
const DB = 'peer';

if (mode === 'create') {
  const key = storeKey();
  writeFileSync(keyFile, Buffer.from(key));
  const client = await SottoClient.createAccount(DB, key, RELAY);
  const id = await client.addContact(contact);
  say({ account: client.accountId, link: client.contactLink });
  // Events are read (and dropped) so the client never waits for the app.
  (async () => {
    while ((await client.nextEvent()) !== undefined);
  })();
  for (let i = 1; i <= Number(n); i++) {
    await client.sendMessage(id, `a-${i}`);
    say({ sent: `a-${i}` });
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise(() => {});
} else if (mode === 'resume') {
  if (!existsSync(keyFile)) throw new Error('no store key');
  const client = await SottoClient.open(DB, new Uint8Array(readFileSync(keyFile)));
  (async () => {
    while ((await client.nextEvent()) !== undefined);
  })();
  const timeline = track(client.timeline(contact, 10000));
  const want = Array.from({ length: Number(n) }, (_, i) => `b-${i + 1}`);
  await timeline.until(
    (items) =>
      want.every((t) => items.some((i) => i.message.text === t)) &&
      items.every((i) => i.sendState !== 'queued'),
    'every b-i, and nothing of its own queued',
    TIMEOUT_MS * 2,
  );
  await client.sendReceiptsNow();
  say({
    timeline: timeline.items.map((i) => ({
      key: i.key,
      text: i.message.text,
      mine: i.sendState !== undefined,
      state: i.sendState ?? 'received',
    })),
  });
  timeline.cancel();
  await client.shutdown();
  process.exit(0);
}
