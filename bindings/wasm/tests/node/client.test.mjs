// Two clients of the nodejs-target package chat through a real sotto-relay
// (SOTTO_RELAY_URL) with real crypto, each with its own IndexedDB database
// (fake-indexeddb): accounts, contacts, messages both ways, safety numbers, a client
// reopened from its store with its history, and errors as typed SottoError values.
// Every wait is for an event, with a deadline (helpers.mjs); nothing sleeps.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { RELAY, SottoClient, dbName, received, rejectsWith, sotto, storeKey, waitEvent } from './helpers.mjs';

const alice = { db: dbName('alice'), key: storeKey() };
const bob = { db: dbName('bob'), key: storeKey() };
const open = [];

after(async () => {
  for (const c of open) {
    await c.shutdown();
  }
});

async function create(who) {
  const client = await SottoClient.createAccount(who.db, who.key, RELAY);
  open.push(client);
  return client;
}

test('version', () => {
  assert.match(sotto.version(), /^\d+\.\d+\.\d+/);
});

test('two accounts', async () => {
  alice.client = await create(alice);
  bob.client = await create(bob);
  for (const { client } of [alice, bob]) {
    assert.match(client.accountId, /^[a-z2-7]{52}$/);
    assert.match(client.contactLink, new RegExp(`^sotto:${client.accountId}\\.[0-9a-f]{64}$`));
    assert.equal(typeof client.deviceId, 'number');
  }
  assert.notEqual(alice.client.accountId, bob.client.accountId);
  alice.id = alice.client.accountId;
  bob.id = bob.client.accountId;
});

test('contacts by link and by id', async () => {
  assert.equal(await alice.client.addContact(bob.client.contactLink), bob.id);
  assert.equal(await bob.client.addContact(alice.id), alice.id);
  assert.deepEqual(await alice.client.conversations(), [bob.id]);
});

test('messages both ways', async () => {
  const sent = await alice.client.sendText(bob.id, 'hello bob');
  assert.equal(sent.text, 'hello bob');
  assert.equal(sent.conversation, bob.id);
  assert.equal(sent.senderAccount, alice.id);
  assert.ok(['queued', 'sent'].includes(sent.status), sent.status);
  assert.equal(typeof sent.timestampMs, 'number');

  const got = await received(bob.client, 'hello bob');
  assert.equal(got.senderAccount, alice.id);
  assert.equal(got.senderDevice, alice.client.deviceId);
  assert.equal(got.conversation, alice.id);
  assert.equal(got.status, 'received');
  assert.equal(got.id, sent.id);
  // Bob's receipt goes out now instead of after its random delay.
  await bob.client.sendReceiptsNow();
  const receipt = await waitEvent(
    alice.client,
    'the delivery receipt',
    (e) => e.kind === 'delivered' && e.messageIds.includes(sent.id),
  );
  assert.equal(receipt.account, bob.id);

  await bob.client.sendText(alice.id, 'hello alice');
  const back = await received(alice.client, 'hello alice');
  assert.equal(back.senderAccount, bob.id);
  assert.equal(back.conversation, bob.id);
});

test('safety numbers agree', async () => {
  const a = await alice.client.safetyNumber(bob.id);
  const b = await bob.client.safetyNumber(alice.id);
  assert.equal(a, b);
  assert.equal(a.replace(/\D/g, '').length, 60, a);
});

test('the recovery key is handed out once', async () => {
  const rk = await bob.client.exportRecoveryKey();
  assert.match(rk, /^sotto-recovery:[0-9a-f]{4}(-[0-9a-f]{4}){17}$/);
  await rejectsWith(() => bob.client.exportRecoveryKey(), 'no_account_key');
});

test('shutdown ends the event stream, later calls fail with "closed"', async () => {
  const client = alice.client;
  await client.shutdown();
  open.splice(open.indexOf(client), 1);
  assert.equal(await client.nextEvent(), undefined);
  await rejectsWith(() => client.sendText(bob.id, 'too late'), 'closed');
  await rejectsWith(() => client.conversations(), 'closed');
  client.free();
});

