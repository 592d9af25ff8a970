"""Ingest: corpus -> `manifest.parquet` + `rejects.parquet`.

The stage decodes every file once, downmixes and resamples it to 16 kHz mono (written
to `OUT/audio/KEY.flac` only when the source is not already 16 kHz mono wav/flac),
measures `num_samples` from the decoded signal (a segment of a file, for lhotse and NeMo
manifests, is decoded alone), and normalizes the transcript. Every check
that fails becomes a reject with a code (lst_data.core.rejects), so a bad file costs one
row, not the job. Before any batch the driver screens the whole listing: invalid ids, a
later copy of an id (`duplicate_id`) and a second id with the same key (`key_collision`)
are rejected, and the first one ships. Files the reader ignored are listed, with the
reason, in ingest.json and in the summary. The manifest keeps the transcript as given in
`text` (the sample's `text_original`) and the spoken form in `normalized_text`.
"""

from __future__ import annotations

import io
import shutil
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lst_data.audio import (
    IN_PLACE_SUFFIXES,
    AudioError,
    SegmentPastEnd,
    audio_identity,
    decode,
    header_frames,
    header_seconds,
    resample,
    to_mono,
    write_audio,
)
from lst_data.config import RunConfig
from lst_data.core.config import updated
from lst_data.core.paths import inside
from lst_data.core.rejects import Reject
from lst_data.core.runner import StageReport, run_stage
from lst_data.core.stage import Resources, Stage, StageResult
from lst_data.core.storage import StoragePath, is_remote, is_url, location, remove_tree
from lst_data.core.tables import MANIFEST_SCHEMA
from lst_data.format.keys import sanitize_key
from lst_data.ingest.config import HfColumns, IngestConfig
from lst_data.ingest.layouts import read_corpus
from lst_data.ingest.readers import CorpusEntry, CorpusItem, Ignored, file_problem, without_bom
from lst_data.text import NormalizedText, normalize_text

if TYPE_CHECKING:
    from lst_data.align.config import AlignConfig

AUDIO_FOLDER = "audio"  # converted 16 kHz copies, under the ingest output folder

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
        pa.field("channel", pa.int32()),
    ]
)


