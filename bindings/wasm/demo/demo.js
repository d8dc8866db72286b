// The Sotto web demo: one account in this browser chatting with a contact, or in a
// group, through a relay. No framework, no bundler: the page loads the `--target web` package that
// scripts/wasm.sh generates into bindings/generated/wasm/web, so serve the repository
// root (scripts/web-demo.sh does) and open /bindings/wasm/demo/?relay=http://127.0.0.1:PORT.
import init, { SottoClient, version } from '../../generated/wasm/web/sotto_wasm.js';

const params = new URLSearchParams(location.search);
const RELAY = params.get('relay') || 'http://127.0.0.1:8080';
// One account per relay (a profile remembers its relay), or as named with ?db=.
const DB = params.get('db') || `sotto-demo ${RELAY}`;
const KEY_ITEM = `${DB} store key`;
// The open conversation: a contact's account id, or `group:` and a group id.
const CONTACT_ITEM = `${DB} contact`;

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

const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const fromHex = (hex) => new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
const short = (id) => id.slice(0, 8);

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
    localStorage.setItem(KEY_ITEM, toHex(key));
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

async function openAccount(hex) {
  status('Opening the account…');
  const key = fromHex(hex);
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

async function ready(c) {
  client = c;
  $('account-id').textContent = c.accountId;
  $('device-id').textContent = String(c.deviceId);
  $('contact-link').textContent = c.contactLink;
  $('welcome').hidden = true;
  $('account').hidden = false;
  $('groups').hidden = false;
  $('reset').hidden = false;
  pump(c);
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
    await client.shutdown();
    client.free();
    client = null;
  }
  await deleteDatabase(DB);
  localStorage.removeItem(KEY_ITEM);
  localStorage.removeItem(CONTACT_ITEM);
  location.reload();
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
  $('contact').textContent = id;
  openChat(false);
  try {
    $('safety-number').textContent = await client.safetyNumber(id);
    for (const m of await client.messages(id, 100)) {
      show(m);
    }
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
    for (const m of await client.groupMessages(id, 100)) {
      show(m);
    }
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
    const m = current.group ? await client.sendGroupText(current.id, text) : await client.sendText(current.id, text);
    input.value = '';
    show(m);
  } catch (e) {
    failed('Could not send', e);
  }
}

/** Appends a message (or updates the one with its id). Text goes in as text, never HTML. */
function show(m) {
  const mine = m.senderAccount === client.accountId;
  let li = document.querySelector(`li[data-id="${m.id}"]`);
  if (!li) {
    li = document.createElement('li');
    li.dataset.id = m.id;
    li.dataset.testid = 'message';
    li.dataset.direction = mine ? 'out' : 'in';
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = m.text;
    const meta = document.createElement('span');
    meta.className = 'meta';
    li.append(text, meta);
    $('conversation').append(li);
  }
  li.dataset.status = m.status;
  const when = new Date(m.timestampMs).toLocaleTimeString();
  li.querySelector('.meta').textContent = `${mine ? 'me' : short(m.senderAccount)} · ${when} · ${m.status}`;
  li.scrollIntoView({ block: 'nearest' });
}

function setStatusOf(id, value) {
  const li = document.querySelector(`li[data-id="${id}"]`);
  if (li) {
    li.dataset.status = value;
    const meta = li.querySelector('.meta');
    meta.textContent = meta.textContent.replace(/[^·]*$/, ` ${value}`);
  }
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
          show(m);
        } else if (group) {
          const g = await c.group(m.group);
          status(`New message in the group "${g?.title ?? short(m.group)}" (another conversation).`);
          g?.free();
        } else {
          status(`New message from ${short(m.conversation)} (another conversation).`);
        }
        m.free();
        break;
      }
      case 'messageSent':
        setStatusOf(e.messageId, 'sent');
        break;
      case 'delivered':
        for (const id of e.messageIds ?? []) setStatusOf(id, 'delivered');
        break;
      case 'connected':
        $('connection').textContent = 'connected';
        $('connection').classList.add('online');
        break;
      case 'sendFailed':
        setStatusOf(e.messageId, 'failed');
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
  $('copy-link').addEventListener('click', () => navigator.clipboard?.writeText(client.contactLink));
  try {
    await init();
  } catch (e) {
    failed('Could not load the WebAssembly package (run scripts/wasm.sh or scripts/web-demo.sh)', e);
    return;
  }
  $('version').textContent = `sotto-wasm ${version()}`;
  const hex = localStorage.getItem(KEY_ITEM);
  if (hex) {
    await openAccount(hex);
  } else {
    $('welcome').hidden = false;
    document.body.dataset.state = 'welcome';
  }
}

main();
