"""`compare`: the whole-mixture figure (the paper's Table 13 ratio 0.807 with static p = 4)
and FLOPs per position, checked against an independent count of the same example stream."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records

from lst_model.compare import CONCRETE, format_presets, format_report, mixture_cost
from lst_model.config import load_run_spec
from lst_model.sequences import SequenceBuilder
from lst_model.tokens import TokenSpace

LANGUAGE = ToyLanguage.make(0)
RECORDS = synthetic_records(40, seed=0, language=LANGUAGE)
SPACE = TokenSpace.from_dataset_json(synthetic_dataset_json(LANGUAGE))


def _static_positions(tokens: np.ndarray) -> int:
    """Global positions of an example under static p=4, counted from its tokens alone: every
    non-unit token is one position, each run of units ceil(run / 4)."""
    is_unit = (tokens >= SPACE.unit_offset)
    positions = int((~is_unit).sum())
    run = 0
    for unit in [*is_unit.tolist(), False]:
        if unit:
            run += 1
        elif run:
            positions, run = positions + math.ceil(run / 4), 0
    return positions


def test_mixture_positions_match_an_independent_count():
    spec = load_run_spec(overrides={"data": {"patching": "static"}})
    stream = SequenceBuilder(SPACE, spec.data).example_stream(RECORDS, np.random.default_rng(0), 0.0)
    tokens = positions = 0
    while tokens < 20_000:
        example = next(stream)
        tokens += len(example.tokens)
        positions += _static_positions(example.tokens)
    mixture = mixture_cost(RECORDS, SPACE, spec, seed=0, mixture_tokens=20_000)
    assert mixture["static"]["positions_per_token"] == pytest.approx(positions / tokens, rel=1e-12)
    assert mixture["baseline"]["positions_per_token"] == 1.0
    # speech is patched, so fewer positions; merged word patches are the longest
    assert mixture["word_sil_merged"]["positions_per_token"] < mixture["static"]["positions_per_token"] < 0.9


def test_report_prints_the_mixture_and_flops_lines():
    spec = load_run_spec()
    report = {"utterances": 1, "text_positions_per_utterance": 1.0,
              "speech_only": {"positions_per_utterance": {}, "baseline_over_lst": {}, "forward_flops_per_utterance": {}},
              "interleaved": {}, "mixture": mixture_cost(RECORDS, SPACE, spec, mixture_tokens=3000),
              "presets": {}}
    lines = format_report(report)
    pattern = r"mixture_positions_per_token_{}: ([0-9.]+) \(reference: baseline 1\.000, ratio ([0-9.]+)\)"
    for strategy in CONCRETE:
        match = next(m for m in (re.fullmatch(pattern.format(strategy), line) for line in lines) if m)
        assert match.group(1) == match.group(2)
        assert any(line.startswith(f"mixture_forward_flops_per_global_position_{strategy}: ") for line in lines)


@pytest.mark.slow
def test_demo_shards_reproduce_the_papers_mixture_ratio(demo_corpus, tmp_path):
    """The espeak-ng demo corpus built by the real pipeline: with the default mixture (33 %
    interleaved by tokens) and static p = 4 the LST needs 0.81 +- 0.02 of the baseline's
    global positions (paper, Table 13: 0.807)."""
    build = subprocess.run([sys.executable, "-m", "lst_data.cli", "build", str(demo_corpus), "--out", str(tmp_path / "run"),
                            "--runner", "local"], capture_output=True, text=True)
    assert build.returncode in (0, 3), build.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "lst_model.cli", "compare", "--shards", str(tmp_path / "run" / "shards")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("mixture_positions_per_token_static:"))
    ratio = float(line.rsplit("ratio ", 1)[1].rstrip(")"))
    assert ratio == pytest.approx(0.81, abs=0.02), line


def test_presets_report_parameters_and_speech_flops_of_every_kind():
    """Parameters counted on the meta device equal a real model's; the LST costs less than the
    baseline per speech utterance from base on, the merged pieces less than the units."""
    from lst_model.compare import preset_costs
    from lst_model.config import PRESETS
    from lst_model.model import build_model, count_parameters
    from lst_model.unit_pieces import train_unit_bpe

    spec = load_run_spec()
    unit_bpe = train_unit_bpe((np.asarray(r.units) for r in RECORDS), SPACE.n_units, spec.model.unit_bpe_vocab)
    report = preset_costs(RECORDS[:6], SPACE, SPACE.with_unit_bpe(unit_bpe), spec)
    assert list(report) == list(PRESETS)
    tiny = load_run_spec(overrides={"preset": "tiny"}).model
    assert report["tiny"]["lst"]["parameters"] == count_parameters(build_model(tiny, SPACE.size))
    for name in ("base", "420m", "1b", "1.8b"):
        costs = {kind: row["forward_flops_per_utterance"] for kind, row in report[name].items()}
        assert costs["lst"] < costs["baseline"] and costs["bpe_speechllm"] < costs["baseline"], name
    assert any(line.startswith("  1b: lst ") for line in format_presets(report))
