// Prefill/decode disaggregation end to end (docs/serve.md "Deployment"): `dsv3 router` in
// front of `dsv3 serve --role prefill` and `--role decode` instances, on loopback.
//  * what a client gets through the router equals what one `dsv3 serve` gives (greedy and
//    seeded sampling, n > 1, logprobs, several prompts, a prompt longer than a prefill chunk,
//    streamed and not, concurrent requests, the official OpenAI client);
//  * a damaged transfer is refused by the decode instance (422) and sent once more by the
//    prefill instance; damaged twice, the client gets a 502 naming the refusal;
//  * a decode instance killed or frozen mid-stream gives the client an error event within the
//    router's --timeout, the router stops choosing it, and takes it back once /health is 200;
//  * a prefill instance gone gives a 5xx at once, not a hang.
// Every wait is bounded; every process is stopped in after().
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';

import { SLOW, freePort, metrics, request, sleep, startRouter, startServer, withTimeout } from './server.mjs';

const T = (s) => ({ timeout: s * 1000 * SLOW });
const ONE = ['--threads', '1', '--no-request-log'];
const procs = [];
const keep = (p) => (procs.push(p), p);
let single, prefill, decode, router;

before(async () => {
  [single, prefill, decode] = await Promise.all([
    startServer(ONE),
    startServer([...ONE, '--role', 'prefill']),
    startServer([...ONE, '--role', 'decode']),
  ]);
  procs.push(single, prefill, decode);
  router = keep(await startRouter(['--prefill', prefill.url, '--decode', decode.url, '--health-interval', '0.2']));
});

after(async () => {
  for (const p of procs.reverse()) {
    if (p.proc.exitCode !== null || p.proc.signalCode !== null) continue;
    try {
      await p.stop();
    } catch (e) {
      process.stderr.write(`${e.message}\n`);
    }
  }
});

