// Web Push end to end in headless Chromium: the relay's push reaches the demo's service
// worker (bindings/wasm/demo/sw.js), which decrypts the waiting message and shows it.
//
// A browser's push service cannot be reached from CI, so this test is one: an HTTPS
// server on 127.0.0.1 that takes the relay's Web Push request, checks its VAPID
// signature (RFC 8292), decrypts its body with the subscription's private key (RFC 8291,
// as the browser would), and hands the plaintext to the service worker as a real push
// event (the DevTools protocol's `ServiceWorker.deliverPushMessage`). The subscription's
// keys are made here too: the page's `pushManager.subscribe` returns them.
//
// The test starts its own relay (the one from scripts/wasm.sh has no push configured)
// with a VAPID key, the test CA among `extra_root_certs`, and `allow_insecure_endpoints`
// (the endpoint is on loopback). The page creates its account, adds the CLI, turns
// notifications on (the subscription goes to the relay), and is closed; the CLI sends;
// the relay pushes; the worker's notification shows the CLI's name and the text. The
// page, opened again, shows that message once: the worker committed and acknowledged it.
//
// Environment (scripts/wasm.sh sets it): SOTTO_RELAY_BIN (the sotto-relay binary),
// SOTTO_CLI (the sotto binary), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

import { DEMO_PATH, serve } from './serve.mjs';

const RELAY_BIN = process.env.SOTTO_RELAY_BIN;
const CLI = process.env.SOTTO_CLI;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const STEP_MS = Number(process.env.SOTTO_TEST_TIMEOUT_MS ?? 30000);
const RELAY_PUSH = '{"sotto":1}';

const run = promisify(execFile);
const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** A CA and a certificate for 127.0.0.1 signed by it (PEM files in `dir`). */
async function makeCertificates(dir) {
  const f = (name) => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=sotto e2e CA', '-keyout', f('ca.key'), '-out', f('ca.pem')]);
  await run('openssl', ['req', '-new', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', f('push.key'), '-out', f('push.csr')]);
  writeFileSync(f('ext'), 'basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await run('openssl', [
    'x509', '-req', '-in', f('push.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', f('ext'), '-out', f('push.pem'),
  ]);
  return { ca: f('ca.pem'), cert: readFileSync(f('push.pem')), key: readFileSync(f('push.key')) };
}

/** Checks `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292); returns the JWT's claims. */
function checkVapid(header, vapidPublic, audience) {
  const m = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(header ?? '');
  assert.ok(m, `Authorization is not a VAPID header: ${header}`);
  const [, jwt, k] = m;
  assert.equal(k, vapidPublic, 'the VAPID key is the relay\'s');
  const [h, c, s] = jwt.split('.');
  assert.deepEqual(JSON.parse(Buffer.from(h, 'base64url')), { typ: 'JWT', alg: 'ES256' });
  const raw = Buffer.from(k, 'base64url');
  const key = crypto.createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: b64url(raw.subarray(1, 33)), y: b64url(raw.subarray(33)) },
    format: 'jwk',
  });
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${c}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
  assert.ok(ok, 'the VAPID JWT signature verifies');
  const claims = JSON.parse(Buffer.from(c, 'base64url'));
  assert.equal(claims.aud, audience);
  assert.ok(claims.exp > Date.now() / 1000 && claims.exp <= Date.now() / 1000 + 86400, `exp ${claims.exp}`);
  assert.match(claims.sub, /^mailto:/);
  return claims;
}

/** Decrypts an `aes128gcm` Web Push body (RFC 8291 over RFC 8188, one record). */
function decryptPush(body, ua, auth) {
  const salt = body.subarray(0, 16);
  const rs = body.readUInt32BE(16);
  const idlen = body[20];
  assert.equal(idlen, 65, 'the key id is the sender\'s uncompressed P-256 key');
  const asPublic = body.subarray(21, 21 + idlen);
  const ciphertext = body.subarray(21 + idlen);
  assert.ok(ciphertext.length <= rs, 'one record');
  const ecdh = ua.computeSecret(asPublic);
  const keyInfo = Buffer.concat([Buffer.from('WebPush: info\0'), ua.getPublicKey(), asPublic]);
  const ikm = Buffer.from(crypto.hkdfSync('sha256', ecdh, auth, keyInfo, 32));
  const cek = Buffer.from(crypto.hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: aes128gcm\0'), 16));
  const nonce = Buffer.from(crypto.hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: nonce\0'), 12));
  const decipher = crypto.createDecipheriv('aes-128-gcm', cek, nonce);
  decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
  const padded = Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end--;
  assert.equal(padded[end], 2, 'the last record ends with the delimiter 0x02');
  return padded.subarray(0, end).toString('utf8');
}

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts sotto-relay with `config`; resolves to its URL once /healthz answers. */
async function startRelay(dir, config) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  writeFileSync(path.join(dir, 'relay.toml'), config);
  const log = [];
  const child = spawn(RELAY_BIN, [
    '--config', path.join(dir, 'relay.toml'), '--listen', `127.0.0.1:${port}`, '--public-url', url,
    '--data-dir', path.join(dir, 'relay'),
  ]);
  child.stdout.on('data', (d) => log.push(d.toString()));
  child.stderr.on('data', (d) => log.push(d.toString()));
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`the relay exited:\n${log.join('')}`);
    const up = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (up) return { url, child, log };
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`the relay did not answer /healthz:\n${log.join('')}`);
}

