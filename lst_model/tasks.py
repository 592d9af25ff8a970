"""Multiple-choice tasks for `lst-model score`.

(Items from the shard set's own held-out utterances: `lst_model.corpus_tasks`.)

- `build_choice_items`: a HellaSwag- or StoryCloze-style JSONL turned into items of the four
  modality pairs (`lst_model.items`: s2s, t2t, s2t, t2s), so the speech benchmarks of the
  paper (sHellaSwag, sStoryCloze) can be rebuilt from their text. A text side is the
  transcript's spoken form encoded with the shard set's tokenizer. A speech side is
  synthesized by a TTS command (espeak-ng by default; argument lists, text on stdin) in
  the one voice of its item, then run through lst-data's own stages with the shard set's
  configuration, codebook and tokenizer (`ShardBuild`), so its units, word alignment and
  aligned patches are made exactly as the training utterances' were. A side the TTS or a
  stage rejects drops its item, with the reason (`Dropped`). docs/tasks.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lst_data.config import RunConfig, load_config
from lst_data.core.errors import UserError
from lst_data.demo import VOICES as DEMO_VOICES
from lst_data.format.layout import read_dataset
from lst_data.format.patching import patch_lengths
from lst_data.format.records import SampleRecord
from lst_model.data import canonical_transcript
from lst_model.items import (
    ALIGNED_STRATEGIES,
    PAIRS,
    ChoiceItem,
    InvalidItem,
    Side,
    jsonl_lines,
    pair_counts_line,
    write_items,
    write_jsonl,
)

DEFAULT_TTS = ("espeak-ng", "-v", "{voice}", "-w", "{out}", "--stdin")
DEFAULT_VOICES = tuple(voice for _, voice in DEMO_VOICES)
TTS_WORKERS = 4
TTS_TIMEOUT_S = 300.0
# Backends that import alignments made elsewhere instead of aligning audio; MFA's train mode would
# fit a new acoustic model to the synthesized audio rather than use the one the shards were aligned with.
UNALIGNABLE_BACKENDS = ("textgrid", "lhotse")
PROMPT = "prompt"


class TaskError(UserError, ValueError):
    """A task cannot be built from what the user gave (too few utterances, a bad TTS command)."""


@dataclass(frozen=True)
class ChoiceText:
    id: str
    context: str
    endings: tuple[str, ...]
    label: int


def parse_choice_line(data: Any, index: int) -> ChoiceText:
    """HellaSwag (ctx | ctx_a + ctx_b, endings, label), StoryCloze (InputSentence1-4,
    RandomFifthSentenceQuiz1-2, AnswerRightEnding 1-based) or generic (context, endings, label);
    `index` names an item that has no id of its own."""
    if not isinstance(data, dict):
        raise TaskError("an item must be a JSON object")
    item_id = str(data.get("ind", data.get("InputStoryid", data.get("id", index))))
    try:
        if "InputSentence1" in data:
            context = " ".join(data[f"InputSentence{k}"] for k in range(1, 5))
            endings = [data["RandomFifthSentenceQuiz1"], data["RandomFifthSentenceQuiz2"]]
            label = int(data["AnswerRightEnding"]) - 1
        else:
            context = data.get("ctx") or " ".join(filter(None, [data.get("ctx_a"), data.get("ctx_b")])) or data.get("context", "")
            endings, label = data["endings"], int(data["label"])
    except KeyError as err:
        raise TaskError(f"item {item_id}: no field {err}: not a HellaSwag, StoryCloze or {{context, endings, label}} item") from None
    except (TypeError, ValueError):
        raise TaskError(f"item {item_id}: the label must be an integer") from None
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in [context, *endings]):
        raise TaskError(f"item {item_id}: needs a text context and a list of at least 2 text endings")
    if not 0 <= label < len(endings):
        raise TaskError(f"item {item_id}: label {label} is not among its {len(endings)} endings")
    return ChoiceText(item_id, context, tuple(endings), label)


def read_choice_jsonl(path: str | Path, limit: int | None = None) -> list[ChoiceText]:
    """The first `limit` (all) items of a multiple-choice JSONL; a bad line is a TaskError naming it."""
    choices: list[ChoiceText] = []
    try:
        for number, data in jsonl_lines(path):
            if limit is not None and len(choices) >= limit:
                break
            try:
                choices.append(parse_choice_line(data, number - 1))
            except (TaskError, ValueError) as err:
                raise TaskError(f"{path}:{number}: {err}") from None
    except InvalidItem as err:  # not JSON, or a line over the cap
        raise TaskError(str(err)) from None
    return choices


def voice_for(item_id: str, voices: Sequence[str]) -> str:
    """The one voice of all speech sides of an item, fixed by its id (whatever else is built with it)."""
    digest = int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big")
    return voices[digest % len(voices)]


class CommandTTS:
    """Any TTS program as an argument list: `{voice}` and `{out}` (the wav file it writes) are
    filled in, the text goes to stdin, and no shell ever sees it."""

    _PLACEHOLDER = re.compile(r"\{(voice|out)\}")

    def __init__(self, argv: Sequence[str] = DEFAULT_TTS):
        if not argv or not all(isinstance(a, str) for a in argv):
            raise TaskError("--tts: the TTS command must be a non-empty JSON list of strings")
        if not any("{out}" in a for a in argv):
            raise TaskError("--tts: the TTS command must contain {out} (the wav file it writes)")
        if shutil.which(argv[0]) is None:
            raise TaskError(f"--tts: program {argv[0]!r} not found")
        self.argv = list(argv)

    @property
    def takes_voice(self) -> bool:
        return any("{voice}" in a for a in self.argv)

    def synthesize(self, text: str, voice: str, out: Path) -> str | None:
        """Write `text` spoken in `voice` to `out`; None, or why no audio came."""
        values = {"voice": voice, "out": str(out)}
        argv = [self._PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in self.argv]
        try:
            done = subprocess.run(argv, input=text.encode("utf-8"), capture_output=True, timeout=TTS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{argv[0]} ran longer than {TTS_TIMEOUT_S:.0f} s"
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
            return f"{argv[0]} exited with {done.returncode}" + (f": {message[-1]}" if message else "")
        if not out.is_file() or out.stat().st_size == 0:
            return f"{argv[0]} wrote no audio to {{out}}"
        return None


@dataclass(frozen=True)
class ShardBuild:
    """What a shard set was made with: its resolved config (dataset.json), codebook and tokenizer,
    both checked against the hashes dataset.json records."""

    dataset: dict[str, Any]
    config: RunConfig
    codebook: Path
    tokenizer: Path

    @classmethod
    def from_shard_dir(cls, shard_dir: str | Path) -> ShardBuild:
        from lst_data.core.digests import file_sha256
        from lst_data.tokenize import load_tokenizer
        from lst_data.units.stage import CODEBOOK_FILE
        from lst_model.text_corpus import TOKENIZER_FILE

        shard_dir = Path(shard_dir)
        try:  # its schema requires the build config, so a dataset.json that passes holds one
            dataset = read_dataset(shard_dir)
        except (OSError, ValueError) as err:
            raise TaskError(f"--shards {shard_dir}: no readable dataset.json ({err})") from None
        config = load_config(overrides=dataset["config"])
        hashes = dataset.get("hashes") or {}
        codebook = _build_file(shard_dir, config.units.codebook, CODEBOOK_FILE, "units.codebook")
        _check_hash(codebook, file_sha256(codebook), {c.get("codebook_hash") for c in hashes.get("codebook") or []}, "codebook")
        tokenizer = _build_file(shard_dir, config.tokenizer.model, TOKENIZER_FILE, "tokenizer.model")
        _check_hash(tokenizer, load_tokenizer(tokenizer).hash, set(hashes.get("tokenizer") or []), "tokenizer")
        return cls(dataset, config, codebook, tokenizer)

    def normalize(self, text: str) -> str:
        from lst_model.text_corpus import normalize_like_transcripts

        return normalize_like_transcripts(text, self.dataset)

    def pipeline_config(self, runner: str) -> RunConfig:
        """The shards' config, reading a JSONL corpus and reusing their codebook and tokenizer (no retraining)."""
        from lst_data.core.config import updated

        align = self.config.align
        if align.backend in UNALIGNABLE_BACKENDS or (align.backend == "mfa" and align.mfa.mode == "train"):
            what = f"{align.backend}" + (" in train mode" if align.backend == "mfa" else "")
            raise TaskError(f"align.backend: the shards were aligned with {what}, which cannot align new audio "
                            "as the shards were; build text pairs only (--pairs t2t)")
        return updated(self.config, {"ingest": {"layout": "jsonl"}, "units": {"codebook": str(self.codebook)},
                                     "tokenizer": {"model": str(self.tokenizer)}, "shard": {"include_audio": False},
                                     "ray": {"runner": runner}})


