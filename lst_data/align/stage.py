"""The align stage: manifest rows -> `alignments.parquet` rows (ALIGNMENT_SCHEMA) + rejects.

The stage holds every backend to one contract: the aligned words must be the manifest's
normalized words, in order (else `alignment_mismatch`); times are clipped to the audio;
quiet word edges are trimmed for acoustic backends (lst_data.align.silence); silence spans
are derived by one rule set for all backends. `align_manifest` runs it over a manifest
directory and writes alignments.parquet, rejects.parquet, oov.parquet and align.json.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lst_data.align.base import Aligner, AlignFailure, Alignment, AlignRequest, Interval
from lst_data.align.config import AlignConfig
from lst_data.align.silence import silence_spans, trim_quiet_edges
from lst_data.audio import AudioError, read_audio
from lst_data.config import ConfigError, RunConfig, to_dict
from lst_data.rejects import Reject, write_rejects
from lst_data.stage import Resources, Stage, StageResult, run_stage_to_parquet
from lst_data.tables import ALIGNMENT_SCHEMA

BACKENDS: dict[str, str] = {
    "pocketsphinx": "lst_data.align.pocketsphinx_backend:PocketsphinxAligner",
    "mfa": "lst_data.align.mfa_backend:MfaAligner",
    "ctc": "lst_data.align.ctc_backend:CtcAligner",
    "textgrid": "lst_data.align.textgrid_backend:TextGridAligner",
}
# Backends that read the audio themselves; only their word edges are trimmed.
ACOUSTIC_BACKENDS = frozenset({"pocketsphinx", "mfa", "ctc"})

OOV_SCHEMA = pa.schema(
    [pa.field("word", pa.string()), pa.field("source", pa.string()), pa.field("count", pa.int64())]
)


def check_config(config: AlignConfig) -> None:
    """Raise ConfigError for a config no worker could run, before any worker starts."""
    if config.backend not in BACKENDS:
        raise ConfigError(f"unknown align.backend {config.backend!r}; choose from {', '.join(BACKENDS)}")
    if config.oov not in ("g2p", "reject"):
        raise ConfigError(f"align.oov must be 'g2p' or 'reject', got {config.oov!r}")
    required = {
        "textgrid": ("align.textgrid.directory", config.textgrid.directory),
        "ctc": ("align.ctc.checkpoint", config.ctc.checkpoint),
        "mfa": ("align.mfa.acoustic_model", config.mfa.acoustic_model or (config.mfa.mode == "train" or None)),
    }
    if config.backend in required and required[config.backend][1] is None:
        raise ConfigError(f"backend {config.backend!r} needs {required[config.backend][0]}")
    if config.backend == "mfa" and config.mfa.mode not in ("worker", "batch", "train"):
        raise ConfigError(f"align.mfa.mode must be 'worker', 'batch' or 'train', got {config.mfa.mode!r}")
    if config.backend == "mfa":
        from lst_data.align.mfa_backend import check_mfa_config

        check_mfa_config(config.mfa)


def make_aligner(config: AlignConfig) -> Aligner:
    check_config(config)
    module_name, cls_name = BACKENDS[config.backend].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(config)


class AlignStage(Stage):
    name = "align"
    input_columns = ("id", "key", "audio_path", "duration", "speaker", "normalized_text")
    output_schema = ALIGNMENT_SCHEMA
    resources = Resources(cpus=1.0)

    def __init__(self, config: AlignConfig) -> None:
        self.config = config
        self.aligner: Aligner | None = None
        if config.backend == "ctc" and config.ctc.device in ("auto", "cuda") and _cuda_available():
            self.resources = Resources(cpus=1.0, gpus=1.0)

    def setup(self) -> None:
        if self.aligner is None:
            self.aligner = make_aligner(self.config)

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships the stage to its actors before setup(); a loaded model never travels.
        return {**self.__dict__, "aligner": None}

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        self.setup()
        requests = [AlignRequest.from_row(row) for row in rows]
        outcomes = self.aligner.align_batch(requests)
        if len(outcomes) != len(requests):
            raise RuntimeError(f"{self.aligner.name} returned {len(outcomes)} results for {len(requests)} utterances")
        result = StageResult()
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, AlignFailure):
                result.rejects.append(self.reject(request.id, outcome.code, outcome.detail))
                continue
            row = self.to_row(request, outcome)
            (result.rejects if isinstance(row, Reject) else result.rows).append(row)
        return result

    def to_row(self, request: AlignRequest, alignment: Alignment) -> dict[str, Any] | Reject:
        expected = [self.aligner.normalize_word(w) for w in request.words]
        found = [w.label for w in alignment.words]
        if found != expected:
            return self.reject(request.id, "alignment_mismatch", _first_difference(expected, found))
        alignment = replace(
            alignment, words=[replace(w, label=word) for w, word in zip(alignment.words, request.words, strict=True)]
        )
        if self.config.backend in ACOUSTIC_BACKENDS and self.config.trim_db > 0:
            try:
                samples, rate = read_audio(request.audio_path, 16000)
            except AudioError as err:
                return self.reject(request.id, "align_failed", f"audio: {err}")
            alignment = trim_quiet_edges(alignment, samples, rate, self.config.trim_db)
        words = _clip(alignment.words, request.duration)
        if any(b.start < a.end - 1e-6 for a, b in zip(words, words[1:], strict=False)):
            return self.reject(request.id, "align_failed", "word intervals overlap or are out of order")
        silences = silence_spans(words, alignment.labelled_silences, request.duration, self.config.min_silence)
        return {
            "id": request.id,
            "backend": self.aligner.name,
            "model_hash": self.aligner.model_hash,
            "words": [{"word": w.label, "start": w.start, "end": w.end} for w in words],
            "phones": [
                {"phone": p.label, "start": p.start, "end": p.end, "word_index": p.word_index}
                for p in _clip(alignment.phones, request.duration)
            ],
            "chars": None if alignment.chars is None else [
                {"char": c.label, "start": c.start, "end": c.end, "word_index": c.word_index}
                for c in _clip(alignment.chars, request.duration)
            ],
            "silences": [{"start": s.start, "end": s.end, "rule": s.label} for s in silences],
            "score": alignment.score,
            "oov": [{"word": o.word, "source": o.source} for o in alignment.oov],
        }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _clip(intervals: Sequence[Interval], duration: float) -> list[Interval]:
    clipped = []
    for i in intervals:
        start = round(min(max(i.start, 0.0), duration), 6)
        clipped.append(replace(i, start=start, end=round(min(max(i.end, start), duration), 6)))
    return clipped


def _first_difference(expected: list[str], found: list[str]) -> str:
    for index, (want, got) in enumerate(zip(expected, found, strict=False)):
        if want != got:
            return f"word {index}: expected {want!r}, aligner gave {got!r}"
    return f"expected {len(expected)} words, aligner gave {len(found)}"


def oov_report(alignments: pa.Table) -> pa.Table:
    """(word, source, count) over the corpus: how many utterances used each fallback pronunciation."""
    flat = pc.list_flatten(alignments["oov"]) if alignments.num_rows else pa.array([], ALIGNMENT_SCHEMA.field("oov").type.value_type)
    table = pa.table({"word": pc.struct_field(flat, "word"), "source": pc.struct_field(flat, "source")})
    counts = table.group_by(["word", "source"]).aggregate([("word", "count")]).rename_columns(["word", "source", "count"])
    return counts.sort_by([("count", "descending"), ("word", "ascending")]).cast(OOV_SCHEMA)


def _with_trained_mfa_model(config: RunConfig, manifest: pa.Table, out_dir: Path) -> RunConfig:
    """Train MFA on the whole manifest once; the batches then align with that model."""
    from lst_data.align.mfa_backend import train_acoustic_model

    requests = [AlignRequest.from_row(row) for row in manifest.to_pylist()]
    return replace(config, align=train_acoustic_model(requests, out_dir, config.align))


@dataclass
class AlignReport:
    alignments: pa.Table
    rejects: list[Reject]
    oov: pa.Table
    seconds: float
    audio_seconds: float

    @property
    def real_time_factor(self) -> float:
        """Processing seconds per audio second (lower is faster)."""
        return self.seconds / self.audio_seconds if self.audio_seconds else float("nan")


def align_manifest(manifest_dir: str | Path, out_dir: str | Path, config: RunConfig) -> AlignReport:
    """Align MANIFEST_DIR/manifest.parquet into OUT_DIR (alignments, rejects, oov, align.json)."""
    from lst_data import __version__

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = pq.read_table(Path(manifest_dir) / "manifest.parquet")
    check_config(config.align)
    if config.align.backend == "mfa" and config.align.mfa.mode == "train" and manifest.num_rows:
        config = _with_trained_mfa_model(config, manifest, out_dir)
    stage = AlignStage(config.align)
    path = out_dir / "alignments.parquet"
    rejects: list[Reject] = []
    if manifest.num_rows:
        try:
            rejects = run_stage_to_parquet(stage, manifest, path, config.ray).rejects
        finally:  # the local runner's aligner (an MFA worker process, its temp root) ends here
            if stage.aligner is not None:
                stage.aligner.close()
    else:
        pq.write_table(ALIGNMENT_SCHEMA.empty_table(), path)
    alignments = pq.read_table(path, schema=ALIGNMENT_SCHEMA)
    write_rejects(rejects, out_dir / "rejects.parquet")
    oov = oov_report(alignments)
    pq.write_table(oov, out_dir / "oov.parquet")
    provenance = {
        "stage": "align",
        "toolkit_version": __version__,
        "manifest": str((Path(manifest_dir) / "manifest.parquet").resolve()),
        "config": to_dict(config.align),
        "config_hash": config.section_hash("align"),
        "model_hash": sorted(set(alignments["model_hash"].to_pylist())),
        "counts": {"utterances": manifest.num_rows, "aligned": alignments.num_rows, "rejects": len(rejects),
                   "oov_words": oov.num_rows},
    }
    (out_dir / "align.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    audio = float(pc.sum(manifest["duration"]).as_py() or 0.0)
    return AlignReport(alignments, rejects, oov, time.perf_counter() - started, audio)
