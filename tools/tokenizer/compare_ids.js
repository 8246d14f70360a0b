// Compares `dsv3 tokenize --jsonl` output (one id array per line) with a gen_vectors.js
// file ({"text", "ids"} per line). Exit 1 and a report on any difference.
// Usage: node compare_ids.js EXPECTED.jsonl OURS.txt LABEL
'use strict';
const fs = require('fs');
const [expFile, oursFile, label] = process.argv.slice(2);
const read = (f) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));
const exp = read(expFile), ours = read(oursFile);
let bad = 0;
if (exp.length !== ours.length) { console.error(`${label}: ${exp.length} expected lines, ${ours.length} ours`); bad++; }
for (let i = 0; i < Math.min(exp.length, ours.length); ++i) {
  if (JSON.stringify(exp[i].ids) !== JSON.stringify(ours[i])) {
    if (++bad <= 10) console.error(`${label}: ids differ for ${JSON.stringify(exp[i].text)}\n  hf   ${JSON.stringify(exp[i].ids)}\n  dsv3 ${JSON.stringify(ours[i])}`);
  }
}
console.log(`${label}: ${exp.length} strings, ${bad === 0 ? 'all equal' : bad + ' differ'}`);
process.exit(bad === 0 ? 0 : 1);
