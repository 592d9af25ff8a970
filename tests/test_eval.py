"""Evaluation hygiene: the held-out split by transcript, the training-transcript digests and
`score`'s contamination check (through the CLI on a tiny trained run over real shards), and
the corpus task builder's same-speaker distractors and aligned patches."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_records

from lst_data.demo import SENTENCES, VOICES, demo_plan
from lst_data.format.patching import patch_lengths
from lst_data.format.records import SampleRecord
from lst_model.cli import cli
from lst_model.corpus_tasks import corpus_items
from lst_model.data import (
    TRAINING_TEXTS,
    canonical_transcript,
    is_heldout,
    load_records,
    split_heldout,
    transcript_digest,
    write_training_texts,
)
from lst_model.items import ChoiceItem, read_items, write_items


def _text_record(record_id: str, speaker: str, text: str) -> SampleRecord:
    return SampleRecord(record_id, text, speaker, 1.0, 16000, 25.0, np.zeros(25, dtype=np.int16), (), (), ())


def _id_heldout(record_id: str, fraction: float) -> bool:
    """The split before transcripts were the key: a hash of the utterance id."""
    return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big") / 2**64 < fraction


def _demo_layouts() -> dict[str, list[SampleRecord]]:
    """The demo corpus as `make demo` lays it out (36 utterances: 24 sentences, the first 12
    read twice), and every demo sentence in every demo voice."""
    demo = [_text_record(utt_id, speaker, sentence) for utt_id, speaker, _, _, sentence in demo_plan(36)]
    every_voice = [_text_record(f"{speaker}_{i:03d}", speaker, sentence)
                   for i, sentence in enumerate(SENTENCES) for speaker, _ in VOICES]
    return {"demo": demo, "every_voice": every_voice}


@pytest.mark.parametrize("layout", ["demo", "every_voice"])
def test_no_heldout_transcript_is_in_training_on_the_demo_layout(layout):
    """The demo's sentences recur; the id split put held-out sentences into training, the
    transcript split never does, whatever the voice."""
    records = _demo_layouts()[layout]
    assert len({r.text for r in records}) < len(records)
    for fraction in (0.1, 0.2, 0.3):
        train, heldout = split_heldout(records, fraction)
        assert heldout and len(train) + len(heldout) == len(records)
        assert not {canonical_transcript(r.text) for r in heldout} & {canonical_transcript(r.text) for r in train}
        if layout == "every_voice":
            assert len(heldout) % len(VOICES) == 0, "a held-out sentence is held out in all its voices"
    leaked = {r.text for r in records if _id_heldout(r.id, 0.1)} & {r.text for r in records if not _id_heldout(r.id, 0.1)}
    assert leaked, "the old id split leaks held-out sentences into training"


def test_canonical_transcript_ignores_case_punctuation_spacing_and_digits():
    assert canonical_transcript("I have 2  cats!") == canonical_transcript("i have two cats") == "i have two cats"
    assert transcript_digest("The River, was cold.") == transcript_digest("the river was   cold")
    record = _text_record("a", "s", "We saw 3 boats.")
    assert is_heldout(record, 0.5) == is_heldout(dataclasses.replace(record, id="b", text="we saw three boats"), 0.5)


def test_training_text_digests_are_sorted_unique_uint64_with_fixed_bytes(tmp_path):
    texts = ["the cat sat", "The cat sat.", "a dog ran"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_training_texts(tmp_path / "a", texts)
    second = write_training_texts(tmp_path / "b", reversed(texts))
    assert first.read_bytes() == second.read_bytes()
    digests = np.load(first, allow_pickle=False)
    assert digests.dtype == np.uint64 and len(digests) == 2 and digests[0] < digests[1]
    expected = int.from_bytes(hashlib.sha256(b"a dog ran").digest()[:8], "big")
    assert expected in digests.tolist()
    write_training_texts(tmp_path / "a", ["a bird sang"])  # a resume on other shards adds its texts
    assert len(np.load(first, allow_pickle=False)) == 3


# --- contamination through the CLI on a tiny trained run --------------------------------

@pytest.fixture(scope="module")
def trained(tiny_cli_run):
    return tiny_cli_run


def _score(*args):
    return CliRunner().invoke(cli, ["score", *map(str, args)])


def test_train_records_its_training_transcripts_in_memory_and_stream_mode(trained):
    root, shards = trained
    records = load_records(shards)
    train, heldout = split_heldout(records, 0.3)
    digests = set(np.load(root / "run" / TRAINING_TEXTS, allow_pickle=False).tolist())
    assert digests == {int.from_bytes(hashlib.sha256(canonical_transcript(r.text).encode()).digest()[:8], "big") for r in train}
    assert not digests & {transcript_digest(r.text) for r in heldout}
    result = CliRunner().invoke(cli, ["train", "--shards", str(shards), "--config", str(root / "run.yaml"),
                                      "--out", str(root / "stream"), "--set", "data.input=stream"])
    assert result.exit_code == 0, result.output
    assert (root / "stream" / TRAINING_TEXTS).read_bytes() == (root / "run" / TRAINING_TEXTS).read_bytes()


def test_score_refuses_contaminated_items_unless_told_to_drop_them(trained, tmp_path):
    root, shards = trained
    records = load_records(shards)
    train, _ = split_heldout(records, 0.3)
    items, _ = corpus_items(records, 0.3, pairs=("t2t", "s2t"))
    assert len(items) >= 4
    # the same training sentence, written another way: still a training transcript
    leaked = [dataclasses.replace(items[1], sources=(train[0].text.upper() + "!",)),
              dataclasses.replace(items[3], sources=(items[3].sources[0], train[1].text))]
    task = write_items([items[0], leaked[0], items[2], leaked[1], *items[4:]], tmp_path / "task.jsonl")
    refused = _score("--model", root / "run", "--task", task)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert (f"2 of {len(items)} items share a transcript with the model's training data (first: {items[1].id}, {items[3].id}); "
            "rebuild the task from held-out text or pass --drop-contaminated") in refused.output
    kept = _score("--model", root / "run", "--task", task, "--drop-contaminated", "--out", tmp_path / "scores.jsonl")
    assert kept.exit_code == 0, kept.output
    report = json.loads(kept.stdout)
    assert report["dropped_contaminated"] == 2 and "dropped 2 contaminated items" in kept.stderr
    assert sum(p["n"] for p in report["pairs"].values()) == len(items) - 2
    scored = [json.loads(line)["id"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert items[1].id not in scored and items[0].id in scored


def test_score_from_shards_is_clean_and_a_run_without_digests_is_refused(trained, tmp_path):
    root, shards = trained
    result = _score("--model", root / "run", "--shards", shards, "--pairs", "s2s,t2s", "--endings", "3")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dropped_contaminated"] == 0 and set(report["pairs"]) == {"s2s", "t2s"}
    assert report["patching"] == "static"
    shutil.copy(root / "run" / "checkpoint.pt", tmp_path / "checkpoint.pt")
    old = _score("--model", tmp_path / "checkpoint.pt", "--shards", shards)
    assert old.exit_code == 2 and "no training_texts.npy" in old.output and "--no-contamination-check" in old.output
    assert _score("--model", tmp_path / "checkpoint.pt", "--shards", shards, "--no-contamination-check").exit_code == 0
    bad = _score("--model", root / "run", "--shards", shards, "--pairs", "s2x")
    assert bad.exit_code == 2 and "--pairs" in bad.output


def test_score_with_aligned_patching_and_its_refusal(trained, tmp_path):
    root, shards = trained
    aligned = _score("--model", root / "run", "--shards", shards, "--pairs", "s2s", "--patching", "word_sil_merged")
    assert aligned.exit_code == 0, aligned.output
    assert json.loads(aligned.stdout)["patching"] == "word_sil_merged"
    [item] = corpus_items(load_records(shards), 0.3, pairs=("s2s",))[0][:1]
    bare = dataclasses.replace(item, endings=tuple(dataclasses.replace(e, patches={}) for e in item.endings))
    task = write_items([bare], tmp_path / "bare.jsonl")
    refused = _score("--model", root / "run", "--task", task, "--patching", "bpe")
    assert refused.exit_code == 2 and f"item {item.id}: its speech ending has no bpe patches" in refused.output


# --- the corpus task builder -------------------------------------------------------------

LANGUAGE = ToyLanguage.make(3)


def _source(records: list[SampleRecord], words: tuple[str, ...], units: tuple[int, ...]) -> list[SampleRecord]:
    """Records holding `words` as consecutive words whose frames are exactly `units`."""
    found = []
    for r in records:
        names = [w.word for w in r.words]
        starts = [0] + [w.start_frame for w in r.words[1:]] + [r.n_frames]
        for a in range(len(names) - len(words) + 1):
            if tuple(names[a : a + len(words)]) == words and tuple(r.units[starts[a] : starts[a + len(words)]]) == units:
                found.append(r)
    return found


def test_corpus_distractors_come_from_other_heldout_utterances_of_the_same_speaker():
    records = synthetic_records(60, seed=3, language=LANGUAGE, speakers=3)
    heldout_ids = {r.id for r in split_heldout(records, 0.4)[1]}
    by_id = {r.id: r for r in records}
    items, skips = corpus_items(records, 0.4, n_endings=3, seed=5)
    assert skips == {} and {i.pair for i in items} == {"s2s", "t2t", "s2t", "t2s"}
    assert len(items) == 4 * len(heldout_ids) and len({i.label for i in items}) == 3
    for item in (i for i in items if i.pair == "s2s"):
        record = by_id[item.id.rsplit(":", 1)[0]]
        assert item.voice == record.speaker and item.sources == (canonical_transcript(record.text),)
        true = item.endings[item.label]
        assert item.prompt.tokens + true.tokens == tuple(record.units[: len(item.prompt.tokens) + len(true.tokens)])
        # aligned patches: the record's own, since prompt and ending start at word onsets
        for strategy in ("word_sil_sep", "word_sil_merged", "bpe"):
            joined = [*item.prompt.patches[strategy], *true.patches[strategy]]
            assert joined == patch_lengths(record, strategy)[: len(joined)]
        for e, ending in enumerate(item.endings):
            if e == item.label:
                continue
            sources = _source(records, tuple(ending.text.split()), ending.tokens)
            assert sources and all(s.speaker == record.speaker and s.id != record.id for s in sources)
            assert any(s.id in heldout_ids for s in sources)
            assert ending.text != true.text
    texts = {i.id.rsplit(":", 1)[0]: [e.text for e in i.endings] for i in items if i.pair == "t2t"}
    assert all([e.text for e in i.endings] == texts[i.id.rsplit(":", 1)[0]] for i in items), "one question in every pair"


def test_corpus_skips_are_counted_and_distractors_are_never_training_utterances():
    records = synthetic_records(40, seed=3, language=LANGUAGE, speakers=2)
    train, heldout = split_heldout(records, 0.3)
    lonely, paired = heldout[0].id, heldout[1].id
    # "paired" has one held-out utterance and one training utterance: the training one is no distractor
    short = dataclasses.replace(heldout[2], words=heldout[2].words[:4], bpe=tuple(p for p in heldout[2].bpe if p.word_index < 4))
    no_bpe = dataclasses.replace(heldout[3], bpe=(), speaker="no_bpe")  # its text prompt is empty
    changed = {lonely: dataclasses.replace(heldout[0], speaker="lonely"), paired: dataclasses.replace(heldout[1], speaker="paired"),
               train[0].id: dataclasses.replace(train[0], speaker="paired"), short.id: short, no_bpe.id: no_bpe,
               heldout[4].id: dataclasses.replace(heldout[4], speaker="no_bpe")}
    records = [changed.get(r.id, r) for r in records]
    items, skips = corpus_items(records, 0.3, pairs=("s2s", "t2t"))
    # heldout[4] is no_bpe's only other held-out utterance: its distractor (from no_bpe) has no BPE either
    assert skips == {"speaker_has_too_few_heldout_utterances": 2, "too_few_words": 1, "empty_span": 2}
    assert len(items) == 2 * (len(heldout) - 5)
    assert not [i for i in items if i.id.startswith((no_bpe.id, lonely, paired))]
    with pytest.raises(ValueError, match="pairs"):
        corpus_items(records, 0.3, pairs=("s2x",))


def test_corpus_items_round_trip_and_are_deterministic(tmp_path):
    records = synthetic_records(30, seed=3, language=LANGUAGE, speakers=2)
    first, _ = corpus_items(records, 0.3, seed=2)
    second, _ = corpus_items(records, 0.3, seed=2)
    path = write_items(first, tmp_path / "a.jsonl")
    assert path.read_bytes() == write_items(second, tmp_path / "b.jsonl").read_bytes()
    assert read_items(path) == first and all(isinstance(i, ChoiceItem) for i in first)
    assert [i.label for i in corpus_items(records, 0.3, seed=3)[0]] != [i.label for i in first]
