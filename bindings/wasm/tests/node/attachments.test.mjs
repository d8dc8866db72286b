// Attachments through the nodejs-target package, two clients and a real relay: a file
// from a Uint8Array and one from a Blob larger than two upload pieces (read in slices as
// the upload goes) reach the other side, whose message names the file, and download back
// byte for byte, whole or piece by piece through a ReadableStream; a message without a
// file is refused as `invalid_argument`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RELAY, SottoClient, dbName, received, rejectsWith, storeKey } from './helpers.mjs';

const alice = { db: dbName('att-alice'), key: storeKey() };
const bob = { db: dbName('att-bob'), key: storeKey() };

before(async () => {
  for (const who of [alice, bob]) {
    who.client = await SottoClient.createAccount(who.db, who.key, RELAY);
    who.id = who.client.accountId;
  }
  await alice.client.addContact(bob.client.contactLink);
  await bob.client.addContact(alice.client.contactLink);
});

after(async () => {
  for (const who of [alice, bob]) await who.client?.shutdown();
});

/** `n` random bytes (getRandomValues takes at most 64 KiB at a time). */
function random(n) {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  }
  return out;
}

test('a Uint8Array and a multi-piece Blob arrive and download intact, whole and piece by piece', { timeout: 120000 }, async () => {
  const small = random(50_000);
  const sent = await alice.client.sendAttachment(bob.id, small, 'application/pdf', 'minutes.pdf', 'the minutes');
  assert.equal(sent.attachment.size, small.length);
  assert.equal(sent.attachment.fileName, 'minutes.pdf');
  const got = await received(bob.client, 'the minutes');
  assert.equal(got.attachment.mediaType, 'application/pdf');
  assert.equal(got.attachment.size, small.length);
  assert.ok(Buffer.from(await bob.client.downloadAttachment(got.key)).equals(Buffer.from(small)));

  // 9 MiB and a bit: three upload pieces and ten Blob slices, none aligned with the other.
  const big = random(9 * 1024 * 1024 + 12_345);
  const blob = new Blob([big], { type: 'video/mp4' });
  const clip = await alice.client.sendAttachment(bob.id, blob, 'video/mp4', 'clip.mp4', 'a clip');
  assert.equal(clip.attachment.size, big.length);
  const gotClip = await received(bob.client, 'a clip');
  assert.equal(gotClip.attachment.fileName, 'clip.mp4');
  assert.ok(Buffer.from(await bob.client.downloadAttachment(gotClip.key)).equals(Buffer.from(big)));

  // The same file read piece by piece, piped through a ReadableStream; the end comes
  // only once all of it checked out.
  const reader = await bob.client.openAttachment(gotClip.key);
  assert.ok(reader.ciphertextLength > big.length);
  const stream = new ReadableStream({
    async pull(controller) {
      const piece = await reader.next();
      if (piece === undefined) controller.close();
      else controller.enqueue(piece);
    },
  });
  const parts = [];
  for await (const piece of stream) parts.push(Buffer.from(piece));
  assert.equal(parts.length, 3);
  assert.ok(Buffer.concat(parts).equals(Buffer.from(big)));
  assert.equal(await reader.next(), undefined);
  reader.free();

  const plain = await alice.client.sendText(bob.id, 'no file here');
  const gotPlain = await received(bob.client, 'no file here');
  assert.equal(gotPlain.attachment, undefined);
  await rejectsWith(() => bob.client.downloadAttachment(gotPlain.key), 'invalid_argument');
  await rejectsWith(() => alice.client.sendAttachment(bob.id, 'not a file', 'text/plain', 'x.txt', ''), 'invalid_argument');
  assert.ok(plain.key);
});
