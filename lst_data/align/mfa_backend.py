"""Montreal Forced Aligner 3.x, run in its own environment (lst_data.align.mfa_install).

Modes (align.mfa.mode):
- 'worker': each Ray worker keeps one `mfa_worker.py` process under MFA's interpreter and
  aligns through MFA's KalpyAligner (what `mfa align_one` does), one speaker's utterances
  of a batch per request, with CMVN over those utterances: ~15 ms per utterance after a
  ~2 s start; no fMLLR.
- 'batch': each batch becomes a small corpus (speaker folders of audio links + .lab files)
  aligned by one `mfa align` run, with MFA's fMLLR speaker adaptation; the TextGrids are
  read back. Each run costs 15-20 s before the first utterance.
- 'train': `train_acoustic_model` (a plain function a stage-wide preparation step calls)
  runs `mfa train` on the whole manifest, then the batches align as in 'batch' with it.

Only the words of the utterances at hand reach MFA (a dictionary of the whole cmudict costs
each worker 13 s and 380 MB), each with the pronunciations whose phones the acoustic model
knows; an OOV word gets its fallback pronunciation before anything is compiled. MFA's
failures become rejects with MFA's reason, never a failed build: an utterance MFA leaves
out of its output, a batch where it aligned none (`NoAlignmentsError`), a worker that dies
or stops answering. Every MFA process gets a private MFA_ROOT_DIR (removed afterwards)
linked to the shared pretrained models. Tools run with argument lists, never a shell;
transcripts go into files or the worker's stdin.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
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
from lst_data.align.lexicon import cmudict_entries, fallback_pronunciation, read_dictionary
from lst_data.align.mfa_edges import extend_into_audible_silence
from lst_data.align.mfa_install import (
    MfaInstall,
    MfaUnavailable,
    acoustic_model_phones,
    find_mfa,
    make_work_root,
    resolve_model,
)
from lst_data.align.textgrid_backend import index_textgrids, lowercase_words
from lst_data.align.textgrid_io import read_tiers, tiers_to_alignment
from lst_data.audio import AudioError, read_audio
from lst_data.core.config import updated
from lst_data.core.storage import is_remote, is_url, location
from lst_data.format.keys import sanitize_key

WORKER_SCRIPT = Path(__file__).with_name("mfa_worker.py")
DICTIONARY_SUFFIXES = (".dict", ".txt")
# What `mfa align` prints when it aligned none of a run's utterances (it then exits 1).
NO_ALIGNMENTS = "NoAlignmentsError"
# Loudness criterion of the edge extension when the stage's trim is off (its default).
DEFAULT_LOUDNESS_DB = 40.0

__all__ = ["MfaAligner", "MfaUnavailable", "check_mfa_config", "train_acoustic_model"]


def _dictionary(config: MfaConfig, install: MfaInstall) -> tuple[Path | None, dict[str, list[list[str]]]]:
    if config.dictionary is None:
        return None, dict(cmudict_entries())
    path = resolve_model(config.dictionary, "dictionary", DICTIONARY_SUFFIXES, install)
    return path, read_dictionary(path)


def check_mfa_config(config: MfaConfig) -> None:
    """In the driver, before any worker starts: MFA, its interpreter and the model exist
    (raises MfaUnavailable, a ConfigError, naming the field)."""
    install = find_mfa(config)
    if config.acoustic_model is not None:
        resolve_model(config.acoustic_model, "acoustic", (".zip",), install)
    if config.dictionary is not None:
        resolve_model(config.dictionary, "dictionary", DICTIONARY_SUFFIXES, install)


@dataclass
class UtteranceLexicon:
    """The pronunciations MFA gets for one utterance's words (word -> phone strings)."""

    pronunciations: dict[str, list[str]]
    oov: list[OovWord] = field(default_factory=list)


