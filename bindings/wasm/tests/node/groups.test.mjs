// A group of three node clients through a real sotto-relay (SOTTO_RELAY_URL): Alice
// creates it with Bob and Carol (her contacts; Bob and Carol are not each other's, they
// get each other's access keys through the group), everyone writes and everyone else
// reads each message once with its `group`; Alice renames the group and makes Bob an
// admin; Alice removes Carol, who then reads nothing more and cannot send; Bob leaves.
// Errors are SottoError codes. Every wait is for an event with a deadline (helpers.mjs).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { RELAY, SottoClient, dbName, received, rejectsWith, storeKey, waitEvent } from './helpers.mjs';

const open = [];
after(async () => {
  for (const c of open) {
    await c.shutdown();
  }
});

const alice = {};
const bob = {};
const carol = {};
let g;

/**
 * Returns `client`'s view of group `g` once `pred` holds for it, reading `groupChanged`
 * events of `g` until then (the state is written before the event is emitted, so a change
 * that came earlier is seen by the first look).
 */
async function groupState(client, what, pred) {
  for (;;) {
    const info = await client.group(g);
    if (info !== undefined && pred(info)) {
      return info;
    }
    const e = await waitEvent(client, `${what} (group ${g})`, (e) => e.kind === 'groupChanged' && e.group === g);
    e.free();
  }
}

function roles(info) {
  return Object.fromEntries(info.members.map((m) => [m.account, m.role]));
}

async function texts(client) {
  return (await client.groupMessages(g, 100)).map((m) => m.text);
}

test('three accounts; Alice adds Bob and Carol', async () => {
  for (const [who, label] of [
    [alice, 'alice'],
    [bob, 'bob'],
    [carol, 'carol'],
  ]) {
    who.client = await SottoClient.createAccount(dbName(label), storeKey(), RELAY);
    open.push(who.client);
    who.id = who.client.accountId;
  }
  assert.equal(await alice.client.addContact(bob.client.contactLink), bob.id);
  assert.equal(await alice.client.addContact(carol.client.contactLink), carol.id);
});

test('Alice creates a group; Bob and Carol join it', async () => {
  g = await alice.client.createGroup('team', [bob.id, carol.id]);
  assert.match(g, /^[0-9a-f]{64}$/);
  const mine = await alice.client.groups();
  assert.deepEqual(
    mine.map((x) => x.id),
    [g],
  );
  assert.equal(mine[0].title, 'team');
  assert.equal(mine[0].active, true);
  assert.equal(typeof mine[0].version, 'number');
  assert.deepEqual(roles(mine[0]), { [alice.id]: 'admin', [bob.id]: 'member', [carol.id]: 'member' });

  for (const who of [bob, carol]) {
    const info = await groupState(who.client, 'the welcome', (i) => i.active);
    assert.equal(info.title, 'team');
    assert.deepEqual(roles(info), roles(mine[0]));
    assert.equal(info.version, mine[0].version);
  }
});

test('everyone writes; everyone else reads it once, as a group message', async () => {
  const all = [alice, bob, carol];
  for (const sender of all) {
    const text = `hello from ${sender === alice ? 'alice' : sender === bob ? 'bob' : 'carol'}`;
    const sent = await sender.client.sendGroupText(g, text);
    assert.equal(sent.group, g);
    assert.equal(sent.conversation, g);
    assert.equal(sent.senderAccount, sender.id);
    for (const reader of all.filter((r) => r !== sender)) {
      const m = await received(reader.client, text);
      assert.equal(m.group, g);
      assert.equal(m.conversation, g);
      assert.equal(m.senderAccount, sender.id);
      assert.equal(m.senderDevice, sender.client.deviceId);
      assert.equal(m.status, 'received');
      assert.equal(m.id, sent.id);
    }
  }
  const expected = ['hello from alice', 'hello from bob', 'hello from carol'];
  for (const who of all) {
    assert.deepEqual(await texts(who.client), expected);
    const page = await who.client.groupMessages(g, 1);
    assert.equal(page.length, 1);
    assert.equal(page[0].group, g);
    assert.deepEqual(
      (await who.client.groupMessages(g, 5, page[0].order)).map((m) => m.text),
      expected.slice(0, 2),
    );
  }
  // Contact conversations carry no group.
  await alice.client.sendText(bob.id, 'just to bob');
  const direct = await received(bob.client, 'just to bob');
  assert.equal(direct.group, undefined);
  assert.equal(direct.conversation, alice.id);
});

test('Alice renames the group and makes Bob an admin', async () => {
  await alice.client.renameGroup(g, 'team two');
  await alice.client.setGroupAdmin(g, bob.id, true);
  const info = await groupState(bob.client, 'the rename and the new admin', (i) => i.title === 'team two' && roles(i)[bob.id] === 'admin');
  assert.equal(roles(info)[alice.id], 'admin');
  await groupState(carol.client, 'the rename', (i) => i.title === 'team two');
  // Carol is no admin.
  await rejectsWith(() => carol.client.renameGroup(g, 'mine now'), 'not_group_admin');
  await rejectsWith(() => carol.client.removeGroupMember(g, alice.id), 'not_group_admin');
});

test('Alice removes Carol: Carol learns it, reads nothing after and cannot send', async () => {
  await alice.client.removeGroupMember(g, carol.id);
  const gone = await groupState(carol.client, 'the removal', (i) => !i.active);
  assert.equal(gone.id, g);
  await groupState(bob.client, 'the removal', (i) => !(carol.id in roles(i)));

  await bob.client.sendGroupText(g, 'after carol');
  const m = await received(alice.client, 'after carol');
  assert.equal(m.group, g);
  assert.deepEqual(await texts(carol.client), ['hello from alice', 'hello from bob', 'hello from carol']);
  await rejectsWith(() => carol.client.sendGroupText(g, 'still here?'), 'unknown_group');
  assert.equal((await carol.client.groups())[0].active, false);
});

test('Bob leaves', async () => {
  await bob.client.leaveGroup(g);
  assert.equal((await bob.client.group(g)).active, false);
  const info = await groupState(alice.client, 'Bob leaving', (i) => !(bob.id in roles(i)));
  assert.deepEqual(roles(info), { [alice.id]: 'admin' });
  await rejectsWith(() => bob.client.sendGroupText(g, 'gone'), 'unknown_group');
});

test('group errors are typed SottoError values', async () => {
  const client = alice.client;
  await rejectsWith(() => client.sendGroupText('not a group', 'hi'), 'bad_group_id');
  await rejectsWith(() => client.groupMessages(g.slice(1), 10), 'bad_group_id');
  await rejectsWith(() => client.groupMessages(g, 10, -1), 'invalid_argument');
  await rejectsWith(() => client.createGroup('x', ['sotto:nope']), 'bad_contact');
  const unknown = 'ab'.repeat(32);
  assert.equal(await client.group(unknown), undefined);
  await rejectsWith(() => client.sendGroupText(unknown, 'hi'), 'unknown_group');
  await rejectsWith(() => client.addGroupMembers(unknown, [bob.id]), 'unknown_group');
});
