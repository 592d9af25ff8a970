"""Speech-unit settings (owned by the units stage).

Everything that changes which unit id a frame gets lives here, so `section_hash("units")`
changes whenever the units could. Execution-only settings (device, batch sizes) are here
too: they never change the ids (batching is exact, see docs/units.md), but keeping one
section keeps the config reference in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from lst_data.core.config import Section, doc


class UnitsConfig(Section):
    encoder: Literal["mfcc", "logmel", "hubert"] = doc("Frame encoder: mfcc (offline default), logmel, hubert.", "mfcc")
    frame_rate: float = doc("Unit frame rate in Hz (LST: 25 Hz = 40 ms).", 25.0, gt=0, le=1000)
    k: int = doc("Codebook size (k-means clusters; unit ids are int16).", 100, ge=2, le=32768)

    # hubert
    checkpoint: str | None = doc(
        "hubert only: local checkpoint, either a fairseq .pt file (HuBERT / wav2vec2, e.g. "
        "mhubert_base_25hz.pt) or a Hugging Face model folder (config.json + model.safetensors "
        "or pytorch_model.bin). Loaded with weights_only; never downloaded.",
        None,
        names_file=True,
    )
    layer: int = doc(
        "hubert only: transformer layer (1-based) whose output is quantized; LST and SpiritLM "
        "use layer 11 of mHuBERT-25Hz. Written as null in units.parquet for mfcc/logmel.",
        11,
        ge=1,
        le=128,
    )
    hubert_padding: Literal["center", "none"] = doc(
        "hubert only: 'center' zero-pads (R - S) / 2 samples on each side (R = receptive field, "
        "S = hop of the conv stack) so N samples give floor(N / S) frames, each centred on its "
        "40 ms slot (= lst_data.format.frames.frames_for_duration); 'none' feeds the audio as fairseq "
        "and textlesslib do: floor((N - R) / S) + 1 frames, one fewer for some lengths.",
        "center",
    )

    # mfcc / logmel
    feature_rate: float = doc(
        "mfcc/logmel only: rate (Hz) of the 25 ms analysis frames; feature_rate / frame_rate "
        "consecutive frames are stacked into one unit frame (100 Hz -> 4 per 25 Hz frame).",
        100.0,
        gt=0,
    )
    n_mels: int = doc("mfcc/logmel: mel filterbank channels.", 40, ge=1, le=512)
    n_mfcc: int = doc("mfcc: cepstral coefficients kept (HuBERT's first-iteration targets use 13).", 13, ge=1, le=512)
    deltas: bool = doc("mfcc/logmel: append first and second time derivatives (x3 dimensions).", True)
    cmvn: bool = doc("mfcc/logmel: per-utterance mean and variance normalization of each dimension.", True)

    # k-means
    sample_frames: int = doc(
        "k-means training: frames sampled from the corpus (each frame kept with probability "
        "sample_frames / corpus frames, decided by seed and utterance id, so any worker split "
        "gives the same sample). Memory is this many frames, whatever the corpus size.",
        500_000,
        ge=1,
    )
    kmeans_steps: int = doc("k-means training: mini-batch updates after k-means++ initialisation.", 300, ge=1)
    kmeans_batch_size: int = doc("k-means training: frames per mini-batch update.", 10_000, ge=1)
    kmeans_init_size: int = doc(
        "k-means training: frames (a seeded subset of the sample) that k-means++ chooses the "
        "initial centroids from.",
        20_000,
        ge=1,
    )

    # execution
    device: str = doc("'auto' (cuda when available), 'cpu' or 'cuda[:n]'.", "auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    bf16: bool = doc("Run the hubert encoder under bf16 autocast on GPU (never on CPU).", True)
    batch_seconds: float = doc(
        "Audio seconds per encoder forward pass (utterances are padded to the longest in the "
        "batch; padding never changes the result).",
        200.0,
        gt=0,
    )
    codebook: str | None = doc(
        "An existing codebook (.npy, this toolkit's codebook file, or a fairseq/textlesslib k-means "
        "file) used by `lst-data build`; None trains one on the corpus into RUN/units/.",
        None,
        names_file=True,
    )

    @model_validator(mode="after")
    def _rates_divide(self) -> UnitsConfig:
        # Checked on load, so a bad rate stops the run before any stage starts.
        if self.encoder != "hubert":
            for what, ratio in (("16000 Hz / units.feature_rate", 16000 / self.feature_rate),
                                ("units.feature_rate / units.frame_rate", self.feature_rate / self.frame_rate)):
                if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
                    raise ValueError(f"{what} must be a whole number >= 1, got {ratio:g}")
        if self.encoder == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"units.n_mfcc ({self.n_mfcc}) must not exceed units.n_mels ({self.n_mels}): the "
                             "cepstrum of n_mels channels has n_mels coefficients")
        return self
