"""PocketSphinx 5 forced alignment, in-process (the default backend: no download, no GPU).

Two passes per utterance, as PocketSphinx's alignment API requires: `set_align_text` +
decode gives the word segmentation; `set_alignment` + a second decode gives phones (and
HMM states) inside each word. Bestpath search is off because its lattice rescoring can
produce phone durations the state aligner then rejects ("impossible duration").

A failed alignment (no path through the words, "Failed to set up sub-word alignment") is
tried again by a second decoder with wider beams (`align.pocketsphinx.retry_beam`) before it
becomes `align_failed`.

Quality gate: a forced aligner finds *some* path for almost any transcript, so a
transcript of another utterance aligns too. The score that tells them apart compares the
forced alignment's acoustic log-likelihood per frame with that of an unconstrained
phone-loop decode (PocketSphinx's allphone search) of the same audio: the phone loop is
the best the acoustic model can explain the audio with any phones, so the difference says
how much the transcript costs, independent of channel, speaker and noise (which move both
scores). Matching transcripts cost little; mismatching ones a lot. The row's `score` is
that difference; below `align.pocketsphinx.min_score` the utterance is rejected as
`alignment_low_score`. A transcript that misses most of what is said ("hello" for an
eleven-word clip) can still score well, because the silence model absorbs the rest: the
phone loop's speech frames that fall outside every aligned word, as a share of all its
speech frames, above `align.pocketsphinx.max_unaligned_speech` reject it as
`alignment_unaligned_speech`.

The phone loop is a third decode of every utterance, made cheap (about 30 % of the two
forced passes together; PocketSphinx's default allphone setup cost twice as much as both).
It has no phone language model: any phone may follow any other at the cost of an insertion
penalty, and its segment scores are purely acoustic (the phone LM's trigram lookups were
nearly half the decode, and PocketSphinx 5.1 books each segment's LM score with the wrong
trigram history, so the difference leaked into its acoustic score). It decodes 20 ms
frames (`PHONE_LOOP_FRAME_RATE`), half as many as the forced passes, scores each
codebook's best Gaussian only, and prunes with narrower beams than the library's. Each of
these moves the score distributions, so min_score is calibrated for these settings
(benchmarks/bench_align_gate.py). Skipping Gaussian evaluations on alternate frames (`ds`)
was cheaper still but decoded pauses as fricatives, which the unaligned-speech check counts
as speech; 25 ms frames caught fewer mismatched transcripts for as few false rejects.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

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
# Phone-loop segments that are not speech (silence, noise fillers, sentence markers).
_PHONE_LOOP_NON_SPEECH = frozenset({"SIL", "+NSN+", "+SPN+", "+BREATH+", "(NULL)", "<s>", "</s>"})
PHONE_LOOP_FRAME_RATE = 50  # 20 ms frames, half as many as the forced passes decode
# The phone loop's decoder settings (module docstring); min_score is calibrated with them.
_PHONE_LOOP_OPTIONS: dict[str, Any] = {
    "frate": PHONE_LOOP_FRAME_RATE,
    # Twice the default window, so 20 ms frames still see every sample: with the default one,
    # four times as many correct whole-sentence TTS transcripts fell below min_score.
    "wlen": 0.05125,
    "topn": 1,
    # Without a language model a phone change is free, and every phone is re-entered after
    # each phone end; the penalty and beams (library: 1e-48) keep fewer phones alive per frame.
    "pip": 0.5,
    "beam": 1e-5,
    "pbeam": 1e-5,
}
_PHONE_LOOP_SEARCH = "phone_loop"
_PHONE_LOOP_END_SLACK = 3  # frames a complete path may leave out at the end (the last one always is)


class _Decoder(NamedTuple):
    """A PocketSphinx decoder and the cepstral mean it starts every utterance from."""

    decoder: Any
    initial_cmn: Any


class PocketsphinxAligner(Aligner):
    name = "pocketsphinx"

    def __init__(self, config: AlignConfig) -> None:
        import pocketsphinx

        ps_config = self.ps_config = config.pocketsphinx
        model_dir = Path(ps_config.model_dir or pocketsphinx.get_model_path("en-us/en-us"))
        dictionary = Path(ps_config.dictionary or pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"))
        self.oov_policy = config.oov
        self._decoder_args = {"hmm": str(model_dir), "dict": str(dictionary), "lm": None, "loglevel": "FATAL",
                              "bestpath": False}
        self.decoder = self._make_decoder(silprob=ps_config.silprob)
        self._retry_decoder: _Decoder | None = None  # made on the first failure
        self._phone_loop: _Decoder | None = None
        extra = f"silprob={ps_config.silprob} retry_beam={ps_config.retry_beam}"
        if ps_config.min_score is not None:
            self._phone_loop = self._make_phone_loop()
            extra += f" phone_loop={sorted(_PHONE_LOOP_OPTIONS.items())}"
        self._model_hash = hash_files(model_dir, dictionary, extra=extra)
        self._added: dict[str, tuple[str, str]] = {}  # OOV spelling -> (phones, pronunciation source)

    def _make_decoder(self, **options: Any) -> _Decoder:
        """A decoder (with the fallback words added so far) and its initial cepstral mean.

        The cepstral mean and the front end's noise estimate carry over from one utterance
        to the next, so an alignment would depend on which utterances a worker saw before
        it: every utterance starts from the model's initial state.
        """
        import pocketsphinx

        decoder = pocketsphinx.Decoder(**{**self._decoder_args, **options})
        for spelling, (phones, _) in getattr(self, "_added", {}).items():
            decoder.add_word(spelling, phones, True)
        return _Decoder(decoder, decoder.get_cmn(False))

    def _make_phone_loop(self) -> _Decoder:
        """The allphone search without a phone language model: any phone may follow any other."""
        # Without the pronunciation dictionary (which it never reads) the decoder loads in a tenth of the time.
        pair = self._make_decoder(dict=None, **_PHONE_LOOP_OPTIONS)
        pair.decoder.add_allphone_file(_PHONE_LOOP_SEARCH, None)
        pair.decoder.activate_search(_PHONE_LOOP_SEARCH)
        return pair

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        """PocketSphinx's dictionary is lower-case ASCII ('naïve' is listed as 'naive')."""
        return _SPELLING.sub("", strip_accents(word).lower())

    def oov_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if self._is_oov(self.normalize_word(w))]

    def _is_oov(self, spelling: str) -> bool:
        return not spelling or (spelling not in self._added and self.decoder.decoder.lookup_word(spelling) is None)

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
            spelling, pronunciation = self.normalize_word(word), " ".join(without_stress(phones))
            for decoder in (self.decoder, self._retry_decoder):
                if decoder is not None:
                    decoder.decoder.add_word(spelling, pronunciation, True)
            self._added[spelling] = (pronunciation, source)
        return [OovWord(w, self._added[self.normalize_word(w)][1]) for w in dict.fromkeys(words)
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
        text = " ".join(self.normalize_word(w) for w in request.words)
        entries = self._force_align(self.decoder, text, pcm)
        if isinstance(entries, str):
            if self._retry_decoder is None:
                beam = self.ps_config.retry_beam
                self._retry_decoder = self._make_decoder(silprob=self.ps_config.silprob, beam=beam, wbeam=beam, pbeam=beam)
            retried = self._force_align(self._retry_decoder, text, pcm)
            if isinstance(retried, str):
                return AlignFailure("align_failed", f"pocketsphinx: {entries}; with retry_beam {self.ps_config.retry_beam:g}: {retried}")
            entries = retried
        alignment = self._to_alignment(entries, oov)
        min_score = self.ps_config.min_score  # (set whenever there is a phone loop)
        if self._phone_loop is None or min_score is None or alignment.score is None:
            return alignment
        free = self._free_decode(pcm)
        if free is None:
            return AlignFailure("align_failed", "pocketsphinx: the phone loop found no path to the end of the "
                                                "audio, so the quality gate cannot score it")
        free_score, free_speech = free
        alignment.score = round(alignment.score - free_score, 3)
        if alignment.score < min_score:
            return AlignFailure(
                "alignment_low_score",
                f"score {alignment.score:.3f} < align.pocketsphinx.min_score {min_score:g}",
            )
        in_words = np.zeros(free_speech.shape[0], dtype=bool)
        for word in alignment.words:
            start, end = round(word.start * PHONE_LOOP_FRAME_RATE), round(word.end * PHONE_LOOP_FRAME_RATE)
            in_words[start:end] = True
        unaligned = float((free_speech & ~in_words).sum() / max(int(free_speech.sum()), 1))
        if unaligned > self.ps_config.max_unaligned_speech:
            return AlignFailure(
                "alignment_unaligned_speech",
                f"score {alignment.score:.3f}; {unaligned:.0%} of the speech lies outside every word "
                f"(> align.pocketsphinx.max_unaligned_speech {self.ps_config.max_unaligned_speech:g})",
            )
        return alignment

    def _force_align(self, decoder: _Decoder, text: str, pcm: bytes) -> Any:
        """The state-level alignment of `text` (PocketSphinx's Alignment), or why there is none."""
        try:
            decoder.decoder.set_align_text(text)
            self._decode(decoder, pcm)
            if decoder.decoder.hyp() is None:
                return "no path through the words"
            decoder.decoder.set_alignment()
            self._decode(decoder, pcm)
        except RuntimeError as err:
            return str(err)
        alignment = decoder.decoder.get_alignment()
        return "no alignment" if alignment is None else alignment

    def _free_decode(self, pcm: bytes) -> tuple[float, np.ndarray] | None:
        """The phone loop's acoustic log-likelihood per frame, and which of its frames
        (PHONE_LOOP_FRAME_RATE) it decodes as phones; None when its best path stops short of
        the audio's end (a partial path's score would pass any transcript)."""
        assert self._phone_loop is not None
        decoder = self._phone_loop.decoder
        self._decode(self._phone_loop, pcm)
        log = decoder.logmath.log  # segments report exp(score); back to the aligner's log units
        frames = max(decoder.n_frames(), 1)
        speech = np.zeros(frames, dtype=bool)
        total, reached = 0, 0
        for segment in decoder.seg():
            total += log(segment.ascore)
            reached = max(reached, segment.end_frame + 1)
            if segment.word not in _PHONE_LOOP_NON_SPEECH:
                speech[segment.start_frame : segment.end_frame + 1] = True
        if reached < frames - _PHONE_LOOP_END_SLACK:
            return None
        return total / frames, speech

    @staticmethod
    def _decode(pair: _Decoder, pcm: bytes) -> None:
        decoder = pair.decoder
        decoder.set_cmn(pair.initial_cmn)
        with warnings.catch_warnings():
            # Documented as unnecessary, but it is what resets the front end's noise estimate.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoder.start_stream()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()

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