def _build_file(shard_dir: Path, configured: str | None, name: str, field: str) -> Path:
    """The configured file when it is on this machine, else the one the build wrote near the shards."""
    from lst_model.text_corpus import find_build_file

    if configured is not None and Path(configured).is_file():
        return Path(configured)
    found = find_build_file(shard_dir, name)
    if found is None:
        raise TaskError(f"--shards {shard_dir}: {field} {configured or name!r} not found (looked beside the shards "
                        "and in the run's stage folders)")
    return found


def _check_hash(path: Path, digest: str, expected: set[str], what: str) -> None:
    if digest not in expected:
        known = ", ".join(sorted(h[:12] for h in expected if h)) or "none"
        raise TaskError(f"--shards: {path} (sha256 {digest[:12]}) is not the {what} the shards were made with ({known})")


@dataclass(frozen=True)
class Dropped:
    """An input item that is not in the task, and why: `side` ('prompt', 'endings[k]' or '' for
    the whole item), `stage` (tts, an lst-data stage, or build-task), a reject `code`, a detail."""

    id: str
    code: str
    detail: str
    side: str = ""
    stage: str = "build-task"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class BuildResult:
    items: list[ChoiceItem]
    dropped: list[Dropped]

    def items_per_pair(self) -> dict[str, int]:
        return dict(Counter(item.pair for item in self.items))

    def dropped_per_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(f"{d.stage}/{d.code}" for d in self.dropped).items()))

    def summary(self, pairs: Sequence[str], out: str | Path) -> list[str]:
        """What build-task prints: items per pair, and the dropped items by reason (see `write_build`)."""
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.dropped_per_reason().items())
        return [pair_counts_line(self.items, pairs, out),
                f"dropped: {len(self.dropped)} items" + (f" ({reasons})" if reasons else "") + f" -> {rejects_path(out)}"]


