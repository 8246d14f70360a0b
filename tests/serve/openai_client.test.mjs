// `dsv3 serve` driven by the official OpenAI Node client (the `openai` npm package, pinned in
// package.json): both endpoints streamed and not, usage chunks, stop strings, n > 1,
// logprobs, length limits, typed errors, prefix reuse, 32 concurrent streams that must equal
// the same requests run alone, cancellation freeing the cache, and the server's greedy output
// equal to `dsv3 generate`'s. Run: node --test tests/serve/ (DSV3_BIN, DSV3_SERVE_MODEL).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';

import { DSV3_BIN, SCALE, SLOW, metrics, request, startServer, testModel, waitMetrics } from './server.mjs';

const T = (s) => ({ timeout: s * 1000 * SLOW });
let server, client;

const makeClient = (srv, apiKey = 'unused') =>
  new OpenAI({ baseURL: `${srv.url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 * SLOW, httpAgent: srv.agent });

before(async () => {
  server = await startServer();
  client = makeClient(server);
});
after(async () => {
  if (!server) return;
  const code = await server.stop();
  // The server's own account, for ctest's output on failure.
  process.stderr.write(`--- dsv3 serve stderr (tail) ---\n${server.log().slice(-3000)}\n`);
  assert.equal(code, 0);
});

// A stream's chunks, per choice index: text, the finish_reasons seen, and the usage chunk.
async function collect(stream) {
  const choices = new Map();
  const chunks = [];
  for await (const c of stream) {
    chunks.push(c);
    for (const ch of c.choices) {
      const s = choices.get(ch.index) ?? { text: '', finishes: [], logprobs: [] };
      s.text += ch.delta?.content ?? ch.text ?? '';
      if (ch.finish_reason) s.finishes.push(ch.finish_reason);
      choices.set(ch.index, s);
    }
  }
  return { choices, chunks, usage: chunks.at(-1)?.usage ?? null };
}

const chat = (content, extra = {}) => ({
  messages: [{ role: 'user', content }],
  temperature: 0,
  max_tokens: 16,
  ...extra,
});

test('GET /v1/models lists the served model', T(30), async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), ['model']);
  const m = await client.models.retrieve('model');
  assert.equal(m.id, 'model');
  assert.equal(m.object, 'model');
});

test('chat: non-streamed, then the same request streamed with include_usage', T(60), async () => {
  const r = await client.chat.completions.create(chat('Hello there, how are you?'));
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 16);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);

  const s = await collect(await client.chat.completions.create(
    chat('Hello there, how are you?', { stream: true, stream_options: { include_usage: true } })));
  assert.equal(s.chunks[0].choices[0].delta.role, 'assistant');
  for (const ch of s.chunks) assert.equal(ch.object, 'chat.completion.chunk');
  // Every chunk but the last has "usage": null; the last has no choices and the usage.
  for (const ch of s.chunks.slice(0, -1)) assert.equal(ch.usage, null);
  assert.deepEqual(s.chunks.at(-1).choices, []);
  // The same prompt again: its full blocks now come from the prefix cache.
  assert.equal(s.usage.prompt_tokens, r.usage.prompt_tokens);
  assert.equal(s.usage.completion_tokens, r.usage.completion_tokens);
  assert.equal(s.choices.size, 1);
  assert.deepEqual(s.choices.get(0).finishes, [c.finish_reason]);
  assert.equal(s.choices.get(0).text, c.message.content);
});

test('chat: the raw stream ends with data: [DONE]', T(30), async () => {
  const res = await client.chat.completions
    .create(chat('Say something.', { stream: true }))
    .asResponse();
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  const body = await res.text();
  assert.ok(body.endsWith('data: [DONE]\n\n'), body.slice(-200));
  assert.equal(body.split('data: [DONE]').length, 2);
});

test('completions: non-streamed and streamed agree', T(60), async () => {
  const req = { model: 'model', prompt: 'The quick brown fox', max_tokens: 12, temperature: 0 };
  const r = await client.completions.create(req);
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  const s = await collect(await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }));
  assert.equal(s.choices.get(0).text, r.choices[0].text);
  assert.deepEqual(s.choices.get(0).finishes, [r.choices[0].finish_reason]);
  assert.deepEqual(s.chunks.at(-1).choices, []);
  assert.equal(s.usage.completion_tokens, r.usage.completion_tokens);
  // Token-id prompts are taken as given.
  const ids = await client.completions.create({ ...req, prompt: [0, 5, 17, 42] });
  assert.equal(ids.usage.prompt_tokens, 4);
});

test('max_tokens: finish_reason "length" with exactly max_tokens tokens', T(60), async () => {
  for (const max_tokens of [1, 7]) {
    const r = await client.completions.create({ prompt: 'Hello world', max_tokens, temperature: 0, ignore_eos: true });
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, max_tokens);
    const s = await collect(await client.chat.completions.create(
      chat('Hello', { max_tokens, ignore_eos: true, stream: true, stream_options: { include_usage: true } })));
    assert.deepEqual(s.choices.get(0).finishes, ['length']);
    assert.equal(s.usage.completion_tokens, max_tokens);
  }
  // max_tokens 0: no tokens, finish "length".
  const z = await client.completions.create({ prompt: 'Hello world', max_tokens: 0 });
  assert.equal(z.usage.completion_tokens, 0);
  assert.equal(z.choices[0].text, '');
});

// A stop string cut from the middle of the free-running greedy text: the output is the text
// before its first occurrence, finish_reason "stop", streamed or not.
test('stop strings end the text before them', T(60), async () => {
  const base = { max_tokens: 32, temperature: 0, ignore_eos: true };
  let full, prompt, stop;
  for (const p of ['Hello world, the quick', 'A tiny model writes', 'Prices: 3 + 4', 'Serving many requests']) {
    full = (await client.completions.create({ ...base, prompt: p })).choices[0].text;
    const m = /[A-Za-z]{2}/.exec(full.slice(Math.floor(full.length / 3)));
    if (m) {
      prompt = p;
      stop = m[0];
      break;
    }
  }
  assert.ok(stop, `no ASCII letters in the random model's output to cut a stop string from: ${JSON.stringify(full)}`);
  const want = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ ...base, prompt, stop: [stop, 'never \u0001 seen'] });
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].text, want);
  assert.ok(!r.choices[0].text.includes(stop));
  const s = await collect(await client.completions.create({ ...base, prompt, stop, stream: true }));
  assert.equal(s.choices.get(0).text, want);
  assert.deepEqual(s.choices.get(0).finishes, ['stop']);
});

