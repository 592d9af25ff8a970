"""Tokenize stage: BPE pieces tied to words (tokenizer), their frame spans (spans), the
stage writing tokens.parquet (stage) and `lst-data tokenize` / `lst-data tokenizer` (cli).
Patching lives in `lst_data.format.patching`. No heavy imports here: sentencepiece/tokenizers load
on use.

The public API other stages use (the shard join computes BPE frame spans; the shard step
reads the tokenizer's vocabulary size) is re-exported here.
"""

from lst_data.tokenize.spans import bpe_frame_spans
from lst_data.tokenize.tokenizer import TokenPiece, load_tokenizer

__all__ = ["TokenPiece", "bpe_frame_spans", "load_tokenizer"]
