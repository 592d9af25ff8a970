"""`lst-model build-task`: text multiple-choice sets into s2s / t2t / s2t / t2s items.

Everything is real: espeak-ng speaks the sides, and lst-data's own pipeline (pocketsphinx,
the MFCC units with the demo build's codebook, its BPE) turns the audio into records, on a
shard set built from the demo corpus (tests/conftest.py `demo_build`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lst_data.format.patching import patch_lengths
from lst_data.format.reader import iter_records
from lst_data.format.records import SampleRecord
from lst_data.text import normalize_text
from lst_data.tokenize.tokenizer import load_tokenizer
from lst_model.items import read_items
from lst_model.tasks import TaskError, parse_choice_line, read_choice_jsonl
from pipelines.build_corpus import build_corpus

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

VOICES = ("en-us", "en-gb", "en-us+f3")
# A HellaSwag line, a StoryCloze line and a generic one (words of the demo's domain).
LINES = [
    {"ind": 4, "ctx_a": "A small brown dog waited beside the garden gate.", "ctx_b": "Then the dog",
     "ctx": "A small brown dog waited beside the garden gate. Then the dog",
     "endings": ["ran across the open fields.", "opened the library early.", "painted 2 fences green.",
                 "sailed past the lighthouse."], "label": 0, "split": "val"},
    {"InputStoryid": "s-1", "InputSentence1": "The baker woke before dawn.", "InputSentence2": "He lit the oven.",
     "InputSentence3": "He shaped the bread.", "InputSentence4": "The market was crowded.",
     "RandomFifthSentenceQuiz1": "Everyone bought his bread.", "RandomFifthSentenceQuiz2": "The comet flew into the kettle.",
     "AnswerRightEnding": 1},
    {"id": "g3", "context": "The teacher smiled and closed the book.",
     "endings": ["The clock struck twelve.", "She sent everyone home."], "label": 1},
]
CONTEXTS = {"4": LINES[0]["ctx"], "s-1": "The baker woke before dawn. He lit the oven. He shaped the bread. The market was crowded.",
            "g3": LINES[2]["context"]}
ENDINGS = {"4": LINES[0]["endings"], "s-1": ["Everyone bought his bread.", "The comet flew into the kettle."],
           "g3": LINES[2]["endings"]}
LABELS = {"4": 0, "s-1": 0, "g3": 1}
MODALITY = {"s": "speech", "t": "text"}


def lst_model(*args: str) -> tuple[int, str, str]:
    """`lst-model ARGS` in this process, through the CLI's error policy (one line, exit 2): (code, stdout, stderr)."""
    from click.testing import CliRunner

    from lst_data.core.cli_options import run_cli
    from lst_model.cli import cli

    with CliRunner().isolation() as (stdout, stderr, _):
        try:
            run_cli(cli, "lst-model", list(args))
        except SystemExit as done:
            code = done.code
    return code, stdout.getvalue().decode(), stderr.getvalue().decode()


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task(demo_build, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task")
    code, out, err = lst_model("build-task", "--input", str(write_lines(root / "mc.jsonl", LINES)),
                               "--shards", str(demo_build / "shards"), "--out", str(root / "task.jsonl"),
                               "--voices", ",".join(VOICES))
    assert code == 0, err
    assert "items: s2s 3, t2t 3, s2t 3, t2s 3" in out and "dropped: 0 items" in out
    return root / "task.jsonl"


def spoken(text: str) -> str:
    return normalize_text(text, numbers="expand").text


def test_every_pair_holds_every_item_with_the_right_modalities_and_sources(task):
    items = read_items(task)
    assert sorted(i.id for i in items) == sorted(f"{k}:{p}" for k in LABELS for p in ("s2s", "t2t", "s2t", "t2s"))
    for item in items:
        key, pair = item.id.split(":")
        assert item.pair == pair
        assert item.prompt.modality == MODALITY[pair[0]]
        assert {e.modality for e in item.endings} == {MODALITY[pair[2]]}
        assert item.label == LABELS[key] and len(item.endings) == len(ENDINGS[key])
        assert item.prompt.text == spoken(CONTEXTS[key])
        assert [e.text for e in item.endings] == [spoken(e) for e in ENDINGS[key]]
        true_story = f"{CONTEXTS[key]} {ENDINGS[key][LABELS[key]]}"
        assert item.sources == (spoken(CONTEXTS[key]), *map(spoken, ENDINGS[key]), spoken(true_story))
    assert "painted two fences green" in [e.text for e in items[0].endings], "numbers are spoken out"


def test_all_speech_sides_of_an_item_share_one_voice_and_items_differ(task):
    items = read_items(task)
    voices: dict[str, set] = {}
    for item in items:
        key, pair = item.id.split(":")
        if pair == "t2t":
            assert item.voice is None
        else:
            voices.setdefault(key, set()).add(item.voice)
    assert all(len(v) == 1 for v in voices.values()), voices
    chosen = [next(iter(v)) for v in voices.values()]
    assert set(chosen) <= set(VOICES) and len(set(chosen)) > 1, chosen


def direct_record(text: str, voice: str, demo_build: Path, root: Path) -> SampleRecord:
    """One side built by hand: espeak-ng in `voice`, an MFA-layout corpus of one file, and the
    pipeline with the demo build's codebook and tokenizer (the config the demo was built with)."""
    from demo_run import build_config

    corpus = root / "corpus" / "spk"
    corpus.mkdir(parents=True)
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(corpus / "side.wav"), "--stdin"], input=text.encode(), check=True)
    (corpus / "side.lab").write_text(text + "\n", encoding="utf-8")
    config = build_config(units={"codebook": str(demo_build / "units" / "codebook.npy")},
                          tokenizer={"model": str(demo_build / "tokenize" / "tokenizer.model")})
    build_corpus(root / "corpus", root / "run", config)
    [record] = iter_records(root / "run" / "shards", with_audio=False)
    return record


