"""The units stages: sample frames for k-means, and turn each utterance into unit ids.

Both are `lst_data.core.stage.Stage`s, run by `run_stage`/`iter_stage` on Ray Data (one encoder
per actor, one GPU per actor when CUDA is present) or in process. Per-utterance problems
become rejects: missing or undecodable audio (`audio_missing`, `audio_unreadable`) and
audio too short for one frame (`units_failed`).

Outputs of the units stage (in OUT, written by `lst_data.core.runner.run_stage`):
- `units.parquet`: `lst_data.core.tables.UNITS_SCHEMA`, one row per utterance: units int16,
  not deduplicated, n_frames = len(units) = encoder.num_frames(num_samples);
- `codebook.npy` (+ `.json`) when `units.codebook` is None: trained by the stage's `prepare`;
- `rejects.parquet`, `units.json` (provenance: config, codebook hash, counts), `done.json`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lst_data import __version__
from lst_data.audio import AudioError, changed_since_ingest, read_audio
from lst_data.core.config import RayConfig, canonical_hash, to_dict, updated
from lst_data.core.errors import ConfigError, InputError
from lst_data.core.rejects import Reject
from lst_data.core.runner import PartitionWorker, StageReport, TableParts, map_items, read_manifest, run_stage
from lst_data.core.stage import Resources, Stage, StageResult
from lst_data.core.storage import (
    StoragePath,
    is_url,
    location,
    parquet_file,
    read_parquet,
    remove_tree,
    write_parquet,
)
from lst_data.core.tables import UNITS_SCHEMA
from lst_data.units.codebook import Codebook, CodebookError, load_codebook, save_codebook
from lst_data.units.codebook import sidecar_path as codebook_sidecar
from lst_data.units.config import UnitsConfig
from lst_data.units.encoders import SAMPLE_RATE, Encoder, build_encoder, resolve_device
from lst_data.units.kmeans import minibatch_kmeans, select_frames
from lst_data.units.nearest import NearestCentroid

if TYPE_CHECKING:
    from lst_data.config import RunConfig

INPUT_COLUMNS = ("id", "audio_path", "num_samples")
SAMPLE_GROUP_ROWS = 64  # utterances per row group of a partition's k-means sample file
CODEBOOK_FILE = "codebook.npy"  # what the stage trains into its folder when units.codebook is None

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("n", pa.int32(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("features", pa.binary(), nullable=False),  # float32 [n, dim], C order, little endian
    ]
)


def _resources(config: UnitsConfig) -> Resources:
    wants_gpu = config.device != "cpu" and torch.cuda.is_available()
    return Resources(cpus=1.0, gpus=1.0 if wants_gpu else 0.0)


class _EncodingStage(Stage):
    """Reads audio, rejects what cannot be encoded, encodes the rest in length-sorted batches."""

    name = "units"
    table = "units"
    config_section = "units"
    input_columns = INPUT_COLUMNS

    def __init__(self, config: UnitsConfig) -> None:
        self.config = config
        self.resources = _resources(config)
        self.encoder: Encoder | None = None

    def setup(self) -> None:
        if self.encoder is None:
            self.encoder = build_encoder(self.config)

    def encode_rows(
        self, rows: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], torch.Tensor | Reject]]:
        """(row, features [n, dim] or a Reject) for every row, in input order."""
        assert self.encoder is not None, "setup() was not called"
        encoder = self.encoder
        outcomes: list[torch.Tensor | Reject | None] = [None] * len(rows)
        waves: dict[int, torch.Tensor] = {}
        for i, row in enumerate(rows):
            outcome = self._read(row, encoder)
            if isinstance(outcome, Reject):
                outcomes[i] = outcome
            else:
                waves[i] = outcome
        limit = int(self.config.batch_seconds * SAMPLE_RATE)
        batch: list[int] = []
        for i in sorted(waves, key=lambda j: waves[j].shape[0]):
            if batch and waves[i].shape[0] * (len(batch) + 1) > limit:
                self._encode_into(batch, waves, outcomes, rows)
                batch = []
            batch.append(i)
        if batch:
            self._encode_into(batch, waves, outcomes, rows)
        for row, done in zip(rows, outcomes, strict=True):
            assert done is not None
            yield row, done

    def _read(self, row: dict[str, Any], encoder: Encoder) -> torch.Tensor | Reject:
        path = location(row["audio_path"])
        if not path.is_file():
            return self.reject(row["id"], "audio_missing", str(path))
        if (changed := changed_since_ingest(row["audio_path"], row.get("audio_identity"))) is not None:
            return self.reject(row["id"], "audio_changed", changed)
        try:
            samples, _ = read_audio(path, SAMPLE_RATE)
        except AudioError as err:
            return self.reject(row["id"], "audio_unreadable", str(err))
        if not np.isfinite(samples).all():  # ingest rejects these; a manifest made elsewhere may not
            return self.reject(row["id"], "audio_nonfinite", f"{path.name}: NaN or infinite samples")
        if encoder.num_frames(samples.shape[0]) < 1:
            return self.reject(
                row["id"],
                "units_failed",
                f"{samples.shape[0]} samples give no {encoder.frame_rate:g} Hz frame from {encoder.name} "
                f"(needs >= {encoder.min_samples})",
            )
        return torch.from_numpy(np.ascontiguousarray(samples))

    def _encode_into(self, batch: list[int], waves: dict[int, torch.Tensor], outcomes: list[Any],
                     rows: list[dict[str, Any]]) -> None:
        assert self.encoder is not None
        for i, features in zip(batch, self.encoder.encode([waves[i] for i in batch]), strict=True):
            # Never let a non-finite feature reach k-means or the nearest-centroid search.
            finite = bool(torch.isfinite(features).all())
            outcomes[i] = features if finite else self.reject(
                rows[i]["id"], "units_failed", f"{self.encoder.name} produced non-finite features"
            )


class FrameSampleStage(_EncodingStage):
    """Encodes utterances and keeps the frames `select_frames` picks (the k-means sample)."""

    output_schema = SAMPLE_SCHEMA

    def __init__(self, config: UnitsConfig, probability: float, seed: int) -> None:
        super().__init__(config)
        self.probability, self.seed = probability, seed

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        result = StageResult()
        for row, outcome in self.encode_rows(rows):
            if isinstance(outcome, Reject):
                result.rejects.append(outcome)
                continue
            picked = select_frames(row["id"], outcome.shape[0], self.probability, self.seed)
            frames = outcome[picked.to(outcome.device)].float().cpu().numpy()
            result.rows.append(
                {
                    "id": row["id"],
                    "n": frames.shape[0],
                    "dim": frames.shape[1],
                    "features": frames.astype("<f4").tobytes(),
                }
            )
        return result


class UnitsStage(_EncodingStage):
    """Audio -> nearest-centroid unit ids (int16), one encoder + codebook per worker.

    `prepare` trains the codebook on the stage's own input when `units.codebook` is None
    (into OUT/codebook.npy), else loads the configured one.
    """

    output_schema = UNITS_SCHEMA

    def __init__(self, config: UnitsConfig, seed: int = 0, codebook: Codebook | None = None) -> None:
        super().__init__(config)
        self.seed = seed
        self.codebook = codebook
        self.nearest: NearestCentroid | None = None

    def prepare(self, inputs: TableParts, out_dir: StoragePath, ray: RayConfig) -> list[Reject]:
        rejects: list[Reject] = []
        trained_path = out_dir / CODEBOOK_FILE
        if self.codebook is None and self.config.codebook is None:
            self.codebook = reusable_codebook(trained_path, inputs.fingerprint, self.config, self.seed)
            if self.codebook is None:
                trained = train_codebook(inputs, trained_path, self.config, self.seed, ray, trained_on=inputs.fingerprint)
                self.codebook, rejects = trained.codebook, trained.rejects
                self.refitted = f"trained {CODEBOOK_FILE} on the whole manifest"
        else:
            # A codebook trained by an earlier run with another units.codebook setting must not linger.
            for stale in (trained_path, codebook_sidecar(trained_path)):
                stale.unlink(missing_ok=True)
            if self.codebook is None:
                assert self.config.codebook is not None  # (else it was trained above)
                self.codebook = load_codebook(self.config.codebook)
        _check_codebook_matches(self.codebook, self.config)
        dim = build_encoder_for_counting(self.config).dim
        if self.codebook.dim != dim:
            raise ConfigError(
                f"units.codebook: {self.codebook.source} has dim {self.codebook.dim}; encoder {self.config.encoder} "
                f"gives {dim} (was it trained with another encoder or config?)"
            )
        if self.codebook.k > np.iinfo(np.int16).max + 1:
            raise ConfigError(f"codebook {self.codebook.source} has k = {self.codebook.k}: does not fit int16 unit ids")
        return rejects

    def fitted(self) -> dict[str, Any]:
        return {"codebook": None if self.codebook is None else self.codebook.sha256}

    def summarize(self, output: pa.Table) -> dict[str, Any]:
        return {"utterances": output.num_rows, "frames": int(pc.sum(output["n_frames"]).as_py() or 0)}

    def finalize(self, summaries: list[dict[str, Any]], out_dir: StoragePath) -> dict[str, Any]:
        return {"utterances": sum(s["utterances"] for s in summaries), "frames": sum(s["frames"] for s in summaries)}

    def provenance(self) -> dict[str, Any]:
        if self.codebook is None:  # prepare() is skipped when no utterance reached this stage
            return {"codebook": None}
        source = self.codebook.source
        return {"codebook": {"path": source if is_url(source) else str(Path(source).resolve()), "sha256": self.codebook.sha256,
                             "k": self.codebook.k}}

    def setup(self) -> None:
        super().setup()
        assert self.encoder is not None and self.codebook is not None, "prepare() was not called"
        self.nearest = NearestCentroid(self.codebook.centroids, self.encoder.device)

    def process_batch(self, rows: list[dict[str, Any]]) -> StageResult:
        assert self.encoder is not None and self.nearest is not None and self.codebook is not None
        result = StageResult()
        for row, outcome in self.encode_rows(rows):
            if isinstance(outcome, Reject):
                result.rejects.append(outcome)
                continue
            units = self.nearest(outcome).to(torch.int16).cpu().numpy()
            result.rows.append(
                {
                    "id": row["id"],
                    "units": units,
                    "frame_rate": float(self.encoder.frame_rate),
                    "n_frames": int(units.shape[0]),
                    "encoder": self.encoder.name,
                    "layer": self.encoder.layer,
                    "codebook_hash": self.codebook.sha256,
                    "k": self.codebook.k,
                }
            )
        return result


# ---------------------------------------------------------------- driver functions


@dataclass
class TrainReport:
    codebook: Codebook
    utterances: int  # utterances that contributed frames
    sample_frames: int
    corpus_frames: int
    inertia: float
    used_clusters: int
    rejects: list[Reject]
    encode_seconds: float
    kmeans_seconds: float


def reusable_codebook(path: StoragePath, trained_on: str | None, config: UnitsConfig, seed: int) -> Codebook | None:
    """The codebook an earlier run trained at `path` from the same input partitions and settings, if any."""
    if trained_on is None or not path.is_file():
        return None
    try:
        codebook = load_codebook(path)
    except CodebookError:
        return None
    same_settings = codebook.meta.get("units_config_hash") == canonical_hash({"seed": seed, "units": to_dict(config)})
    return codebook if same_settings and codebook.meta.get("trained_on") == trained_on else None


def train_codebook(
    manifest: pa.Table | TableParts,
    out_path: str | StoragePath,
    config: UnitsConfig,
    seed: int,
    ray_config: RayConfig,
    *,
    show_progress: bool = True,
    trained_on: str | None = None,
) -> TrainReport:
    """Sample frames across the corpus (Stage, on Ray or in process), train k-means, save the codebook.

    Memory on the driver is one buffer of the sampled frames and the rows of the utterances
    that give them, whatever the corpus size: the manifest is read a partition at a time.
    The sample is assembled in id order, so it does not depend on the partitioning.
    `trained_on` (the input partitions' fingerprint) is stored so a resume can reuse the file.
    """
    parts = manifest if isinstance(manifest, TableParts) else TableParts.of_table(manifest)
    counter = build_encoder_for_counting(config)
    corpus_frames = sum(
        counter.num_frames(n) for part in parts.iter_columns(["num_samples"]) for n in part["num_samples"].to_pylist()
    )
    if corpus_frames == 0:
        raise InputError("units: the manifest has no utterance long enough for one frame")
    probability = min(1.0, config.sample_frames / corpus_frames)
    started = time.perf_counter()
    # Workers encode and sample their partitions into files beside the codebook (a folder every
    # node sees); the driver then merges them in id order into the one sample buffer.
    scratch = location(out_path).parent / f".kmeans-sample-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    try:
        inputs = []
        for index, source in enumerate(parts.sources):
            if isinstance(source, pa.Table):
                source = scratch / f"input-{index:05d}.parquet"
                write_parquet(parts.sources[index], source)
            inputs.append(source)
        tasks: list[dict[str, Any]] = [{"input": str(path), "out": str(scratch / f"sample-{i:05d}.parquet"), "batch_size": ray_config.batch_size}
                 for i, path in enumerate(inputs)]
        worker = FrameSamplePartitions(config, probability, seed)
        results = list(map_items(worker, tasks, ray_config, resources=_resources(config), desc="units sample",
                                 show_progress=show_progress))
        total = sum(r["frames"] for r in results)
        rejects = [Reject(**r) for result in results for r in result["rejects"]]
        if total < config.k:
            raise ConfigError(
                f"units.k: only {total} frames to train k = {config.k} centroids; use a larger corpus or a smaller units.k"
            )
        device = resolve_device(config.device)
        # One partition's file at a time, then rows reordered by utterance id: the same sample
        # whatever the partitioning, with one file open (a merge would open every partition's).
        sample = torch.empty(total, counter.dim, dtype=torch.float32)
        ids: list[str] = []
        starts, counts = [], []
        filled = 0
        for task in tasks:
            for batch in parquet_file(location(task["out"])).iter_batches(batch_size=SAMPLE_GROUP_ROWS):
                n = batch.column("n").to_numpy().astype(np.int64)
                frames = np.frombuffer(b"".join(batch.column("features").to_pylist()), dtype="<f4")
                sample[filled : filled + len(frames) // counter.dim].numpy()[:] = frames.reshape(-1, counter.dim)
                ids += batch.column("id").to_pylist()
                starts.append(filled + np.cumsum(n) - n)
                counts.append(n)
                filled += int(n.sum())
        if ids:
            order = np.array(sorted(range(len(ids)), key=ids.__getitem__))
            first, n = np.concatenate(starts)[order], np.concatenate(counts)[order]
            moved_to = np.cumsum(n) - n
            sample = sample[torch.from_numpy(np.arange(filled) - np.repeat(moved_to, n) + np.repeat(first, n))]
    finally:
        remove_tree(scratch)
    encode_seconds = time.perf_counter() - started
    sample = sample[:filled].to(device)
    result = minibatch_kmeans(
        sample,
        config.k,
        steps=config.kmeans_steps,
        batch_size=config.kmeans_batch_size,
        init_size=config.kmeans_init_size,
        seed=seed,
    )
    meta = {
        "encoder": counter.name,
        "layer": counter.layer,
        "frame_rate": counter.frame_rate,
        "checkpoint": config.checkpoint,
        "units_config": to_dict(config),
        "units_config_hash": canonical_hash({"seed": seed, "units": to_dict(config)}),
        "seed": seed,
        "sample_frames": filled,
        "corpus_frames": corpus_frames,
        "inertia": result.inertia,
        "used_clusters": result.used_clusters,
        "toolkit_version": __version__,
        **({"trained_on": trained_on} if trained_on is not None else {}),
    }
    codebook = save_codebook(result.centroids, out_path, meta)
    return TrainReport(
        codebook,
        sum(r["utterances"] for r in results) - len(rejects),
        filled,
        corpus_frames,
        result.inertia,
        result.used_clusters,
        rejects,
        encode_seconds,
        result.seconds,
    )


@dataclass
class FrameSamplePartitions(PartitionWorker):
    """One partition's share of the k-means sample: its utterances that give any frame, encoded,
    their sampled frames written (sorted by id) to the task's file."""

    config: UnitsConfig
    probability: float
    seed: int
    stage: FrameSampleStage | None = None

    def setup(self) -> None:
        self.stage = FrameSampleStage(self.config, self.probability, self.seed)
        self.stage.setup()

    def teardown(self) -> None:
        if self.stage is not None:
            self.stage.teardown()

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        assert self.stage is not None and self.stage.encoder is not None, "setup() was not called"
        table = read_parquet(location(task["input"]), columns=list(INPUT_COLUMNS))
        frames = self.stage.encoder.num_frames
        picked = [len(select_frames(u, frames(n), self.probability, self.seed)) > 0
                  for u, n in zip(table["id"].to_pylist(), table["num_samples"].to_pylist(), strict=True)]
        table = table.filter(pa.array(picked, pa.bool_())).sort_by("id")
        rows: list[dict[str, Any]] = []
        rejects: list[Reject] = []
        for batch in table.to_batches(max_chunksize=task["batch_size"]):
            result = self.stage.process_batch(batch.to_pylist())
            rows += result.rows
            rejects += result.rejects
        # Small row groups: the driver's merge then holds one small group of every partition at a time.
        write_parquet(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), location(task["out"]),
                      row_group_size=SAMPLE_GROUP_ROWS)
        return {"utterances": table.num_rows, "frames": sum(r["n"] for r in rows),
                "rejects": [asdict(r) for r in rejects]}


