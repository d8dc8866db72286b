// The Sotto web demo: one account in this browser chatting with a contact, or in a
// group, through a relay. No framework, no bundler: the page loads the `--target web` package that
// scripts/wasm.sh generates into bindings/generated/wasm/web, so serve the repository
// root (scripts/web-demo.sh does) and open /bindings/wasm/demo/?relay=http://127.0.0.1:PORT.
import init, { SottoClient, applyDiffs, version } from '../../generated/wasm/web/sotto_wasm.js';

const params = new URLSearchParams(location.search);
const RELAY = params.get('relay') || 'http://127.0.0.1:8080';
// One account per relay (a profile remembers its relay), or as named with ?db=.
const DB = params.get('db') || `sotto-demo ${RELAY}`;
// The store key is kept in IndexedDB encrypted (AES-GCM) under a WebCrypto key generated
// non-extractable: script can use that key but never read it, and the store key is never
// in plain page storage.
const KEYS_DB = 'sotto-demo-keys';
// The open conversation: a contact's account id, or `group:` and a group id.
const CONTACT_ITEM = `${DB} contact`;
// The relay's VAPID public key (base64url, as its operator publishes it): with it, the
// page can subscribe to Web Push, and the service worker (sw.js) shows a notification for
// what arrives while no page is open.
const VAPID = params.get('vapid');

const $ = (id) => document.querySelector(`[data-testid="${id}"]`) ?? document.getElementById(id);
let client = null;
// The open conversation: { group: false, id: account id } or { group: true, id: group id }.
let current = null;

function status(text, error = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('error', error);
}

function failed(what, e) {
  const code = e?.name === 'SottoError' ? ` [${e.code}${e.retryable ? ', retryable' : ''}]` : '';
  status(`${what}: ${e?.message ?? e}${code}`, true);
  console.error(what, e);
}

const short = (id) => id.slice(0, 8);
// Names (nicknames, profile names, group titles) by conversation, from the live
// conversation list; a short id where none is known.
const names = new Map();
const nameOf = (id) => names.get(id) || short(id);
let listSub = null;
let timelineSub = null;
let items = [];
// The message a reply goes to, and the message being edited (keys).
let replyTo = null;
let editing = null;

function idbRequest(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function keysDb() {
  const open = indexedDB.open(KEYS_DB, 1);
  open.onupgradeneeded = () => open.result.createObjectStore('keys');
  return idbRequest(open);
}

async function keyRecord(op, value) {
  const db = await keysDb();
  try {
    const tx = db.transaction('keys', op === 'get' ? 'readonly' : 'readwrite');
    const store = tx.objectStore('keys');
    const req = op === 'get' ? store.get(DB) : op === 'put' ? store.put(value, DB) : store.delete(DB);
    const result = await idbRequest(req);
    await new Promise((resolve) => { tx.oncomplete = resolve; tx.onabort = resolve; });
    return result;
  } finally {
    db.close();
  }
}

/** Wraps the store key under a fresh non-extractable AES-GCM key; both go to IndexedDB. */
async function saveStoreKey(key) {
  const wrapKey = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const wrapped = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, wrapKey, key));
  await keyRecord('put', { wrapKey, iv, wrapped });
}

/** The store key, unwrapped; null when this browser holds none. */
async function loadStoreKey() {
  const rec = await keyRecord('get');
  if (!rec) return null;
  return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: rec.iv }, rec.wrapKey, rec.wrapped));
}

function deleteDatabase(name) {
  return new Promise((resolve) => {
    const req = indexedDB.deleteDatabase(name);
    req.onsuccess = req.onerror = req.onblocked = () => resolve();
  });
}

// ---------------------------------------------------------------- account

async function createAccount() {
  $('create-account').disabled = true;
  status('Creating an account (keys are generated in this page)…');
  const key = crypto.getRandomValues(new Uint8Array(32));
  try {
    await deleteDatabase(DB);
    const c = await SottoClient.createAccount(DB, key, RELAY);
    await saveStoreKey(key);
    key.fill(0);
    await ready(c);
    status('Account created. Share your contact link, or paste one.');
  } catch (e) {
    key.fill(0);
    await deleteDatabase(DB);
    failed('Could not create the account', e);
    $('create-account').disabled = false;
  }
}

