"""Frame encoders: 16 kHz audio in, one feature vector per unit frame out.

Every encoder declares its frame rate and, exactly, how many frames N samples give
(`num_frames`); the units stage checks each utterance against it, and the shard writer
relies on n_frames = len(units). With the defaults every encoder gives

    n = floor(N * frame_rate / sample_rate)  = lst_data.format.frames.frames_for_duration(N / sr, f)

(`mfcc`/`logmel`: always; `hubert`: with hubert_padding = 'center'). With
hubert_padding = 'none', hubert gives floor((N - R) / S) + 1 frames of its conv stack
(receptive field R, hop S; 0 when N < R), then floor(. / pool) after pooling: the count
fairseq and textlesslib produce, one frame fewer than the formula above for some N.

Batches are exact: an utterance's features do not depend on what it is batched with
(checked by tests), so the units do not depend on the batch size or worker split.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio

from lst_data.core.errors import ConfigError
from lst_data.units.config import UnitsConfig

SAMPLE_RATE = 16000


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _integer_ratio(numerator: float, denominator: float, what: str) -> int:
    ratio = numerator / denominator
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise ConfigError(f"{what} must be a whole multiple: {numerator} / {denominator} = {ratio}")
    return int(round(ratio))


def pad_batch(
    waveforms: Sequence[torch.Tensor], left: int = 0, right: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] zero-padded batch (each waveform padded `left`/`right` first) and lengths [B]."""
    lengths = torch.tensor([w.shape[0] + left + right for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()), dtype=torch.float32, device=waveforms[0].device)
    for row, wave in enumerate(waveforms):
        batch[row, left : left + wave.shape[0]] = wave
    return batch, lengths


