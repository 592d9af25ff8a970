"""The BPE SpeechLLM baseline (`model.kind: bpe_speechllm`, lst_model.unit_bpe): the unit BPE,
merged examples, training, resume, scoring, FLOPs and compare, on toy records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records, write_synthetic_shards

from lst_data.core.errors import ConfigError
from lst_model.cli import cli
from lst_model.compare import compare
from lst_model.config import load_run_spec
from lst_model.corpus_tasks import corpus_items
from lst_model.data import load_records, split_heldout
from lst_model.errors import OptionError
from lst_model.flops import row_cost
from lst_model.generate import Decoding
from lst_model.model import Batch, build_model, token_log_probs
from lst_model.score import score_items
from lst_model.sequences import Example, SequenceBuilder, pack
from lst_model.tokens import TokenSpace
from lst_model.train import CHECKPOINT, load_checkpoint, read_log, train
from lst_model.unit_bpe import merge_example, sequence_builder
from lst_model.unit_pieces import UNIT_BPE_FILE, train_unit_bpe

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(30, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))
UNITS = [np.asarray(r.units, dtype=np.int64) for r in RECORDS]
BPE = train_unit_bpe(UNITS, SPACE.n_units, 200)
PIECES = SPACE.with_unit_bpe(BPE)


def _expanded(tokens: np.ndarray, space: TokenSpace) -> list[int]:
    """Tokens with every piece written out as its units' ids."""
    out: list[int] = []
    for token in tokens.tolist():
        if token >= space.piece_offset:
            out.extend((space.unit_bpe.decode([token - space.piece_offset]) + space.unit_offset).tolist())
        else:
            out.append(token)
    return out


def test_training_is_deterministic_and_independent_of_the_input_order():
    again = train_unit_bpe(list(reversed(UNITS)), SPACE.n_units, 200)
    assert again == BPE and again.sha256 == BPE.sha256
    assert BPE.n_pieces == 200
    assert train_unit_bpe(UNITS, SPACE.n_units, 100) != BPE


def test_every_unit_sequence_round_trips_even_units_never_seen():
    narrow = train_unit_bpe([u[u < 8] for u in UNITS], SPACE.n_units, 60)  # trained on units 0..7 only
    rng = np.random.default_rng(0)
    for bpe in (BPE, narrow):
        for _ in range(50):
            units = rng.integers(0, SPACE.n_units, rng.integers(1, 80))
            pieces = bpe.encode(units)
            assert 0 not in pieces.tolist(), "no unit is unknown"
            assert bpe.decode(pieces).tolist() == units.tolist()
    assert narrow.decode(narrow.encode([SPACE.n_units - 1])).tolist() == [SPACE.n_units - 1]
    assert len(BPE.encode(UNITS[0])) < 0.75 * len(UNITS[0]), "training utterances compress"


