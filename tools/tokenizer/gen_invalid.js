// Ill-formed UTF-8 byte strings, decoded the way HF users get them into a string
// (TextDecoder, U+FFFD per maximal subpart, = Rust's from_utf8_lossy), then encoded by the
// Rust HF tokenizers: {"hex", "ids"} per line. Usage: node gen_invalid.js OUT.jsonl
'use strict';
const fs = require('fs');
const refs = require('./refs');

const hexes = [
  '61ff62', 'e4bd', 'c0af', 'eda08078', '80', 'f4908080', 'f09f98', 'f09f9880f09f', '61f18080e180c262806380bf64',
  'e4bda0e5a5bd80e4b896e7958c', '3c efbd9c 55736572 efbd9c 3e'.replace(/ /g, ''), 'fe ff 20 41'.replace(/ /g, ''),
  '48656c6c6f2c20c3', 'c3283c7c', 'e0a080 e080 c280'.replace(/ /g, ''),
];

async function main() {
  const outFile = process.argv[2];
  if (!outFile) throw new Error('usage: node gen_invalid.js OUT.jsonl');
  const hf = refs.hf();
  const dec = new TextDecoder('utf-8', { fatal: false });
  const lines = [];
  for (const hex of hexes) {
    const text = dec.decode(Buffer.from(hex, 'hex'));
    lines.push(JSON.stringify({ hex, ids: await hf.encode(text) }));
  }
  fs.writeFileSync(outFile, lines.join('\n') + '\n');
  console.error(`${lines.length} ill-formed inputs written`);
}

main().catch((e) => { console.error(e); process.exit(1); });