class IngestStage(Stage):
    name = "ingest"
    table = "manifest"
    config_section = "ingest"
    input_columns = tuple(ENTRY_SCHEMA.names)
    output_schema = MANIFEST_SCHEMA
    resources = Resources(cpus=1.0)

    def __init__(self, config: IngestConfig, audio_dir: str | StoragePath, corpus: str | StoragePath | None = None,
                 align: AlignConfig | None = None, ignored: Sequence[Ignored] = ()) -> None:
        self.config = config
        self.audio_root = self.audio_dir = location(audio_dir)
        self.corpus = None if corpus is None else str(corpus) if is_url(corpus) else str(Path(str(corpus)).resolve())
        self.ignored = list(ignored)
        self.align = align  # aligns long recordings before they are cut (long_recordings = 'segment')
        self.aligner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray ships the stage to its actors; a loaded aligner never travels.
        return {**self.__dict__, "aligner": None}

    def open_partition(self, part: str) -> None:
        # Each partition converts into a folder of its own, emptied when the partition reruns:
        # converted audio of utterances since edited or deleted never lingers.
        self.audio_dir = self.audio_root / part
        remove_tree(self.audio_dir)

    def provenance(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "ignored": [vars(i) for i in self.ignored]}

    def summarize(self, output: pa.Table) -> dict[str, Any]:
        return {"utterances": output.num_rows, "seconds": float(pc.sum(output["duration"]).as_py() or 0.0),
                "speakers": sorted(set(output["speaker"].to_pylist()))}

    def finalize(self, summaries: list[dict[str, Any]], out_dir: StoragePath) -> dict[str, Any]:
        speakers = set().union(*(s["speakers"] for s in summaries)) if summaries else set()
        return {"utterances": sum(s["utterances"] for s in summaries),
                "hours": sum(s["seconds"] for s in summaries) / 3600,
                "speakers": len(speakers), "ignored_files": len(self.ignored)}

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        result = StageResult()
        for row in rows:
            for outcome in self.ingest_one(row):
                if isinstance(outcome, Reject):
                    result.rejects.append(outcome)
                else:
                    result.rows.append(outcome)
        return result

    def ingest_one(self, row: dict[str, Any]) -> list[dict[str, Any] | Reject]:
        """The manifest row of one corpus entry, or its reject; a long recording cut by
        `long_recordings = 'segment'` gives one row (or reject) per piece."""
        transcript = self._transcript(row)
        if isinstance(transcript, Reject):
            return [transcript]
        source = location(row["audio_path"])
        embedded = row.get("audio_bytes")
        audio = self._audio(row["id"], source, embedded)
        if isinstance(audio, Reject):
            return [audio]
        offset = row.get("offset") or 0.0
        whole_file = embedded is None and not offset and row.get("duration") is None
        decoded = self._decode(row, source, audio, offset, named=embedded is None)
        if isinstance(decoded, Reject):
            return [decoded]
        channels, source_rate = decoded
        kept = self._checked_channels(row, source, audio, channels, whole_file)
        if isinstance(kept, Reject):
            return [kept]
        return self._utterance_rows(row, transcript, source, audio, kept, source_rate, offset, whole_file)

    def _transcript(self, row: dict[str, Any]) -> tuple[str, NormalizedText] | Reject:
        """(the transcript as given, its normalized form) of a corpus entry, or why it has none to ship."""
        cfg, utt_id = self.config, row["id"]
        if row["transcript"] is None:
            return self.reject(utt_id, "transcript_missing", f"no transcript at {row['transcript_source']}")
        try:
            text = without_bom(row["transcript"]).decode("utf-8").strip()
        except UnicodeDecodeError as err:
            return self.reject(utt_id, "transcript_not_utf8", f"{row['transcript_source']}: {err}")
        normalized = normalize_text(text, lowercase=cfg.lowercase, numbers=cfg.numbers, normalizer=cfg.normalizer)
        if "nonspeech_only" in normalized.flags:
            return self.reject(utt_id, "transcript_nonspeech", f"{row['transcript_source']}: {text[:80]!r}")
        if not normalized.text:
            return self.reject(utt_id, "transcript_empty", f"{row['transcript_source']}: {text[:80]!r}")
        if cfg.numbers == "reject" and "digits" in normalized.flags:
            return self.reject(utt_id, "transcript_has_digits", text[:80])
        return text, normalized

    def _audio(self, utt_id: str, source: StoragePath, embedded: bytes | None) -> Path | bytes | Reject:
        """Where the entry's encoded audio is read from: the local file itself, or its bytes (held by
        the corpus, or fetched from an object store); or why it cannot be read."""
        if embedded is not None:
            return embedded
        if is_remote(source):
            # One request: the object is read whole (an utterance, at most a few MB) and then
            # converted into the run folder, so no later step reads the object store.
            try:
                return source.read_bytes()
            except FileNotFoundError:
                return self.reject(utt_id, "audio_missing", str(source))
            except OSError as err:
                return self.reject(utt_id, "file_unreadable", f"{source}: {err}")
        if (problem := file_problem(source)) is not None:
            return self.reject(utt_id, *problem)
        return source

    def _decode(self, row: dict[str, Any], source: StoragePath, audio: Path | bytes, offset: float,
                named: bool) -> tuple[np.ndarray, int] | Reject:
        """([frames, channels], sample rate) of the entry's audio (its segment), or why it does not decode;
        `named`: errors name the source file (embedded audio has none)."""
        utt_id = row["id"]
        if (too_long := self._declared_too_long(_readable(audio), offset, row.get("duration"))) is not None:
            return self.reject(utt_id, "audio_too_long", too_long)
        try:
            channels, source_rate = decode(_readable(audio), offset, row.get("duration"),
                                           name=source.name if named else None)
        except SegmentPastEnd as err:
            return self.reject(utt_id, "segment_past_end", str(err))
        except AudioError as err:
            return self.reject(utt_id, "audio_unreadable", str(err))
        if channels.shape[0] == 0:
            return self.reject(utt_id, "audio_empty", f"{source.name} decodes to 0 samples")
        return channels, source_rate

    def _checked_channels(self, row: dict[str, Any], source: StoragePath, audio: Path | bytes, channels: np.ndarray,
                          whole_file: bool) -> np.ndarray | Reject:
        """The decoded channels to keep (the one a supervision names, else all), or why the audio is
        damaged: shorter than its header promises, non-finite samples, a downmix that cancels."""
        utt_id = row["id"]
        promised = header_frames(source, None if isinstance(audio, Path) else audio) if whole_file else None
        if promised is not None and channels.shape[0] < promised:
            return self.reject(utt_id, "audio_truncated",
                               f"{source.name}: {channels.shape[0]} of the {promised} frames its header promises")
        finite = np.isfinite(channels)
        if not finite.all():
            return self.reject(utt_id, "audio_nonfinite",
                               f"{source.name}: {finite.size - int(finite.sum())} NaN or infinite samples")
        channel = row.get("channel")
        if channel is not None and channel >= channels.shape[1]:
            return self.reject(utt_id, "audio_unreadable",
                               f"{source.name}: channel {channel} named, the file has {channels.shape[1]}")
        if channel is not None:
            return channels[:, channel:channel + 1]
        if (cancelled := downmix_cancels(channels)) is not None:
            return self.reject(utt_id, "audio_downmix_cancels", f"{source.name}: {cancelled}")
        return channels

    def _utterance_rows(self, row: dict[str, Any], transcript: tuple[str, NormalizedText], source: StoragePath,
                        audio: Path | bytes, channels: np.ndarray, source_rate: int, offset: float,
                        whole_file: bool) -> list[dict[str, Any] | Reject]:
        """The manifest row (or a long recording's pieces) of decoded, checked audio, after the length checks."""
        cfg, utt_id = self.config, row["id"]
        text, normalized = transcript
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
        in_place = audio if (whole_file and isinstance(audio, Path) and row.get("channel") is None
                             and audio.suffix.lower() in IN_PLACE_SUFFIXES
                             and not {"resampled", "downmixed"} & set(flags)) else None
        if duration <= cfg.max_duration:
            return [self.manifest_row(utterance, samples, in_place)]
        if cfg.long_recordings == "segment" and duration <= cfg.max_recording_duration:
            return self.segment(utterance, samples, in_place)
        return [self.reject(utt_id, "audio_too_long", f"{duration:.1f} s > {cfg.max_duration} s")]

    def _declared_too_long(self, audio: Any, offset: float, duration: float | None) -> str | None:
        """Why an utterance is too long from its header alone, before anything is decoded: a header
        claiming 1 Hz for a few KB of samples would otherwise resample to gigabytes."""
        cfg = self.config
        limit = cfg.max_recording_duration if cfg.long_recordings == "segment" else cfg.max_duration
        if duration is None and (whole := header_seconds(audio)) is not None:
            duration = whole - offset
        if duration is None or duration <= limit:
            return None
        return f"{duration:.1f} s (from its header) > {limit} s"

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
            "audio_identity": audio_identity(in_place) if in_place is not None else None,
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
            # The whole recording only supplies its pauses; each piece passes the quality gate
            # in the align step. A per-frame score over minutes of mixed speech is not what the
            # gate was calibrated on (a 3-minute demo recording scored -35.9 against -30).
            if self.align is None:
                raise ValueError("long_recordings = 'segment' aligns long recordings: IngestStage needs `align`")
            self.aligner = AlignStage(updated(self.align, {"pocketsphinx": {"min_score": None}}))
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
        return str(target)


