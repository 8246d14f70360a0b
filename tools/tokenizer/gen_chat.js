// Renders conversations with DeepSeek-V3's real chat_template (tokenizer_config.json) through
// @huggingface/jinja and encodes the prompt with the Rust HF tokenizers; writes
// tests/data/tokenizer/chat_cases.jsonl: {"messages", "add_generation_prompt", "text", "ids"}.
// Usage: node gen_chat.js OUT.jsonl
'use strict';
const fs = require('fs');
const { Template } = require('@huggingface/jinja');
const refs = require('./refs');

const sys = (c) => ({ role: 'system', content: c });
const user = (c) => ({ role: 'user', content: c });
const asst = (c) => ({ role: 'assistant', content: c });
const tool = (c) => ({ role: 'tool', content: c });
const call = (name, args) => ({ type: 'function', function: { name, arguments: JSON.stringify(args) } });
const calls = (...cs) => ({ role: 'assistant', content: null, tool_calls: cs });

const conversations = [
  [user('Hello!')],
  [sys('You are a helpful assistant.'), user('What is 2+2?')],
  [sys('Be brief.'), user('Hi'), asst('Hello! How can I help?'), user('Tell me a joke.')],
  [sys('First system.'), sys('Second system.'), user('Which system?')],
  [user('Hi'), sys('A system message after the user one.'), asst('Hey.')],
  [user('你好，请介绍一下你自己。'), asst('我是 DeepSeek-V3，一个语言模型。'), user('谢谢！')],
  [user('Weather in Paris?'), calls(call('get_weather', { city: 'Paris' })), tool('{"temp": 20}'), asst('It is 20°C in Paris.')],
  [user('Weather in Paris and Rome?'), calls(call('get_weather', { city: 'Paris' }), call('get_weather', { city: 'Rome' })),
   tool('{"temp": 20}'), tool('{"temp": 25}'), asst('Paris 20°C, Rome 25°C.')],
  [user('Search then compute.'), calls(call('search', { q: 'x' })), tool('result 1'), asst('Now computing.'),
   user('Go on'), calls(call('calc', { expr: '1+1' }), call('calc', { expr: '2*3' })), tool('2'), tool('6')],
  [user('Only a tool output at the end'), calls(call('f', {})), tool('{}')],
  [sys(''), user('')],
  [user('Line1\nLine2\r\n\tTabbed'), asst('  spaces  ')],
  [user('<｜User｜> inside content'), asst('ok')],
  [],
];

async function main() {
  const outFile = process.argv[2];
  if (!outFile) throw new Error('usage: node gen_chat.js OUT.jsonl');
  const cfg = JSON.parse(fs.readFileSync(refs.tokenizerConfig, 'utf8'));
  const tpl = new Template(cfg.chat_template);
  const hf = refs.hf();
  const lines = [];
  for (const messages of conversations) {
    for (const add_generation_prompt of [false, true]) {
      const text = tpl.render({ messages, add_generation_prompt, bos_token: cfg.bos_token.content,
                                eos_token: cfg.eos_token.content });
      const ids = await hf.encode(text);
      lines.push(JSON.stringify({ messages, add_generation_prompt, text, ids }));
    }
  }
  fs.writeFileSync(outFile, lines.join('\n') + '\n');
  console.error(`${lines.length} chat cases written`);
}

main().catch((e) => { console.error(e); process.exit(1); });