async function openAccount(key) {
  status('Opening the account…');
  try {
    await ready(await SottoClient.open(DB, key));
    status('');
  } catch (e) {
    failed('Could not open the account', e);
    $('reset').hidden = false;
  } finally {
    key.fill(0);
  }
}

/** Shows this account's profile name (what contacts see instead of its id). */
async function renderProfile() {
  const name = await client.profileName();
  $('profile-name').textContent = name || '(none: your contacts see your id)';
}

async function setProfile(event) {
  event.preventDefault();
  const input = $('profile-input');
  try {
    await client.setProfile(input.value);
    input.value = '';
    await renderProfile();
  } catch (e) {
    failed('Could not set the name', e);
  }
}

async function ready(c) {
  client = c;
  await renderProfile();
  $('account-id').textContent = c.accountId;
  $('device-id').textContent = String(c.deviceId);
  $('contact-link').textContent = c.contactLink;
  $('welcome').hidden = true;
  $('account').hidden = false;
  $('groups').hidden = false;
  $('reset').hidden = false;
  pump(c);
  watchList(c);
  await registerWorker();
  await renderGroups();
  const saved = localStorage.getItem(CONTACT_ITEM);
  if (saved?.startsWith('group:')) {
    await selectGroup(saved.slice(6));
  } else if (saved) {
    await select(saved);
  }
  document.body.dataset.state = 'ready';
}

async function reset() {
  if (client) {
    await client.unregisterPush().catch(() => {});
    await client.shutdown();
    client.free();
    client = null;
  }
  await deleteDatabase(DB);
  await keyRecord('delete');
  localStorage.removeItem(CONTACT_ITEM);
  location.reload();
}

// ---------------------------------------------------------------- notifications

/** Registers sw.js (a module worker that knows this page's database). */
async function registerWorker() {
  if (!('serviceWorker' in navigator)) return;
  try {
    await navigator.serviceWorker.register(`sw.js?db=${encodeURIComponent(DB)}`, { type: 'module' });
    $('notifications').hidden = !VAPID || !('PushManager' in self);
  } catch (e) {
    console.warn('no service worker: no notifications while the page is closed', e);
  }
}

/** Subscribes to Web Push with the relay's VAPID key and registers the subscription. */
async function enableNotifications() {
  try {
    if ((await Notification.requestPermission()) !== 'granted') {
      status('Notifications are blocked for this site.', true);
      return;
    }
    const registration = await navigator.serviceWorker.ready;
    const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: VAPID });
    await client.registerPush('webPush', new TextEncoder().encode(JSON.stringify(subscription)));
    $('notifications').disabled = true;
    status('Notifications are on: messages that arrive while this page is closed are shown.');
  } catch (e) {
    failed('Could not turn notifications on', e);
  }
}

// ---------------------------------------------------------------- conversation

/** Shows the conversation panel, empty, for a contact or for a group. */
function openChat(group) {
  $('chat').hidden = false;
  $('chat-contact').hidden = group;
  $('safety').hidden = group;
  $('chat-group').hidden = !group;
  $('group-info').hidden = !group;
  $('message-input').disabled = false;
  $('send').disabled = false;
  $('conversation').replaceChildren();
}

async function select(id) {
  current = { group: false, id };
  localStorage.setItem(CONTACT_ITEM, id);
  $('contact').textContent = nameOf(id);
  $('contact').title = id;
  openChat(false);
  try {
    $('safety-number').textContent = await client.safetyNumber(id);
    watchTimeline(id);
  } catch (e) {
    failed('Could not load the conversation', e);
  }
}

async function addContact(event) {
  event.preventDefault();
  const input = $('contact-input');
  try {
    const id = await client.addContact(input.value);
    input.value = '';
    await select(id);
    status(`Added ${short(id)}. Compare the safety number before you trust it.`);
  } catch (e) {
    failed('Could not add the contact', e);
  }
}

// ---------------------------------------------------------------- groups

const memberName = (m) => (m.account === client.accountId ? 'me' : short(m.account)) + (m.role === 'admin' ? ' (admin)' : '');