def _readable(audio: Path | bytes) -> Path | io.BytesIO:
    """What the decoder reads: the local file, or a fresh stream over the audio's bytes."""
    return audio if isinstance(audio, Path) else io.BytesIO(audio)


# A downmix this much quieter than its loudest channel has cancelled (phase-inverted channels).
DOWNMIX_CANCEL_RATIO = 0.1


def downmix_cancels(channels: np.ndarray) -> str | None:
    """Why averaging the channels of [frames, channels] loses the signal, or None."""
    if channels.shape[1] < 2 or channels.shape[0] == 0:
        return None
    loudest = float(np.sqrt(np.mean(np.square(channels, dtype=np.float64), axis=0)).max())
    mixed = float(np.sqrt(np.mean(np.square(channels.mean(axis=1, dtype=np.float64)))))
    if loudest < 1e-4 or mixed >= DOWNMIX_CANCEL_RATIO * loudest:
        return None
    return (f"its {channels.shape[1]} channels cancel when averaged (RMS {mixed:.2g} against {loudest:.2g} in the "
            "loudest channel: phase-inverted?); name the channel to use (a lhotse supervision's `channel`, "
            "a JSONL manifest's \"channel\")")


def id_problem(utterance_id: str) -> str | None:
    """Why an id cannot name an utterance, or None: any other UTF-8 string is a valid id."""
    if not utterance_id.strip():
        return "the id is empty"
    if utterance_id != utterance_id.strip():
        return "the id starts or ends with white space"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in utterance_id):
        return "the id holds control characters or is not valid UTF-8"
    return None


def _reject_id(entry: CorpusEntry) -> str:
    """An invalid id as a reject row can store it: lone surrogates escaped; where it is empty,
    where the entry came from (schemas/reject.v1.json: the file path when no id could be made)."""
    return entry.id.encode("utf-8", errors="backslashreplace").decode("utf-8") or entry.transcript_source