def boundaries(lengths) -> list[int]:
    return np.cumsum([0, *lengths])[:-1].tolist()


def test_speech_sides_are_the_pipelines_units_with_patches_on_word_boundaries(task, demo_build, tmp_path):
    items = {i.id: i for i in read_items(task)}
    for item in items.values():
        for side in (item.prompt, *item.endings):
            if side.modality == "speech":
                assert set(side.patches) == {"word_sil_sep", "word_sil_merged", "bpe"}
                assert all(sum(lengths) == len(side.tokens) for lengths in side.patches.values())
    item = items["g3:s2t"]
    record = direct_record(spoken(CONTEXTS["g3"]), item.voice, demo_build, tmp_path)
    side = item.prompt
    assert list(side.tokens) == record.units.tolist()
    assert side.text == record.text
    for strategy in ("word_sil_sep", "word_sil_merged", "bpe"):
        assert list(side.patches[strategy]) == patch_lengths(record, strategy)
    starts = {w.start_frame for w in record.words if w.end_frame >= w.start_frame}
    ends = {w.end_frame + 1 for w in record.words}
    sep = set(boundaries(side.patches["word_sil_sep"]))
    assert starts <= sep and sep <= starts | ends | {0}
    assert set(boundaries(side.patches["word_sil_merged"])) == starts | {0}
    assert sep <= set(boundaries(side.patches["bpe"])), "BPE patches refine word patches"
    assert len(record.words) == len(side.text.split()) == 7


def test_text_sides_are_the_tokenizer_encoding_of_the_spoken_form(task, demo_build):
    tokenizer = load_tokenizer(demo_build / "tokenize" / "tokenizer.model")
    for item in read_items(task):
        key = item.id.split(":")[0]
        texts = [CONTEXTS[key], *ENDINGS[key]]
        for side, text in zip((item.prompt, *item.endings), texts, strict=True):
            if side.modality == "text":
                assert list(side.tokens) == tokenizer.encode(spoken(text))
                assert not side.patches


def test_a_rebuild_is_byte_identical_and_limit_builds_the_same_first_items(task, demo_build, tmp_path):
    source = write_lines(tmp_path / "mc.jsonl", LINES)
    code, _, err = lst_model("build-task", "--input", str(source), "--shards", str(demo_build / "shards"),
                             "--out", str(tmp_path / "again.jsonl"), "--voices", ",".join(VOICES))
    assert code == 0, err
    assert (tmp_path / "again.jsonl").read_bytes() == task.read_bytes()
    code, out, err = lst_model("build-task", "--input", str(source), "--shards", str(demo_build / "shards"), "--pairs", "s2t",
                               "--out", str(tmp_path / "two.jsonl"), "--voices", ",".join(VOICES), "--limit", "2")
    assert code == 0, err
    assert out.startswith("items: s2t 2 ->")
    full = {i.id: i for i in read_items(task)}
    assert read_items(tmp_path / "two.jsonl") == [full["4:s2t"], full["s-1:s2t"]]