const post = (url, path, body, headers = {}) =>
  request(`${url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
  });

// A response with what differs between two servers by design (ids, timestamps) taken out.
function canon(text, stream) {
  // cached_tokens too: which of two concurrent requests finds the other's prefix is timing
  // (the prefix-cache test below checks it sequentially).
  const strip = (j) => {
    delete j.id;
    delete j.created;
    if (j.usage?.prompt_tokens_details) delete j.usage.prompt_tokens_details.cached_tokens;
    return j;
  };
  if (!stream) return strip(JSON.parse(text));
  // Streamed: chunks per choice in order (how the choices of n > 1 interleave is timing),
  // then the chunks without a choice (usage), then whether [DONE] came.
  const out = { choices: {}, other: [], done: false };
  for (const e of text.split('\n\n').filter((x) => x.startsWith('data: '))) {
    if (e === 'data: [DONE]') {
      out.done = true;
      continue;
    }
    const j = strip(JSON.parse(e.slice(6)));
    if (j.choices.length === 0) out.other.push(j);
    for (const c of j.choices) (out.choices[c.index] ??= []).push({ ...j, choices: [c] });
  }
  return out;
}

const longIds = Array.from({ length: 300 }, (_, i) => 3 + ((i * 37) % 200));
const bodies = [
  ['/v1/completions', { prompt: 'int main(', max_tokens: 16, temperature: 0, logprobs: 2 }],
  ['/v1/completions', { prompt: [[5, 6, 7, 8], [9, 10]], max_tokens: 8, temperature: 0.8, seed: 5, n: 2 }],
  ['/v1/completions', { prompt: longIds, max_tokens: 6, temperature: 0 }],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'hello there' }], max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 3 }],
  ['/v1/chat/completions', { messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'why?' }], max_tokens: 10, temperature: 0.7, seed: 3, stop: ['e'] }],
];

test('disaggregated output equals one server, streamed and not, concurrently', T(120), async () => {
  const cases = [];
  for (const [path, body] of bodies)
    for (const stream of [false, true]) cases.push([path, { ...body, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }, stream]);
  const want = [];
  for (const [path, body, stream] of cases) {
    const r = await post(single.url, path, body);
    assert.equal(r.status, 200, r.text.slice(0, 300));
    want.push(canon(r.text, stream));
  }
  // All at once through the router: the decode instance batches them.
  const got = await Promise.all(cases.map(([path, body]) => post(router.url, path, body)));
  got.forEach((r, i) => {
    assert.equal(r.status, 200, `case ${i}: ${r.text.slice(0, 300)}`);
    assert.deepEqual(canon(r.text, cases[i][2]), want[i], `case ${i}: ${JSON.stringify(cases[i][1])}`);
  });
});

test("the prefill instance's prefix cache shows in the usage", T(60), async () => {
  const ids = Array.from({ length: 200 }, (_, i) => 5 + ((i * 11) % 150));
  const body = { prompt: ids, max_tokens: 3, temperature: 0 };
  const a = JSON.parse((await post(router.url, '/v1/completions', body)).text);
  const b = JSON.parse((await post(router.url, '/v1/completions', body)).text);
  assert.equal(a.usage.prompt_tokens, 200);
  assert.equal(b.usage.prompt_tokens_details.cached_tokens, 192, 'the 12 whole blocks of 16 before the last token');
  assert.equal(b.choices[0].text, a.choices[0].text);
});

test('the official OpenAI client works through the router', T(60), async () => {
  const mk = (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 * SLOW });
  const ask = async (c) => {
    const s = await c.chat.completions.create({ model: 'model', messages: [{ role: 'user', content: 'count' }], max_tokens: 10, temperature: 0, stream: true });
    let text = '';
    let finish = null;
    for await (const ch of s) {
      text += ch.choices[0]?.delta?.content ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    return { text, finish };
  };
  assert.deepEqual(await ask(mk(router.url)), await ask(mk(single.url)));
  const models = await mk(router.url).models.list();
  assert.equal(models.data[0].id, 'model');
});

test('client errors pass through the router as the instance answered them', T(30), async () => {
  const r = await post(router.url, '/v1/completions', { prompt: 'x', max_tokens: -3 });
  assert.equal(r.status, 400, r.text);
  assert.equal(JSON.parse(r.text).error.param, 'max_tokens');
  const bad = await post(router.url, '/v1/completions', '{not json');
  assert.equal(bad.status, 400);
  const stream = await post(router.url, '/v1/completions', { prompt: 'x', stream: 'yes' });
  assert.equal(stream.status, 400);
  // A client's text in an instance's error (here the model name) must not read as the
  // instance's own verdict: the decode instance stays chosen.
  const trick = await post(router.url, '/v1/completions', { model: 'decode_unreachable', prompt: 'x' });
  assert.equal(trick.status, 404, trick.text);
  assert.equal((await request(`${router.url}/health`)).status, 200);
  assert.equal((await post(router.url, '/v1/completions', { prompt: 'x', max_tokens: 2 })).status, 200);
});

// A stand-in decode instance that keeps what a prefill instance sends it: GET
// /v1/disagg/info names a transfer port whose frames (serve/kv_socket.h) are kept.
function captureServer() {
  return new Promise((resolve) => {
    const got = [];
    const tcp = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length < 16) return;
        const n = Number(buf.readBigUInt64LE(8));
        if (buf.length < 16 + n) return;
        got.push({ magic: buf.subarray(0, 8).toString('latin1'), body: buf.subarray(16, 16 + n) });
        const msg = Buffer.from('{}');
        const h = Buffer.alloc(8);
        h.writeUInt32LE(200, 0);
        h.writeUInt32LE(msg.length, 4);
        sock.end(Buffer.concat([h, msg]));
      });
    });
    tcp.listen(0, '127.0.0.1', () => {
      const srv = http.createServer((req, res) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ transfer_port: tcp.address().port }));
      });
      srv.listen(0, '127.0.0.1', () =>
        resolve({ close: () => (srv.close(), tcp.close()), got, url: `http://127.0.0.1:${srv.address().port}` }));
    });
  });
}

// One frame to a transfer port → {status, message}.
function sendFrame(port, body, magic = 'DSV3KVP1') {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => (buf = Buffer.concat([buf, d])));
    sock.on('end', () => {
      if (buf.length < 8) return reject(new Error(`short reply (${buf.length} bytes)`));
      resolve({ status: buf.readUInt32LE(0), message: buf.subarray(8, 8 + buf.readUInt32LE(4)).toString() });
    });
    sock.on('error', reject);
    const h = Buffer.alloc(16);
    h.write(magic, 0, 'latin1');
    h.writeBigUInt64LE(BigInt(body.length), 8);
    sock.end(Buffer.concat([h, body]));
  });
}