test('a Web Push wakes the service worker, which shows the decrypted message', { timeout: 5 * 60 * 1000 }, async () => {
  assert.ok(RELAY_BIN, 'SOTTO_RELAY_BIN is not set (the path to sotto-relay)');
  assert.ok(CLI, 'SOTTO_CLI is not set (the path to the sotto binary)');
  const home = mkdtempSync(path.join(tmpdir(), 'sotto-push-e2e-'));
  let step = 'start';
  const logs = [];
  let relay = null;
  let browser = null;
  let site = null;
  let pushService = null;
  try {
    step = 'the push service starts';
    const tls = await makeCertificates(home);
    // The subscription's keys, which the browser would make: a P-256 pair and 16 secret bytes.
    const ua = crypto.createECDH('prime256v1');
    ua.generateKeys();
    const auth = crypto.randomBytes(16);
    // What the relay sent (checked, decrypted); each is handed to the worker as it comes.
    const pushes = [];
    let deliver = null;
    const serviceErrors = [];
    pushService = https.createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        try {
          assert.equal(req.method, 'POST');
          assert.equal(req.url, '/push/e2e');
          assert.equal(req.headers['content-encoding'], 'aes128gcm');
          assert.ok(Number(req.headers.ttl) > 0, `TTL ${req.headers.ttl}`);
          checkVapid(req.headers.authorization, vapidPublic, `https://127.0.0.1:${pushService.address().port}`);
          const text = decryptPush(Buffer.concat(chunks), ua, auth);
          pushes.push(text);
          res.writeHead(201).end();
          deliver?.(text).catch((e) => serviceErrors.push(e));
        } catch (e) {
          serviceErrors.push(e);
          res.writeHead(400).end();
        }
      });
    });
    await new Promise((resolve) => pushService.listen(0, '127.0.0.1', resolve));
    const endpoint = `https://127.0.0.1:${pushService.address().port}/push/e2e`;
    const subscription = { endpoint, expirationTime: null, keys: { p256dh: b64url(ua.getPublicKey()), auth: b64url(auth) } };

    step = 'the relay starts with Web Push';
    const vapid = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const vapidFile = path.join(home, 'vapid.pem');
    writeFileSync(vapidFile, vapid.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const jwk = vapid.publicKey.export({ format: 'jwk' });
    const vapidPublic = b64url(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]));
    relay = await startRelay(
      home,
      [
        '[limits]',
        'addr_rate_per_second = 1000000',
        'addr_rate_burst = 1000000',
        'challenge_rate_per_addr = 1000000',
        'challenge_burst_per_addr = 1000000',
        '[push]',
        'min_interval_secs = 1',
        `extra_root_certs = [${JSON.stringify(tls.ca)}]`,
        '[push.webpush]',
        `vapid_private_key_file = ${JSON.stringify(vapidFile)}`,
        'subject = "mailto:e2e@example.org"',
        'allow_insecure_endpoints = true',
        '',
      ].join('\n'),
    );
    const sotto = async (...args) => {
      const { stdout } = await run(CLI, ['--data-dir', path.join(home, 'cli'), ...args], { timeout: 90000 });
      return stdout;
    };

    step = 'the CLI creates its account';
    await sotto('init', '--relay', relay.url);
    const cliLink = (await sotto('whoami', '--link')).trim();

    step = 'the browser starts';
    site = await serve();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    const context = await browser.newContext();
    await context.grantPermissions(['notifications'], { origin: site.url });
    // The push service's subscription, as `pushManager.subscribe` would return it.
    await context.addInitScript((sub) => {
      if (self.PushManager) {
        PushManager.prototype.subscribe = async () => ({ ...sub, toJSON: () => sub });
      }
    }, subscription);
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('console', (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`[pageerror] ${e.stack ?? e}`));
    context.on('serviceworker', (w) => logs.push(`[serviceworker] ${w.url()}`));
    const byId = (id) => page.locator(`[data-testid="${id}"]`);

    // The worker's registration, as DevTools sees it (to deliver pushes to).
    const cdp = await context.newCDPSession(page);
    const scope = `${site.url}${DEMO_PATH}`;
    let registrationId = null;
    cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
      for (const r of registrations) {
        if (r.scopeURL === scope && !r.isDeleted) registrationId = r.registrationId;
      }
    });
    cdp.on('ServiceWorker.workerErrorReported', ({ errorMessage }) => logs.push(`[serviceworker error] ${JSON.stringify(errorMessage)}`));
    await cdp.send('ServiceWorker.enable');
    deliver = async (data) => {
      assert.ok(registrationId, 'the service worker is registered');
      await cdp.send('ServiceWorker.deliverPushMessage', { origin: site.url, registrationId, data });
    };

    const demo = `${site.url}${DEMO_PATH}?relay=${encodeURIComponent(relay.url)}&db=push&vapid=${vapidPublic}`;
    step = 'the page creates its account';
    await page.goto(demo);
    await page.locator('body[data-state="welcome"]').waitFor();
    await byId('create-account').click();
    await page.locator('body[data-state="ready"]').waitFor();
    const pageLink = (await byId('contact-link').textContent()).trim();

    step = 'the page and the CLI add each other';
    await sotto('add', pageLink);
    await byId('contact-input').fill(cliLink);
    await byId('add-contact').click();
    await page.waitForFunction(() => /\d/.test(document.querySelector('[data-testid="safety-number"]').textContent));
    // The name the notification shows.
    assert.match(await sotto('profile', 'Terminal'), /profile name set to "Terminal"/);
    await byId('contact').filter({ hasText: 'Terminal' }).waitFor();

    step = 'the page turns notifications on';
    await page.evaluate(() => navigator.serviceWorker.ready.then(() => true));
    await byId('notifications').click();
    await byId('status').filter({ hasText: 'Notifications are on' }).waitFor();
    assert.ok(registrationId, 'DevTools reported the worker\'s registration');

    step = 'the page is closed and the CLI sends';
    await page.goto('about:blank');
    const text = 'hello while the page is closed';
    assert.match(await sotto('send', pageLink, text), /sent/);

    step = 'the worker shows the message';
    // A page of the origin outside the worker's scope reads the shown notifications.
    const probe = await context.newPage();
    await probe.goto(`${site.url}/bindings/generated/wasm/web/sotto_wasm.js`);
    let shown = [];
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline && !shown.some((n) => n.body === text)) {
      assert.deepEqual(serviceErrors, [], 'the push service took every push');
      shown = await probe.evaluate(async (s) => {
        const r = await navigator.serviceWorker.getRegistration(s);
        return r ? (await r.getNotifications()).map((n) => ({ title: n.title, body: n.body })) : [];
      }, scope);
      if (!shown.some((n) => n.body === text)) await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual(serviceErrors, [], 'the push service took every push');
    assert.deepEqual(
      shown.filter((n) => n.body === text),
      [{ title: 'Terminal', body: text }],
      `the notifications shown: ${JSON.stringify(shown)}; pushes: ${JSON.stringify(pushes)}`,
    );
    assert.ok(pushes.length >= 1 && pushes.every((p) => p === RELAY_PUSH), `the pushes carry nothing: ${JSON.stringify(pushes)}`);
    await probe.close();

    step = 'the page opens again and shows the message once';
    await page.goto(demo);
    await page.locator('body[data-state="ready"]').waitFor();
    await page.locator('li[data-direction="in"]', { hasText: text }).waitFor();
    assert.equal(await page.locator('li[data-direction="in"]', { hasText: text }).count(), 1);
  } catch (e) {
    console.error(`failed at: ${step}\nbrowser console:\n${logs.join('\n') || '(empty)'}`);
    if (relay) console.error(`relay log:\n${relay.log.join('').split('\n').slice(-30).join('\n')}`);
    throw new Error(`web push e2e failed at "${step}": ${e.message}`, { cause: e });
  } finally {
    await browser?.close();
    await site?.close();
    pushService?.close();
    relay?.child.kill('SIGTERM');
    rmSync(home, { recursive: true, force: true });
  }
});
