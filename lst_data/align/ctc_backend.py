"""CTC forced alignment (wav2vec2 / MMS style) with `torchaudio.functional.forced_align`.

The paper's own aligner. A character CTC model gives per-frame log-probabilities; the
Viterbi path through the transcript's characters (joined by the word delimiter when the
vocabulary has one) gives one span per character, and a word spans its first to last
character. Characters missing from the vocabulary are skipped and the word is recorded in
`oov` with source `ctc_vocab`; a word with no known character cannot be placed (`oov`).

Checkpoint (a local directory, nothing is downloaded), one of:
- lst-data format: `config.json` = {"format": "lst-data-ctc", "model": {keyword arguments of
  torchaudio.models.wav2vec2_model}, "vocab": [tokens, index = output id], "blank": 0,
  "word_delimiter": "|", "lowercase": true} and `model.pt` = the model's state dict
  (loaded with weights_only=True);
- Hugging Face Wav2Vec2ForCTC / MMS (`config.json` with "architectures", `vocab.json`,
  `model.safetensors` or `pytorch_model.bin`): read by lst_data.ssl_checkpoints (weights
  only, no `transformers` needed), `lm_head` becoming torchaudio's `aux` layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lst_data.align.base import Aligner, AlignFailure, Alignment, AlignRequest, Interval, OovWord, hash_files
from lst_data.align.config import AlignConfig
from lst_data.audio import AudioError, read_audio

SAMPLE_RATE = 16000
CHECKPOINT_FORMAT = "lst-data-ctc"


@dataclass(frozen=True)
class CtcVocab:
    tokens: list[str]
    blank: int
    word_delimiter: str | None
    lowercase: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    def id(self, token: str) -> int | None:
        return self._ids.get(token)  # type: ignore[attr-defined]


def load_ctc_checkpoint(directory: str | Path):
    """(torchaudio Wav2Vec2Model in eval mode, CtcVocab) from a local checkpoint directory."""
    import torch
    from torchaudio.models import wav2vec2_model

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if config.get("format") == CHECKPOINT_FORMAT:
        model = wav2vec2_model(**config["model"])
        model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
        vocab = CtcVocab(config["vocab"], int(config.get("blank", 0)), config.get("word_delimiter"),
                         bool(config.get("lowercase", True)))
    elif "architectures" in config:
        from lst_data.ssl_checkpoints import load_huggingface

        model = load_huggingface(directory, ctc_head=True).model
        ids = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        tokens = [t for t, _ in sorted(ids.items(), key=lambda item: item[1])]
        blank = ids.get("<pad>", config.get("pad_token_id", 0))
        vocab = CtcVocab(tokens, int(blank), "|" if "|" in ids else None,
                         lowercase=not any(t.isupper() for t in tokens))
    else:
        raise ValueError(f"{directory}/config.json is neither a {CHECKPOINT_FORMAT} nor a Hugging Face CTC config")
    return model.eval(), vocab


class CtcAligner(Aligner):
    name = "ctc"

    def __init__(self, config: AlignConfig) -> None:
        import torch

        if config.ctc.checkpoint is None:
            raise ValueError("align.ctc.checkpoint must name a CTC checkpoint directory")
        device = config.ctc.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        model, self.vocab = load_ctc_checkpoint(config.ctc.checkpoint)
        self.model = model.to(self.device)
        self.oov_policy = config.oov
        self._model_hash = hash_files(config.ctc.checkpoint)

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        return word.lower() if self.vocab.lowercase else word.upper()

    def _known(self, word: str) -> list[str]:
        return [c for c in self.normalize_word(word) if self.vocab.id(c) is not None and c != self.vocab.word_delimiter]

    def oov_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if len(self._known(w)) != len(self.normalize_word(w))]

    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        return [self.align_one(r) for r in requests]

    def align_one(self, request: AlignRequest) -> Alignment | AlignFailure:
        import torch
        import torchaudio.functional as F

        oov = list(dict.fromkeys(self.oov_words(request.words)))
        unplaceable = [w for w in oov if not self._known(w)]
        if unplaceable or (oov and self.oov_policy == "reject"):
            return AlignFailure("oov", "characters outside the CTC vocabulary: " + " ".join(unplaceable or oov))
        try:
            samples, _ = read_audio(request.audio_path, SAMPLE_RATE)
        except AudioError as err:
            return AlignFailure("align_failed", f"audio: {err}")
        targets, owners = self._targets(request.words)
        with torch.inference_mode():
            emission, _ = self.model(torch.from_numpy(samples).to(self.device)[None])
            log_probs = torch.log_softmax(emission, dim=-1).cpu()
        frames = log_probs.shape[1]
        repeats = sum(a == b for a, b in zip(targets, targets[1:], strict=False))
        if frames < len(targets) + repeats:
            return AlignFailure("align_failed", f"{frames} CTC frames cannot hold {len(targets)} tokens")
        path, scores = F.forced_align(log_probs, torch.tensor([targets], dtype=torch.int32), blank=self.vocab.blank)
        spans = F.merge_tokens(path[0], scores[0].exp())
        seconds_per_frame = len(samples) / frames / SAMPLE_RATE
        chars = [
            Interval(self.vocab.tokens[span.token], span.start * seconds_per_frame, span.end * seconds_per_frame, owner)
            for span, owner in zip(spans, owners, strict=True)
            if owner >= 0
        ]
        words = []
        for index, word in enumerate(request.words):
            mine = [c for c in chars if c.word_index == index]
            words.append(Interval(self.normalize_word(word), mine[0].start, mine[-1].end))
        return Alignment(
            words=words,
            chars=chars,
            score=float(scores[0].mean()),
            oov=[OovWord(w, "ctc_vocab") for w in oov],
        )

    def _targets(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the transcript and, per token, its word index (-1 for delimiters)."""
        targets: list[int] = []
        owners: list[int] = []
        delimiter = self.vocab.id(self.vocab.word_delimiter) if self.vocab.word_delimiter else None
        for index, word in enumerate(words):
            if index and delimiter is not None:
                targets.append(delimiter)
                owners.append(-1)
            for char in self._known(word):
                targets.append(self.vocab.id(char))
                owners.append(index)
        return targets, owners