def _side_name(position: int) -> str:
    return PROMPT if position == 0 else f"endings[{position - 1}]"


def text_side(text: str, encode: Callable[[str], list[int]]) -> Side:
    return Side("text", tuple(encode(text)), text)


def speech_side(record: SampleRecord) -> Side:
    """The record's units, transcript and aligned patch lengths (they tile its frames)."""
    patches = {s: tuple(patch_lengths(record, s)) for s in ALIGNED_STRATEGIES}
    return Side("speech", tuple(int(u) for u in record.units), record.text, patches)


def has_speech(pair: str) -> bool:
    """Whether a pair ('s2t') has a speech side."""
    return "s" in (pair[0], pair[2])


def check_pairs(pairs: Sequence[str]) -> None:
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise TaskError(f"--pairs: unknown pairs {unknown}; known: {', '.join(PAIRS)}")


def build_choice_items(
    choices: Sequence[ChoiceText],
    pairs: Sequence[str],
    shards: ShardBuild,
    *,
    tts: CommandTTS | None = None,
    voices: Sequence[str] = DEFAULT_VOICES,
    runner: str = "local",
) -> BuildResult:
    """Items of every pair in `pairs` for every choice that all its sides survive (see the module doc).

    Every pair holds the same items: an item with a side the TTS or a stage rejects is dropped
    from all of them, so accuracies of the pairs compare like with like.
    """
    from lst_data.tokenize import load_tokenizer

    check_pairs(pairs)
    if not voices:
        raise TaskError("--voices: give at least one voice")
    dropped: list[Dropped] = []
    kept: list[tuple[ChoiceText, list[str]]] = []
    seen: set[str] = set()
    for choice in choices:
        if choice.id in seen:
            dropped.append(Dropped(choice.id, "duplicate_id", "an earlier item has this id (the first one is built)"))
            continue
        seen.add(choice.id)
        texts = [shards.normalize(t) for t in (choice.context, *choice.endings)]
        empty = [k for k, t in enumerate(texts) if not t]
        if empty:
            dropped.append(Dropped(choice.id, "transcript_empty", "nothing to say after normalization", _side_name(empty[0])))
            continue
        kept.append((choice, texts))
    records: dict[str, list[SampleRecord]] = {}
    if any(map(has_speech, pairs)) and kept:
        records, failed = _speak_and_align(kept, shards, tts or CommandTTS(), voices, runner)
        dropped += failed
        kept = [(c, t) for c, t in kept if c.id in records]
    encode = load_tokenizer(shards.tokenizer).encode
    modalities = {m for p in pairs for m in (p[0], p[2])}
    sides = {choice.id: {"s": [speech_side(r) for r in records.get(choice.id, [])],
                         "t": [text_side(t, encode) for t in texts] if "t" in modalities else []}
             for choice, texts in kept}
    built = []
    for pair in pairs:
        for choice, _ in kept:
            prompt, endings = sides[choice.id][pair[0]], sides[choice.id][pair[2]]
            sources = (choice.context, *choice.endings, f"{choice.context} {choice.endings[choice.label]}")
            built.append(ChoiceItem(
                f"{choice.id}:{pair}", prompt[0], tuple(endings[1:]), choice.label,
                voice_for(choice.id, voices) if has_speech(pair) else None,
                tuple(canonical_transcript(t) for t in sources)))
    return BuildResult(built, dropped)