test('n > 1: one choice per index, one finish_reason each', T(60), async () => {
  const r = await client.chat.completions.create(chat('Tell me a story.', { n: 3, temperature: 1, seed: 5 }));
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.choices) assert.ok(['stop', 'length'].includes(c.finish_reason));
  const s = await collect(await client.chat.completions.create(
    chat('Tell me a story.', { n: 3, temperature: 1, seed: 5, stream: true, stream_options: { include_usage: true } })));
  assert.deepEqual([...s.choices.keys()].sort(), [0, 1, 2]);
  for (const [i, c] of s.choices) {
    assert.equal(c.finishes.length, 1, `choice ${i}: ${c.finishes}`);
    // Seeded sampling: the streamed run equals the non-streamed one, choice by choice.
    assert.equal(c.text, r.choices[i].message.content);
  }
  assert.equal(s.usage.completion_tokens, r.usage.completion_tokens);
  // Greedy choices are all the same; completions with n also.
  const g = await client.completions.create({ prompt: 'Hello', n: 2, max_tokens: 8, temperature: 0 });
  assert.equal(g.choices.length, 2);
  assert.equal(g.choices[0].text, g.choices[1].text);
});

test('logprobs: chat and completions shapes', T(60), async () => {
  const r = await client.chat.completions.create(chat('Hi', { max_tokens: 6, ignore_eos: true, logprobs: true, top_logprobs: 3 }));
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, 6);
  for (const e of lp) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0);
    assert.ok(Array.isArray(e.bytes) && e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256));
    assert.equal(e.top_logprobs.length, 3);
    for (let k = 1; k < 3; ++k) assert.ok(e.top_logprobs[k - 1].logprob >= e.top_logprobs[k].logprob);
    // Greedy: the chosen token is the most likely one.
    assert.ok(Math.abs(e.logprob - e.top_logprobs[0].logprob) < 1e-5);
  }
  const noTop = await client.chat.completions.create(chat('Hi', { max_tokens: 2, ignore_eos: true, logprobs: true }));
  for (const e of noTop.choices[0].logprobs.content) assert.deepEqual(e.top_logprobs, []);
  const plain = await client.chat.completions.create(chat('Hi', { max_tokens: 2 }));
  assert.equal(plain.choices[0].logprobs, null);

  const c = await client.completions.create({ prompt: 'Hello', max_tokens: 5, temperature: 0, ignore_eos: true, logprobs: 2 });
  const L = c.choices[0].logprobs;
  assert.equal(L.tokens.length, 5);
  assert.equal(L.token_logprobs.length, 5);
  assert.equal(L.top_logprobs.length, 5);
  assert.equal(L.text_offset.length, 5);
  for (let i = 0; i < 5; ++i) {
    assert.ok(L.token_logprobs[i] <= 0);
    const alts = Object.keys(L.top_logprobs[i]);
    assert.ok(alts.length >= 1 && alts.length <= 2);
    if (i > 0) assert.ok(L.text_offset[i] >= L.text_offset[i - 1]);
  }
  // Streamed: each token's chunk carries its logprobs.
  const s = await collect(await client.chat.completions.create(
    chat('Hi', { max_tokens: 4, ignore_eos: true, logprobs: true, top_logprobs: 2, stream: true })));
  const streamed = s.chunks.flatMap((ch) => ch.choices.flatMap((x) => x.logprobs?.content ?? []));
  assert.equal(streamed.length, 4);
  for (const e of streamed) assert.equal(e.top_logprobs.length, 2);
});

