// `dsv3 serve` at the HTTP level, without a client library: the error object's shape, body
// limits, routing statuses, hostile input (never a 5xx, the server keeps answering), a
// half-sent request, the SSE framing, and the full queue's 429.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';

import { SLOW, openStream, request, sleep, startServer, waitMetrics } from './server.mjs';

const T = (s) => ({ timeout: s * 1000 * SLOW });
let server;

before(async () => {
  server = await startServer();
});
after(async () => {
  if (!server) return;
  const code = await server.stop();
  // The server's own account, for ctest's output on failure.
  process.stderr.write(`--- dsv3 serve stderr (tail) ---\n${server.log().slice(-3000)}\n`);
  assert.equal(code, 0);
});

const post = (path, body, headers = {}) =>
  request(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
  });

// {"error": {"message", "type", "param", "code"}} with the status's OpenAI type.
function assertError(r, status, { type, param } = {}) {
  assert.equal(r.status, status, r.text.slice(0, 300));
  assert.match(r.headers['content-type'], /^application\/json/);
  const j = JSON.parse(r.text);
  assert.deepEqual(Object.keys(j), ['error']);
  const e = j.error;
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  if (type) assert.equal(e.type, type);
  if (param !== undefined) assert.equal(e.param, param);
  return e;
}

async function assertHealthy() {
  const h = await request(`${server.url}/health`);
  assert.equal(h.status, 200);
  assert.deepEqual(JSON.parse(h.text), { status: 'ok' });
}

test('malformed JSON → 400 invalid_request_error', T(30), async () => {
  for (const body of ['{', '{"prompt": "x",}', 'not json', '', '[1, 2]', '"a string"', 'null']) {
    assertError(await post('/v1/completions', body), 400, { type: 'invalid_request_error' });
    assertError(await post('/v1/chat/completions', body), 400, { type: 'invalid_request_error' });
  }
});

test('wrong types → 400 naming the param', T(30), async () => {
  const cases = [
    ['/v1/completions', { prompt: 5 }, 'prompt'],
    ['/v1/completions', { prompt: [1, 'a'] }, 'prompt'],
    ['/v1/completions', { prompt: [-1] }, 'prompt'],
    ['/v1/completions', {}, 'prompt'],
    ['/v1/completions', { prompt: 'x', max_tokens: '10' }, 'max_tokens'],
    ['/v1/completions', { prompt: 'x', max_tokens: 2.5 }, 'max_tokens'],
    ['/v1/completions', { prompt: 'x', temperature: 'hot' }, 'temperature'],
    ['/v1/completions', { prompt: 'x', stream: 'yes' }, 'stream'],
    ['/v1/completions', { prompt: 'x', stop: 7 }, 'stop'],
    ['/v1/completions', { prompt: 'x', model: 12 }, 'model'],
    ['/v1/chat/completions', { messages: 'hi' }, 'messages'],
    ['/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }, 'messages'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 'messages'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], logprobs: 1 }, 'logprobs'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], stream_options: 1 }, 'stream_options'],
  ];
  for (const [path, body, param] of cases) assertError(await post(path, body), 400, { param });
});

test('oversized body → 413', T(60), async () => {
  const big = JSON.stringify({ prompt: 'a'.repeat(9 << 20) });  // over the default 8 MiB
  const r = await post('/v1/completions', big);
  const e = assertError(r, 413);
  assert.equal(e.code, 'payload_too_large');
  await assertHealthy();
});

test('unknown path → 404, wrong method → 405 with Allow', T(30), async () => {
  assertError(await request(`${server.url}/v2/nothing`), 404);
  assertError(await post('/v1/nothing', { prompt: 'x' }), 404);
  const r = await request(`${server.url}/v1/completions`);
  assertError(r, 405);
  assert.match(r.headers.allow, /POST/);
  assertError(await post('/health', {}), 405);
  assertError(await request(`${server.url}/v1/chat/completions`, { method: 'PUT', body: '{}' }), 405);
});

test('hostile input → 4xx JSON errors, never a 5xx; the server stays up', T(180), async () => {
  const chat = (extra) => ({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, ...extra });
  const deep = (n, open, close) => open.repeat(n) + close.repeat(n);
  const bad = [
    ['/v1/completions', { prompt: 'x', max_tokens: -1 }],
    ['/v1/completions', { prompt: 'x', max_tokens: 1e300 }],
    ['/v1/completions', '{"prompt": "x", "max_tokens": 99999999999999999999999999}'],
    ['/v1/completions', '{"prompt": "x", "temperature": 1e999}'],
    ['/v1/completions', { prompt: 'x', n: 0 }],
    ['/v1/completions', { prompt: 'x', n: 1e9 }],
    ['/v1/completions', { prompt: 'x', logprobs: 21 }],
    ['/v1/completions', { prompt: [2 ** 31 - 1] }],
    ['/v1/completions', { prompt: [2 ** 53] }],
    ['/v1/completions', { prompt: [[]] }],
    ['/v1/completions', { prompt: [] }],
    ['/v1/completions', { prompt: JSON.parse(deep(50, '[', ']')) }],
    ['/v1/completions', `{"prompt": ${deep(100000, '[', ']')}}`],
    ['/v1/completions', `{"prompt": "x", "stop": ${deep(100000, '{"a":', '}').replace(/}$/, '1}')}`],
    ['/v1/completions', { prompt: 'x', top_p: 0 }],
    ['/v1/completions', { prompt: 'x', presence_penalty: -3 }],
    ['/v1/completions', { prompt: 'x', seed: 1.5 }],
    ['/v1/completions', { prompt: 'x', logit_bias: { 5: 100 } }],
    ['/v1/completions', { prompt: 'word '.repeat(400000) }],  // ~2 MB: longer than the context
    ['/v1/chat/completions', chat({ top_logprobs: 21, logprobs: true })],
    ['/v1/chat/completions', chat({ n: 0 })],
    ['/v1/chat/completions', chat({ max_tokens: -5 })],
    ['/v1/chat/completions', chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] })],
    ['/v1/chat/completions', chat({ tools: [{ type: 'function', function: { name: 'f' } }] })],
    ['/v1/chat/completions', chat({ max_tokens: 4096 })],  // prompt + max_tokens beyond the context
    ['/tokenize', { prompt: 5 }],
    ['/detokenize', { tokens: [-1] }],
    ['/detokenize', { tokens: 'x' }],
  ];
  // Invalid UTF-8 inside a JSON string, and a raw null byte (JSON forbids control characters).
  const invalidUtf8 = Buffer.concat([Buffer.from('{"prompt": "ab'), Buffer.from([0xff, 0xc3, 0x28]), Buffer.from('"}')]);
  const rawNul = Buffer.concat([Buffer.from('{"prompt": "a'), Buffer.from([0]), Buffer.from('b"}')]);
  bad.push(['/v1/completions', invalidUtf8], ['/v1/completions', rawNul]);
  for (const [path, body] of bad) {
    const r = await post(path, body);
    assert.ok(r.status >= 400 && r.status < 500, `${path} ${(Buffer.isBuffer(body) || typeof body === "string" ? String(body) : JSON.stringify(body)).slice(0, 80)}: ${r.status} ${r.text.slice(0, 200)}`);
    assertError(r, r.status);
  }
  // Legal but odd: escaped null bytes and lone surrogates in the text, 10000 stop strings
  // (OpenAI allows 4). Answered or refused with a 4xx, never a 5xx.
  const odd = ['a\u0000b\u0000', 'x\ud800y', '\u{1F600}'.repeat(50)].map((prompt) => ({ prompt, max_tokens: 3 }));
  odd.push({ prompt: 'x', max_tokens: 8, stop: Array.from({ length: 10000 }, (_, i) => `s${i}`) });
  for (const body of odd) {
    const r = await post('/v1/completions', body);
    assert.ok(r.status === 200 || (r.status >= 400 && r.status < 500), `${r.status} ${r.text.slice(0, 200)}`);
    JSON.parse(r.text);
  }
  await assertHealthy();
  // Nothing was left behind in the engine.
  await waitMetrics(server.url, (m) => m.dsv3_kv_blocks_used === 0 && m.dsv3_requests_running === 0,
    5000 * SLOW, 'an idle engine after the hostile requests');
});

