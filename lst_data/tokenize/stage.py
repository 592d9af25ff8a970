"""The tokenize stage: normalized transcripts -> BPE pieces tied to words (`tokens.parquet`).

Frame spans are not computed here: they need the alignment and the unit count, so the
shard writer computes them (`lst_data.tokenize.spans.bpe_frame_spans`) when it joins the
tables. This stage only fixes which pieces a transcript has and which word each belongs to.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from lst_data.core.config import RayConfig
from lst_data.core.rejects import Reject
from lst_data.core.runner import StageReport, TableParts, read_manifest, run_stage
from lst_data.core.stage import Stage, StageResult
from lst_data.core.storage import StoragePath, location
from lst_data.core.tables import TOKENS_SCHEMA
from lst_data.tokenize.config import TokenizerConfig
from lst_data.tokenize.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

if TYPE_CHECKING:
    from lst_data.config import RunConfig

log = logging.getLogger(__name__)

TRAINED_MODEL_NAME = "tokenizer.model"
TRAINED_ON_FILE = "tokenizer.trained_on"  # fingerprint of the input partitions the BPE was trained on
# A BPE's merges settle long before this many sentences (sentencepiece's own default sample is 1M).
MAX_BPE_SENTENCES = 2_000_000


class TokenizeStage(Stage):
    """Rows (id, normalized_text) -> (id, tokenizer_hash, pieces); rejects `tokenize_failed`.

    The stage carries only the model's path (and expected hash) across to workers and
    loads the tokenizer in `setup`, so it pickles cheaply and each actor loads it once.
    """

    name = "tokenize"
    table = "tokens"
    config_section = "tokenizer"
    input_columns: ClassVar[tuple[str, ...]] = ("id", "normalized_text")
    output_schema: ClassVar[pa.Schema] = TOKENS_SCHEMA

    def __init__(self, config: TokenizerConfig | None = None, seed: int = 0, *,
                 model_path: str | Path | None = None, expected_hash: str | None = None) -> None:
        self.config = config or TokenizerConfig()
        self.seed = seed
        self.model_path = None if model_path is None else str(model_path)
        self.expected_hash = expected_hash
        self._tokenizer: Tokenizer | None = None
        self.vocab_size: int | None = None

    def prepare(self, inputs: TableParts, out_dir: StoragePath, ray: RayConfig) -> list[Reject]:
        """The configured tokenizer, or a BPE trained on the stage's transcripts into out_dir
        (kept from an earlier run when it was trained on the same input partitions)."""
        trained = out_dir / TRAINED_MODEL_NAME
        marker = out_dir / TRAINED_ON_FILE
        if self.config.model is not None:
            for stale in (trained, marker):  # trained by an earlier run without tokenizer.model
                stale.unlink(missing_ok=True)
        if self.model_path is None:
            reuse = (self.config.model is None and inputs.fingerprint is not None and trained.is_file()
                     and marker.is_file() and marker.read_text(encoding="utf-8") == inputs.fingerprint)
            if reuse:
                tokenizer = load_tokenizer(trained)
            else:
                marker.unlink(missing_ok=True)
                texts = bpe_training_texts(inputs) if self.config.model is None else []
                tokenizer = prepare_tokenizer(self.config, texts, out_dir, self.seed)
                if self.config.model is None:
                    self.refitted = f"trained {TRAINED_MODEL_NAME} on the whole manifest"
                    if inputs.fingerprint is not None:
                        marker.write_text(inputs.fingerprint, encoding="utf-8")
            self.model_path, self.expected_hash = str(tokenizer.path), tokenizer.hash
            self.vocab_size = tokenizer.vocab_size
        return []

    def fitted(self) -> dict[str, Any]:
        return {"tokenizer": self.expected_hash}

    def summarize(self, output: pa.Table) -> dict[str, Any]:
        return {"tokenized": output.num_rows}

    def finalize(self, summaries: list[dict[str, Any]], out_dir: StoragePath) -> dict[str, Any]:
        return {"tokenized": sum(s["tokenized"] for s in summaries), "vocab_size": self.vocab_size}

    def provenance(self) -> dict[str, Any]:
        return {"tokenizer": {"path": self.model_path, "sha256": self.expected_hash}}

    def setup(self) -> None:
        if self._tokenizer is not None:
            return
        if self.model_path is None:
            raise RuntimeError("TokenizeStage: prepare() was not called and no model_path was given")
        tokenizer = load_tokenizer(self.model_path)
        if self.expected_hash is not None and tokenizer.hash != self.expected_hash:
            raise RuntimeError(
                f"tokenizer {self.model_path} changed: hash {tokenizer.hash} != expected {self.expected_hash}"
            )
        self._tokenizer = tokenizer

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}  # workers load their own copy in setup

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        self.setup()
        assert self._tokenizer is not None
        result = StageResult()
        for row in rows:
            words = (row["normalized_text"] or "").split()
            if not words:
                result.rejects.append(self.reject(row["id"], "tokenize_failed", "empty normalized text"))
                continue
            try:
                pieces = self._tokenizer.encode_words(words)
            except UnicodeError as err:  # text the tokenizer cannot take; anything else is a bug
                result.rejects.append(self.reject(row["id"], "tokenize_failed", str(err)))
                continue
            without = sorted(set(range(len(words))) - {p.word_index for p in pieces})
            if without:
                detail = "words with no piece of their own (a piece straddles words): " + ", ".join(
                    f"{i}:{words[i]!r}" for i in without[:10]
                )
                result.rejects.append(self.reject(row["id"], "tokenize_failed", detail))
                continue
            result.rows.append(
                {
                    "id": row["id"],
                    "tokenizer_hash": self._tokenizer.hash,
                    "pieces": [p._asdict() for p in pieces],
                }
            )
        return result


def bpe_training_texts(inputs: TableParts, limit: int = MAX_BPE_SENTENCES) -> list[str]:
    """The transcripts a trained BPE learns from: all of them up to `limit`, else the `limit` with the
    smallest sha1 (a deterministic sample that does not depend on the partitioning); one partition
    is read at a time, so the driver holds at most `limit` sentences."""
    def keyed() -> Iterator[tuple[bytes, str]]:
        for part in inputs.iter_columns(["normalized_text"]):
            for text in part["normalized_text"].to_pylist():
                if text:
                    yield hashlib.sha1(text.encode("utf-8")).digest(), text

    return [text for _, text in heapq.nsmallest(limit, keyed())]


def prepare_tokenizer(
    config: TokenizerConfig, texts: Iterable[str], out_dir: str | StoragePath, seed: int
) -> Tokenizer:
    """The run's tokenizer: the configured model, or a BPE trained on `texts` into out_dir.

    Training happens once on the driver over the whole corpus (a BPE needs global counts),
    before the stage fans out; workers then only load the file.
    """
    if config.model is not None:
        return load_tokenizer(config.model)
    out_path = location(out_dir) / TRAINED_MODEL_NAME
    tokenizer = train_tokenizer(
        texts, out_path, config.vocab_size, seed, character_coverage=config.character_coverage
    )
    log.info("trained %s on the corpus: %d pieces", out_path, tokenizer.vocab_size)
    return tokenizer


def tokenize_manifest(manifest_dir: str | Path, out_dir: str | Path, config: RunConfig,
                      *, fingerprint: dict[str, Any] | None = None) -> StageReport:
    """BPE pieces for every transcript of MANIFEST_DIR/manifest.parquet (training the BPE when none is set)."""
    stage = TokenizeStage(config.tokenizer, config.seed)
    table = read_manifest(manifest_dir, out_dir).select(list(TokenizeStage.input_columns))
    return run_stage(stage, table, out_dir, config, fingerprint=fingerprint)