test('errors arrive as the client\'s typed errors', T(60), async () => {
  const expect = async (promise, Type, status, param) => {
    await assert.rejects(promise, (e) => {
      assert.ok(e instanceof Type, `${e.constructor.name}: ${e.message}`);
      assert.equal(e.status, status);
      if (param !== undefined) assert.equal(e.param, param);
      assert.equal(typeof e.message, 'string');
      return true;
    });
  };
  await expect(client.chat.completions.create(chat('x', { temperature: 5 })), OpenAI.BadRequestError, 400, 'temperature');
  await expect(client.chat.completions.create(chat('x', { top_logprobs: 3 })), OpenAI.BadRequestError, 400, 'top_logprobs');
  await expect(client.chat.completions.create({ messages: [] }), OpenAI.BadRequestError, 400, 'messages');
  await expect(client.completions.create({ prompt: 'x', max_tokens: -1 }), OpenAI.BadRequestError, 400, 'max_tokens');
  await expect(client.completions.create({ prompt: [999999] }), OpenAI.BadRequestError, 400);
  // A prompt longer than the context (4096), with and without max_tokens.
  const long = 'Hello world, hello there! '.repeat(2000);
  await expect(client.completions.create({ prompt: long }), OpenAI.BadRequestError, 400);
  await expect(client.completions.create({ prompt: long, max_tokens: 4 }), OpenAI.BadRequestError, 400);
  await expect(client.chat.completions.create(chat(long)), OpenAI.BadRequestError, 400);
  await expect(client.chat.completions.create({ ...chat('x'), model: 'gpt-4o' }), OpenAI.NotFoundError, 404, 'model');
  await expect(client.models.retrieve('gpt-4o'), OpenAI.NotFoundError, 404);
  // Streamed requests are checked before the stream starts: the same typed error.
  await expect(client.chat.completions.create(chat('x', { n: 0, stream: true })), OpenAI.BadRequestError, 400, 'n');
});

test('--api-key: 401 AuthenticationError without the key, 200 with it', T(120), async () => {
  const s = await startServer(['--api-key', 'sekrit-123']);
  try {
    for (const key of ['wrong', 'sekrit-1234', 'sekrit-12']) {
      await assert.rejects(makeClient(s, key).chat.completions.create(chat('Hi', { max_tokens: 2 })), (e) => {
        assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
        assert.equal(e.status, 401);
        return true;
      });
    }
    await assert.rejects(makeClient(s, 'wrong').models.list(), OpenAI.AuthenticationError);
    const ok = await makeClient(s, 'sekrit-123').chat.completions.create(chat('Hi', { max_tokens: 2 }));
    assert.equal(ok.choices.length, 1);
    assert.equal((await request(`${s.url}/health`)).status, 200);  // open without the key
    assert.equal((await request(`${s.url}/metrics`)).status, 401);
  } finally {
    assert.equal(await s.stop(), 0);
  }
});

