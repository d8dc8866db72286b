// End to end in headless Chromium: the demo page (bindings/wasm/demo, the `--target web`
// package) chats with the native `sotto` CLI through a real relay, cross-origin (the page
// and the relay are on different ports, so the relay's CORS is exercised).
//
// The page creates its account; the CLI adds the page's contact link and the page adds
// the CLI's; both show the same safety number; the page sends "hello from the browser",
// the CLI receives it (polling `sotto receive`, which itself waits until the relay has
// nothing more, a bounded number of times) and replies; the page shows the reply. The CLI
// reacts to the page's message and the page shows the reaction; the page reacts back,
// edits its message ("(edited)" at the CLI), and sets a disappearing-message timer (the CLI
// prints it); the CLI opens the chat, which marks the page's messages read, and the page
// shows the read tick; the page types and the chat prints "(Browser is typing…)"; the chat
// gets half a line and the page shows "Terminal is typing…". Both set profile names
// first, so each side shows the other's name. The screenshot is taken there (names, the
// reply, the reactions, the edit, the ticks, the timer and the typing line are on
// screen); the chat's line is then finished and the page shows it. Then the
// page creates a group with the CLI, the CLI joins it (`sotto receive`, then `sotto group
// list` names it), writes to it with `sotto group send` and the page shows that in the
// group; the page writes to the group and the CLI receives it. A screenshot is saved
// either way; on failure the browser console is printed.
//
// Environment (scripts/wasm.sh sets it): SOTTO_RELAY_URL, SOTTO_CLI (the `sotto` binary),
// SOTTO_SCREENSHOT (where the PNG goes), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

import { DEMO_PATH, serve } from './serve.mjs';

const RELAY = process.env.SOTTO_RELAY_URL;
const CLI = process.env.SOTTO_CLI;
const SCREENSHOT = process.env.SOTTO_SCREENSHOT ?? path.join(tmpdir(), 'web-demo.png');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** How long the page may take for one step. */
const STEP_MS = Number(process.env.SOTTO_TEST_TIMEOUT_MS ?? 30000);
/** How many times `sotto receive` is run before giving up. */
const RECEIVE_ATTEMPTS = 10;

const run = promisify(execFile);

