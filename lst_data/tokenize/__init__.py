"""Tokenize stage: BPE pieces tied to words (tokenizer), their frame spans (spans), the
stage writing tokens.parquet (stage) and `lst-data tokenizer` (cli). Patching lives in
`lst_data.patching`. No heavy imports here: sentencepiece/tokenizers load on use."""
