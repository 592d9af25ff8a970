"""Every input accounted for: one corpus per class of broken input, built end to end.

Each corpus mixes real speech (the espeak-ng demo corpus's audio and transcripts) with
broken inputs of one class. `lst-data build` must finish with exit 3 and no traceback,
name every bad input in rejects.parquet with its own code, and ship every good input.
The builds run in this process (the CLI's own entry point, so exit codes and the printed
summary are the user's), with `--runner local`, except one build on the default Ray runner
that holds the files class, the mismatched-transcript class and some of every other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr

from lst_data.align.config import PocketsphinxConfig
from lst_data.cli import cli
from lst_data.core.cli_options import run_cli
from lst_data.core.rejects import read_rejects
from lst_data.format.keys import MAX_KEY_CHARS, sanitize_key
from lst_data.format.schema import validation_errors

MISMATCH_CODES = ("align_failed", "alignment_low_score", "alignment_unaligned_speech")
# Small but real models: the corpora hold a handful of utterances.
SMALL = ["--set", "units.k=8", "--set", "units.sample_frames=4000", "--set", "tokenizer.vocab_size=60"]


def build(corpus: Path, out: Path, capsys, runner: str = "local") -> tuple[int, str]:
    """Run `lst-data build` in this process: (exit code, everything it printed)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(cli, "lst-data", ["build", str(corpus), "--out", str(out), "--runner", runner, *SMALL])
    printed = capsys.readouterr()
    return exited.value.code, printed.out + printed.err


def outcome(out: Path) -> tuple[dict[str, str], set[str]]:
    """(id -> reject code, ids in the shards) of a finished build."""
    rejects = {r.id: r.code for r in read_rejects(out / "shards" / "rejects.parquet")}
    shipped = set(pq.read_table(out / "shards" / "index.parquet")["id"].to_pylist())
    return rejects, shipped


def assert_accounted(code: int, printed: str, out: Path, bad: dict[str, str], good: set[str]) -> None:
    assert code == 3, printed
    assert "Traceback" not in printed
    rejects, shipped = outcome(out)
    assert {i: rejects.get(i) for i in bad} == bad
    assert shipped == good, f"missing from the shards: {good - shipped}, unexpected: {shipped - good}"
    for reject_code in set(bad.values()):
        assert reject_code in printed, f"the summary does not list {reject_code}"
    for row in pq.read_table(out / "shards" / "rejects.parquet").to_pylist():
        assert validation_errors(row, "reject") == [], row


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps table cells at the terminal width


@pytest.fixture(scope="module")
def speech(demo_corpus: Path) -> list[tuple[Path, str]]:
    """(audio, transcript) of the demo corpus's utterances, in id order."""
    truth = json.loads((demo_corpus / "ground_truth.json").read_text(encoding="utf-8"))
    return [(demo_corpus / u["audio"], u["text"]) for u in sorted(truth["utterances"], key=lambda u: u["id"])]


def put(folder: Path, stem: str, audio: Path, text: str | None, suffix: str = ".wav") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(audio, folder / f"{stem}{suffix}")
    if text is not None:
        (folder / f"{stem}.lab").write_text(text, encoding="utf-8")
    return folder / f"{stem}{suffix}"