def test_too_small_a_vocabulary_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.unit_bpe_vocab: 20 is too small.*\(33:"):
        train_unit_bpe(UNITS, SPACE.n_units, 20)


def test_pieces_never_cross_segment_document_or_target_boundaries():
    bpe = train_unit_bpe([np.array([3, 5] * 40)] * 20, SPACE.n_units, 40)
    space = SPACE.with_unit_bpe(bpe)
    assert len(bpe.encode([3, 5])) == len(bpe.encode([5, 3])) == 1, "both pairs are pieces"
    u = space.unit_offset
    tokens = np.array([space.bos, space.speech_start, u + 3, u + 5, space.text_start, 7, space.speech_start, u + 3,
                       u + 5, u + 3, u + 5, space.eos])
    # units 3|5 of the second segment split by a document cut, 5|3 by the start of the targets
    example = Example(tokens, np.ones(len(tokens), dtype=np.int64), "packed", np.array([8, 4]),
                      np.array([False] * 9 + [True] * 3))
    merged = merge_example(example, space)
    assert not any(space.is_unit(t) for t in merged.tokens.tolist()), "all speech is pieces, single units too"
    widths = [len(_expanded(np.array([t]), space)) for t in merged.tokens]
    starts = set((np.cumsum(widths) - widths).tolist())
    assert {2, 4, 8, 9} <= starts, "each speech run starts a piece"
    assert 3 not in starts, "3 5 inside a run is one piece"
    assert merged.document_lengths.tolist() == [7, 3]  # BOS <s> [3 5] <t> 7 <s> [3] | [5] [3 5] EOS
    whole = merge_example(Example(tokens, np.ones(len(tokens), dtype=np.int64), "x"), space)
    assert len(whole.tokens) < len(merged.tokens), "the same units without the cuts merge further"


def test_merged_examples_keep_documents_targets_and_tokens():
    builder = SequenceBuilder(SPACE, load_run_spec().data)
    tts = [builder.tts_example(r, "static") for r in RECORDS[:4]]  # targets: the units and EOS
    stream = builder.example_stream(RECORDS, np.random.default_rng(0), 0.0)
    mixture = [next(stream) for _ in range(6)]  # interleaved and text examples
    packed = pack(iter(tts + mixture), 10_000, flat=True)
    assert packed.target_mask is not None and len(packed.document_lengths) == 10
    for example in [*tts, *mixture, packed]:
        merged = merge_example(example, PIECES)
        assert (merged.patch_lengths == 1).all() and int(merged.patch_lengths.sum()) == len(merged.tokens)
        has_units = bool((example.tokens >= SPACE.unit_offset).any())
        assert len(merged.tokens) < len(example.tokens) if has_units else merged.tokens.tolist() == example.tokens.tolist()
        widths = [len(_expanded(np.array([t]), PIECES)) for t in merged.tokens]
        assert _expanded(merged.tokens, PIECES) == example.tokens.tolist()
        assert np.repeat(merged.targets(), widths).tolist() == example.targets().tolist()
        if example.document_lengths is not None:
            ends = np.cumsum(widths)[np.cumsum(merged.document_lengths) - 1]
            assert ends.tolist() == np.cumsum(example.document_lengths).tolist()
    assert merge_example(merge_example(packed, PIECES), PIECES).tokens.tolist() == merge_example(packed, PIECES).tokens.tolist()


def test_a_piece_builder_streams_the_same_examples_merged():
    data = load_run_spec().data
    plain = SequenceBuilder(SPACE, data).example_stream(RECORDS, np.random.default_rng(3), 0.0)
    merged = sequence_builder(PIECES, data).example_stream(RECORDS, np.random.default_rng(3), 0.0)
    for _ in range(8):
        assert next(merged).tokens.tolist() == merge_example(next(plain), PIECES).tokens.tolist()


def _spec(kind: str = "bpe_speechllm", steps: int = 4, **train_fields):
    return load_run_spec(overrides={
        "preset": "tiny",
        "model": {"kind": kind, "d_global": 32, "d_local": 32, "unit_bpe_vocab": 200},
        "data": {"seq_positions": 32},
        "train": {"batch_size": 2, "budget_positions": 2 * 32 * steps, "log_every": 1, "checkpoint_every": 100,
                  "warmup_steps": 2, "threads": 1, **train_fields},
    })


def test_training_learns_with_the_positions_of_the_baseline(tmp_path):
    train(_spec(steps=30), RECORDS, SPACE, tmp_path / "bpe")
    train(_spec("baseline", steps=2), RECORDS, SPACE, tmp_path / "baseline")
    rows, baseline = read_log(tmp_path / "bpe"), read_log(tmp_path / "baseline")
    assert [r["global_positions"] for r in rows[:2]] == [r["global_positions"] for r in baseline] == [2 * 32] * 2
    assert set(rows[-1]["same_data"]) == {"bpe_speechllm"}
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5
    saved = load_checkpoint(tmp_path / "bpe" / CHECKPOINT)
    assert saved["token_space"].unit_bpe == BPE, "trained on the training records with model.unit_bpe_vocab"
    assert saved["model"]["head.weight"].shape[0] == SPACE.size + 200
    assert (tmp_path / "bpe" / UNIT_BPE_FILE).read_bytes() == BPE.model
    config = json.loads((tmp_path / "bpe" / "config.json").read_text())
    assert config["token_space"]["unit_bpe"] == {"pieces": 200, "sha256": BPE.sha256}


def test_resume_restores_the_unit_bpe_and_the_trajectory(tmp_path):
    spec = _spec(steps=4)
    train(spec, RECORDS, SPACE, tmp_path / "straight")
    train(spec, RECORDS, SPACE, tmp_path / "resumed", stop_at_step=2)
    train(spec, RECORDS, SPACE, tmp_path / "resumed")
    straight, resumed = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [(r["step"], r["loss"]) for r in straight] == [(r["step"], r["loss"]) for r in resumed]
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT)["token_space"].unit_bpe == BPE
    (tmp_path / "resumed" / UNIT_BPE_FILE).write_bytes(train_unit_bpe(UNITS[:5], SPACE.n_units, 200).model)
    with pytest.raises(ConfigError, match="unit BPE sha256"):
        train(spec, RECORDS, SPACE, tmp_path / "resumed")


def test_fine_tuning_keeps_the_pretrained_unit_bpe(tmp_path):
    train(_spec(steps=2), RECORDS, SPACE, tmp_path / "pretrained")
    tts = load_run_spec(overrides={**_spec(steps=2).model_dump(), "data": {"seq_positions": 32, "task": "tts"}})
    # other utterances would train another BPE: fine-tuning must read the pretrained one
    train(tts, RECORDS[:8], SPACE, tmp_path / "tts", init=tmp_path / "pretrained" / CHECKPOINT)
    assert load_checkpoint(tmp_path / "tts" / CHECKPOINT)["token_space"].unit_bpe == BPE
    assert train_unit_bpe(UNITS[:8], SPACE.n_units, 200) != BPE
    assert all(row["loss"] > 0 for row in read_log(tmp_path / "tts"))