test('the decode instance refuses damaged, foreign and unknown transfers', T(60), async () => {
  const cap = await captureServer();
  try {
    const r = await post(prefill.url, '/v1/disagg/prefill', { endpoint: 'completions', request: { prompt: 'abc', max_tokens: 4, temperature: 0 }, transfer_id: 'kv-capture-1', decode_url: cap.url });
    assert.equal(r.status, 200, r.text);
    const info = JSON.parse(r.text);
    assert.equal(info.attempts, 1);
    assert.equal(cap.got.length, 1);
    const blob = cap.got[0].body;
    assert.equal(cap.got[0].magic, 'DSV3KVP1');
    assert.equal(blob.length, info.bytes);
    assert.equal(blob.subarray(0, 8).toString('latin1'), 'DSV3KVT\n');

    const dinfo = JSON.parse((await request(`${decode.url}/v1/disagg/info`)).text);
    assert.ok(dinfo.transfer_port > 0);
    assert.equal(dinfo.cache_dtype, 'bf16');
    // A connection that never sends holds one worker of the transfer port, not the port.
    const idle = net.connect(dinfo.transfer_port, '127.0.0.1');
    await new Promise((r) => idle.once('connect', r));
    const t0 = Date.now();
    const through = await post(router.url, '/v1/completions', { prompt: 'while one sits idle', max_tokens: 2 });
    assert.equal(through.status, 200, through.text);
    assert.ok(Date.now() - t0 < 3000 * SLOW, `took ${Date.now() - t0} ms`);
    idle.destroy();
    // Both ways in: the transfer port and POST /v1/disagg/kv.
    const viaHttp = (b, id = 'kv-capture-1') => request(`${decode.url}/v1/disagg/kv`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', 'X-Dsv3-Transfer-Id': id }, body: b });
    for (const pos of [20, Math.floor(blob.length / 2), blob.length - 5]) {
      const bad = Buffer.from(blob);
      bad[pos] ^= 0x41;
      const a = await viaHttp(bad);
      assert.equal(a.status, 422, a.text);
      assert.equal(JSON.parse(a.text).error.code, 'transfer_damaged');
      const b = await sendFrame(dinfo.transfer_port, bad);
      assert.equal(b.status, 422, b.message);
      assert.match(b.message, /checksum/);
    }
    assert.equal((await viaHttp(Buffer.from('garbage'))).status, 400);
    assert.equal((await viaHttp(blob.subarray(0, blob.length - 100))).status, 422);
    assert.equal((await sendFrame(dinfo.transfer_port, Buffer.from('garbage'))).status, 400);
    assert.equal((await sendFrame(dinfo.transfer_port, blob, 'NOTAKVP1')).status, 400);
    // A mixed instance has no /v1/disagg/kv.
    assert.equal((await request(`${single.url}/v1/disagg/kv`, { method: 'POST', body: blob })).status, 404);

    // The intact transfer is taken once; the generation that names it is served from it.
    const ok = await sendFrame(dinfo.transfer_port, blob);
    assert.equal(ok.status, 200, ok.message);
    assert.equal((await viaHttp(blob)).status, 409, 'a second transfer with the same id waiting is refused');
    const body = { prompt: 'abc', max_tokens: 4, temperature: 0 };
    const g = await post(decode.url, '/v1/completions', body, { 'X-Dsv3-Transfer-Id': 'kv-capture-1' });
    assert.equal(g.status, 200, g.text);
    assert.deepEqual(canon(g.text, false).choices, canon((await post(single.url, '/v1/completions', body)).text, false).choices);
    const again = await post(decode.url, '/v1/completions', body, { 'X-Dsv3-Transfer-Id': 'kv-capture-1' });
    assert.equal(again.status, 409, 'a transfer is used once');
    const dm = await metrics(decode.url);
    assert.ok(dm.dsv3_kv_transfers_refused_total >= 9, JSON.stringify(dm));  // the damaged and garbage above
    assert.ok(dm.dsv3_kv_transfers_claimed_total >= 1);
    // A transfer of another prompt than the request's.
    await post(prefill.url, '/v1/disagg/prefill', { endpoint: 'completions', request: { prompt: 'abd' }, transfer_id: 'kv-capture-2', decode_url: cap.url });
    assert.equal((await viaHttp(cap.got[1].body, 'kv-capture-2')).status, 200);
    const other = await post(decode.url, '/v1/completions', body, { 'X-Dsv3-Transfer-Id': 'kv-capture-2' });
    assert.equal(other.status, 409, other.text);
    assert.equal(JSON.parse(other.text).error.code, 'transfer_mismatch');
    // A prefill told to push to something that is not a decode instance.
    const wrong = await post(prefill.url, '/v1/disagg/prefill', { endpoint: 'completions', request: { prompt: 'abc' }, transfer_id: 'kv-3', decode_url: single.url });
    assert.equal(wrong.status, 502, wrong.text);
    assert.match(JSON.parse(wrong.text).error.message, /--role decode/);
  } finally {
    cap.close();
  }
});

test('a non-streamed client that leaves cancels its request on the decode instance', T(60), async () => {
  const before = (await metrics(decode.url)).dsv3_requests_cancelled_total ?? 0;
  const req = http.request(`${router.url}/v1/completions`, { method: 'POST', agent: false, headers: { 'Content-Type': 'application/json' } });
  req.on('error', () => {});
  // n = 8 long answers: a few seconds of decoding for the tiny model, cut short.
  req.end(JSON.stringify({ prompt: 'a long answer nobody reads', max_tokens: 3500, n: 8, temperature: 0, ignore_eos: true }));
  await sleep(150);
  req.destroy();
  const deadline = Date.now() + 10_000 * SLOW;
  for (;;) {
    const m = await metrics(decode.url);
    if ((m.dsv3_requests_cancelled_total ?? 0) > before && m.dsv3_requests_running === 0) break;
    if (Date.now() > deadline) throw new Error(`the decode instance kept generating: ${JSON.stringify(m)}`);
    await sleep(100);
  }
});

test('a transfer damaged once is resent; damaged twice, the client gets a 502', T(90), async () => {
  const flaky = keep(await startServer([...ONE, '--role', 'prefill', '--fault-corrupt-transfers', '3']));
  const r2 = keep(await startRouter(['--prefill', flaky.url, '--decode', decode.url, '--health-interval', '0.2']));
  const body = { prompt: 'the same prompt', max_tokens: 8, temperature: 0 };
  const first = await post(r2.url, '/v1/completions', body);  // damages 1 and 2: refused
  assert.equal(first.status, 502, first.text);
  const e = JSON.parse(first.text).error;
  assert.equal(e.code, 'transfer_refused');
  assert.match(e.message, /after 2 attempts/);
  assert.match(e.message, /checksum/);
  const second = await post(r2.url, '/v1/completions', body);  // damages 3, then sends intact
  assert.equal(second.status, 200, second.text);
  assert.deepEqual(canon(second.text, false).choices, canon((await post(single.url, '/v1/completions', body)).text, false).choices);
  assert.match(flaky.log(), /attempts|prefill kv-/);
  const fm = await metrics(flaky.url);
  assert.equal(fm.dsv3_kv_transfers_sent_total, 1);
  assert.equal(fm.dsv3_kv_transfers_failed_total, 1);
  assert.equal(fm.dsv3_kv_transfers_resent_total, 1, 'the request that succeeded was sent twice');
  await r2.stop();
  await flaky.stop();
});

// Opens a stream through `url` and resolves once its first bytes came: {first, rest}, rest
// resolving to the whole text when the stream ends (or the connection breaks).
function openStream(url, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method: 'POST', agent: false, headers: { 'Content-Type': 'application/json' } });
    req.on('error', reject);
    req.on('response', (res) => {
      let text = '';
      let first = true;
      const rest = new Promise((done) => {
        res.on('end', () => done(text));
        res.on('error', () => done(text));
        res.on('close', () => done(text));
      });
      res.setEncoding('utf8');
      res.on('data', (d) => {
        text += d;
        if (first) {
          first = false;
          resolve({ status: res.statusCode, rest, close: () => req.destroy() });
        }
      });
    });
    req.end(JSON.stringify(body));
  });
}