test('prefix reuse: the same long chat twice hits the prefix cache', T(60), async () => {
  const system = 'You are a careful assistant. '.repeat(30);
  const req = {
    messages: [
      { role: 'system', content: system },
      { role: 'user', content: 'The quick brown fox jumps over the lazy dog. What does the fox do?' },
    ],
    temperature: 0,
    max_tokens: 4,
  };
  const first = await client.chat.completions.create(req);
  assert.ok(first.usage.prompt_tokens > 64, `prompt only ${first.usage.prompt_tokens} tokens`);
  const before = await metrics(server.url);
  const second = await client.chat.completions.create(req);
  const after = await metrics(server.url);
  assert.ok(second.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(second.usage));
  assert.ok(second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens);
  assert.ok(after.dsv3_prefix_cache_hits_total > before.dsv3_prefix_cache_hits_total);
  assert.equal(second.choices[0].message.content, first.choices[0].message.content);
});

// Continuous batching must not change a greedy answer (docs/serve.md: batch invariance).
test('concurrent streaming clients each get the text of their request run alone', T(300), async () => {
  const N = Math.max(4, Math.round(32 * SCALE));
  const reqs = Array.from({ length: N }, (_, i) =>
    chat(`Request ${i}: ${['tell me about the fox', 'what is batching', 'count to ten', 'say hello'][i % 4]}.`,
      { max_tokens: 16, stream: true, stream_options: { include_usage: true } }));
  // Alone: one at a time, on a server without a prefix cache (nothing shared, batch of one).
  const solo = await startServer(['--no-prefix-cache']);
  const alone = [];
  try {
    const c = makeClient(solo);
    for (const r of reqs) alone.push(await collect(await c.chat.completions.create(r)));
  } finally {
    assert.equal(await solo.stop(), 0);
  }
  const together = await Promise.all(reqs.map(async (r) => collect(await client.chat.completions.create(r))));
  for (let i = 0; i < N; ++i) {
    const a = alone[i].choices.get(0), b = together[i].choices.get(0);
    assert.equal(b.finishes.length, 1, `request ${i}`);
    assert.equal(b.text, a.text, `request ${i}`);
    assert.deepEqual(b.finishes, a.finishes, `request ${i}`);
    assert.equal(together[i].usage.completion_tokens, alone[i].usage.completion_tokens, `request ${i}`);
  }
  await waitMetrics(server.url, (m) => m.dsv3_kv_blocks_used === 0 && m.dsv3_requests_running === 0 &&
    m.dsv3_requests_waiting === 0, 5000 * SLOW, 'the cache to be free after the burst');
});

test('a cancelled stream frees its blocks', T(60), async () => {
  const before = await metrics(server.url);
  const ac = new AbortController();
  const stream = await client.completions.create(
    { prompt: 'Hello world', max_tokens: 4000, temperature: 0, ignore_eos: true, stream: true },
    { signal: ac.signal });
  let got = 0;
  try {
    for await (const c of stream) {
      if (c.choices.length && ++got === 1) ac.abort();
    }
  } catch (e) {  // the client may end the iteration quietly or raise the abort
    if (!(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError')) throw e;
  }
  assert.ok(got >= 1 && got < 100, `${got} chunks`);
  await waitMetrics(server.url, (m) => m.dsv3_kv_blocks_used === 0 && m.dsv3_requests_running === 0 &&
    m.dsv3_requests_cancelled_total > before.dsv3_requests_cancelled_total, 5000 * SLOW,
    'the cancelled request to release its blocks');
});

test('greedy completion through the server equals dsv3 generate', T(120), async () => {
  const model = testModel();
  for (const prompt of ['Hello world, the quick', 'Continuous batching decodes']) {
    const out = execFileSync(DSV3_BIN, ['generate', '--model', model, '--prompt', prompt, '--temperature', '0',
      '--max-new-tokens', '24', '--json'], { encoding: 'utf8', timeout: 60_000 * SLOW, stdio: ['ignore', 'pipe', 'ignore'] });
    const gen = JSON.parse(out.trim().split('\n').at(-1));
    const r = await client.completions.create({ prompt, max_tokens: 24, temperature: 0 });
    assert.equal(r.choices[0].text, gen.text, prompt);
    assert.equal(r.usage.completion_tokens, gen.ids.length, prompt);
    assert.equal(r.usage.prompt_tokens, gen.stats.prompt_tokens, prompt);
  }
});