def build_encoder_for_counting(config: UnitsConfig) -> Encoder:
    """An encoder on CPU, for frame counts and dims on the driver (workers build their own)."""
    return build_encoder(updated(config, {"device": "cpu"}))


def quantize_manifest(manifest_dir: str | Path, out_dir: str | Path, config: RunConfig,
                      *, fingerprint: dict[str, Any] | None = None, show_progress: bool = True) -> StageReport:
    """Units for every utterance of MANIFEST_DIR/manifest.parquet (training the codebook when none is set)."""
    stage = UnitsStage(config.units, config.seed)
    return run_stage(stage, read_manifest(manifest_dir, out_dir).select(list(INPUT_COLUMNS)), out_dir, config,
                     fingerprint=fingerprint, show_progress=show_progress)


def _check_codebook_matches(codebook: Codebook, config: UnitsConfig) -> None:
    """A codebook trained by this toolkit says which encoder made it; refuse a mismatch early."""
    trained_with = codebook.meta.get("encoder")
    if trained_with is not None and trained_with != config.encoder:
        raise ConfigError(
            f"units.codebook: {codebook.source} was trained on {trained_with} features; units.encoder is {config.encoder}"
        )
    rate = codebook.meta.get("frame_rate")
    if rate is not None and float(rate) != float(config.frame_rate):
        raise ConfigError(
            f"units.codebook: {codebook.source} was trained at {rate} Hz; units.frame_rate is {config.frame_rate}"
        )
