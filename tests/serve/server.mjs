// Shared by the `dsv3 serve` end-to-end tests: the tiny test model, a server child process
// on a free loopback port, /metrics parsing, and bounded waits. Every wait has a deadline;
// a server that does not stop on SIGTERM is killed and the test fails.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const DSV3_BIN = process.env.DSV3_BIN ?? path.join(here, '../../build/release/dsv3');
// The share of the heavy loads (the 32-client burst) to run: 1 unless told less.
export const SCALE = Number(process.env.DSV3_SERVE_TEST_SCALE ?? '1');
// What every deadline is multiplied by: ctest passes 10 for the sanitizer build.
export const SLOW = Number(process.env.DSV3_SERVE_TEST_SLOW ?? '1');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The model directory: DSV3_SERVE_MODEL (ctest's fixture), else one made here once.
let modelDir = process.env.DSV3_SERVE_MODEL;
export function testModel() {
  if (modelDir && existsSync(path.join(modelDir, '.complete'))) return modelDir;
  modelDir ??= path.join(mkdtempSync(path.join(tmpdir(), 'dsv3-serve-test-')), 'model');
  execFileSync(path.join(here, 'make_model.sh'), [modelDir], {
    env: { ...process.env, DSV3_BIN },
    stdio: ['ignore', 'ignore', 'inherit'],
    timeout: 120_000,
  });
  return modelDir;
}

// Rejects after ms with a message naming what was awaited.
export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// One HTTP request on a fresh connection (closed after it), so no idle keep-alive connection
// is left for the server to wait out when it stops. Resolves {status, headers, text}.
export function request(url, { method = 'GET', headers = {}, body, timeoutMs = 30_000 * SLOW } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false, timeout: timeoutMs }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(parts).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms: ${method} ${url}`)));
    req.on('error', reject);
    req.end(body);
  });
}

// POSTs a JSON body and resolves once the response's first body bytes arrived:
// {status, first (a string), close()}; close() drops the connection (a client gone away).
export function openStream(url, body, timeoutMs = 30_000 * SLOW) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent: false, timeout: timeoutMs,
      headers: { 'Content-Type': 'application/json' } });
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms: POST ${url}`)));
    req.on('error', reject);
    req.on('response', (res) => {
      res.once('data', (d) => {
        req.removeAllListeners('error');
        req.on('error', () => {});
        resolve({ status: res.statusCode, first: d.toString('utf8'), close: () => req.destroy() });
      });
    });
    req.end(JSON.stringify(body));
  });
}

// Starts `dsv3 serve --model <test model> --port PORT ...args` (PORT 0: any free one);
// resolves once /health is 200.
export async function startServer(args = [], { model, port = 0 } = {}) {
  return startDsv3(['serve', '--model', model ?? testModel(), '--port', String(port), '--served-model-name', 'model', ...args]);
}

// Starts `dsv3 router --port 0 ...args`; resolves once its /health is 200 (a healthy instance
// of each role).
export async function startRouter(args = []) {
  return startDsv3(['router', '--port', '0', ...args]);
}

// A free loopback port (closed again: a server started right after can bind it).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startDsv3(argv) {
  const what = `dsv3 ${argv[0]}`;
  const proc = spawn(DSV3_BIN, argv, {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (d) => {
        log += d;
        const m = /listening on (http:\/\/\S+)/.exec(log);
        if (m) resolve(m[1]);
      });
      exited.then(({ code, signal }) => reject(new Error(`${what} exited (${code ?? signal}) before listening:\n${log}`)));
    }),
    30_000 * SLOW,
    `${what} printing "listening on"`,
  );
  const deadline = Date.now() + 60_000 * SLOW;
  for (;;) {
    const r = await request(`${url}/health`, { timeoutMs: 5000 }).catch(() => null);
    if (r?.status === 200) break;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`/health never answered 200:\n${log}`);
    }
    await sleep(50);
  }
  // Keep-alive connections for the clients of this server, closed before it is stopped: the
  // server's shutdown waits for open connections (up to httplib's 5 s keep-alive timeout).
  const agent = new http.Agent({ keepAlive: true });
  return {
    url,
    proc,
    exited,
    agent,
    log: () => log,
    // SIGTERM, then the exit code (0 expected); SIGKILL and throw past the deadline.
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return (await exited).code;
      agent.destroy();
      proc.kill('SIGTERM');
      try {
        const { code, signal } = await withTimeout(exited, 40_000 * SLOW, `${what} exiting on SIGTERM`);
        if (code !== 0) throw new Error(`${what} exited with ${code ?? signal}:\n${log.slice(-4000)}`);
        return code;
      } catch (e) {
        proc.kill('SIGKILL');
        throw e;
      }
    },
  };
}

// GET /metrics → {name: value} for the unlabelled samples.
export async function metrics(url, headers = {}) {
  const r = await request(`${url}/metrics`, { headers, timeoutMs: 10_000 * SLOW });
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  const out = {};
  for (const line of r.text.split('\n')) {
    const m = /^([a-z0-9_]+) (\S+)$/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

// Polls /metrics until pred(metrics) holds; throws with the last values after ms.
export async function waitMetrics(url, pred, ms, what, headers = {}) {
  const deadline = Date.now() + ms;
  let m;
  for (;;) {
    m = await metrics(url, headers);
    if (pred(m)) return m;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; metrics: ${JSON.stringify(m)}`);
    }
    await sleep(50);
  }
}