/** Lists this account's groups, each a button that opens it. Titles go in as text. */
async function renderGroups() {
  try {
    const groups = await client.groups();
    $('group-list').replaceChildren(
      ...groups.map((g) => {
        const li = document.createElement('li');
        const open = document.createElement('button');
        open.type = 'button';
        open.className = 'small';
        open.dataset.testid = 'open-group';
        open.dataset.group = g.id;
        open.textContent = g.title;
        const id = g.id;
        open.addEventListener('click', () => selectGroup(id));
        const about = g.active ? ` ${g.members.length} members` : ' (no longer a member)';
        li.append(open, about);
        g.free();
        return li;
      }),
    );
  } catch (e) {
    failed('Could not list the groups', e);
  }
}

/** Shows the open group's title and members. */
async function renderGroupInfo() {
  const g = await client.group(current.id);
  if (!g) return;
  $('group-name').textContent = g.title;
  $('group-id').textContent = short(g.id);
  $('group-members-list').textContent = g.active ? g.members.map(memberName).join(', ') : 'you are no longer a member';
  $('leave-group').hidden = !g.active;
  $('message-input').disabled = !g.active;
  $('send').disabled = !g.active;
  document.body.dataset.group = g.active ? 'active' : 'inactive';
  g.free();
}

async function selectGroup(id) {
  current = { group: true, id };
  localStorage.setItem(CONTACT_ITEM, `group:${id}`);
  openChat(true);
  try {
    await renderGroupInfo();
    watchTimeline(id);
  } catch (e) {
    failed('Could not load the group', e);
  }
}

async function createGroup(event) {
  event.preventDefault();
  const title = $('group-title');
  const members = $('group-members');
  try {
    // Links are added as contacts first, so that their access keys come along.
    const ids = [];
    for (const m of members.value.split(/\s+/).filter(Boolean)) {
      ids.push(m.startsWith('sotto:') ? await client.addContact(m) : m);
    }
    const id = await client.createGroup(title.value, ids);
    title.value = '';
    members.value = '';
    await renderGroups();
    await selectGroup(id);
    status(`Created the group ${short(id)}.`);
  } catch (e) {
    failed('Could not create the group', e);
  }
}

async function leaveGroup() {
  if (!current?.group) return;
  try {
    await client.leaveGroup(current.id);
    await renderGroupInfo();
    await renderGroups();
  } catch (e) {
    failed('Could not leave the group', e);
  }
}

/** What the page does on a `groupChanged` event: joined, changed, left or removed. */
async function groupChanged(id) {
  await renderGroups();
  if (current?.group && current.id === id) {
    await renderGroupInfo();
  } else if (!current) {
    await selectGroup(id);
  } else {
    const g = await client.group(id);
    if (g) {
      status(`The group "${g.title}" changed.`);
      g.free();
    }
  }
}

// ---------------------------------------------------------------- sending

async function send(event) {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value;
  if (!current || !text.trim()) return;
  try {
    if (editing) await client.edit(editing, text);
    else if (replyTo) await client.reply(replyTo, text);
    else await client.sendMessage(current.id, text);
    input.value = '';
    replyTo = editing = null;
    client.setTyping(current.id, false).catch(() => {});
    $('composing').textContent = '';
  } catch (e) {
    failed('Could not send', e);
  }
}

/** Subscribes to the open conversation's timeline: a reset, then diffs, rendered. */
function watchTimeline(id) {
  timelineSub?.cancel();
  timelineSub?.free();
  items = [];
  timelineSub = client.timeline(id, 200).subscribe((batch) => {
    applyDiffs(items, batch);
    render();
    // What is on screen is read: read receipts go back, disappearing timers start.
    if (document.visibilityState !== 'hidden' && items.some((i) => !i.sendState && i.message.kind === 'text')) {
      client.markRead(id).catch(() => {});
    }
  });
}

