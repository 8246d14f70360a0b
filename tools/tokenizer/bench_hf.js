// The Rust Hugging Face tokenizers (@anush008/tokenizers) on the same text and in the same
// passes as `dsv3 bench tokenize`: one call on the whole text, then ~doc-bytes documents
// encoded one after another (one encode at a time, so one thread does the work).
// Usage: node bench_hf.js TOKENIZER.json TEXT_FILE [doc_bytes] [seconds]
'use strict';
const fs = require('fs');
const { Tokenizer } = require('@anush008/tokenizers');

async function timeIt(body, seconds) {
  await body();  // warm-up (fills HF's word cache, as our first pass fills ours)
  const t = [];
  const start = process.hrtime.bigint();
  while (t.length < 3 || Number(process.hrtime.bigint() - start) / 1e9 < seconds) {
    const t0 = process.hrtime.bigint();
    await body();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  return { median: t[Math.floor(t.length / 2)], reps: t.length };
}

async function main() {
  const [tokFile, textFile, docArg, secArg] = process.argv.slice(2);
  const docBytes = Number(docArg || 4096), seconds = Number(secArg || 2);
  const buf = fs.readFileSync(textFile);
  const text = buf.toString('utf8');
  const docs = [];
  for (let at = 0; at < buf.length;) {
    let end = Math.min(buf.length, at + docBytes);
    const nl = buf.indexOf(10, end);
    end = nl < 0 ? buf.length : nl + 1;
    docs.push(buf.subarray(at, end).toString('utf8'));
    at = end;
  }
  const tok = Tokenizer.fromFile(tokFile);
  const mb = buf.length / 1e6;
  const t0 = process.hrtime.bigint();
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const cold = Number(process.hrtime.bigint() - t0) / 1e9;
  let checksum = 2166136261;  // FNV-1a (32-bit) over the ids, as dsv3 bench tokenize prints
  for (const id of enc.getIds()) checksum = Math.imul(checksum ^ id, 16777619) >>> 0;
  const whole = await timeIt(() => tok.encode(text, null, { addSpecialTokens: false }), seconds);
  const split = await timeIt(async () => {
    for (const d of docs) await tok.encode(d, null, { addSpecialTokens: false });
  }, seconds);
  console.log(`HF tokenizers (Rust, @anush008/tokenizers): ${mb.toFixed(2)} MB, ${enc.getIds().length} tokens (ids FNV-1a ${checksum.toString(16).padStart(8, '0')}), RAYON_NUM_THREADS=${process.env.RAYON_NUM_THREADS}`);
  console.log(`  first pass (cold cache)   ${(mb / cold).toFixed(2).padStart(8)} MB/s`);
  console.log(`  one call, whole text      ${(mb / whole.median).toFixed(2).padStart(8)} MB/s (median of ${whole.reps})`);
  console.log(`  ${docs.length} docs of ~${docBytes} bytes   ${(mb / split.median).toFixed(2).padStart(8)} MB/s (median of ${split.reps})`);
}

main().catch((e) => { console.error(e); process.exit(1); });