test('reopen from the store: history, and what arrived while closed', async () => {
  // Sent while Alice's client is closed: the relay keeps it in her mailbox.
  await bob.client.sendText(alice.id, 'while you were away');
  const client = await SottoClient.open(alice.db, alice.key);
  open.push(client);
  alice.client = client;
  assert.equal(client.accountId, alice.id);
  const away = await received(client, 'while you were away');
  assert.equal(away.senderAccount, bob.id);

  const history = await client.messages(bob.id, 10);
  assert.deepEqual(
    history.map((m) => m.text),
    ['hello bob', 'hello alice', 'while you were away'],
  );
  assert.deepEqual(
    history.map((m) => m.senderAccount),
    [alice.id, bob.id, bob.id],
  );
  assert.ok(['sent', 'delivered'].includes(history[0].status), history[0].status);
  assert.equal(history[1].status, 'received');
  for (let i = 1; i < history.length; i++) {
    assert.ok(history[i].order > history[i - 1].order, 'order increases');
  }
  // Paging back from the newest.
  const page = await client.messages(bob.id, 1, history[2].order);
  assert.deepEqual(page.map((m) => m.text), ['hello alice']);
  assert.deepEqual((await client.messages(bob.id, 2, null)).map((m) => m.text), ['hello alice', 'while you were away']);

  // And the reopened client still sends.
  await client.sendText(bob.id, 'back again');
  await received(bob.client, 'back again');
  assert.equal(await client.safetyNumber(bob.id), await bob.client.safetyNumber(alice.id));
});

test('errors are typed SottoError values', async () => {
  const client = alice.client;
  await rejectsWith(() => client.addContact('not a contact'), 'bad_contact');
  await rejectsWith(() => client.sendText('sotto:nope', 'hi'), 'bad_contact');
  await rejectsWith(() => client.messages('', 10), 'bad_contact');
  // A well-formed account id that is no contact.
  await rejectsWith(() => client.safetyNumber('a'.repeat(52)), 'unknown_contact');
  await rejectsWith(() => client.messages(bob.id, 10, -1), 'invalid_argument');
  await rejectsWith(() => client.messages(bob.id, 10, 1.5), 'invalid_argument');

  await rejectsWith(() => SottoClient.createAccount(dbName('short'), new Uint8Array(31), RELAY), 'invalid_argument');
  await rejectsWith(() => SottoClient.open(alice.db, new Uint8Array(33)), 'invalid_argument');
  // The database holds Alice's account (and her client has it open).
  await rejectsWith(() => SottoClient.createAccount(alice.db, alice.key, RELAY), 'account_exists');
  await rejectsWith(() => SottoClient.open(alice.db, storeKey()), 'wrong_store_key');
  await rejectsWith(() => SottoClient.open(dbName('empty'), storeKey()), 'no_account');

  // Nothing listens on port 1: a transport error the app may retry.
  const e = await SottoClient.createAccount(dbName('offline'), storeKey(), 'http://127.0.0.1:1').then(
    () => assert.fail('created an account without a relay'),
    (e) => e,
  );
  assert.equal(e.name, 'SottoError');
  assert.equal(e.code, 'transport', e.message);
  assert.equal(e.retryable, true);

  // The failed calls left the open client working.
  await client.sendText(bob.id, 'still here');
  await received(bob.client, 'still here');
});

test('events carry their fields', async () => {
  const sent = await bob.client.sendText(alice.id, 'watch the events');
  const e = await waitEvent(bob.client, 'messageSent', (e) => e.kind === 'messageSent' && e.messageId === sent.id);
  assert.equal(e.conversation, alice.id);
  assert.equal(e.message, undefined);
  const m = await received(alice.client, 'watch the events');
  assert.equal(m.id, sent.id);
});
