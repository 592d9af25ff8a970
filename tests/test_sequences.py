"""Token space, on-the-fly sequence building, patch cropping and packing (synthetic records:
toy utterances with exact word/piece frame spans, see support/toy_corpus.py)."""

from __future__ import annotations

import numpy as np
import pytest
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

from lst_data.format.layout import read_dataset
from lst_data.format.patching import patch_lengths
from lst_model.config import DataConfig, load_run_spec
from lst_model.sequences import (
    KINDS,
    SequenceBuilder,
    crop_patch_lengths,
    curriculum_aligned_prob,
    pack,
    static_patch_lengths,
    training_sequences,
)
from lst_model.tokens import TokenSpace

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(40, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
ALIGNED = ("word_sil_sep", "word_sil_merged", "bpe")


def test_token_space_layout():
    space = TokenSpace(text_vocab_size=10, n_units=3)
    assert [space.text_start, space.speech_start, space.bos, space.eos, space.pad] == [10, 11, 12, 13, 14]
    assert space.units_to_ids(np.array([0, 2], dtype=np.int16)).tolist() == [15, 17]
    assert space.size == 18
    with pytest.raises(ValueError):
        space.units_to_ids(np.array([3]))
    with pytest.raises(ValueError):
        space.text_to_ids([10])


def test_token_space_from_the_shard_writers_dataset_json(tmp_path):
    out = write_synthetic_shards(tmp_path / "shards", 6)
    space = TokenSpace.from_dataset_json(read_dataset(out))
    assert (space.text_vocab_size, space.n_units) == (LANGUAGE.text_vocab_size, LANGUAGE.n_units)
    assert TokenSpace.from_dataset_json({"tokenizer": {"vocab_size": 7}, "units": {"k": 5}}) == TokenSpace(7, 5)
    with pytest.raises(KeyError):
        TokenSpace.from_dataset_json({"units": {"k": 5}})


def test_static_and_cropped_patches():
    assert static_patch_lengths(10, 4) == [4, 4, 2]
    assert static_patch_lengths(8, 4) == [4, 4]
    # patches [0,3) [3,8) [8,10) [10,15) cropped to [4, 12): [4,8) [8,10) [10,12)
    assert crop_patch_lengths([3, 5, 2, 5], 4, 12) == [4, 2, 2]
    assert crop_patch_lengths([3, 5, 2, 5], 0, 15) == [3, 5, 2, 5]
    assert crop_patch_lengths([3, 5], 3, 8) == [5]


@pytest.mark.parametrize("strategy", ["static", *ALIGNED])
def test_speech_example_uses_the_records_patches(strategy):
    builder = SequenceBuilder(SPACE, DataConfig())
    record = RECORDS[0]
    example = builder.speech_example(record, strategy)
    assert example.tokens[:2].tolist() == [SPACE.bos, SPACE.speech_start]
    assert example.tokens[-1] == SPACE.eos
    assert (example.tokens[2:-1] - SPACE.unit_offset).tolist() == record.units.tolist()
    assert example.patch_lengths[2:-1].tolist() == patch_lengths(record, strategy, patch_size=4)
    assert example.patch_lengths[[0, 1, -1]].tolist() == [1, 1, 1]


def _segments(example, space):
    """(modality, tokens) runs of an interleaved example, split at markers."""
    segments, current = [], None
    for token in example.tokens[1:-1].tolist():
        if token in (space.text_start, space.speech_start):
            current = ("speech" if token == space.speech_start else "text", [])
            segments.append(current)
        else:
            current[1].append(token)
    return segments


@pytest.mark.parametrize("strategy", ["static", *ALIGNED])
def test_interleaved_example_alternates_word_spans(strategy):
    builder = SequenceBuilder(SPACE, DataConfig(min_text_words=2, max_text_words=4))
    for seed in range(6):
        record = RECORDS[seed]
        example = builder.interleaved_example(record, np.random.default_rng(seed), strategy)
        segments = _segments(example, SPACE)
        modalities = [m for m, _ in segments]
        assert all(a != b for a, b in zip(modalities, modalities[1:], strict=False)), "a marker opens every switch"
        # Walk the words: each text segment is the BPE of the next words, each speech segment
        # the frames from the next word's first frame to the first frame after its last word.
        starts = [0] + [w.start_frame for w in record.words[1:]] + [record.n_frames]
        word = 0
        for modality, tokens in segments:
            if modality == "text":
                spans = [[p.id for p in record.bpe if word <= p.word_index < word + n] for n in range(1, 5)]
                assert tokens in spans, "a text segment is the BPE of the next 2-4 words"
                n = spans.index(tokens) + 1
                assert n >= 2 or word + n == len(record.words)
                word += n
            else:
                units = (np.array(tokens) - SPACE.unit_offset).tolist()
                assert units == record.units[starts[word] : starts[word] + len(units)].tolist()
                end = starts[word] + len(units)
                n = starts.index(end) - word
                assert 1 <= n <= 2 or word + n == len(record.words)
                word += n
        assert word == len(record.words), "segments cover the utterance"
        # patch lengths: 1 per text/marker token; speech patches never cross a segment
        assert example.patch_lengths.sum() == len(example.tokens)


def test_curriculum_schedule():
    assert curriculum_aligned_prob(0.0) == 1.0
    assert curriculum_aligned_prob(0.3) == 1.0
    assert curriculum_aligned_prob(0.5) == pytest.approx(0.5)
    assert curriculum_aligned_prob(0.6) == pytest.approx(0.2)
    assert curriculum_aligned_prob(2 / 3) == 0.0
    assert curriculum_aligned_prob(0.9) == 0.0


def test_curriculum_example_patching_follows_progress():
    builder = SequenceBuilder(SPACE, DataConfig(patching="curriculum", aligned_strategy="word_sil_merged",
                                                interleaved_weight=0, text_weight=0, speech_weight=1))
    rng = np.random.default_rng(0)
    record = RECORDS[1]
    static = builder.speech_example(record, "static").patch_lengths.tolist()
    aligned = builder.speech_example(record, "word_sil_merged").patch_lengths.tolist()
    early = [builder.sample_example(2, record, rng, 0.1).patch_lengths.tolist() for _ in range(20)]
    late = [builder.sample_example(2, record, rng, 0.8).patch_lengths.tolist() for _ in range(20)]
    middle = [builder.sample_example(2, record, rng, 0.5).patch_lengths.tolist() for _ in range(200)]
    assert all(p == aligned for p in early) and all(p == static for p in late)
    assert 0.35 < sum(p == aligned for p in middle) / 200 < 0.65


def test_mixed_chooses_per_example():
    builder = SequenceBuilder(SPACE, DataConfig(patching="mixed", aligned_strategy="bpe", mixed_aligned_prob=0.25,
                                                interleaved_weight=0, text_weight=0, speech_weight=1))
    rng = np.random.default_rng(1)
    record = RECORDS[3]
    aligned = builder.speech_example(record, "bpe").patch_lengths.tolist()
    static = builder.speech_example(record, "static").patch_lengths.tolist()
    drawn = [builder.sample_example(2, record, rng, 0.9).patch_lengths.tolist() for _ in range(400)]
    assert set(map(tuple, drawn)) == {tuple(aligned), tuple(static)}
    assert 0.18 < drawn.count(aligned) / 400 < 0.32


def _token_shares(builder, n_examples=600, seed=0):
    stream = builder.example_stream(RECORDS, np.random.default_rng(seed), 0.0)
    tokens = dict.fromkeys(KINDS, 0)
    for _ in range(n_examples):
        example = next(stream)
        tokens[example.kind] += len(example.tokens)
    total = sum(tokens.values())
    return {kind: n / total for kind, n in tokens.items()}


def test_mixture_weights_are_token_shares():
    shares = _token_shares(SequenceBuilder(SPACE, DataConfig()))
    assert shares["interleaved"] == pytest.approx(0.33, abs=0.01) and shares["speech"] == 0
    shares = _token_shares(SequenceBuilder(SPACE, DataConfig(interleaved_weight=0.2, text_weight=0.5, speech_weight=0.3)))
    assert shares == pytest.approx({"interleaved": 0.2, "text": 0.5, "speech": 0.3}, abs=0.01)
    only_speech = SequenceBuilder(SPACE, DataConfig(interleaved_weight=0, text_weight=0, speech_weight=1))
    assert _token_shares(only_speech, 5)["speech"] == 1.0


def test_text_share_comes_from_the_text_corpus():
    corpus = [np.array([5, 6, 7]), np.array([9, 9])]
    builder = SequenceBuilder(SPACE, DataConfig(), texts=corpus)
    stream = builder.example_stream(RECORDS, np.random.default_rng(0), 0.0)
    texts = [ex.tokens[2:-1].tolist() for ex in (next(stream) for _ in range(50)) if ex.kind == "text"]
    assert texts and {tuple(t) for t in texts} == {(5, 6, 7), (9, 9)}
    transcripts = {tuple(piece.id for piece in r.bpe) for r in RECORDS}
    assert not transcripts & {tuple(t) for t in texts}


def test_packing_fills_exact_positions_and_shares_the_stream():
    spec = load_run_spec(overrides={"data": {"patching": "static"}})
    builder = SequenceBuilder(SPACE, spec.data)
    kwargs = dict(seed=3, step=7, rows=range(4), positions=96, progress=0.0)
    lst = training_sequences(builder, RECORDS, flat=False, **kwargs)
    flat = training_sequences(builder, RECORDS, flat=True, **kwargs)
    for a, b in zip(lst, flat, strict=True):
        assert len(a.patch_lengths) == 96 and len(b.tokens) == 96 == b.patch_lengths.sum()
        assert a.tokens[:96].tolist() == b.tokens.tolist(), "baseline sees a prefix of the LST's data"
    assert sum(len(a.tokens) for a in lst) > 4 * 96, "speech patches hold several tokens"
    again = training_sequences(builder, RECORDS, flat=False, **kwargs)
    assert all(x.tokens.tolist() == y.tokens.tolist() for x, y in zip(lst, again, strict=True))
    other = training_sequences(builder, RECORDS, flat=False, **{**kwargs, "step": 8})
    assert lst[0].tokens.tolist() != other[0].tokens.tolist()


def test_pack_cuts_at_patch_boundary():
    builder = SequenceBuilder(SPACE, DataConfig())
    example = builder.speech_example(RECORDS[0], "static")
    packed = pack(iter([example, example]), 5, flat=False)
    assert packed.patch_lengths.tolist() == [1, 1, 4, 4, 4]
    assert packed.tokens.tolist() == example.tokens[:14].tolist()
    flat = pack(iter([example, example]), 5, flat=True)
    assert flat.tokens.tolist() == example.tokens[:5].tolist()
    assert flat.patch_lengths.tolist() == [1, 1, 3], "the LST patching of the same tokens, last patch cut"
    assert packed.document_lengths.tolist() == [14]
    two = pack(iter([example, example]), len(example.patch_lengths) + 3, flat=False)
    assert two.document_lengths.tolist() == [len(example.tokens), 1 + 1 + 4], "BOS, <s>, one static patch"