class MfaAligner(Aligner):
    name = "mfa"

    def __init__(self, config: AlignConfig) -> None:
        self.config = config.mfa
        self.oov_policy = config.oov
        self.loudness_db = config.trim_db if config.trim_db > 0 else DEFAULT_LOUDNESS_DB
        if self.config.acoustic_model is None:
            raise ValueError("align.mfa.acoustic_model is required (mode 'train' sets it after training)")
        self.install = find_mfa(self.config)
        self.model = resolve_model(self.config.acoustic_model, "acoustic", (".zip",), self.install)
        self.model_phones = acoustic_model_phones(self.model)
        dictionary_path, self.lexicon = _dictionary(self.config, self.install)
        self._model_hash = hash_files(
            self.model, dictionary_path,
            extra=f"mfa|{mfa_version(self.install)}|{self.config.mode}|{self.config.beam}|{self.config.retry_beam}"
                  f"|{self.config.extend_edges}|{self.loudness_db}",
        )
        self.worker: WorkerProcess | None = None
        self.worker_failure = ""
        atexit.register(self.close)

    @property
    def model_hash(self) -> str:
        return self._model_hash

    def normalize_word(self, word: str) -> str:
        """MFA lower-cases words (ignore_case) in its output."""
        return word.lower()

    def oov_words(self, words: Sequence[str]) -> list[str]:
        return [w for w in words if w.lower() not in self.lexicon]

    def utterance_lexicon(self, request: AlignRequest) -> UtteranceLexicon | AlignFailure:
        """Pronunciations of the utterance's words that use only the model's phones, with
        fallbacks for OOV words; a word left without any is an `oov` failure."""
        lexicon = UtteranceLexicon({})
        for word in dict.fromkeys(w.lower() for w in request.words):
            known = self.lexicon.get(word)
            if known is None:
                if self.oov_policy == "reject":
                    return AlignFailure("oov", f"not in the dictionary: {word}")
                fallback = fallback_pronunciation(word)
                if fallback is None:
                    return AlignFailure("oov", f"no pronunciation for {word!r}")
                known = [fallback[0]]
                lexicon.oov.append(OovWord(word, fallback[1]))
            usable = [" ".join(p) for p in known if set(p) <= self.model_phones]
            if not usable:
                return AlignFailure(
                    "oov", f"no pronunciation of {word!r} uses only the acoustic model's phones ({' '.join(known[0])})"
                )
            lexicon.pronunciations[word] = usable
        return lexicon

    def align_batch(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        with local_audio(requests) as local_requests:
            return self._align_local(local_requests)

    def _align_local(self, requests: Sequence[AlignRequest]) -> list[Alignment | AlignFailure]:
        lexicons = [self.utterance_lexicon(r) for r in requests]
        results: list[Alignment | AlignFailure | None] = [x if isinstance(x, AlignFailure) else None for x in lexicons]
        usable = {i: x for i, x in enumerate(lexicons) if not isinstance(x, AlignFailure)}
        if usable:
            align = self._align_in_worker if self.config.mode == "worker" else self._align_with_mfa_align
            outcomes = align([requests[i] for i in usable], list(usable.values()))
            for (index, lexicon), outcome in zip(usable.items(), outcomes, strict=True):
                if isinstance(outcome, Alignment):
                    outcome = self._extend_edges(requests[index], replace(outcome, oov=lexicon.oov))
                results[index] = outcome
        return results  # type: ignore[return-value]

    def _extend_edges(self, request: AlignRequest, alignment: Alignment) -> Alignment | AlignFailure:
        if self.config.extend_edges <= 0:
            return alignment
        try:
            samples, rate = read_audio(request.audio_path, 16000)
        except AudioError as err:
            return AlignFailure("align_failed", f"audio: {err}")
        return extend_into_audible_silence(alignment, samples, rate, self.loudness_db, self.config.extend_edges)

    # ---- worker mode -------------------------------------------------------------------
    def _align_in_worker(self, requests: Sequence[AlignRequest], lexicons: Sequence[UtteranceLexicon]
                         ) -> list[Alignment | AlignFailure]:
        outcomes: list[Alignment | AlignFailure | None] = [None] * len(requests)
        for group in group_by_speaker(requests):
            lexicon = {w: p for i in group for w, p in lexicons[i].pronunciations.items()}
            utterances = [requests[i] for i in group]
            cmvn_from = [_segment(r) for r in utterances]
            responses: Sequence[dict[str, Any] | None] | None = self._ask_worker(lexicon, utterances, cmvn_from)
            if responses is None:  # once more, one by one, on a fresh worker: find the one that kills it
                responses = [answer[0] if (answer := self._ask_worker(lexicon, [r], cmvn_from)) else None
                             for r in utterances]
            for index, response in zip(group, responses or [None] * len(group), strict=True):
                outcomes[index] = (
                    AlignFailure("align_failed", f"MFA worker: {self.worker_failure}") if response is None
                    else parse_worker_response(response)
                )
        return outcomes  # type: ignore[return-value]

    def _ask_worker(self, lexicon: dict[str, list[str]], group: Sequence[AlignRequest],
                    cmvn_from: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        if self.worker is None:
            self.worker = WorkerProcess(self.install, self.config, self.model)
        message = {
            "lexicon": lexicon,
            "utterances": [{**_segment(r), "id": r.id, "text": " ".join(w.lower() for w in r.words)} for r in group],
            "cmvn_from": cmvn_from,
        }
        response = self.worker.ask(message)
        if response is None:
            self.worker_failure = self.worker.failure
            self.worker.close()
            self.worker = None
            return None
        return response["results"]

    # ---- batch and train modes ---------------------------------------------------------
    def _align_with_mfa_align(self, requests: Sequence[AlignRequest], lexicons: Sequence[UtteranceLexicon]
                              ) -> list[Alignment | AlignFailure]:
        work = make_work_root(self.config, self.install, "lst_mfa_batch_")
        try:
            write_batch_corpus(requests, work / "corpus")
            dictionary = work / "batch.dict"
            write_pronunciations(dictionary, {w: p for x in lexicons for w, p in x.pronunciations.items()})
            completed = run_mfa(
                [str(self.install.executable), "align", str(work / "corpus"), str(dictionary), str(self.model),
                 str(work / "out"), "--clean", "--no_tokenization", "-j", str(self.config.num_jobs),
                 "--beam", str(self.config.beam), "--retry_beam", str(self.config.retry_beam)],
                self.install.env(work / "mfa_root"), self.config.timeout, allowed_failure=NO_ALIGNMENTS,
            )
            if completed.returncode != 0:
                reason = mfa_error_message(completed)
                return [AlignFailure("align_failed", f"MFA aligned none of its run's utterances: {reason}")
                        for _ in requests]
            return collect_batch_output(requests, work / "out")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


@contextlib.contextmanager
def local_audio(requests: Sequence[AlignRequest]) -> Iterator[list[AlignRequest]]:
    """The requests with audio on object storage (a run folder there) downloaded for the batch:
    MFA reads files."""
    if not any(is_url(r.audio_path) for r in requests):
        yield list(requests)
        return
    with tempfile.TemporaryDirectory(prefix="lst-mfa-audio-") as scratch:
        local = []
        for request in requests:
            if is_url(request.audio_path):
                source = location(request.audio_path)
                if is_remote(source):
                    target = Path(scratch) / f"{request.key}{source.suffix.lower()}"
                    with contextlib.suppress(FileNotFoundError):  # a missing file fails as it would locally
                        source.fs.get_file(source.path, str(target))
                else:  # a file:// URL names the local file itself
                    target = source
                request = replace(request, audio_path=str(target))
            local.append(request)
        yield local


def _segment(request: AlignRequest) -> dict[str, Any]:
    return {"audio": str(Path(request.audio_path).resolve()), "begin": 0.0, "end": request.duration}


def group_by_speaker(requests: Sequence[AlignRequest]) -> list[list[int]]:
    """Indices of the requests per speaker, speakers in order of first appearance (an
    utterance without a speaker is a group of its own)."""
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.speaker or f"\0{index}", []).append(index)
    return list(groups.values())


def mfa_version(install: MfaInstall) -> str:
    """MFA's version from its package metadata (no MFA import: milliseconds, not seconds)."""
    completed = subprocess.run(
        [str(install.python), "-c", "import importlib.metadata as m; print(m.version('montreal-forced-aligner'))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if completed.returncode != 0:
        raise MfaUnavailable(f"{install.python} has no montreal-forced-aligner package: {completed.stderr[-300:]}")
    return completed.stdout.strip()


class WorkerProcess:
    """One `mfa_worker.py` process: JSON lines with a deadline on every answer."""

    def __init__(self, install: MfaInstall, config: MfaConfig, model: Path) -> None:
        self.timeout = config.worker_timeout
        self.root = make_work_root(config, install, "lst_mfa_worker_")
        self.failure = ""
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.process = subprocess.Popen(
            [str(install.python), str(WORKER_SCRIPT), "--acoustic-model", str(model),
             "--beam", str(config.beam), "--retry-beam", str(config.retry_beam),
             "--remove-on-exit", str(self.root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=install.env(self.root / "mfa_root"),
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._buffer = b""
        hello = self._read_line()
        if hello is None or not hello.get("ready"):
            reason = hello.get("fatal") if hello else self.failure
            self.close()
            raise RuntimeError(f"MFA worker did not start: {reason}")

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer, or None when it died or missed the deadline (see `failure`)."""
        try:
            assert self.process.stdin is not None
            self.process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self.failure = self._death()
            return None
        return self._read_line()

    def _read_line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.process.kill()
                    self.failure = f"no answer within align.mfa.worker_timeout = {self.timeout:g} s"
                    return None
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    self.failure = self._death()
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _death(self) -> str:
        code = self.process.wait(timeout=30)
        time.sleep(0.1)  # let the stderr thread read the last lines
        tail = " | ".join(self.stderr_tail)[-500:]
        return f"the process died (exit code {code}){': ' + tail if tail else ', nothing on stderr'}"

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def parse_worker_response(response: dict[str, Any], oov: Sequence[OovWord] = ()) -> Alignment | AlignFailure:
    """An Alignment from one mfa_worker.py result (silence words/phones become labelled silences)."""
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
                     score=None if likelihood is None else float(likelihood), oov=list(oov))


def write_pronunciations(path: Path, pronunciations: dict[str, list[str]]) -> None:
    """An MFA dictionary (word TAB phones), words sorted, so the same words give the same file."""
    lines = [f"{word}\t{phones}" for word in sorted(pronunciations) for phones in pronunciations[word]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_batch_corpus(requests: Sequence[AlignRequest], corpus: Path) -> None:
    """MFA layout: corpus/SPEAKER/KEY.<audio suffix> (a link to the audio) + KEY.lab (the words)."""
    for request in requests:
        folder = corpus / sanitize_key(request.speaker or "speaker")
        folder.mkdir(parents=True, exist_ok=True)
        audio = Path(request.audio_path).resolve()
        link = folder / f"{request.key}{audio.suffix.lower()}"
        if not link.exists():
            link.symlink_to(audio)
        (folder / f"{request.key}.lab").write_text(" ".join(w.lower() for w in request.words) + "\n", encoding="utf-8")


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


def mfa_error_message(completed: subprocess.CompletedProcess[str]) -> str:
    """MFA's own words about why it failed: the lines from its exception name on."""
    output = (completed.stderr or "") + (completed.stdout or "")
    lines = [line.strip(" │╭╮╰╯─") for line in output.splitlines()]
    lines = [line for line in lines if line]
    start = next((i for i, line in enumerate(lines) if "Error" in line), max(len(lines) - 3, 0))
    return " ".join(lines[start:start + 3])[:500]


def run_mfa(args: list[str], env: dict[str, str], timeout: float, allowed_failure: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run an `mfa` command (argument list, no shell). A non-zero exit is an infrastructure
    fault, unless its output names `allowed_failure` (the caller turns that into rejects)."""
    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = (completed.stderr or "") + (completed.stdout or "")
    if completed.returncode != 0 and not (allowed_failure and allowed_failure in output):
        raise RuntimeError(f"{' '.join(args[:2])} exited {completed.returncode}: {mfa_error_message(completed)}")
    return completed


def train_acoustic_model(requests: Sequence[AlignRequest], out_dir: Path, config: AlignConfig) -> AlignConfig:
    """Mode 'train', stage-wide: `mfa train` on these utterances (the whole manifest) into
    OUT_DIR/mfa_acoustic_model.zip; returns the align config that aligns with that model
    (mode stays 'train', so provenance says how the model came about)."""
    install = find_mfa(config.mfa)
    out_path = out_dir / "mfa_acoustic_model.zip"
    out_dir.mkdir(parents=True, exist_ok=True)
    _, lexicon = _dictionary(config.mfa, install)
    pronunciations: dict[str, list[str]] = {}
    for word in {w.lower() for r in requests for w in r.words}:
        known = lexicon.get(word)
        if not known:
            fallback = fallback_pronunciation(word)
            known = [fallback[0]] if fallback else []  # none: MFA trains it as its OOV word
        pronunciations[word] = [" ".join(p) for p in known]
    work = make_work_root(config.mfa, install, "lst_mfa_train_")
    try:
        write_batch_corpus(requests, work / "corpus")
        write_pronunciations(work / "train.dict", pronunciations)
        args = [str(install.executable), "train", str(work / "corpus"), str(work / "train.dict"), str(out_path),
                "--clean", "-j", str(config.mfa.num_jobs)]
        if config.mfa.train_config:
            args += ["--config_path", str(Path(config.mfa.train_config).absolute())]
        run_mfa(args, install.env(work / "mfa_root"), config.mfa.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return updated(config, {"mfa": {"acoustic_model": str(out_path.absolute())}})
