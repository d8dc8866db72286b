// The Sotto web demo: one account in this browser chatting with one contact through a
// relay. No framework, no bundler: the page loads the `--target web` package that
// scripts/wasm.sh generates into bindings/generated/wasm/web, so serve the repository
// root (scripts/web-demo.sh does) and open /bindings/wasm/demo/?relay=http://127.0.0.1:PORT.
import init, { SottoClient, version } from '../../generated/wasm/web/sotto_wasm.js';

const params = new URLSearchParams(location.search);
const RELAY = params.get('relay') || 'http://127.0.0.1:8080';
// One account per relay (a profile remembers its relay), or as named with ?db=.
const DB = params.get('db') || `sotto-demo ${RELAY}`;
const KEY_ITEM = `${DB} store key`;
const CONTACT_ITEM = `${DB} contact`;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`) ?? document.getElementById(id);
let client = null;
let contact = null;

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
  $('reset').hidden = false;
  pump(c);
  const saved = localStorage.getItem(CONTACT_ITEM);
  if (saved) {
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

async function select(id) {
  contact = id;
  localStorage.setItem(CONTACT_ITEM, id);
  $('contact').textContent = id;
  $('chat').hidden = false;
  $('conversation').replaceChildren();
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

async function send(event) {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value;
  if (!contact || !text.trim()) return;
  try {
    const m = await client.sendText(contact, text);
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
        if (!contact) {
          await select(m.conversation);
        } else if (m.conversation === contact) {
          show(m);
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
        if (e.account === contact) {
          $('safety-number').textContent = await c.safetyNumber(contact);
        }
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
