// A tiny static file server for the web demo: serves the demo page
// (/bindings/wasm/demo/) and the generated web package (/bindings/generated/wasm/web/)
// from the repository root, nothing else, with the right MIME types (`application/wasm`
// lets browsers compile the module while it downloads).
//
//   node bindings/wasm/tests/e2e/serve.mjs [port] [host]     what scripts/web-demo.sh runs
//   import { serve } from './serve.mjs'                       what the e2e test does
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
const SERVED = ['/bindings/wasm/demo/', '/bindings/generated/wasm/web/'];
export const DEMO_PATH = '/bindings/wasm/demo/';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.ts': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

function send(res, status, text) {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(`${text}\n`);
}

async function handle(req, res) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, 405, 'method not allowed');
  }
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    return send(res, 400, 'bad path');
  }
  if (pathname === '/') {
    res.writeHead(302, { location: DEMO_PATH });
    return res.end();
  }
  // posix normalize removes `..`; the prefix check keeps requests inside the two trees.
  const clean = path.posix.normalize(pathname);
  if (!SERVED.some((p) => clean.startsWith(p) || `${clean}/` === p)) {
    return send(res, 404, 'not found');
  }
  let file = path.join(ROOT, clean);
  try {
    let s = await stat(file);
    if (s.isDirectory()) {
      if (!clean.endsWith('/')) {
        res.writeHead(301, { location: `${clean}/` });
        return res.end();
      }
      file = path.join(file, 'index.html');
      s = await stat(file);
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'content-length': s.size,
      'cache-control': 'no-store',
    });
    if (req.method === 'HEAD') return res.end();
    createReadStream(file).pipe(res);
  } catch {
    send(res, 404, 'not found');
  }
}

/** Starts the server; resolves to `{ url, close() }` once it listens. Port 0 picks a free one. */
export function serve(port = 0, host = '127.0.0.1') {
  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => send(res, 500, 'error'));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: p } = server.address();
      resolve({
        url: `http://${host}:${p}`,
        close: () => new Promise((done) => server.close(done)),
        server,
      });
    });
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { url } = await serve(Number(process.argv[2] ?? 8000), process.argv[3] ?? '127.0.0.1');
  console.log(`serving the demo at ${url}${DEMO_PATH}`);
}