def _speak_and_align(
    kept: Sequence[tuple[ChoiceText, list[str]]], shards: ShardBuild, tts: CommandTTS, voices: Sequence[str], runner: str,
) -> tuple[dict[str, list[SampleRecord]], list[Dropped]]:
    """Every side of every item synthesized in the item's voice, then built into records by the
    shards' own pipeline (ingest, align, units, tokenize, shard) from a temporary JSONL corpus.
    Returns the records of the items whose every side made it, and why the others did not."""
    from lst_data.core.rejects import read_rejects
    from lst_data.core.runner import REJECTS_FILE
    from lst_data.format.reader import iter_records
    from pipelines.build_corpus import STEPS, build_corpus

    config = shards.pipeline_config(runner)
    if len(voices) > 1 and not tts.takes_voice:
        raise TaskError("--voices: the --tts command has no {voice}, so it speaks one voice: give one name")
    jobs = [(f"{n:06d}_{k}", text, voice_for(choice.id, voices))
            for n, (choice, texts) in enumerate(kept) for k, text in enumerate(texts)]
    with tempfile.TemporaryDirectory(prefix="lst-build-task-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        with ThreadPoolExecutor(TTS_WORKERS) as pool:
            tts_failures = dict(zip((utt for utt, _, _ in jobs),
                                    pool.map(lambda job: tts.synthesize(job[1], job[2], corpus / f"{job[0]}.wav"), jobs),
                                    strict=True))
        lines = [json.dumps({"id": utt, "audio": f"{utt}.wav", "text": text, "speaker": voice}) + "\n"
                 for utt, text, voice in jobs if tts_failures[utt] is None]
        made: dict[str, SampleRecord] = {}
        rejects = {}
        if lines:
            (corpus / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
            run = Path(tmp) / "run"
            build_corpus(corpus / "manifest.jsonl", run, config)
            shard_dir = run / STEPS["shard"].folder
            made = {r.id: r for r in iter_records(shard_dir, with_audio=False)}
            rejects = {r.id: r for r in read_rejects(shard_dir / REJECTS_FILE)}
    records: dict[str, list[SampleRecord]] = {}
    dropped: list[Dropped] = []
    for n, (choice, texts) in enumerate(kept):
        failure = None
        for k in range(len(texts)):
            utt = f"{n:06d}_{k}"
            tts_failure = tts_failures[utt]
            if tts_failure is not None:
                failure = Dropped(choice.id, "tts_failed", tts_failure, _side_name(k), "tts")
            elif utt in rejects:
                reject = rejects[utt]
                failure = Dropped(choice.id, reject.code, reject.detail, _side_name(k), reject.stage)
            elif utt not in made:
                raise RuntimeError(f"utterance {utt} of item {choice.id} is neither in the shards nor rejected")
            if failure is not None:
                break
        if failure is None:
            records[choice.id] = [made[f"{n:06d}_{k}"] for k in range(len(texts))]
        else:
            dropped.append(failure)
    return records, dropped


def rejects_path(out: str | Path) -> Path:
    """Where build-task writes the dropped items: beside --out, `NAME.rejects.jsonl`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rejects.jsonl")


def write_build(result: BuildResult, out: str | Path) -> Path:
    """The items to `out` (lst_model.items JSONL), the dropped items to `rejects_path(out)`; returns the latter."""
    write_items(result.items, out)
    return write_jsonl((d.to_json() for d in result.dropped), rejects_path(out), ensure_ascii=False)


def build_task(input_path: str | Path, shard_dir: str | Path, pairs: Sequence[str], out: str | Path, *,
               tts: CommandTTS | None = None, voices: Sequence[str] = DEFAULT_VOICES, limit: int | None = None,
               runner: str = "local") -> BuildResult:
    """`lst-model build-task --input`: the first `limit` (all) items of a multiple-choice JSONL
    built for the shard set in every pair (`build_choice_items`), written by `write_build`."""
    shards = ShardBuild.from_shard_dir(shard_dir)
    result = build_choice_items(read_choice_jsonl(input_path, limit), pairs, shards, tts=tts, voices=voices, runner=runner)
    write_build(result, out)
    return result
