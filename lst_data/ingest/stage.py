"""Ingest: corpus -> `manifest.parquet` + `rejects.parquet`.

The stage decodes every file once, downmixes and resamples it to 16 kHz mono (written
to `OUT/audio/` only when the source is not already 16 kHz mono wav/flac), measures
`num_samples` from the decoded signal, and normalizes the transcript. Every check that
fails becomes a reject with a code (lst_data.core.rejects), so a bad file costs one row, not
the job.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from lst_data.audio import IN_PLACE_SUFFIXES, AudioError, decode, resample, to_mono, write_audio
from lst_data.config import RunConfig
from lst_data.core.config import RayConfig
from lst_data.core.paths import inside
from lst_data.core.rejects import Reject
from lst_data.core.runner import StageReport, run_stage
from lst_data.core.stage import Resources, Stage, StageResult
from lst_data.ingest.config import HfColumns, IngestConfig
from lst_data.ingest.readers import CorpusEntry, read_corpus
from lst_data.core.tables import MANIFEST_SCHEMA, sanitize_key
from lst_data.text import normalize_text

if TYPE_CHECKING:
    from lst_data.align.config import AlignConfig

ENTRY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("audio_path", pa.string()),
        pa.field("transcript", pa.binary()),
        pa.field("speaker", pa.string()),
        pa.field("transcript_source", pa.string()),
        pa.field("offset", pa.float64()),
        pa.field("duration", pa.float64()),
        pa.field("audio_bytes", pa.binary()),
    ]
)


class IngestStage(Stage):
    name = "ingest"
    table = "manifest"
    config_section = "ingest"
    input_columns = tuple(ENTRY_SCHEMA.names)
    output_schema = MANIFEST_SCHEMA
    resources = Resources(cpus=1.0)

    def __init__(self, config: IngestConfig, audio_dir: str | Path, corpus: str | Path | None = None,
                 align: AlignConfig | None = None) -> None:
        self.config = config
        self.audio_dir = Path(audio_dir)
        self.corpus = None if corpus is None else str(Path(corpus).resolve())
        self.align = align  # aligns long recordings before they are cut (long_recordings = 'segment')
        self.aligner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships the stage to its actors; a loaded aligner never travels.
        return {**self.__dict__, "aligner": None}

    def prepare(self, table: pa.Table, out_dir: Path, ray: RayConfig) -> list[Reject]:
        # Converted audio of an earlier run (of utterances since edited or deleted) never lingers.
        if self.audio_dir.is_dir():
            shutil.rmtree(self.audio_dir)
        return []

    def provenance(self) -> dict[str, Any]:
        return {"corpus": self.corpus}

    def finalize(self, output: pa.Table, out_dir: Path) -> dict[str, Any]:
        durations = output["duration"].to_pylist()
        return {"utterances": output.num_rows, "hours": float(sum(durations)) / 3600,
                "speakers": len(set(output["speaker"].to_pylist()))}

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        result = StageResult()
        for row in rows:
            for outcome in self.ingest_one(row):
                (result.rejects if isinstance(outcome, Reject) else result.rows).append(outcome)
        return result

    def ingest_one(self, row: dict[str, Any]) -> list[dict[str, Any] | Reject]:
        """The manifest row of one corpus entry, or its reject; a long recording cut by
        `long_recordings = 'segment'` gives one row (or reject) per piece."""
        cfg, utt_id = self.config, row["id"]
        if row["transcript"] is None:
            return [self.reject(utt_id, "transcript_missing", f"no transcript at {row['transcript_source']}")]
        try:
            text = row["transcript"].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            return [self.reject(utt_id, "transcript_not_utf8", f"{row['transcript_source']}: {err}")]
        normalized = normalize_text(text, lowercase=cfg.lowercase, numbers=cfg.numbers)
        if not normalized.text:
            return [self.reject(utt_id, "transcript_empty", f"{row['transcript_source']}: {text[:80]!r}")]
        if cfg.numbers == "reject" and "digits" in normalized.flags:
            return [self.reject(utt_id, "transcript_has_digits", text[:80])]

        source = Path(row["audio_path"])
        embedded = row.get("audio_bytes")
        if embedded is None and not source.is_file():
            return [self.reject(utt_id, "audio_missing", str(source))]
        offset = row.get("offset") or 0.0
        try:
            channels, source_rate = decode(source if embedded is None else io.BytesIO(embedded), offset, row.get("duration"))
        except AudioError as err:
            return [self.reject(utt_id, "audio_unreadable", str(err))]
        if channels.shape[0] == 0:
            return [self.reject(utt_id, "audio_empty", f"{source.name} decodes to 0 samples")]
        samples = resample(to_mono(channels), source_rate, cfg.sample_rate)
        duration = samples.shape[0] / cfg.sample_rate
        flags = list(normalized.flags)
        if source_rate != cfg.sample_rate:
            flags.append("resampled")
        if channels.shape[1] > 1:
            flags.append("downmixed")
        utterance = {"id": utt_id, "source_path": str(source), "source_sample_rate": source_rate, "offset": offset,
                     "speaker": row["speaker"], "text": text, "normalized_text": normalized.text, "flags": flags}
        # Only a whole file already usable as it is is referenced in place; a segment of one is written.
        in_place = embedded is None and not offset and row.get("duration") is None \
            and source.suffix.lower() in IN_PLACE_SUFFIXES and not {"resampled", "downmixed"} & set(flags)
        if duration <= cfg.max_duration:
            return [self.manifest_row(utterance, samples, source if in_place else None)]
        if cfg.long_recordings == "segment" and duration <= cfg.max_recording_duration:
            return self.segment(utterance, samples, source if in_place else None)
        return [self.reject(utt_id, "audio_too_long", f"{duration:.1f} s > {cfg.max_duration} s")]

    def manifest_row(self, utterance: dict[str, Any], samples: np.ndarray, in_place: Path | None) -> dict[str, Any] | Reject:
        """The manifest row of a decoded utterance (or a piece of a long one), after the length checks."""
        cfg, utt_id, normalized_text = self.config, utterance["id"], utterance["normalized_text"]
        duration = samples.shape[0] / cfg.sample_rate
        if duration < cfg.min_duration:
            return self.reject(utt_id, "audio_too_short", f"{duration:.3f} s < {cfg.min_duration} s")
        rate = len(normalized_text) / duration
        if rate > cfg.max_chars_per_second:
            return self.reject(
                utt_id, "transcript_too_long", f"{rate:.1f} chars/s > {cfg.max_chars_per_second} ({len(normalized_text)} chars in {duration:.2f} s)"
            )
        key = sanitize_key(utt_id)
        return {
            **utterance,
            "key": key,
            "audio_path": str(in_place) if in_place is not None else self._store(samples, key),
            "sample_rate": cfg.sample_rate,
            "num_samples": int(samples.shape[0]),
            "duration": duration,
        }

    def segment(self, recording: dict[str, Any], samples: np.ndarray, in_place: Path | None) -> list[dict[str, Any] | Reject]:
        """Align a long recording whole and cut it at pauses (lst_data.ingest.segmentation)."""
        from lst_data.ingest.segmentation import cut_at_pauses

        cfg, rate = self.config, self.config.sample_rate
        duration = samples.shape[0] / rate
        aligned = self._align_whole(recording, samples, in_place, duration)
        if isinstance(aligned, Reject):
            return [aligned]
        words = recording["normalized_text"].split()
        outcomes: list[dict[str, Any] | Reject] = []
        for piece in cut_at_pauses(aligned, duration, cfg.max_duration, cfg.segment_min_pause):
            piece_id = f"{recording['id']}-{round(piece.start * 1000):08d}"
            if piece.duration > cfg.max_duration:
                outcomes.append(self.reject(piece_id, "segment_too_long",
                                            f"{piece.start:.2f}-{piece.end:.2f} s of {recording['id']}: {piece.duration:.1f} s "
                                            f"> {cfg.max_duration} s without a pause of {cfg.segment_min_pause} s"))
                continue
            text = " ".join(words[piece.first_word:piece.stop_word])
            utterance = {**recording, "id": piece_id, "offset": round(recording["offset"] + piece.start, 6),
                         "text": text, "normalized_text": text, "flags": [*recording["flags"], "segmented"]}
            outcomes.append(self.manifest_row(utterance, samples[round(piece.start * rate):round(piece.end * rate)], None))
        return outcomes

    def _align_whole(self, recording: dict[str, Any], samples: np.ndarray, in_place: Path | None,
                     duration: float) -> list[dict[str, Any]] | Reject:
        """The aligned words of a whole recording (the align stage's rules), or why there are none."""
        import tempfile

        from lst_data.align import AlignStage

        if self.aligner is None:
            self.aligner = AlignStage(self.align)
        with tempfile.TemporaryDirectory(prefix="lst-long-") as scratch:
            audio = in_place or Path(scratch) / "recording.wav"
            if in_place is None:
                write_audio(audio, samples, self.config.sample_rate)
            result = self.aligner.process_batch([{
                "id": recording["id"], "key": sanitize_key(recording["id"]), "audio_path": str(audio),
                "duration": duration, "speaker": recording["speaker"], "normalized_text": recording["normalized_text"]}])
        if result.rejects:
            failure = result.rejects[0]
            return self.reject(recording["id"], "segmentation_failed", f"{failure.code}: {failure.detail}")
        return result.rows[0]["words"]

    def _store(self, samples: np.ndarray, key: str) -> str:
        """Write the 16 kHz mono copy of an utterance once."""
        target = inside(self.audio_dir, f"{key}.{self.config.audio_format}")
        write_audio(target, samples, self.config.sample_rate)
        return str(target.resolve())


def split_duplicates(items: Iterable[CorpusEntry | Reject]) -> tuple[list[CorpusEntry], list[Reject]]:
    """Entries with first-seen ids, and rejects for the reader's rejects and every later duplicate."""
    first_seen: dict[str, CorpusEntry] = {}
    rejects: list[Reject] = []
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
        elif item.id in first_seen:
            rejects.append(
                Reject(item.id, "ingest", "duplicate_id", f"{item.audio_path} repeats the id of {first_seen[item.id].audio_path}")
            )
        else:
            first_seen[item.id] = item
    return list(first_seen.values()), rejects


def list_corpus(corpus: str | Path, layout: str = "auto", hf_columns: HfColumns | None = None) -> tuple[pa.Table, list[Reject]]:
    """The ingest stage's input: one row per first-seen entry (sorted by id), and the reader's rejects."""
    entries, rejects = split_duplicates(read_corpus(corpus, layout, hf_columns))
    entries.sort(key=lambda e: e.id)
    return pa.Table.from_pylist([e.__dict__ for e in entries], schema=ENTRY_SCHEMA), rejects


def list_configured_corpus(corpus: str | Path, config: IngestConfig) -> tuple[pa.Table, list[Reject]]:
    """`list_corpus` with the layout and Hugging Face columns of the ingest section."""
    return list_corpus(corpus, config.layout, config.hf)


def ingest_corpus(corpus: str | Path, out_dir: str | Path, config: RunConfig, *,
                  listing: tuple[pa.Table, list[Reject]] | None = None,
                  fingerprint: dict[str, Any] | None = None) -> StageReport:
    """Read, check and normalize a corpus into OUT (manifest.parquet, rejects.parquet, ingest.json).

    The layout is `config.ingest.layout`. `listing` is `list_configured_corpus(corpus, config.ingest)`
    when the caller already made it (the build does, to fingerprint the corpus).
    """
    entries, reader_rejects = listing or list_configured_corpus(corpus, config.ingest)
    stage = IngestStage(config.ingest, Path(out_dir) / "audio", corpus=corpus, align=config.align)
    return run_stage(stage, entries, out_dir, config, prior_rejects=reader_rejects, fingerprint=fingerprint)
