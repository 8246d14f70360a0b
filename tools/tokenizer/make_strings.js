// Writes tests/data/tokenizer/parity_strings.jsonl: the varied strings on which our
// tokenizer must give exactly DeepSeek-V3's ids. Deterministic (no randomness), so the
// file can be regenerated and diffed. Usage: node make_strings.js > ../../tests/data/tokenizer/parity_strings.jsonl
'use strict';
const S = [];
const add = (...xs) => xs.forEach((x) => S.push(x));

// The SPEC §6 example and plain English.
add('Hello, world! This is DeepSeek-V3.', '', ' ', '  ', 'a', 'A', 'hello', ' hello', 'hello ',
    'The quick brown fox jumps over the lazy dog.',
    "It's, they're, we've, I'm, you'll, he'd — don't!",
    'Mr. O\'Neil said: "No." (Really?) [yes] {maybe} <tag> a/b\\c',
    'e.g. i.e. etc... U.S.A. 3.14 -2.5e-10 1,000,000 $12.99 50% #1 @user ~tilde ^caret',
    'CamelCaseIdentifier snake_case_name SCREAMING_CASE kebab-case-name',
    'https://www.example.com/path?query=1&x=y#frag mailto:someone@example.org',
    'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.',
    'ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS !!!', 'MiXeD cAsE wOrDs', "rock'n'roll",
    '...', '!!!???', '----', '====', '****', '____', '()[]{}<>', '"\'`', '&&||!!', '->=>::<<>>');
// Chinese, Japanese, Korean.
add('你好，世界！这是深度求索的模型。', '我爱北京天安门，天安门上太阳升。', '深度学习（Deep Learning）是机器学习的一个分支。',
    '中文English混合text测试123个字符', '“引号”和‘单引号’以及《书名号》【方括号】',
    '数字：一二三四五六七八九十百千万亿', '繁體中文：電腦、網路、軟體', '𠀀𠀁𪚥 (CJK Extension B)', '龥龦鿿 beyond the 龥 range',
    'こんにちは、世界！', 'カタカナとひらがなと漢字が混ざった文章です。', 'ｶﾀｶﾅ半角とＦＵＬＬＷＩＤＴＨ全角', 'ー・ヽヾゝゞ',
    '東京は日本の首都です。人口は約1400万人。', '안녕하세요, 세계! 한국어 문장입니다.', '한글과 漢字와 English의 혼합', 'ㄱㄴㄷ ㅏㅑㅓ 자모');