def screen_stream(items: Iterable[CorpusItem]) -> Iterator[CorpusItem]:
    """The reader's items with every entry that may not ship turned into a reject, in reader order.

    Of two entries with one id, or with two ids that map to one sample key, the first
    (in reader order) ships and the later one is rejected. Only ids, keys and first paths
    are remembered, never the entries themselves.
    """
    first_path: dict[str, str] = {}  # id -> audio path of the copy that ships
    id_of_key: dict[str, str] = {}
    for item in items:
        if isinstance(item, (Reject, Ignored)):
            yield item
        elif (problem := id_problem(item.id)) is not None:
            yield Reject(_reject_id(item), "ingest", "id_invalid", f"{item.transcript_source}: {problem}")
        elif item.id in first_path:
            yield Reject(item.id, "ingest", "duplicate_id", f"{item.audio_path} repeats the id of {first_path[item.id]}")
        elif (key := sanitize_key(item.id)) in id_of_key:
            yield Reject(item.id, "ingest", "key_collision", f"key {key!r} is already the key of id {id_of_key[key]!r}")
        else:
            first_path[item.id], id_of_key[key] = item.audio_path, item.id
            yield item


def screen_entries(items: Iterable[CorpusItem]) -> tuple[list[CorpusEntry], list[Reject], list[Ignored]]:
    """`screen_stream` split into entries that may ship, rejects, and ignored files."""
    entries: list[CorpusEntry] = []
    rejects: list[Reject] = []
    ignored: list[Ignored] = []
    for item in screen_stream(items):
        if isinstance(item, Reject):
            rejects.append(item)
        elif isinstance(item, Ignored):
            ignored.append(item)
        else:
            entries.append(item)
    return entries, rejects, ignored


def list_corpus(corpus: str | Path, layout: str = "auto",
                hf_columns: HfColumns | None = None) -> tuple[pa.Table, list[Reject], list[Ignored]]:
    """The ingest stage's input (one row per entry that may ship, sorted by id), rejects and ignored files."""
    entries, rejects, ignored = screen_entries(read_corpus(corpus, layout, hf_columns))
    entries.sort(key=lambda e: e.id)
    return pa.Table.from_pylist([e.__dict__ for e in entries], schema=ENTRY_SCHEMA), rejects, ignored


def spill_listing(corpus: str | StoragePath, config: IngestConfig, path: Path,
                  chunk_rows: int = 1024) -> tuple[int, list[Reject], list[Ignored]]:
    """Stream the screened listing into the Parquet file `path` (reader order), holding one chunk of
    entries at a time; returns (entries written, rejects, ignored files)."""
    rejects: list[Reject] = []
    ignored: list[Ignored] = []
    chunk: list[dict[str, Any]] = []
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, ENTRY_SCHEMA) as writer:  # one row group per chunk: routing reads it back by chunk
        for item in screen_stream(read_corpus(corpus, config.layout, config.hf)):
            if isinstance(item, Reject):
                rejects.append(item)
            elif isinstance(item, Ignored):
                ignored.append(item)
            else:
                chunk.append(item.__dict__)
            if len(chunk) >= chunk_rows:
                writer.write_table(pa.Table.from_pylist(chunk, schema=ENTRY_SCHEMA))
                written += len(chunk)
                chunk.clear()
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=ENTRY_SCHEMA))
            written += len(chunk)
    return written, rejects, ignored


def ignored_notes(ingest_json: dict[str, Any], limit: int = 20) -> list[str]:
    """"ignored, because ..." summary lines for the files an ingest run did not read."""
    ignored = ingest_json.get("ignored") or []
    notes = [f"ignored {item['path']}, because {item['reason']}" for item in ignored[:limit]]
    if len(ignored) > limit:
        notes.append(f"... and {len(ignored) - limit} more ignored files (see ingest.json)")
    return notes


def list_configured_corpus(corpus: str | Path, config: IngestConfig) -> tuple[pa.Table, list[Reject], list[Ignored]]:
    """`list_corpus` with the layout and Hugging Face columns of the ingest section."""
    return list_corpus(corpus, config.layout, config.hf)


def ingest_corpus(corpus: str | Path, out_dir: str | Path, config: RunConfig, *,
                  listing: tuple[pa.Table, list[Reject], list[Ignored]] | None = None,
                  fingerprint: dict[str, Any] | None = None) -> StageReport:
    """Read, check and normalize a corpus into OUT (manifest.parquet, rejects.parquet, ingest.json).

    The layout is `config.ingest.layout`. `listing` is `list_configured_corpus(corpus, config.ingest)`
    when the caller already made it (the build does, to fingerprint the corpus).
    """
    entries, reader_rejects, ignored = listing or list_configured_corpus(corpus, config.ingest)
    audio_dir = Path(out_dir) / AUDIO_FOLDER
    if audio_dir.is_dir():  # converted audio of an earlier run never lingers
        shutil.rmtree(audio_dir)
    stage = IngestStage(config.ingest, audio_dir, corpus=corpus, align=config.align, ignored=ignored)
    return run_stage(stage, entries, out_dir, config, prior_rejects=reader_rejects, fingerprint=fingerprint)
