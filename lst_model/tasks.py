"""Multiple-choice tasks for `lst-model score`.

(Items from the shard set's own held-out utterances: `lst_model.corpus_tasks`.)

- `build_speech_items` / `build_text_items`: a HellaSwag- or StoryCloze-style JSONL turned
  into items. Speech items synthesize the prompt and each ending separately with a TTS
  command (espeak-ng by default, run with argument lists, text on stdin) and quantize each
  waveform with an injectable `audio -> units` callable (by default `units_quantizer`: the
  units stage's encoder + codebook), so the
  speech benchmarks of the paper (sHellaSwag, sStoryCloze) can be rebuilt from their text.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lst_data.audio import read_audio
from lst_data.core.errors import UserError
from lst_data.text import normalize_text
from lst_model.items import ChoiceItem, Side

Synthesizer = Callable[[str], np.ndarray]  # text -> float32 mono waveform at 16 kHz
Quantizer = Callable[[np.ndarray], np.ndarray]  # waveform -> unit ids
Encoder = Callable[[str], list[int]]  # normalized text -> BPE ids

DEFAULT_TTS = ("espeak-ng", "-v", "en-us", "-w", "{out}", "--stdin")


class TaskError(UserError, ValueError):
    """A task cannot be built from what the user gave (too few utterances, a bad TTS command)."""


@dataclass(frozen=True)
class ChoiceText:
    id: str
    context: str
    endings: list[str]
    label: int


def parse_choice_line(data: dict, index: int) -> ChoiceText:
    """HellaSwag (ctx | ctx_a + ctx_b, endings, label), StoryCloze (InputSentence1-4,
    RandomFifthSentenceQuiz1-2, AnswerRightEnding 1-based) or generic (context, endings, label)."""
    item_id = str(data.get("ind", data.get("InputStoryid", data.get("id", index))))
    if "InputSentence1" in data:
        context = " ".join(data[f"InputSentence{k}"] for k in range(1, 5))
        endings = [data["RandomFifthSentenceQuiz1"], data["RandomFifthSentenceQuiz2"]]
        return ChoiceText(item_id, context, endings, int(data["AnswerRightEnding"]) - 1)
    context = data.get("ctx") or " ".join(filter(None, [data.get("ctx_a"), data.get("ctx_b")])) or data.get("context", "")
    return ChoiceText(item_id, context, list(data["endings"]), int(data["label"]))


def read_choice_jsonl(path: str | Path) -> list[ChoiceText]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [parse_choice_line(json.loads(line), i) for i, line in enumerate(lines) if line.strip()]


class CommandTTS:
    """Any TTS program as an argument list; `{out}` is replaced by the wav path to write and
    the text goes to stdin (never through a shell)."""

    def __init__(self, argv: Sequence[str] = DEFAULT_TTS, sample_rate: int = 16000):
        if not any("{out}" in a for a in argv):
            raise TaskError("the TTS command must contain {out} (the wav file it writes)")
        self.argv, self.sample_rate = list(argv), sample_rate

    def __call__(self, text: str) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "tts.wav")
            subprocess.run([a.replace("{out}", out) for a in self.argv], input=text.encode("utf-8"), check=True, capture_output=True)
            samples, _ = read_audio(out, self.sample_rate)
            return samples


def build_speech_items(choices: Sequence[ChoiceText], synthesize: Synthesizer, quantize: Quantizer) -> list[ChoiceItem]:
    """Prompt and each ending synthesized separately, then quantized to units."""
    def side(text: str) -> Side:
        return Side("speech", tuple(int(u) for u in np.asarray(quantize(synthesize(text))).reshape(-1)), _normalized(text))

    return [ChoiceItem(c.id, side(c.context), tuple(side(e) for e in c.endings), c.label, sources=(_normalized(c.context),))
            for c in choices]


def build_text_items(choices: Sequence[ChoiceText], encode: Encoder) -> list[ChoiceItem]:
    """Prompt and endings normalized as transcripts are (lst_data.text) and BPE-encoded separately."""
    def side(text: str) -> Side:
        return Side("text", tuple(encode(_normalized(text))), _normalized(text))

    return [ChoiceItem(c.id, side(c.context), tuple(side(e) for e in c.endings), c.label, sources=(_normalized(c.context),))
            for c in choices]


def _normalized(text: str) -> str:
    return normalize_text(text, numbers="expand").text


def units_quantizer(codebook_path: str) -> Quantizer:
    """The units stage's quantizer (its encoder + nearest centroid) for a codebook it trained.

    The encoder settings come from the codebook's sidecar (`units_config`), so items are
    quantized exactly as the shards were. Runs on CPU.
    """

    import torch

    from lst_data.core.config import updated
    from lst_data.units.codebook import load_codebook
    from lst_data.units.config import UnitsConfig
    from lst_data.units.encoders import build_encoder
    from lst_data.units.nearest import NearestCentroid

    codebook = load_codebook(codebook_path)
    if "units_config" not in codebook.meta:
        raise TaskError(f"{codebook_path}: no units_config in its sidecar; pass a quantizer of your own (--quantizer)")
    config = updated(UnitsConfig.model_validate(codebook.meta["units_config"]), {"device": "cpu"})
    encoder = build_encoder(config)
    nearest = NearestCentroid(codebook.centroids)

    def quantize(audio: np.ndarray) -> np.ndarray:
        features = encoder.encode([torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))])[0]
        return nearest(features).numpy()

    return quantize
