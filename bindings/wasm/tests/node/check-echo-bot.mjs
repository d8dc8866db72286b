// Checks the TypeScript echo bot (examples/echo-bot.ts, compiled, with sotto-wasm installed
// from the npm package) against the relay at $SOTTO_RELAY_URL. The bot runs twice on one
// store directory, one reply each time: the second run reopens the account the first one
// created. Run by scripts/wasm.sh:
//
//   node check-echo-bot.mjs STORE_DIR BOT_COMMAND...   (the command gets RELAY STORE_DIR 1)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import readline from 'node:readline';

import { RELAY, SottoClient, TIMEOUT_MS, dbName, storeKey } from './helpers.mjs';

const [dir, ...command] = process.argv.slice(2);

function run() {
  const bot = spawn(command[0], [...command.slice(1), RELAY, dir, '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => bot.on('exit', (code, signal) => resolve(code ?? signal)));
  const link = new Promise((resolve, reject) => {
    readline.createInterface({ input: bot.stdout }).once('line', resolve);
    exited.then((code) => reject(new Error(`the bot exited (${code}) before printing its link`)));
  });
  return { bot, link, exited };
}

async function echoed(me, botId, text) {
  await me.sendMessage(botId, text);
  for (;;) {
    const e = await me.nextEvent(AbortSignal.timeout(TIMEOUT_MS));
    assert.ok(e !== undefined, 'the event stream ended');
    if (e.kind === 'messageReceived') {
      assert.equal(e.message.senderAccount, botId);
      assert.equal(e.message.text, text);
      return;
    }
  }
}

const me = await SottoClient.createAccount(dbName('echo-check'), storeKey(), RELAY);
let current;
try {
  current = run();
  const link = await current.link;
  assert.ok(link.startsWith('sotto:'), `the bot printed ${link}, not its contact link`);
  const botId = await me.addContact(link);
  await echoed(me, botId, 'hello typescript bot');
  assert.equal(await current.exited, 0);
  // Started again on the same directory: the same account.
  current = run();
  assert.equal(await current.link, link, 'the second run reopened another account');
  await echoed(me, botId, 'zweite Nachricht, ünïcödé ✓');
  assert.equal(await current.exited, 0);
  console.log('typescript: the echo bot answered, before and after a restart');
} finally {
  if (current && current.bot.exitCode === null) current.bot.kill();
  await me.shutdown();
}
process.exit(0);
