// Other pre-tokenizer pipelines on the same BPE model (tests/data/tokenizer/
// trained_tokenizer.json with its pre_tokenizer replaced): GPT-2's ByteLevel regex,
// Digits, every Split behaviour, String patterns, invert, add_prefix_space. The Rust HF
// tokenizers encodes the parity strings with each; writes one line per variant:
// {"name", "pre_tokenizer", "ids": [[...] per string]}. Usage: node gen_variants.js OUT.jsonl
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const refs = require('./refs');

const D = path.join(__dirname, '../../tests/data/tokenizer');
const bl = (prefix, regex) => ({ type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: regex });
const split = (pattern, behavior, invert = false) => ({ type: 'Split', pattern, behavior, invert });
const seq = (...p) => ({ type: 'Sequence', pretokenizers: p });
const variants = {
  gpt2: bl(false, true),
  digits_individual: seq({ type: 'Digits', individual_digits: true }, bl(false, true)),
  digits_runs: seq({ type: 'Digits', individual_digits: false }, bl(false, false)),
  prefix_space: bl(true, false),
  removed_ws: seq(split({ Regex: '\\s+' }, 'Removed'), bl(false, false)),
  merged_prev: seq(split({ String: ' ' }, 'MergedWithPrevious'), bl(false, false)),
  merged_next: seq(split({ String: ' ' }, 'MergedWithNext'), bl(false, false)),
  contiguous: seq(split({ Regex: '\\p{P}' }, 'Contiguous'), bl(false, false)),
  invert_letters: seq(split({ Regex: '\\p{L}+' }, 'Isolated', true), bl(false, false)),
  words: seq(split({ Regex: '\\w+' }, 'Isolated'), bl(false, false)),
  not_words: seq(split({ Regex: '\\W+' }, 'Removed'), bl(false, false)),
  class_space: seq(split({ Regex: '[\\s,]+|[^\\S\\w]' }, 'Removed'), bl(false, false)),
};

async function main() {
  const outFile = process.argv[2];
  if (!outFile) throw new Error('usage: node gen_variants.js OUT.jsonl');
  const base = JSON.parse(fs.readFileSync(path.join(D, 'trained_tokenizer.json'), 'utf8'));
  const texts = fs.readFileSync(path.join(D, 'parity_strings.jsonl'), 'utf8').split('\n').filter((l) => l).map((l) => JSON.parse(l));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-variants-'));
  const lines = [];
  for (const [name, pre] of Object.entries(variants)) {
    const file = path.join(tmp, `${name}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...base, pre_tokenizer: pre }));
    const hf = refs.hf(file);
    const ids = [];
    for (const t of texts) ids.push(await hf.encode(t));
    lines.push(JSON.stringify({ name, pre_tokenizer: pre, ids }));
  }
  fs.rmSync(tmp, { recursive: true });
  fs.writeFileSync(outFile, lines.join('\n') + '\n');
  console.error(`${lines.length} variants x ${texts.length} strings written`);
}

main().catch((e) => { console.error(e); process.exit(1); });