def test_scoring_reads_prompt_and_ending_as_separate_pieces():
    items, _ = corpus_items(RECORDS, 0.5, seed=1)
    spec = _spec()
    torch.manual_seed(0)
    model = build_model(spec.model, PIECES.size).eval()
    chosen = [next(i for i in items if i.pair == pair) for pair in ("s2s", "t2s", "s2t", "t2t")]
    scores = score_items(model, spec, PIECES, chosen, batch_size=3)
    for item, score in zip(chosen, scores, strict=True):
        for ending, total in zip(item.endings, score.sums, strict=True):
            def ids(side):
                if side.modality == "text":
                    return list(side.tokens)
                return (BPE.encode(side.tokens) + PIECES.piece_offset).tolist()

            def marker(side):
                return PIECES.speech_start if side.modality == "speech" else PIECES.text_start

            switch = [marker(ending)] if ending.modality != item.prompt.modality else []
            head = [PIECES.bos, marker(item.prompt), *ids(item.prompt), *switch]
            tokens = np.array(head + ids(ending))
            with torch.no_grad():
                batch = Batch.from_examples([Example(tokens, np.ones(len(tokens), dtype=np.int64), "x")], PIECES.pad, True)
                log_probs = token_log_probs(model(batch), batch.tokens)[0]
            assert total == pytest.approx(float(log_probs[len(head) - 1 :].sum()), abs=1e-4), item.pair


def test_generation_is_a_one_line_option_error():
    spec = _spec()
    model = build_model(spec.model, PIECES.size)
    with pytest.raises(OptionError, match="bpe_speechllm: generation, asr and tts are not supported"):
        Decoding(model, spec, PIECES, [PIECES.bos, PIECES.speech_start])


def test_flops_count_merged_tokens_and_the_larger_head():
    example = merge_example(SequenceBuilder(SPACE, load_run_spec().data).speech_example(RECORDS[0], "static"), PIECES)
    index = torch.arange(len(example.tokens))
    spec = _spec()
    bpe = row_cost(spec.model, PIECES.size, index)
    flat = row_cost(_spec("baseline").model, SPACE.size, index)
    assert bpe.global_positions == bpe.tokens == len(example.tokens) < len(RECORDS[0].units)
    assert bpe.forward_flops - flat.forward_flops == 2 * len(example.tokens) * spec.model.d_global * BPE.n_pieces


def test_compare_reports_the_positions_of_all_three_kinds():
    spec = _spec()
    report = compare(RECORDS, SPACE, spec, mixture_tokens=3000, unit_bpe=BPE)
    positions = report["speech_only"]["positions_per_utterance"]
    assert positions["baseline"] == pytest.approx(np.mean([len(u) for u in UNITS]))
    assert positions["bpe_speechllm"] == pytest.approx(np.mean([len(BPE.encode(u)) for u in UNITS]))
    assert positions["static"] < positions["baseline"] and positions["bpe_speechllm"] < positions["baseline"]
    assert report["unit_bpe"]["units_per_piece"] == pytest.approx(positions["baseline"] / positions["bpe_speechllm"])
    assert 0 < report["mixture"]["bpe_speechllm"]["positions_per_token"] < 1


def test_cli_streamed_training_scoring_and_refused_generation(tmp_path):
    """Streamed input trains the BPE on the shards' training utterances (one pass, held-out
    ones left out); score reloads it from the checkpoint; generate is a one-line usage error."""
    shards = write_synthetic_shards(tmp_path / "shards", 30)
    runner = CliRunner()
    settings = ["model.kind=bpe_speechllm", "model.unit_bpe_vocab=120", "preset=tiny", "data.input=stream",
                "data.seq_positions=32", "data.heldout_fraction=0.3", "train.batch_size=2", "train.budget_positions=128",
                "train.loader_workers=0", "train.threads=1"]
    result = runner.invoke(cli, ["train", "--shards", str(shards), "--out", str(tmp_path / "run"),
                                 *(arg for s in settings for arg in ("--set", s))])
    assert result.exit_code == 0, result.output
    training, _ = split_heldout(load_records(shards), 0.3)
    expected = train_unit_bpe([np.asarray(r.units) for r in training], SPACE.n_units, 120)
    assert (tmp_path / "run" / UNIT_BPE_FILE).read_bytes() == expected.model
    result = runner.invoke(cli, ["score", "--model", str(tmp_path / "run"), "--shards", str(shards)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["patching"] == "flat (bpe_speechllm)"
    result = runner.invoke(cli, ["generate", "--model", str(tmp_path / "run"), "--shards", str(shards),
                                 "--sample", load_records(shards)[0].id])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: model.kind bpe_speechllm: generation, asr and tts "
                                                             "are not supported")