test('SSE framing: chunked data lines, then data: [DONE]', T(30), async () => {
  const r = await post('/v1/chat/completions', {
    messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, temperature: 0, stream: true,
  });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/event-stream/);
  const events = r.text.split('\n\n');
  assert.equal(events.pop(), '');
  assert.equal(events.pop(), 'data: [DONE]');
  for (const ev of events) {
    assert.ok(ev.startsWith('data: '), ev);
    assert.equal(JSON.parse(ev.slice(6)).object, 'chat.completion.chunk');
  }
});

// Sends `text` on a raw connection and leaves it open; returns the socket.
function partialRequest(text) {
  return new Promise((resolve, reject) => {
    const u = new URL(server.url);
    const s = net.connect(Number(u.port), u.hostname, () => s.write(text, () => resolve(s)));
    s.on('error', reject);
  });
}

test('half-sent requests closed by the client do not hurt later ones', T(60), async () => {
  const socks = await Promise.all([
    partialRequest('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"prompt": "hel'),
    partialRequest('GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: '),
    partialRequest('POST /v1/chat/completions HTTP/1.1\r\n'),
    partialRequest('GE'),
  ]);
  for (const s of socks) s.on('error', () => {});
  // While they hang: a full request is served.
  const r = await post('/v1/completions', { prompt: 'Hello', max_tokens: 3, temperature: 0 });
  assert.equal(r.status, 200);
  await sleep(100);
  for (const s of socks) s.destroy();
  await sleep(100);
  const r2 = await post('/v1/completions', { prompt: 'Hello', max_tokens: 3, temperature: 0 });
  assert.equal(r2.status, 200);
  assert.equal(JSON.parse(r2.text).choices[0].text, JSON.parse(r.text).choices[0].text);
  await assertHealthy();
});

test('queue full → 429 (--max-running 1 --max-queue 0)', T(120), async () => {
  const s = await startServer(['--max-running', '1', '--max-queue', '0']);
  try {
    // The first request streams (and holds the only slot) until its client goes away.
    const first = await openStream(`${s.url}/v1/completions`,
      { prompt: 'Hello', max_tokens: 4000, ignore_eos: true, stream: true });
    assert.equal(first.status, 200);
    assert.match(first.first, /^data: /);
    const second = await request(`${s.url}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'Hello', max_tokens: 4 }),
    });
    const e = assertError(second, 429);
    assert.equal(e.code, 'queue_full');
    first.close();
    await waitMetrics(s.url, (m) => m.dsv3_requests_running === 0 && m.dsv3_kv_blocks_used === 0,
      5000 * SLOW, 'the aborted request to end');
    const third = await request(`${s.url}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'Hello', max_tokens: 4 }),
    });
    assert.equal(third.status, 200);
  } finally {
    assert.equal(await s.stop(), 0);
  }
});