/** A timer as people say it: 30 s, 5 min, 1 h, 1 day. */
function duration(s) {
  if (s % 86400 === 0) return `${s / 86400} day${s === 86400 ? '' : 's'}`;
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

const TICKS = { queued: '🕓', sending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓ read', failed: '⚠ not sent', sentElsewhere: '' };

function button(label, testid, onclick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'small';
  b.textContent = label;
  b.dataset.testid = testid;
  b.addEventListener('click', onclick);
  return b;
}

/** Renders the timeline. Text goes in as text, never HTML. */
function render() {
  const ol = $('conversation');
  ol.replaceChildren(
    ...items.map((item) => {
      const m = item.message;
      const mine = item.sendState !== undefined;
      const li = document.createElement('li');
      li.dataset.id = m.id;
      li.dataset.key = item.key;
      li.dataset.testid = 'message';
      li.dataset.direction = mine ? 'out' : 'in';
      li.dataset.status = item.sendState ?? 'received';
      if (m.kind !== 'text') {
        li.className = 'notice';
        li.textContent =
          m.kind === 'timer'
            ? `${mine ? 'You' : nameOf(m.senderAccount)} ${m.timerS ? `set disappearing messages to ${duration(m.timerS)}` : 'turned disappearing messages off'}`
            : m.kind === 'identityChanged'
              ? 'The safety number changed: compare it, then acknowledge.'
              : 'A message this version cannot show.';
        li.dataset.kind = m.kind;
        return li;
      }
      if (m.quote) {
        const q = document.createElement('blockquote');
        q.dataset.testid = 'quote';
        q.textContent = `${m.quote.author === client.accountId ? 'me' : nameOf(m.quote.author)}: ${m.quote.snippet}`;
        li.append(q);
      }
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = m.deleted ? 'This message was deleted.' : m.text;
      if (m.deleted) li.dataset.deleted = 'true';
      li.append(text);
      if (m.editedAtMs > 0) {
        li.dataset.edited = 'true';
        const ed = document.createElement('span');
        ed.className = 'edited';
        ed.textContent = ' (edited)';
        li.append(ed);
      }
      const meta = document.createElement('span');
      meta.className = 'meta';
      const when = new Date(m.timestampMs).toLocaleTimeString();
      const who = mine ? 'me' : nameOf(m.senderAccount);
      meta.textContent = `${who} · ${when}${m.expireS ? ` · ⏱ ${duration(m.expireS)}` : ''}`;
      const ticks = document.createElement('span');
      ticks.className = `ticks ${item.sendState ?? ''}`;
      ticks.dataset.testid = 'ticks';
      ticks.textContent = mine ? ` ${TICKS[item.sendState] ?? item.sendState}` : '';
      meta.append(ticks);
      li.append(meta);
      if (m.reactions.length) {
        const r = document.createElement('span');
        r.className = 'reactions';
        r.dataset.testid = 'reactions';
        r.textContent = m.reactions.map((x) => `${x.emoji} ${x.by === client.accountId ? 'me' : nameOf(x.by)}`).join('  ');
        li.append(r);
      }
      if (!m.deleted) {
        const actions = document.createElement('span');
        actions.className = 'actions';
        const myReaction = m.reactions.find((x) => x.by === client.accountId)?.emoji;
        actions.append(
          button(myReaction === '👍' ? 'un-👍' : '👍', 'react', () => client.react(item.key, myReaction === '👍' ? '' : '👍').catch((e) => failed('Could not react', e))),
          button('Reply', 'reply', () => {
            replyTo = item.key;
            editing = null;
            $('composing').textContent = `Replying to: ${m.text.slice(0, 40)}`;
            $('message-input').focus();
          }),
        );
        if (mine) {
          actions.append(
            button('Edit', 'edit', () => {
              editing = item.key;
              replyTo = null;
              $('message-input').value = m.text;
              $('composing').textContent = 'Editing';
            }),
            button('Delete', 'delete', () => client.deleteForEveryone(item.key).catch((e) => failed('Could not delete', e))),
          );
        }
        li.append(actions);
      }
      return li;
    }),
  );
  ol.lastElementChild?.scrollIntoView({ block: 'nearest' });
}

/** Keeps the names, the typing line and the timer control from the live conversation list. */
function watchList(c) {
  let list = [];
  listSub = c.conversationList().subscribe((batch) => {
    applyDiffs(list, batch);
    names.clear();
    for (const s of list) if (s.name) names.set(s.conversation, s.name);
    const here = current && list.find((s) => s.conversation === current.id);
    if (here) {
      if (!current.group) $('contact').textContent = nameOf(current.id);
      $('timer').value = String(here.expireS);
      // Typing shows as soon as the SDK reports it (ConversationSummary.typing).
      const typing = here.typing.map(nameOf);
      $('typing').textContent = typing.length ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…` : '';
      document.body.dataset.timer = String(here.expireS);
    }
    if (items.length) render();
  });
}

async function setTimer() {
  if (!current) return;
  try {
    await client.setTimer(current.id, Number($('timer').value));
  } catch (e) {
    failed('Could not set the timer', e);
  }
}

async function setNickname(event) {
  event.preventDefault();
  if (!current || current.group) return;
  try {
    await client.setNickname(current.id, $('nickname-input').value || null);
    $('nickname-input').value = '';
  } catch (e) {
    failed('Could not set the nickname', e);
  }
}

/**
 * The message input changed: the others see "typing" while it holds text (the SDK sends
 * it at most every 3 s, so calling on every keystroke is fine) and "stopped" once it is
 * cleared; `send` says "stopped" too.
 */
function typed() {
  if (!current || editing) return;
  const typing = $('message-input').value.trim() !== '';
  client.setTyping(current.id, typing).catch(() => {});
}

/** Reads the client's events until it shuts down. */
async function pump(c) {
  for (;;) {
    let e;
    try {
      e = await c.nextEvent();
    } catch (err) {
      failed('Event stream failed', err);
      return;
    }
    if (e === undefined) return;
    switch (e.kind) {
      case 'messageReceived': {
        const m = e.message;
        const group = m.group !== undefined;
        if (!current) {
          await (group ? selectGroup(m.group) : select(m.conversation));
        } else if (current.group === group && current.id === m.conversation) {
          // The timeline subscription shows it.
        } else if (group) {
          const g = await c.group(m.group);
          status(`New message in the group "${g?.title ?? short(m.group)}" (another conversation).`);
          g?.free();
        } else {
          status(`New message from ${nameOf(m.conversation)} (another conversation).`);
        }
        m.free();
        break;
      }
      case 'profileChanged':
        // The conversation list's `name` follows; this account's own name may have been
        // set on another device.
        if (e.account === c.accountId) await renderProfile();
        break;
      case 'identityChanged':
        status(`The safety number with ${nameOf(e.account)} changed: compare it before you go on.`, true);
        break;
      case 'connected':
        $('connection').textContent = 'connected';
        $('connection').classList.add('online');
        break;
      case 'sendFailed':
        status(`A message was not sent: ${e.detail}`, true);
        break;
      case 'undecryptable':
        status(`A message could not be decrypted: ${e.detail}`, true);
        break;
      case 'deviceListChanged':
        status(`${short(e.account)} changed devices (${e.detail}); the safety number may have changed.`);
        if (current && !current.group && e.account === current.id) {
          $('safety-number').textContent = await c.safetyNumber(current.id);
        }
        break;
      case 'groupChanged':
        await groupChanged(e.group);
        break;
      case 'groupChangeRejected':
        status(`A group change was not made: ${e.detail}`, true);
        break;
      case 'deviceRemoved':
        status('This device was removed from its account.', true);
        break;
      default:
        break;
    }
    e.free();
  }
}

// ---------------------------------------------------------------- start

async function main() {
  $('relay-url').textContent = RELAY;
  $('create-account').addEventListener('click', createAccount);
  $('add-form').addEventListener('submit', addContact);
  $('send-form').addEventListener('submit', send);
  $('group-form').addEventListener('submit', createGroup);
  $('leave-group').addEventListener('click', leaveGroup);
  $('reset').addEventListener('click', reset);
  $('timer').addEventListener('change', setTimer);
  $('nickname-form').addEventListener('submit', setNickname);
  $('profile-form').addEventListener('submit', setProfile);
  $('message-input').addEventListener('input', typed);
  $('copy-link').addEventListener('click', () => navigator.clipboard?.writeText(client.contactLink));
  $('notifications').addEventListener('click', enableNotifications);
  try {
    await init();
  } catch (e) {
    failed('Could not load the WebAssembly package (run scripts/wasm.sh or scripts/web-demo.sh)', e);
    return;
  }
  $('version').textContent = `sotto-wasm ${version()}`;
  const key = await loadStoreKey().catch(() => null);
  if (key) {
    await openAccount(key);
  } else {
    $('welcome').hidden = false;
    document.body.dataset.state = 'welcome';
  }
}

main();
