// Echo bot: keeps its account in a store directory, prints its contact link, and answers
// every text it receives with the same text. Killed and started again, it reopens the
// same account and answers what arrived meanwhile (the relay keeps it until the store has
// it).
//
//   npm install sotto-wasm
//   tsc --module nodenext --target es2022 --strict echo-bot.ts
//   node --experimental-websocket echo-bot.js RELAY_URL STORE_DIR [REPLIES]
//
// REPLIES stops the bot after that many answers (scripts/wasm.sh runs it so). node 22
// needs no flag.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

import { SottoClient, useStoreDirectory } from "sotto-wasm";

const [relay, dir, replies] = process.argv.slice(2);
if (relay === undefined || dir === undefined) {
  console.error("usage: echo-bot.js RELAY_URL STORE_DIR [REPLIES]");
  process.exit(2);
}
await useStoreDirectory(dir);

// The store key opens the store. A real app keeps it in a secret store (the system's
// keychain, a KMS); next to the data, as here, it protects nothing at rest.
const keyFile = path.join(dir, "store.key");
let bot: SottoClient;
if (existsSync(keyFile)) {
  bot = await SottoClient.open("echo-bot", readFileSync(keyFile));
} else {
  const key = randomBytes(32);
  bot = await SottoClient.createAccount("echo-bot", key, relay);
  writeFileSync(keyFile, key, { mode: 0o600 });
}
console.log(bot.contactLink);

let left = replies === undefined ? Infinity : Number(replies);
// Replies the relay has not stored yet: the bot stops only once they are out (`shutdown`
// stops the connection at once; what is still queued goes on the next start).
const unsent = new Set<string>();
while (left > 0 || unsent.size > 0) {
  const event = await bot.nextEvent();
  if (event === undefined) break; // shut down
  if (event.kind === "messageReceived" && left > 0) {
    const m = event.message;
    if (m !== undefined && m.status === "received" && m.group === undefined) {
      const reply = await bot.sendMessage(m.conversation, m.text);
      unsent.add(reply.id);
      reply.free();
      left -= 1;
    }
  } else if ((event.kind === "messageSent" || event.kind === "sendFailed") && event.messageId !== undefined) {
    unsent.delete(event.messageId);
  }
  event.free();
}
await bot.shutdown();
