"""Draw one shard sample: what `lst-data plot` writes.

Top: the spectrogram of the audio when the shard carries it, else the unit ids as a
raster (frame x unit id). Below, on the same time axis: words, BPE pieces, silences,
then the patches of every strategy, so a reader sees at a glance whether spans line up
with the sound and how each patching strategy cuts the utterance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from lst_data.format.patching import PATCH_STRATEGIES, patches  # noqa: E402
from lst_data.format.records import SampleRecord  # noqa: E402

_COLORS = ("#4c72b0", "#dd8452")
_SILENCE = "#bbbbbb"


def _tier(ax: plt.Axes, name: str, spans: Sequence[tuple[int, int, str, bool]], frame_rate: float) -> None:
    """Boxes for inclusive frame spans (start, end, label, is_silence), alternating colours."""
    for i, (start, end, label, silent) in enumerate(spans):
        if end < start:
            continue
        left, width = start / frame_rate, (end - start + 1) / frame_rate
        ax.add_patch(
            plt.Rectangle(
                (left, 0),
                width,
                1,
                facecolor=_SILENCE if silent else _COLORS[i % 2],
                edgecolor="white",
                linewidth=0.5,
            )
        )
        if label:
            ax.text(left + width / 2, 0.5, label, ha="center", va="center", fontsize=7, clip_on=True)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)


def plot_record(record: SampleRecord, out: str | Path, *, patch_size: int = 4, dpi: int = 100) -> Path:
    n, rate = record.n_frames, record.frame_rate
    tiers = 3 + len(PATCH_STRATEGIES)
    fig, axes = plt.subplots(
        1 + tiers,
        1,
        sharex=True,
        figsize=(max(8.0, n / rate * 2.5), 3 + 0.45 * tiers),
        gridspec_kw={"height_ratios": [6] + [1] * tiers},
    )
    top = axes[0]
    if record.audio:
        samples, sample_rate = sf.read(io.BytesIO(record.audio), dtype="float32")
        top.specgram(samples, NFFT=400, Fs=sample_rate, noverlap=240, cmap="magma")
        top.set_ylabel("Hz")
        top.set_title(f"{record.id}: spectrogram")
    else:
        k = int(record.unit_info.get("k") or record.units.max() + 1)
        raster = np.zeros((k, n))
        raster[record.units.astype(int), np.arange(n)] = 1.0
        top.imshow(
            raster,
            aspect="auto",
            origin="lower",
            cmap="Greys",
            interpolation="nearest",
            extent=(0, n / rate, 0, k),
        )
        top.set_ylabel("unit id")
        top.set_title(f"{record.id}: units ({n} frames at {rate:g} Hz)")
    _tier(axes[1], "words", [(w.start_frame, w.end_frame, w.word, False) for w in record.words], rate)
    _tier(axes[2], "bpe", [(p.start_frame, p.end_frame, p.piece, False) for p in record.bpe], rate)
    _tier(axes[3], "silence", [(s.start_frame, s.end_frame, s.rule, True) for s in record.silences], rate)
    for ax, strategy in zip(axes[4:], PATCH_STRATEGIES, strict=True):
        spans = [
            (p.start, p.start + p.length - 1, str(p.length), p.kind == "silence")
            for p in patches(record, strategy, patch_size=patch_size)
        ]
        _tier(ax, strategy, spans, rate)
    axes[-1].set_xlim(0, n / rate)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