class Encoder(ABC):
    """Audio -> frame features at a declared frame rate.

    name, layer: what units.parquet records (layer is None for encoders without layers).
    dim: feature dimension (the codebook's second axis must match it).
    """

    name: str
    layer: int | None = None
    sample_rate: int = SAMPLE_RATE
    frame_rate: float
    dim: int
    device: torch.device

    @abstractmethod
    def num_frames(self, num_samples: int) -> int:
        """Exactly how many frames `encode` returns for `num_samples` samples (may be 0)."""

    @property
    def min_samples(self) -> int:
        """Fewest samples that give one frame."""
        n = 1
        while self.num_frames(n) < 1:
            n *= 2
        lo, hi = n // 2, n
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.num_frames(mid) >= 1 else (mid, hi)
        return hi

    @abstractmethod
    def encode(self, waveforms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One float32 [num_frames(len(w)), dim] tensor on `device` per 1-D waveform."""


class SpectralEncoder(Encoder):
    """MFCC or log-mel (torchaudio transforms) with deltas and CMVN, stacked to the unit rate.

    Analysis frames: 25 ms Hann windows every sample_rate / feature_rate samples (hop h);
    each waveform is zero-padded by (window - h) / 2 on both sides so N samples give
    floor(N / h) analysis frames, frame j centred on [j h, (j + 1) h). Deltas (torchaudio's
    compute_deltas, window 5) and per-utterance CMVN are computed on those frames; then
    s = feature_rate / frame_rate consecutive frames are concatenated into one unit frame:
    n = floor(floor(N / h) / s) = floor(N * frame_rate / sample_rate).
    """

    def __init__(self, config: UnitsConfig, kind: str) -> None:
        self.name = kind
        self.frame_rate = config.frame_rate
        self.hop = _integer_ratio(SAMPLE_RATE, config.feature_rate, "units: 16000 Hz / units.feature_rate")
        self.stack = _integer_ratio(config.feature_rate, config.frame_rate, "units.feature_rate / units.frame_rate")
        self.window = int(round(0.025 * SAMPLE_RATE))
        self.pad = max(0, self.window - self.hop)
        self.deltas, self.cmvn = config.deltas, config.cmvn
        self.device = resolve_device(config.device)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=self.window,
            win_length=self.window,
            hop_length=self.hop,
            n_mels=config.n_mels,
            center=False,
            power=2.0,
        ).to(self.device)
        self.dct = (
            torchaudio.functional.create_dct(config.n_mfcc, config.n_mels, norm="ortho").to(self.device)
            if kind == "mfcc"
            else None
        )
        base = config.n_mfcc if kind == "mfcc" else config.n_mels
        self.dim = base * (3 if self.deltas else 1) * self.stack

    def num_frames(self, num_samples: int) -> int:
        return (num_samples // self.hop) // self.stack

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not waveforms:
            return []
        waves = [w.to(self.device, torch.float32) for w in waveforms]
        batch, _ = pad_batch(waves, self.pad // 2, self.pad - self.pad // 2)
        if batch.shape[1] < self.window:  # every utterance is shorter than one analysis window
            return [torch.zeros(0, self.dim, device=self.device) for _ in waves]
        logmel = torch.log(self.mel(batch) + 1e-6)  # [B, n_mels, T]; a window never reads past its own audio
        feats = logmel if self.dct is None else torch.matmul(logmel.transpose(1, 2), self.dct).transpose(1, 2)
        out = []
        for row, wave in enumerate(waves):
            n = self.num_frames(wave.shape[0])
            if n == 0:
                out.append(torch.zeros(0, self.dim, device=self.device))
                continue
            x = feats[row, :, : n * self.stack]  # [d, T_valid]; frames past it only ever saw padding
            if self.deltas:
                d1 = torchaudio.functional.compute_deltas(x)
                x = torch.cat([x, d1, torchaudio.functional.compute_deltas(d1)], dim=0)
            if self.cmvn:
                x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, unbiased=False, keepdim=True) + 1e-5)
            out.append(x.T.reshape(n, self.dim).contiguous())
        return out


class HubertEncoder(Encoder):
    """A HuBERT / wav2vec2 checkpoint (torchaudio model), features from one transformer layer.

    Conv stack with kernels k_i and strides s_i: hop S = prod(s_i), receptive field
    R = k_1 + sum_{i>1} (k_i - 1) * prod_{j<i} s_j (400 and 320 for HuBERT base; 720 and 640
    for the 25 Hz mHuBERT). Native rate sample_rate / S; when it is a whole multiple p of
    `frame_rate`, p consecutive frames are averaged. Frame counts: see the module docstring.

    Batching: conv features are computed per utterance when the first conv layer uses
    GroupNorm (its statistics span the whole input, so padding would leak into them),
    batched with lengths otherwise; the transformer runs batched with torchaudio's padding
    mask (padded frames zeroed before the positional conv, masked out of attention).
    """

    name = "hubert"

    def __init__(self, config: UnitsConfig) -> None:
        from lst_data.ssl_checkpoints import load_checkpoint

        if not config.checkpoint:
            raise ConfigError(
                "units.checkpoint: units.encoder = 'hubert' needs a local fairseq .pt or Hugging Face folder"
            )
        loaded = load_checkpoint(config.checkpoint)
        if loaded.sample_rate != SAMPLE_RATE:
            raise ConfigError(
                f"units.checkpoint: {config.checkpoint} expects {loaded.sample_rate} Hz audio, not {SAMPLE_RATE}"
            )
        if not 1 <= config.layer <= loaded.num_layers:
            raise ConfigError(
                f"units.layer = {config.layer}; the checkpoint has layers 1..{loaded.num_layers}"
            )
        self.layer = config.layer
        self.device = resolve_device(config.device)
        self.model = loaded.model.to(self.device)
        self.normalize_waveform = loaded.normalize_waveform
        self.per_utterance_conv = loaded.extractor_mode == "group_norm"
        self.hop = math.prod(s for _, _, s in loaded.conv_layers)
        self.receptive_field = loaded.conv_layers[0][1]
        stride = loaded.conv_layers[0][2]
        for _, kernel, s in loaded.conv_layers[1:]:
            self.receptive_field += (kernel - 1) * stride
            stride *= s
        self.pool = _integer_ratio(
            SAMPLE_RATE / self.hop, config.frame_rate, "units: the hubert checkpoint's native rate / units.frame_rate"
        )
        self.frame_rate = config.frame_rate
        self.pad = self.receptive_field - self.hop if config.hubert_padding == "center" else 0
        self.bf16 = config.bf16 and self.device.type == "cuda"
        self.dim = self.model.encoder.feature_projection.projection.out_features

    def native_frames(self, num_samples: int) -> int:
        padded = num_samples + self.pad
        return 0 if padded < self.receptive_field else (padded - self.receptive_field) // self.hop + 1

    def num_frames(self, num_samples: int) -> int:
        return self.native_frames(num_samples) // self.pool

    def _conv_features(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        extractor = self.model.feature_extractor
        left, right = self.pad // 2, self.pad - self.pad // 2
        if not self.per_utterance_conv:
            batch, lengths = pad_batch(waves, left, right)
            feats, _ = extractor(batch, None)
            lengths = torch.tensor([self.native_frames(w.shape[0]) for w in waves], device=self.device)
            return feats, lengths
        pieces = [extractor(F.pad(w, (left, right))[None], None)[0][0] for w in waves]
        lengths = torch.tensor([p.shape[0] for p in pieces], device=self.device)
        feats = torch.zeros(
            len(pieces), int(lengths.max()), pieces[0].shape[1], device=self.device, dtype=pieces[0].dtype
        )
        for row, piece in enumerate(pieces):
            feats[row, : piece.shape[0]] = piece
        return feats, lengths

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        counts = [self.num_frames(w.shape[0]) for w in waveforms]
        out = [torch.zeros(0, self.dim, device=self.device) for _ in waveforms]
        keep = [i for i, n in enumerate(counts) if n > 0]  # shorter than the receptive field: no frames
        if not keep:
            return out
        waves = [waveforms[i].to(self.device, torch.float32) for i in keep]
        if self.normalize_waveform:
            waves = [F.layer_norm(w, w.shape) for w in waves]
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            feats, lengths = self._conv_features(waves)
            layers = self.model.encoder.extract_features(feats, lengths, num_layers=self.layer)
        hidden = layers[-1].float()
        for row, i in enumerate(keep):
            n = counts[i]
            x = hidden[row, : n * self.pool]
            if self.pool > 1:
                x = x.reshape(n, self.pool, -1).mean(dim=1)
            out[i] = x.contiguous()
        return out


def build_encoder(config: UnitsConfig) -> Encoder:
    if config.encoder == "hubert":
        return HubertEncoder(config)
    return SpectralEncoder(config, config.encoder)
