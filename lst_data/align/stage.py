"""The align stage: manifest rows -> `alignments.parquet` rows (ALIGNMENT_SCHEMA) + rejects.

The stage holds every backend to one contract: the aligned words must be the manifest's
normalized words, in order (else `alignment_mismatch`); times are clipped to the audio;
quiet word edges are trimmed for acoustic backends (lst_data.align.silence); silence spans
are derived by one rule set for all backends. `align_manifest` runs it over a manifest
directory and writes alignments.parquet, rejects.parquet, oov.parquet and align.json.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lst_data.align.base import Aligner, AlignFailure, Alignment, AlignRequest, Interval
from lst_data.align.config import AlignConfig
from lst_data.align.silence import silence_spans, trim_quiet_edges
from lst_data.audio import AudioError, changed_since_ingest, read_audio
from lst_data.config import RunConfig
from lst_data.core.config import RayConfig, to_dict
from lst_data.core.errors import UserError
from lst_data.core.rejects import Reject
from lst_data.core.runner import StageReport, TableParts, read_manifest, run_stage
from lst_data.core.stage import Resources, Stage, StageResult
from lst_data.core.storage import StoragePath, is_remote, write_parquet
from lst_data.core.tables import ALIGNMENT_SCHEMA, OOV_SCHEMA

BACKENDS: dict[str, str] = {
    "pocketsphinx": "lst_data.align.pocketsphinx_backend:PocketsphinxAligner",
    "mfa": "lst_data.align.mfa_backend:MfaAligner",
    "ctc": "lst_data.align.ctc_backend:CtcAligner",
    "textgrid": "lst_data.align.textgrid_backend:TextGridAligner",
    "lhotse": "lst_data.align.lhotse_backend:LhotseAligner",
}
# Backends that read the audio themselves; only their word edges are trimmed.
ACOUSTIC_BACKENDS = frozenset({"pocketsphinx", "mfa", "ctc"})

OOV_FILE = "oov.parquet"
SCORE_DECIMALS = 3  # scores are summarised at this precision (the figures are rounded to it anyway)


def make_aligner(config: AlignConfig) -> Aligner:
    module_name, cls_name = BACKENDS[config.backend].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(config)


class AlignStage(Stage):
    name = "align"
    table = "alignments"
    config_section = "align"
    input_columns = ("id", "key", "audio_path", "duration", "speaker", "normalized_text")
    output_schema = ALIGNMENT_SCHEMA
    resources = Resources(cpus=1.0)

    def __init__(self, config: AlignConfig) -> None:
        self.config = config
        self.aligner: Aligner | None = None
        if config.backend == "ctc" and config.ctc.device in ("auto", "cuda") and _cuda_available():
            self.resources = Resources(cpus=1.0, gpus=1.0)

    def prepare(self, inputs: TableParts, out_dir: StoragePath, ray: RayConfig) -> list[Reject]:
        """MFA: check the install and the model in the driver, before any worker starts; in
        train mode, train on the whole manifest once (the batches then align with that model)."""
        if self.config.backend == "mfa":
            from lst_data.align.mfa_backend import check_mfa_config, train_acoustic_model

            check_mfa_config(self.config.mfa)
            if self.config.mfa.mode == "train":
                if is_remote(out_dir):  # `mfa train` writes its model into a folder of this machine
                    raise UserError(f"align.mfa.mode = 'train' trains into the run folder, which must be local, "
                                    f"not {out_dir}")
                # MFA trains on the whole corpus at once: this fit is not bounded by a partition.
                requests = [AlignRequest.from_row(row) for row in inputs.read().to_pylist()]
                self.config = train_acoustic_model(requests, out_dir, self.config)
        return []

    def setup(self) -> None:
        self._loaded()

    def _loaded(self) -> Aligner:
        """The aligner, made on first use (once per worker)."""
        if self.aligner is None:
            self.aligner = make_aligner(self.config)
        return self.aligner

    def teardown(self) -> None:
        # An MFA worker process and its temporary root end here, not at interpreter exit.
        if self.aligner is not None:
            self.aligner.close()
            self.aligner = None

    def fitted(self) -> dict[str, Any]:
        # After MFA training the config names the trained model (and train mode its content).
        return {"aligner_config": to_dict(self.config)}

    def summarize(self, output: pa.Table) -> dict[str, Any]:
        scores = pc.drop_null(output["score"]).to_numpy() if output.num_rows else np.zeros(0)
        values, counts = np.unique(np.round(scores.astype(np.float64), SCORE_DECIMALS), return_counts=True)
        return {"aligned": output.num_rows, "oov": oov_report(output).to_pylist(),
                "model_hashes": sorted(set(output["model_hash"].to_pylist())),
                "scores": [[float(v), int(c)] for v, c in zip(values, counts, strict=True)]}

    def finalize(self, summaries: list[dict[str, Any]], out_dir: StoragePath) -> dict[str, Any]:
        oov = merge_oov_reports(s["oov"] for s in summaries)
        write_parquet(oov, out_dir / OOV_FILE)
        self.model_hashes = sorted(set().union(*(s["model_hashes"] for s in summaries)))
        scores: Counter[float] = Counter()
        for summary in summaries:
            scores.update({value: count for value, count in summary["scores"]})
        return {"aligned": sum(s["aligned"] for s in summaries), "oov_words": oov.num_rows,
                **score_distribution(scores)}

    def provenance(self) -> dict[str, Any]:
        # What the aligner ran with: after MFA training, the trained model's path.
        return {"model_hash": getattr(self, "model_hashes", []), "aligner_config": to_dict(self.config)}

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships the stage to its actors before setup(); a loaded model never travels.
        return {**self.__dict__, "aligner": None}

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        aligner = self._loaded()
        result = StageResult()
        unchanged = []
        for row in rows:
            if (changed := changed_since_ingest(row["audio_path"], row.get("audio_identity"))) is not None:
                result.rejects.append(self.reject(row["id"], "audio_changed", changed))
            else:
                unchanged.append(row)
        requests = [AlignRequest.from_row(row) for row in unchanged]
        outcomes = aligner.align_batch(requests) if requests else []
        if len(outcomes) != len(requests):
            raise RuntimeError(f"{aligner.name} returned {len(outcomes)} results for {len(requests)} utterances")
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, AlignFailure):
                result.rejects.append(self.reject(request.id, outcome.code, outcome.detail))
                continue
            aligned = self.to_row(request, outcome)
            if isinstance(aligned, Reject):
                result.rejects.append(aligned)
            else:
                result.rows.append(aligned)
        return result

    def to_row(self, request: AlignRequest, alignment: Alignment) -> dict[str, Any] | Reject:
        aligner = self._loaded()
        expected = [aligner.normalize_word(w) for w in request.words]
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
            "backend": aligner.name,
            "model_hash": aligner.model_hash,
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


def score_distribution(scores: Counter[float]) -> dict[str, float]:
    """Quantiles (linear interpolation) of the aligned utterances' scores, given as value -> count
    at SCORE_DECIMALS (the quality gate's view of the corpus; bounded however large the corpus)."""
    total = sum(scores.values())
    if total == 0:
        return {}
    values = np.array(sorted(scores), dtype=np.float64)
    ends = np.cumsum([scores[v] for v in values])  # rank of the last copy of each value, + 1

    def at(rank: int) -> float:
        return float(values[np.searchsorted(ends, rank, side="right")])

    figures = {}
    for name, q in (("min", 0.0), ("p05", 0.05), ("median", 0.5), ("max", 1.0)):
        position = q * (total - 1)
        low, frac = int(np.floor(position)), position - np.floor(position)
        value = at(low) if frac == 0 else at(low) + (at(low + 1) - at(low)) * frac
        figures[f"score_{name}"] = round(value, SCORE_DECIMALS)
    return figures


def merge_oov_reports(reports: Iterable[list[dict[str, Any]]]) -> pa.Table:
    """One (word, source, count) table from per-partition reports, most used first."""
    counts: Counter[tuple[str, str]] = Counter()
    for report in reports:
        counts.update({(row["word"], row["source"]): row["count"] for row in report})
    rows = [{"word": w, "source": src, "count": n}
            for (w, src), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return pa.Table.from_pylist(rows, schema=OOV_SCHEMA)


def oov_report(alignments: pa.Table) -> pa.Table:
    """(word, source, count) over the corpus: how many utterances used each fallback pronunciation."""
    flat = pc.list_flatten(alignments["oov"]) if alignments.num_rows else pa.array([], ALIGNMENT_SCHEMA.field("oov").type.value_type)
    table = pa.table({"word": pc.struct_field(flat, "word"), "source": pc.struct_field(flat, "source")})
    counts = table.group_by(["word", "source"]).aggregate([("word", "count")]).rename_columns(["word", "source", "count"])
    return counts.sort_by([("count", "descending"), ("word", "ascending")]).cast(OOV_SCHEMA)


def align_manifest(manifest_dir: str | Path, out_dir: str | Path, config: RunConfig,
                   *, fingerprint: dict[str, Any] | None = None) -> StageReport:
    """Align MANIFEST_DIR/manifest.parquet into OUT_DIR (alignments, rejects, oov, align.json)."""
    config.align.check_inputs_exist()
    return run_stage(AlignStage(config.align), read_manifest(manifest_dir, out_dir), out_dir, config, fingerprint=fingerprint)
