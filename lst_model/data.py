"""Records for training and scoring: read from shards, split into train / held-out by transcript.

The split key is the *canonical transcript* (`canonical_transcript`: `lst_data.text`'s
normalization with numbers written out, whitespace collapsed), so one sentence read by
several voices or speakers lands on one side: no held-out text is ever heard or read in
training. Its sha256 decides membership (stable across runs and shard orders) and, as a
uint64, is the digest `train` records of every training transcript (`training_texts.npy`
beside the checkpoint), against which `score` checks a task's `sources`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lst_data.core.errors import ConfigError, UserError
from lst_data.core.storage import location
from lst_data.format.layout import DATASET_FILE, read_dataset
from lst_data.format.records import SampleRecord
from lst_data.text import normalize_text
from lst_model.config import DataConfig
from lst_model.tokens import TokenSpace

TRAINING_TEXTS = "training_texts.npy"


def load_records(shard_dir: str | Path) -> list[SampleRecord]:
    """Every sample of a shard set (without audio), in the reader's order (the shard stage's reader)."""
    from lst_data.format.reader import iter_records

    return list(iter_records(shard_dir, with_audio=False))


def read_dataset_json(shard_dir: str | Path) -> dict[str, Any]:
    """The shard set's dataset.json (`lst_data.format.layout.read_dataset`: bounded and checked
    against its schema); a folder without one (empty, or a build still writing it), or one
    that is unreadable or not a dataset.json, is a one-line user error."""
    try:
        return read_dataset(shard_dir)
    except FileNotFoundError:
        raise UserError(f"--shards: {shard_dir} has no dataset.json: not the shards of a finished `lst-data "
                        "build` (a build writes it last)") from None
    except OSError as err:
        raise UserError(f"--shards: {location(shard_dir) / DATASET_FILE} is unreadable ({err})") from None
    except ValueError as err:
        raise UserError(f"--shards: {location(shard_dir) / DATASET_FILE}: {err}") from None


def load_token_space(shard_dir: str | Path) -> TokenSpace:
    dataset = read_dataset_json(shard_dir)
    try:
        return TokenSpace.from_dataset_json(dataset)
    except KeyError as err:
        raise UserError(f"--shards: {shard_dir}/dataset.json lacks the token space ({err.args[0]})") from None


def canonical_transcript(text: str) -> str:
    """The form transcripts are compared in: normalized, numbers expanded, single spaces."""
    return normalize_text(text, numbers="expand").text


def transcript_digest(text: str) -> int:
    """uint64 of the sha256 of the canonical transcript (the split key and the contamination digest)."""
    return int.from_bytes(hashlib.sha256(canonical_transcript(text).encode("utf-8")).digest()[:8], "big")


def is_heldout_text(text: str, fraction: float) -> bool:
    """Stable membership of a transcript: the same text is held out in every run, in every voice."""
    return transcript_digest(text) / 2**64 < fraction


def is_heldout(record: SampleRecord, fraction: float) -> bool:
    return is_heldout_text(record.text, fraction)


def split_heldout(records: Sequence[SampleRecord], fraction: float) -> tuple[list[SampleRecord], list[SampleRecord]]:
    train = [r for r in records if not is_heldout(r, fraction)]
    heldout = [r for r in records if is_heldout(r, fraction)]
    if not train:
        raise ConfigError(f"data.heldout_fraction: no training utterances left after holding out {fraction:.0%} of {len(records)}")
    return train, heldout


@dataclass(frozen=True)
class TrainingUtterances:
    """A shard set's training utterances (held out by transcript, `split_heldout`): loaded once
    (data.input = 'memory'), or left to the DataLoader workers that stream them (`records` None)."""

    shard_dir: str | Path
    heldout_fraction: float
    records: list[SampleRecord] | None
    summary: str  # what the run trains on, for its first line

    @classmethod
    def of(cls, shard_dir: str | Path, data: DataConfig) -> TrainingUtterances:
        if data.input == "stream":  # records are read by the DataLoader workers, never all at once
            from lst_data.format.reader import ShardSet

            streamed = f"{ShardSet.from_dir(shard_dir).total_samples} utterances streamed ({data.stream_mode})"
            return cls(shard_dir, data.heldout_fraction, None, streamed)
        records, heldout = split_heldout(load_records(shard_dir), data.heldout_fraction)
        return cls(shard_dir, data.heldout_fraction, records,
                   f"{len(records)} training utterances ({len(heldout)} held out)")

    def transcripts(self) -> Iterator[str]:
        """The training utterances' transcripts (streamed: one pass over the records, without audio)."""
        if self.records is not None:
            return (r.text for r in self.records)
        from lst_data.format.reader import iter_records

        return (r.text for r in iter_records(self.shard_dir, with_audio=False)
                if not is_heldout(r, self.heldout_fraction))


def transcript_digests(texts: Iterable[str]) -> np.ndarray:
    """Sorted unique digests of transcripts (uint64): what `training_texts.npy` holds."""
    return np.unique(np.array([transcript_digest(t) for t in texts], dtype=np.uint64))


def write_training_texts(run_dir: str | Path, texts: Iterable[str], inherited: np.ndarray | None = None) -> Path:
    """The digests of a run's training transcripts, beside its checkpoint (deterministic bytes).

    Digests already there are kept: a run resumed on other shards has been trained on both; so
    are `inherited` ones: a fine-tuned run's weights saw its pretrained run's transcripts too."""
    path = Path(run_dir) / TRAINING_TEXTS
    digests = transcript_digests(texts)
    for known in (read_training_texts(run_dir), inherited):
        if known is not None:
            digests = np.union1d(known, digests)
    np.save(path, digests, allow_pickle=False)
    return path


def read_training_texts(run_dir: str | Path) -> np.ndarray | None:
    """The run's training-transcript digests, or None when the run predates them."""
    path = Path(run_dir) / TRAINING_TEXTS
    if not path.exists():
        return None
    digests = np.load(path, allow_pickle=False)
    if digests.dtype != np.uint64 or digests.ndim != 1:
        raise UserError(f"{path}: expected a 1-D uint64 array of transcript digests, got {digests.dtype} {digests.shape}")
    return digests


def contaminated(sources: Iterable[str], training_digests: np.ndarray) -> bool:
    """Whether any source transcript is (canonically) one the model was trained on."""
    wanted = np.array([transcript_digest(s) for s in sources], dtype=np.uint64)
    return bool(np.isin(wanted, training_digests).any())
