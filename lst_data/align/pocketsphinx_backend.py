"""PocketSphinx 5 forced alignment, in-process (the default backend: no download, no GPU).

Two passes per utterance, as PocketSphinx's alignment API requires: `set_align_text` +
decode gives the word segmentation; `set_alignment` + a second decode gives phones (and
HMM states) inside each word. Bestpath search is off because its lattice rescoring can
produce phone durations the state aligner then rejects ("impossible duration").
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lst_data.align.base import (
    Aligner,
    AlignFailure,
    Alignment,
    AlignRequest,
    Interval,
    OovWord,
    hash_files,
    is_silence_label,
)
from lst_data.align.config import AlignConfig
from lst_data.align.lexicon import fallback_pronunciation, strip_accents, without_stress
from lst_data.audio import AudioError, read_audio

SAMPLE_RATE = 16000
FRAME_RATE = 100  # PocketSphinx's default: 10 ms frames
_VARIANT = re.compile(r"\(\d+\)$")
_SPELLING = re.compile(r"[^a-z0-9'._-]")


class PocketsphinxAligner(Aligner):
    name = "pocketsphinx"

    def __init__(self, config: AlignConfig) -> None:
        import pocketsphinx

        ps_config = config.pocketsphinx
        model_dir = Path(ps_config.model_dir or pocketsphinx.get_model_path("en-us/en-us"))
        dictionary = Path(ps_config.dictionary or pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"))
        self.oov_policy = config.oov
        self.decoder = pocketsphinx.Decoder(
            hmm=str(model_dir), dict=str(dictionary), lm=None, loglevel="FATAL", bestpath=False,
            silprob=ps_config.silprob,
        )
        # The cepstral mean and the front end's noise estimate carry over from one
        # utterance to the next, so an alignment would depend on which utterances a
        # worker saw before it: every utterance starts from the model's initial state.
        self._initial_cmn = self.decoder.get_cmn(False)
        self._model_hash = hash_files(model_dir, dictionary, extra=f"silprob={ps_config.silprob}")
        self._added: dict[str, str] = {}  # OOV spelling -> pronunciation source

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        """PocketSphinx's dictionary is lower-case ASCII ('naïve' is listed as 'naive')."""
        return _SPELLING.sub("", strip_accents(word).lower())

    def oov_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if self._is_oov(self.normalize_word(w))]

    def _is_oov(self, spelling: str) -> bool:
        return not spelling or (spelling not in self._added and self.decoder.lookup_word(spelling) is None)

    def _add_fallbacks(self, words: Sequence[str]) -> list[OovWord] | AlignFailure:
        """Give OOV words a pronunciation (recorded), or fail per `align.oov`."""
        missing = self.oov_words(words)
        if missing and self.oov_policy == "reject":
            return AlignFailure("oov", "not in the dictionary: " + " ".join(sorted(set(missing))))
        for word in dict.fromkeys(missing):
            fallback = fallback_pronunciation(word)
            if fallback is None:
                return AlignFailure("oov", f"no pronunciation for {word!r} (no Latin letters)")
            phones, source = fallback
            self.decoder.add_word(self.normalize_word(word), " ".join(without_stress(phones)), True)
            self._added[self.normalize_word(word)] = source
        return [OovWord(w, self._added[self.normalize_word(w)]) for w in dict.fromkeys(words)
                if self.normalize_word(w) in self._added]

    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        return [self.align_one(request) for request in requests]

    def align_one(self, request: AlignRequest) -> Alignment | AlignFailure:
        oov = self._add_fallbacks(request.words)
        if isinstance(oov, AlignFailure):
            return oov
        try:
            samples, _ = read_audio(request.audio_path, SAMPLE_RATE)
        except AudioError as err:
            return AlignFailure("align_failed", f"audio: {err}")
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        try:
            self.decoder.set_align_text(" ".join(self.normalize_word(w) for w in request.words))
            self._decode(pcm)
            self.decoder.set_alignment()
            self._decode(pcm)
        except RuntimeError as err:
            return AlignFailure("align_failed", f"pocketsphinx: {err}")
        alignment = self.decoder.get_alignment()
        if alignment is None:
            return AlignFailure("align_failed", "pocketsphinx returned no alignment")
        return self._to_alignment(alignment, oov)

    def _decode(self, pcm: bytes) -> None:
        self.decoder.set_cmn(self._initial_cmn)
        with warnings.catch_warnings():
            # Documented as unnecessary, but it is what resets the front end's noise estimate.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.decoder.start_stream()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()

    @staticmethod
    def _to_alignment(alignment, oov: list[OovWord]) -> Alignment:
        words: list[Interval] = []
        phones: list[Interval] = []
        silences: list[Interval] = []
        total_score, total_frames = 0, 0
        for entry in alignment:
            label = _VARIANT.sub("", entry.name)
            start, end = entry.start / FRAME_RATE, (entry.start + entry.duration) / FRAME_RATE
            total_score += entry.score
            total_frames += entry.duration
            if is_silence_label(label) or label in ("<s>", "</s>", "(NULL)"):
                silences.append(Interval(label, start, end))
                continue
            index = len(words)
            words.append(Interval(label, start, end))
            phones.extend(
                Interval(p.name, p.start / FRAME_RATE, (p.start + p.duration) / FRAME_RATE, index) for p in entry
            )
        score = total_score / total_frames if total_frames else None
        return Alignment(words=words, phones=phones, labelled_silences=silences, score=score, oov=oov)