// Other scripts.
add('مرحبا بالعالم! هذه جملة عربية.', 'العربية مع أرقام ١٢٣٤٥٦ و 123', 'שלום עולם, זה משפט בעברית.',
    'नमस्ते दुनिया! यह हिंदी वाक्य है।', 'हिन्दी अंक: १२३४५६७८९०', 'বাংলা ভাষা', 'தமிழ் மொழி', 'ไทย ภาษาไทย สวัสดีครับ',
    'Привет, мир! Это русский текст.', 'Ελληνικά: Γειά σου Κόσμε', 'Ünïcödé àçcéñts: naïve café résumé façade',
    'Tiếng Việt có dấu: Xin chào thế giới', 'ქართული ენა', 'Հայերեն', 'አማርኛ', 'ᠮᠣᠩᠭᠣᠯ', 'ᚠᚢᚦᚨᚱᚲ runes', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉');
// Emoji, ZWJ sequences, flags, skin tones, variation selectors.
add('😀😃😄😁', 'I ❤️ NY', '👨‍👩‍👧‍👦 family', '👩🏽‍💻 coder', '🏳️‍🌈 flag', '🇺🇸🇯🇵🇨🇳 flags', '👍🏻👍🏼👍🏽👍🏾👍🏿',
    '🧑‍🤝‍🧑', '❤️‍🔥', '1️⃣ 2️⃣ #️⃣', 'text🙂text', '🙂 🙃 🙂', '✨🎉✨', '☺︎ ☺️');
// Combining marks and normalization-sensitive text.
add('e\u0301 vs \u00e9', 'n\u0303o', 'a\u0300\u0301\u0302\u0303\u0304', 'Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o',
    '\u0915\u094d\u0937', 'ﬁ ﬂ ligatures', 'Å Å Å', '\u1100\u1161\u11a8 jamo', 'x\u20d7 arrow');
// Digits: runs of every length, Unicode digits, mixed with letters.
for (let n = 1; n <= 12; ++n) add('1234567890123'.slice(0, n));
add('2024-11-29T03:11:02Z', 'v1.2.3-rc4', '0x1F 0b1010 0o777', '3.14159265358979', 'abc123def456',
    '١٢٣٤ ۱۲۳۴ ߁߂߃ ०१२', '½ ¼ ⅓ ² ³ ⁴ ₁₂ ① ② Ⅻ', '12345678901234567890', 'a1b22c333d4444', '(555) 123-4567');
// Whitespace runs, tabs, CR/LF, unusual spaces.
add('\n', '\n\n', '\r\n', '\r\n\r\n', 'a\nb', 'a\r\nb', 'a\n\nb', 'a \n b', 'a  \n  b', 'a\tb', '\t\tindented',
    'trailing spaces   ', '   leading spaces', 'many     spaces     inside', 'line1\r\nline2\r\n', 'mixed \t \n \r\n end',
    ' \n', '\n ', ' \r\n ', 'word\n', '\nword', 'a\u00a0b', 'a\u3000b', 'a\u2003b\u2009c', 'a\u0085b', 'a\u2028b\u2029c',
    'a\u180eb', 'a\ufeffb', '\u200b\u200c\u200d', 'a\u000bb\u000cc', 'end with tab\t', '\t', '  \t  ', '.\n', '!\r\n', ', \n\n');
// Code in several languages.
add('def f(x):\n    return x * 2\n', 'for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}',
    '#include <stdio.h>\nint main(void) { printf("hi\\n"); return 0; }',
    'fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![1, 2, 3];\n    Ok(())\n}',
    'const f = async (a, b) => { await g(a ?? b); };', 'SELECT id, name FROM users WHERE age >= 18 ORDER BY name;',
    '<div class="x"><p>Hello &amp; welcome</p></div>', '{"key": "value", "n": [1, 2, 3], "ok": true}',
    'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }', 'x = [i**2 for i in range(10) if i % 2 == 0]',
    '    def __init__(self, *args, **kwargs):\n        super().__init__()', 'if [ -f "$FILE" ]; then echo "$FILE"; fi',
    'public static void main(String[] args) { System.out.println("Hi"); }', '$x = @{ "a" = 1 }; Write-Host $x',
    'a+=1;b-=2;c*=3;d/=4;e%=5;f**=6;g//=7', 'std::vector<std::pair<int, float>> v;', '// comment\n/* block */\n# hash',
    'lambda x: x if x else None', '\\begin{equation} E = mc^2 \\end{equation}', '$$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$$',
    '```python\nprint("hello")\n```', '| a | b |\n|---|---|\n| 1 | 2 |', '- item 1\n- item 2\n  - nested', '> quote\n>> nested');
// Special tokens inside text, partial specials, ASCII look-alikes.
add('<｜begin▁of▁sentence｜>Hello', 'Hi<｜end▁of▁sentence｜>', '<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>',
    'a<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"t": 20}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>',
    '<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>', '<｜User｜><｜User｜>', '<｜User', '｜User｜>', '<|User|>', '<｜▁pad▁｜>',
    '<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>x', 'text <｜place▁holder▁no▁1｜> text', '<<｜User｜>>', ' <｜Assistant｜> ',
    '<think>\nreasoning\n</think>\nanswer', '<|endoftext|>', '<s></s><unk>');
// Long and repetitive inputs (stress the merge loop and cache).
add('a'.repeat(100), ' '.repeat(50), '\n'.repeat(20), 'ab'.repeat(64), '哈'.repeat(40), '😀'.repeat(20),
    'abcdefghijklmnopqrstuvwxyz'.repeat(8), '1'.repeat(40), '-'.repeat(80), '='.repeat(33) + '\n',
    'Supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis',
    'x'.repeat(300), 'the the the the the the the the');
// Control characters and odd code points.
add('\u0000', 'a\u0000b', '\u0001\u0002\u0003\u001f\u007f', '\u0080\u009f', '\ufffd', '\ufffe\uffff', '\u{10ffff}',
    '\ue000 private use', '\u{1f9d1}\u{200d}\u{1f4bb}', '\u00ad soft hyphen', '\u2060 word joiner', '\u061c\u200e\u200f bidi');
// Punctuation glued to letters and numbers (the first regex alternative).
add('.hello', ',world', '!Wow', '$HOME', '#define', '@decorator', '-flag', '--long-option', '/usr/bin', 'a.b.c', 'x,y,z',
    '(a)', '"quoted"', "'single'", '1.5x', '$1.50', '100%', '#123abc', '.5', ',1', 'e-mail', "o'clock", '2nd 3rd 4th');
// Mixed-language paragraphs.
add('DeepSeek-V3 是一个强大的混合专家（MoE）语言模型，总参数量为 671B，每个 token 激活 37B。',
    'In 2024年, the model scored 90.2% on MMLU（大规模多任务语言理解）.', 'Mixing 日本語 and 한국어 and English and 中文 in 1 line!',
    '价格：¥1,299.00（含税）', '第1章 第2节 第10页', 'Emoji in 中文😀句子里', 'Café ☕ costs €3.50 — or £3, or ¥500.');

// Seeded random mixtures (xorshift32): fragments from every class above glued at random, so
// that boundaries between scripts, digits, punctuation and whitespace fall everywhere.
let seed = 0x9e3779b9;
const rnd = (n) => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n; };
const frags = ['the', ' cat', 'Hello', 'x', '_', '42', '7', '12345', '３', '٣', '²', '你好', '世界', 'の', 'カナ', 'ｶ', '한국',
  'мир', 'é', 'e\u0301', '\u0301', '😀', '👨‍👩‍👧', '🇯🇵', '️', '‍', ' ', '  ', '\t', '\n', '\r\n', '\r', '\u00a0', '\u3000', '\u2028',
  '.', ',', '!', '?', '...', '—', '-', "'", '"', '(', ')', '[', '{', '<', '>', '/', '\\', '#', '$', '%', '&', '*', '+', '=', '@', '^', '`', '|', '~',
  '«', '»', '¿', '¡', '§', '©', '°', '€', '£', '¥', '₹', '→', '∑', '√', '∞', '≤', '★', '♪', '「', '」', '。', '、', '！', '？', '：', '（', '）',
  'ـ', 'ٌ', 'ं', 'क', 'ि', '्', 'ไ', '้', 'ü', 'ß', 'Σ', 'ς', 'İ', 'ǅ', 'ꙮ', '\u0000', '\u007f', '\ufeff', '\u200b', '<｜User｜>',
  '<｜end▁of▁sentence｜>', '<｜', '｜>', 'def', '()', ':\n    ', '{\n', '};', '==', '!=', '&&', '0x', 'ff', '1e9', '3.14'];
for (let i = 0; i < 400; ++i) {
  let s = '';
  const n = 1 + rnd(12);
  for (let k = 0; k < n; ++k) s += frags[rnd(frags.length)];
  add(s);
}

// Every string once, in order.
const seen = new Set();
for (const s of S) {
  if (seen.has(s)) continue;
  seen.add(s);
  process.stdout.write(JSON.stringify(s) + '\n');
}