def jsonl(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    return path


def files_corpus(root: Path, speech: list[tuple[Path, str]]) -> tuple[dict[str, str], set[str]]:
    """MFA layout: orphans, special files, conflicting transcripts, duplicates, unknown files."""
    alice, bob = root / "alice", root / "bob"
    for i, (audio, text) in enumerate(speech[:3]):
        put(alice, f"good{i}", audio, text)
    (alice / "good0.txt").write_text(speech[0][1] + "\n", encoding="utf-8")  # same text twice: fine
    put(bob, "good1", speech[3][0], speech[3][1])  # a later copy of an id
    (bob / "orphan.lab").write_text("a transcript without audio", encoding="utf-8")
    os.mkfifo(bob / "fifo.wav")
    (bob / "fifo.lab").write_text("nobody writes to this pipe", encoding="utf-8")
    (bob / "device.wav").symlink_to(os.devnull)
    (bob / "device.lab").write_text("a character device", encoding="utf-8")
    (bob / "dangling.wav").symlink_to(bob / "gone.wav")
    (bob / "dangling.lab").write_text("its target was deleted", encoding="utf-8")
    put(bob, "conflict", speech[4][0], speech[4][1])
    (bob / "conflict.txt").write_text("some other words entirely", encoding="utf-8")
    put(bob, "untranscribed", speech[5][0], None)
    (bob / "notes.md").write_text("recording notes", encoding="utf-8")
    bad = {"orphan": "transcript_orphan", "fifo": "file_not_regular", "device": "file_not_regular",
           "dangling": "file_dangling_link", "conflict": "transcript_conflict", "untranscribed": "transcript_missing",
           "good1": "duplicate_id"}
    return bad, {"good0", "good1", "good2"}


def test_broken_audio_is_rejected_before_it_reaches_the_encoder(speech, tmp_path, capsys):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    samples, rate = sf.read(speech[0][0], dtype="float32")
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        poisoned = samples.copy()
        poisoned[len(poisoned) // 2 :: 97] = value
        sf.write(audio_dir / f"{name}.wav", poisoned, rate, subtype="FLOAT")
    sf.write(audio_dir / "truncated.wav", samples, rate, subtype="PCM_16")
    size = (audio_dir / "truncated.wav").stat().st_size
    with open(audio_dir / "truncated.wav", "r+b") as handle:
        handle.truncate(size * 2 // 3)  # the header still promises every sample
    entries = [{"id": f"good{i}", "audio": str(audio), "text": text} for i, (audio, text) in enumerate(speech[:3])]
    entries += [{"id": name, "audio": str(audio_dir / f"{name}.wav"), "text": speech[0][1]} for name in ("nan", "inf", "truncated")]
    code, printed = build(jsonl(tmp_path / "corpus.jsonl", entries), tmp_path / "run", capsys)
    bad = {"nan": "audio_nonfinite", "inf": "audio_nonfinite", "truncated": "audio_truncated"}
    assert_accounted(code, printed, tmp_path / "run", bad, {"good0", "good1", "good2"})
    codebook = np.load(tmp_path / "run" / "units" / "codebook.npy")
    assert np.isfinite(codebook).all()


def test_any_utf8_id_ships_and_keys_never_collide(speech, tmp_path, capsys):
    converted = tmp_path / "audio" / "at22k.wav"
    converted.parent.mkdir()
    samples, rate = sf.read(speech[0][0], dtype="float32")
    sf.write(converted, soxr.resample(samples, rate, 22050), 22050)  # must be converted: a derived file name
    long_id = "speaker/" + "x" * 300 + ".take1"
    colliding = sanitize_key("a.b")  # a plain id that equals the key another id maps to
    entries = [
        {"id": long_id, "audio": str(converted), "text": speech[0][1]},
        {"id": "naïve/ütt.1", "audio": str(speech[1][0]), "text": speech[1][1]},
        {"id": "a.b", "audio": str(speech[2][0]), "text": speech[2][1]},
        {"id": colliding, "audio": str(speech[3][0]), "text": speech[3][1]},
        {"id": "twice", "audio": str(speech[4][0]), "text": speech[4][1]},
        {"id": "twice", "audio": str(speech[5][0]), "text": speech[5][1]},
        {"id": "", "audio": str(speech[6][0]), "text": speech[6][1]},
        {"id": " padded ", "audio": str(speech[7][0]), "text": speech[7][1]},
        {"id": "bell\u0007", "audio": str(speech[8][0]), "text": speech[8][1]},
    ]
    code, printed = build(jsonl(tmp_path / "corpus.jsonl", entries), tmp_path / "run", capsys)
    bad = {colliding: "key_collision", "twice": "duplicate_id", "corpus.jsonl:7": "id_invalid", " padded ": "id_invalid",
           "bell\u0007": "id_invalid"}
    assert_accounted(code, printed, tmp_path / "run", bad, {long_id, "naïve/ütt.1", "a.b", "twice"})
    index = pq.read_table(tmp_path / "run" / "shards" / "index.parquet").to_pylist()
    assert len({row["key"] for row in index}) == len(index)
    assert all(len(row["key"]) <= MAX_KEY_CHARS for row in index)
    twice = next(r for r in index if r["id"] == "twice")
    manifest = {r["id"]: r for r in pq.read_table(tmp_path / "run" / "ingest" / "manifest.parquet").to_pylist()}
    assert manifest["twice"]["source_path"] == str(speech[4][0]), "the first copy of an id ships"
    assert twice["key"] == "twice"
    derived = list((tmp_path / "run" / "ingest" / "audio").iterdir())
    assert derived and all(len(p.name) <= MAX_KEY_CHARS + 5 for p in derived)


def espeak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return path


def test_real_transcripts_are_spoken_form_and_keep_the_original(speech, tmp_path, capsys):
    digits = espeak("Press one, then nine, or dial three hundred and twenty three.", tmp_path / "digits.wav")
    first_word, rest = speech[1][1].split(" ", 1)
    zero_width = f"\ufeff{first_word[:2]}\u200b{first_word[2:]} {rest}"
    entries = [
        {"id": "digits", "audio": str(digits), "text": "Press 1, then 9, or dial 323."},
        {"id": "zero_width", "audio": str(speech[1][0]), "text": zero_width},
        {"id": "annotated", "audio": str(speech[2][0]), "text": speech[2][1] + " (laughs)"},
        {"id": "beep", "audio": str(speech[3][0]), "text": "[beep tone]"},
        {"id": "cyrillic_word", "audio": str(speech[4][0]), "text": "мир"},
        {"id": "lookalike", "audio": str(speech[5][0]), "text": speech[5][1].replace("a", "\u0430", 1)},
    ]
    code, printed = build(jsonl(tmp_path / "corpus.jsonl", entries), tmp_path / "run", capsys)
    rejects, shipped = outcome(tmp_path / "run")
    assert code == 3 and "Traceback" not in printed
    assert rejects["beep"] == "transcript_nonspeech" and rejects["cyrillic_word"] == "oov"
    assert {"digits", "zero_width", "annotated"} <= shipped
    # The summary explains oov by the config that made it: g2p found no pronunciation.
    assert "[align.oov = 'g2p']" in printed
    manifest = {r["id"]: r for r in pq.read_table(tmp_path / "run" / "ingest" / "manifest.parquet").to_pylist()}
    assert manifest["digits"]["normalized_text"] == "press one then nine or dial three hundred and twenty three"
    assert manifest["zero_width"]["normalized_text"].split()[0] == first_word.lower()
    assert "mixed_script" in manifest["lookalike"]["flags"]
    import webdataset as wds

    records = {json.loads(s["json"])["id"]: json.loads(s["json"])
               for s in wds.WebDataset(sorted(map(str, (tmp_path / "run" / "shards").glob("*.tar"))), shardshuffle=False)}
    assert records["digits"]["text_original"] == "Press 1, then 9, or dial 323."
    assert records["digits"]["text"].split() == [w["word"] for w in records["digits"]["words"]]


def test_a_corpus_with_nothing_good_exits_3_without_a_traceback(tmp_path, capsys):
    root = tmp_path / "corpus"
    root.mkdir()
    noise = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    noise[100] = np.nan
    sf.write(root / "nan.wav", noise, 16000, subtype="FLOAT")
    (root / "nan.lab").write_text("hello world", encoding="utf-8")
    sf.write(root / "beep.wav", np.zeros(16000, dtype=np.float32), 16000)
    (root / "beep.lab").write_text("[beep tone]", encoding="utf-8")
    code, printed = build(root, tmp_path / "run", capsys)
    assert_accounted(code, printed, tmp_path / "run", {"nan": "audio_nonfinite", "beep": "transcript_nonspeech"}, set())


@pytest.mark.ray
def test_default_ray_runner_accounts_for_every_file_and_class(ray_local, speech, tmp_path, capsys):
    """On the default runner: the files class (MFA layout: orphans, FIFOs, devices, dangling
    links, conflicting transcripts, duplicates, unknown files) and the mismatch class (two
    swapped transcripts, "hello" for a whole sentence), with broken audio and text beside them."""
    root = tmp_path / "corpus"
    bad, good = files_corpus(root, speech)
    poisoned, rate = sf.read(speech[6][0], dtype="float32")
    poisoned[::50] = np.nan
    sf.write(root / "alice" / "nan.wav", poisoned, rate, subtype="FLOAT")
    (root / "alice" / "nan.lab").write_text(speech[6][1], encoding="utf-8")
    put(root / "alice", "beep", speech[8][0], "[beep tone]")
    mismatched = {"swapped_a": (7, 9), "swapped_b": (9, 7), "hello": (10, None)}
    for stem, (audio, text) in mismatched.items():
        put(root / "carol", stem, speech[audio][0], "hello" if text is None else speech[text][1])
    code, printed = build(root, tmp_path / "run", capsys, runner="ray")
    rejects, _ = outcome(tmp_path / "run")
    # No path through the words, a path far below a free phone decode, or speech left outside the words.
    caught = {stem: rejects.pop(stem, None) for stem in mismatched}
    assert all(code in MISMATCH_CODES for code in caught.values()), caught
    assert_accounted(code, printed, tmp_path / "run", bad | {"nan": "audio_nonfinite", "beep": "transcript_nonspeech"}, good)
    assert "notes.md, because unknown extension '.md'" in printed
    duplicate = next(r for r in read_rejects(tmp_path / "run" / "shards" / "rejects.parquet") if r.code == "duplicate_id")
    assert "bob" in duplicate.detail and "alice" in duplicate.detail, "the later copy (bob's) is the reject"
    align = json.loads((tmp_path / "run" / "align" / "align.json").read_text(encoding="utf-8"))
    assert align["figures"]["score_min"] >= PocketsphinxConfig().min_score  # every shipped score clears the gate
    assert "score_median" in printed