async function waitHealth(url, status, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await request(`${url}/health`, { timeoutMs: 2000 }).catch(() => null);
    if (r?.status === status) return;
    if (Date.now() > deadline) throw new Error(`${url}/health did not answer ${status} within ${ms} ms (last ${r?.status})`);
    await sleep(100);
  }
}

const longStream = { prompt: 'go', max_tokens: 3500, temperature: 0, ignore_eos: true, stream: true };

test('a decode instance killed mid-stream: an error event, taken out, taken back', T(120), async () => {
  const port = await freePort();
  let dec = keep(await startServer([...ONE, '--role', 'decode'], { port }));
  const r3 = keep(await startRouter(['--prefill', prefill.url, '--decode', dec.url, '--health-interval', '0.2', '--timeout', '5']));
  const s = await openStream(r3.url, '/v1/completions', longStream);
  assert.equal(s.status, 200);
  const t0 = Date.now();
  dec.proc.kill('SIGKILL');
  const text = await withTimeout(s.rest, 15_000 * SLOW, 'the stream ending after its decode instance died');
  assert.ok(Date.now() - t0 < 15_000 * SLOW);
  assert.match(text, /"error"/, 'an error event in the stream');
  assert.match(text, /decode_failed/);
  assert.doesNotMatch(text, /\[DONE\]/);
  await waitHealth(r3.url, 503, 5000 * SLOW);
  const refused = await post(r3.url, '/v1/completions', { prompt: 'x', max_tokens: 2 });
  assert.equal(refused.status, 503, refused.text);
  assert.equal(JSON.parse(refused.text).error.code, 'no_instance');
  // A new decode instance on the same address: chosen again once its /health is 200.
  dec = keep(await startServer([...ONE, '--role', 'decode'], { port }));
  await waitHealth(r3.url, 200, 10_000 * SLOW);
  const ok = await post(r3.url, '/v1/completions', { prompt: 'x', max_tokens: 2, temperature: 0 });
  assert.equal(ok.status, 200, ok.text);
  assert.match(await request(`${r3.url}/metrics`).then((m) => m.text), /dsv3_router_instance_failures_total\{role="decode",url="[^"]+"\} [1-9]/);
  await r3.stop();
  await dec.stop();
});

test('a frozen decode instance: the client gets an error within --timeout', T(120), async () => {
  const dec = keep(await startServer([...ONE, '--role', 'decode']));
  const r4 = keep(await startRouter(['--prefill', prefill.url, '--decode', dec.url, '--health-interval', '0.2', '--timeout', '2']));
  const s = await openStream(r4.url, '/v1/completions', longStream);
  const t0 = Date.now();
  dec.proc.kill('SIGSTOP');
  try {
    const text = await withTimeout(s.rest, 20_000 * SLOW, 'the stream ending after its decode instance froze');
    assert.match(text, /"error"/);
    assert.ok(Date.now() - t0 < 20_000 * SLOW);
    await waitHealth(r4.url, 503, 10_000 * SLOW);
  } finally {
    dec.proc.kill('SIGCONT');
  }
  await r4.stop();
  await dec.stop();
});

test('a prefill instance gone: a 5xx at once', T(60), async () => {
  const pre = keep(await startServer([...ONE, '--role', 'prefill']));
  const r5 = keep(await startRouter(['--prefill', pre.url, '--decode', decode.url, '--health-interval', '5', '--timeout', '5']));
  pre.proc.kill('SIGKILL');
  await pre.exited;
  const t0 = Date.now();
  const r = await post(r5.url, '/v1/completions', { prompt: 'x', max_tokens: 2 });
  assert.ok(r.status >= 500, r.text);
  assert.equal(JSON.parse(r.text).error.code, 'prefill_failed');
  assert.ok(Date.now() - t0 < 10_000 * SLOW);
  await waitHealth(r5.url, 503, 2000 * SLOW);  // taken out at the failure, not at the next poll
  await r5.stop();
});