TEST_TTS = '''"""espeak-ng, except that it fails on 'comet' and says other words for 'lighthouse'."""
import subprocess
import sys

voice, out = sys.argv[1], sys.argv[2]
text = sys.stdin.read()
if "comet" in text:
    sys.exit("no voice for comets")
if "lighthouse" in text:
    text = "seven hundred purple elephants"
subprocess.run(["espeak-ng", "-v", voice, "-w", out, "--stdin"], input=text.encode(), check=True)
'''


def test_a_failing_tts_and_an_aligner_reject_drop_their_items_with_the_reason(demo_build, tmp_path):
    (tmp_path / "tts.py").write_text(TEST_TTS, encoding="utf-8")
    tts = json.dumps([sys.executable, str(tmp_path / "tts.py"), "{voice}", "{out}"])
    code, out, err = lst_model("build-task", "--input", str(write_lines(tmp_path / "mc.jsonl", LINES)),
                               "--shards", str(demo_build / "shards"), "--out", str(tmp_path / "task.jsonl"), "--tts", tts,
                               "--voices", ",".join(VOICES))
    assert code == 3, err
    assert "items: s2s 1, t2t 1, s2t 1, t2s 1" in out
    assert "dropped: 2 items (align/align_failed 1, tts/tts_failed 1)" in out
    rejects = [json.loads(line) for line in (tmp_path / "task.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in rejects}
    assert set(by_id) == {"4", "s-1"}
    assert (by_id["4"]["stage"], by_id["4"]["code"], by_id["4"]["side"]) == ("align", "align_failed", "endings[3]")
    assert (by_id["s-1"]["stage"], by_id["s-1"]["code"], by_id["s-1"]["side"]) == ("tts", "tts_failed", "endings[1]")
    assert "no voice for comets" in by_id["s-1"]["detail"]
    assert {i.id for i in read_items(tmp_path / "task.jsonl")} == {f"g3:{p}" for p in ("s2s", "t2t", "s2t", "t2s")}


@pytest.mark.parametrize(("args", "names"), [
    (["--pairs", "s2s,s2x"], "--pairs"),
    (["--tts", '["espeak-ng", "-w"'], "--tts"),
    (["--tts", '{"argv": ["espeak-ng"]}'], "--tts"),
    (["--tts", '["espeak-ng", "--stdin"]'], "{out}"),
    (["--tts", '["no-such-tts-program", "{out}"]'], "no-such-tts-program"),
    (["--voices", " , "], "--voices"),
])
def test_bad_flags_are_one_line_and_exit_2(args, names, tmp_path):
    source = write_lines(tmp_path / "mc.jsonl", LINES)
    code, _, err = lst_model("build-task", "--input", str(source), "--shards", str(tmp_path), "--out", str(tmp_path / "t.jsonl"),
                             *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and names in err, err
    assert not (tmp_path / "t.jsonl").exists()


def test_missing_shards_and_a_foreign_codebook_are_one_line_and_exit_2(demo_build, tmp_path):
    source = write_lines(tmp_path / "mc.jsonl", LINES)
    code, _, err = lst_model("build-task", "--input", str(source), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--shards" in err
    code, _, err = lst_model("build-task", "--input", str(source), "--shards", str(tmp_path), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2 and "dataset.json" in err
    run = tmp_path / "run"
    shutil.copytree(demo_build, run)
    centroids = np.load(run / "units" / "codebook.npy")
    np.save(run / "units" / "codebook.npy", centroids[::-1].copy())
    code, _, err = lst_model("build-task", "--input", str(source), "--shards", str(run / "shards"), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not the codebook the shards were made with" in err, err


def test_parse_hellaswag_storycloze_and_generic_lines(tmp_path):
    hella, story, generic = (parse_choice_line(line, n) for n, line in enumerate(LINES))
    assert (hella.id, hella.context, hella.label, len(hella.endings)) == ("4", CONTEXTS["4"], 0, 4)
    assert (story.id, story.context, story.endings, story.label) == ("s-1", CONTEXTS["s-1"], tuple(ENDINGS["s-1"]), 0)
    assert (generic.id, generic.label) == ("g3", 1)
    assert parse_choice_line({"context": "a b", "endings": ["c", "d"], "label": 0}, 7).id == "7"
    bad = write_lines(tmp_path / "bad.jsonl", [LINES[2], {"context": "x", "endings": ["only one"], "label": 0}])
    with pytest.raises(TaskError, match=r"bad.jsonl:2: .*at least 2"):
        read_choice_jsonl(bad)
    assert [c.id for c in read_choice_jsonl(bad, limit=1)] == ["g3"]
    for line, message in [({"endings": ["a", "b"], "label": 5, "context": "x"}, "label 5 is not among"),
                          ({"ctx": "x", "endings": ["a", "b"], "label": "right"}, "must be an integer"),
                          ({"ctx": "x", "label": 0}, "no field 'endings'"), (["x"], "JSON object")]:
        with pytest.raises(TaskError, match=message):
            parse_choice_line(line, 0)


@pytest.fixture(scope="module")
def demo_run(demo_build, tmp_path_factory) -> Path:
    """A tiny LST trained a few steps on the demo shards with aligned patching (it writes the
    training transcript digests `score` checks items against)."""
    out = tmp_path_factory.mktemp("run") / "lst"
    code, _, err = lst_model("train", "--shards", str(demo_build / "shards"), "--out", str(out),
                             "--set", "preset=tiny", "--set", "data.patching=word_sil_sep", "--set", "data.seq_positions=32",
                             "--set", "data.heldout_fraction=0.6", "--set", "train.batch_size=2",
                             "--set", "train.budget_positions=320", "--set", "train.threads=1")
    assert code == 0, err
    return out


def test_built_items_score_in_every_pair_with_static_and_aligned_patches(task, demo_run):
    """build-task output goes straight into `score`: every pair scored, static and aligned; the
    LST's speech scores change with the patching (it reads the sides' aligned patches)."""
    results = {}
    for patching in ("static", "word_sil_sep"):
        code, out, err = lst_model("score", "--model", str(demo_run), "--task", str(task), "--patching", patching,
                                   "--out", str(task.parent / f"scores-{patching}.jsonl"))
        assert code == 0, err
        assert {pair: row["n"] for pair, row in json.loads(out)["pairs"].items()} == {"s2s": 3, "t2t": 3, "s2t": 3, "t2s": 3}
        results[patching] = [json.loads(line) for line in (task.parent / f"scores-{patching}.jsonl").read_text().splitlines()]
    by_pair = {p: [(a["sums"], b["sums"]) for a, b in zip(results["static"], results["word_sil_sep"], strict=True) if a["pair"] == p]
               for p in ("s2s", "t2t", "s2t", "t2s")}
    assert all(a == b for a, b in by_pair["t2t"])  # no speech, no patching
    assert any(a != b for a, b in by_pair["s2s"]) and any(a != b for a, b in by_pair["t2s"])


def test_corpus_task_file_scores_as_the_shards_option_does(demo_build, demo_run, tmp_path):
    """build-task without --input writes the held-out continuation items `score --shards` builds on the fly."""
    shards = str(demo_build / "shards")
    code, out, err = lst_model("build-task", "--shards", shards, "--out", str(tmp_path / "corpus.jsonl"),
                               "--heldout-fraction", "0.6", "--seed", "3")
    assert code == 0, err
    items = read_items(tmp_path / "corpus.jsonl")
    assert items and {i.pair for i in items} == {"s2s", "t2t", "s2t", "t2s"}
    code, from_file, err = lst_model("score", "--model", str(demo_run), "--task", str(tmp_path / "corpus.jsonl"))
    assert code == 0, err
    code, on_the_fly, err = lst_model("score", "--model", str(demo_run), "--shards", shards, "--seed", "3")
    assert code == 0, err
    assert json.loads(from_file)["pairs"] == json.loads(on_the_fly)["pairs"]
    # at another held-out share the items are training transcripts: score refuses them
    code, _, err = lst_model("build-task", "--shards", shards, "--out", str(tmp_path / "leaky.jsonl"), "--heldout-fraction", "0.9")
    assert code == 0, err
    code, _, err = lst_model("score", "--model", str(demo_run), "--task", str(tmp_path / "leaky.jsonl"))
    assert code == 2 and "share a transcript with the model's training data" in err