test('the web demo chats with the native CLI', { timeout: 10 * 60 * 1000 }, async () => {
  assert.ok(RELAY, 'SOTTO_RELAY_URL is not set (scripts/wasm.sh starts a relay)');
  assert.ok(CLI, 'SOTTO_CLI is not set (the path to the sotto binary)');
  const home = mkdtempSync(path.join(tmpdir(), 'sotto-e2e-'));
  const sotto = async (...args) => {
    const { stdout } = await run(CLI, ['--data-dir', path.join(home, 'cli'), ...args], { timeout: 90000 });
    return stdout;
  };

  const site = await serve();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--headless',
      '--disable-gpu',
      '--disable-quic',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const logs = [];
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.stack ?? e}`));
  page.on('requestfailed', (r) => logs.push(`[requestfailed] ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  const byId = (id) => page.locator(`[data-testid="${id}"]`);
  let step = 'start';

  try {
    step = 'the CLI creates its account';
    await sotto('init', '--relay', RELAY);
    const cliLink = (await sotto('whoami', '--link')).trim();
    // The link carries the account's access key, so the other side is no message request.
    assert.match(cliLink, /^sotto:[a-z2-7]{52}\.[0-9a-f]{64}$/);

    step = 'the page loads';
    await page.goto(`${site.url}${DEMO_PATH}?relay=${encodeURIComponent(RELAY)}&db=e2e`);
    await page.locator('body[data-state="welcome"]').waitFor();

    step = 'the page creates its account';
    await byId('create-account').click();
    await page.locator('body[data-state="ready"]').waitFor();
    const pageLink = (await byId('contact-link').textContent()).trim();
    assert.match(pageLink, /^sotto:[a-z2-7]{52}\.[0-9a-f]{64}$/);

    step = 'the CLI adds the page';
    const added = await sotto('add', pageLink);
    assert.match(added, new RegExp(`added ${pageLink.slice(6, 58)}`));

    step = 'the page adds the CLI';
    await byId('contact-input').fill(cliLink);
    await byId('add-contact').click();
    await page.waitForFunction(() => /\d/.test(document.querySelector('[data-testid="safety-number"]').textContent));
    const pageSafety = (await byId('safety-number').textContent()).replace(/\D/g, '');
    const cliSafety = (await sotto('safety', pageLink)).replace(/\D/g, '');
    assert.equal(pageSafety.length, 60);
    assert.equal(pageSafety, cliSafety, 'the page and the CLI show the same safety number');

    step = 'both set a profile name and the other side shows it';
    assert.match(await sotto('profile', 'Terminal'), /profile name set to "Terminal"/);
    await byId('contact').filter({ hasText: 'Terminal' }).waitFor();
    await byId('profile-input').fill('Browser');
    await byId('set-profile').click();
    await byId('profile-name').filter({ hasText: 'Browser' }).waitFor();
    // The page's profile is queued before its first message: the CLI gets both below.

    step = 'the page sends';
    await byId('message-input').fill('hello from the browser');
    await byId('send').click();
    await page.locator('li[data-direction="out"]', { hasText: 'hello from the browser' }).waitFor();
    // The relay has stored it once the page marks it sent; only then is a `sotto receive`
    // that finds nothing a failure.
    step = 'the relay stores the page\'s message';
    await page
      .locator('li[data-direction="out"][data-status="sent"], li[data-direction="out"][data-status="delivered"]', {
        hasText: 'hello from the browser',
      })
      .waitFor();

    step = 'the CLI receives';
    let got = '';
    const both = () => got.includes('hello from the browser') && got.includes('is now called Browser');
    for (let i = 1; i <= RECEIVE_ATTEMPTS && !both(); i++) {
      got += await sotto('receive');
    }
    assert.ok(both(), `sotto receive printed, ${RECEIVE_ATTEMPTS} times:\n${got}`);

    step = 'the CLI replies and the page shows it';
    assert.match(await sotto('send', pageLink, 'hello from the terminal'), /sent/);
    await page.locator('li[data-direction="in"]', { hasText: 'hello from the terminal' }).waitFor();
    await page
      .locator('li[data-direction="out"][data-status="delivered"]', { hasText: 'hello from the browser' })
      .waitFor();

    const cliReceives = async (needle) => {
      let out = '';
      for (let i = 1; i <= RECEIVE_ATTEMPTS && !out.includes(needle); i++) {
        out += await sotto('receive');
      }
      assert.ok(out.includes(needle), `sotto receive never printed ${JSON.stringify(needle)}:\n${out}`);
      return out;
    };
    const outgoing = (text) => page.locator('li[data-direction="out"]', { hasText: text });

    step = 'the CLI reacts and the page shows the reaction';
    // 2: the message before the CLI's own reply.
    assert.match(await sotto('react', pageLink, '2', '👍'), /reacted 👍/);
    await outgoing('hello from the browser').locator('[data-testid="reactions"]', { hasText: '👍' }).waitFor();

    step = 'the page reacts to the CLI\'s message';
    await page.locator('li[data-direction="in"]', { hasText: 'hello from the terminal' }).locator('[data-testid="react"]').click();
    await cliReceives('reacted 👍 to "hello from the terminal"');

    step = 'the page edits its message and the CLI shows the edit';
    await outgoing('hello from the browser').locator('[data-testid="edit"]').click();
    await byId('message-input').fill('hello from the browser, edited');
    await byId('send').click();
    await page.locator('li[data-edited="true"]', { hasText: 'hello from the browser, edited' }).waitFor();
    await cliReceives('hello from the browser, edited (edited)');

    step = 'the page sets a disappearing-message timer';
    await byId('timer').selectOption('3600');
    await page.locator('li[data-kind="timer"]').waitFor();
    await cliReceives('set disappearing messages to 1h');
    await page.locator('body[data-timer="3600"]').waitFor();

    step = 'the CLI opens the chat and the page shows the read tick';
    // The chat reads its input as it arrives: a line without its newline yet is a line
    // being composed, and the page sees "typing".
    const chat = run(CLI, ['--data-dir', path.join(home, 'cli'), 'chat', pageLink], {
      timeout: 90000,
      env: { ...process.env, SOTTO_CHAT_EXIT_ON_EOF: '1' },
    });
    let chatOut = '';
    // Registered first: the waits below see each chunk after it was added.
    chat.child.stdout.on('data', (d) => {
      chatOut += d;
    });
    chat.catch(() => {});
    const chatSees = (needle) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (!chatOut.includes(needle)) return false;
          clearTimeout(timer);
          chat.child.stdout.off('data', check);
          resolve();
          return true;
        };
        const timer = setTimeout(() => {
          chat.child.stdout.off('data', check);
          reject(new Error(`the chat never printed ${JSON.stringify(needle)}:\n${chatOut}`));
        }, STEP_MS);
        chat.child.stdout.on('data', check);
        check();
      });
    await chatSees('-- chatting with Browser');
    await page.locator('li[data-direction="out"][data-status="read"]', { hasText: 'hello from the browser, edited' }).waitFor();

    step = 'the page types and the CLI shows it';
    await byId('message-input').fill('a reply I am still writing');
    await chatSees('(Browser is typing…)');
    await byId('message-input').fill('');

    step = 'the CLI types and the page shows it';
    chat.child.stdin.write('typed in the termi');
    await byId('typing').filter({ hasText: 'Terminal is typing…' }).waitFor();

    mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`screenshot: ${SCREENSHOT}`);

    step = 'the CLI finishes its line and the page shows the message';
    chat.child.stdin.end('nal\n');
    await chat;
    await page.locator('li[data-direction="in"]', { hasText: 'typed in the terminal' }).waitFor();

    step = 'the page creates a group with the CLI';
    const title = 'web and terminal';
    await byId('group-title').fill(title);
    await byId('group-members').fill(cliLink);
    await byId('create-group').click();
    await page.locator('body[data-group="active"]').waitFor();
    assert.equal(await byId('group-name').textContent(), title);

    step = 'the CLI joins the group';
    let groups = '';
    for (let i = 1; i <= RECEIVE_ATTEMPTS && !groups.includes(title); i++) {
      await sotto('receive');
      groups = await sotto('group', 'list');
    }
    assert.ok(groups.includes(title), `sotto group list printed:\n${groups}`);

    step = 'the CLI writes to the group and the page shows it';
    await sotto('group', 'send', title, 'hello group from the terminal');
    await page.locator('li[data-direction="in"]', { hasText: 'hello group from the terminal' }).waitFor();

    step = 'the page writes to the group and the CLI receives it';
    await byId('message-input').fill('hello group from the browser');
    await byId('send').click();
    await page
      .locator('li[data-direction="out"][data-status="sent"]', { hasText: 'hello group from the browser' })
      .waitFor();
    got = '';
    for (let i = 1; i <= RECEIVE_ATTEMPTS && !got.includes('hello group from the browser'); i++) {
      got += await sotto('receive');
    }
    assert.ok(got.includes('hello group from the browser'), `sotto receive printed, ${RECEIVE_ATTEMPTS} times:\n${got}`);
    assert.ok(got.includes(title), `the CLI names the group by its title:\n${got}`);
  } catch (e) {
    try {
      mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      console.error(`screenshot of the failure: ${SCREENSHOT}`);
    } catch (shot) {
      console.error(`no screenshot: ${shot}`);
    }
    const status = await byId('status').textContent({ timeout: 1000 }).catch(() => '?');
    console.error(`failed at: ${step}\npage status line: ${status}\nbrowser console:\n${logs.join('\n') || '(empty)'}`);
    throw new Error(`web demo e2e failed at "${step}": ${e.message}`, { cause: e });
  } finally {
    await browser.close();
    await site.close();
    rmSync(home, { recursive: true, force: true });
  }
});
