"""The task item format (lst_model.items): what it writes validates against
schemas/choice_item.v1.json, and the reader refuses what the schema refuses, one line each."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from support.toy_corpus import ToyLanguage, synthetic_records

from lst_data.format.schema import load_schema
from lst_model.corpus_tasks import corpus_items
from lst_model.items import InvalidItem, iter_items, read_items, write_items

RECORDS = synthetic_records(30, seed=4, language=ToyLanguage.make(4), speakers=2)
ITEMS, _ = corpus_items(RECORDS, 0.5, seed=0)
VALIDATOR = jsonschema.Draft202012Validator(load_schema("choice_item"))


def test_written_items_validate_against_the_schema_and_round_trip(tmp_path):
    path = write_items(ITEMS, tmp_path / "items.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(ITEMS) > 0 and {line["pair"] for line in lines} == {"s2s", "t2t", "s2t", "t2s"}
    for line in lines:
        VALIDATOR.validate(line)
    assert read_items(path) == ITEMS


def _broken(line: dict) -> list[dict]:
    """Lines the schema refuses, each broken in one place."""
    cases = []
    for path, value in [(("label",), "1"), (("endings",), []), (("prompt", "modality"), "audio"),
                        (("prompt", "tokens"), [1, -2]), (("prompt", "tokens"), []), (("endings", 0, "tokens"), ["x"]),
                        (("prompt", "patches"), {"static": [1]}), (("pair",), "s2x"), (("id",), "")]:
        case = copy.deepcopy(line)
        target = case
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        cases.append(case)
    cases.append({k: v for k, v in line.items() if k != "prompt"})
    return cases


def test_the_reader_refuses_every_line_the_schema_refuses(tmp_path):
    line = next(i for i in ITEMS if i.pair == "s2s").to_json()
    for number, case in enumerate(_broken(line)):
        assert not VALIDATOR.is_valid(case), case
        path = tmp_path / f"broken{number}.jsonl"
        path.write_text(json.dumps(line) + "\n" + json.dumps(case) + "\n", encoding="utf-8")
        with pytest.raises(InvalidItem, match=rf"broken{number}\.jsonl:2: "):
            read_items(path)


def test_what_the_schema_cannot_say_is_refused_too(tmp_path):
    """Cross-field rules: the label among the endings, one ending modality, patches summing to
    the tokens, the pair matching the sides, no patches on text; and a line over the byte cap."""
    line = next(i for i in ITEMS if i.pair == "t2s").to_json()
    wrong = [dict(line, label=len(line["endings"])), dict(line, pair="s2s"),
             dict(line, endings=[line["endings"][0], dict(line["endings"][1], modality="text", patches={})]),
             dict(line, prompt=dict(line["prompt"], patches={"bpe": [1]})),
             dict(line, endings=[dict(line["endings"][0], patches={"bpe": [len(line["endings"][0]["tokens"]) + 1]}),
                                 line["endings"][1]])]
    for number, case in enumerate(wrong):
        path = tmp_path / f"wrong{number}.jsonl"
        path.write_text(json.dumps(case) + "\n", encoding="utf-8")
        with pytest.raises(InvalidItem, match=rf"wrong{number}\.jsonl:1: item "):
            read_items(path)
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps(dict(line, voice="x" * (17 * 2**20))) + "\n", encoding="utf-8")
    with pytest.raises(InvalidItem, match="huge.jsonl:1: .*over the"):
        list(iter_items(huge))
    endless = tmp_path / "endless.jsonl"  # no newline at all: refused after the cap, not read whole
    endless.write_bytes(b"[" * (17 * 2**20))
    with pytest.raises(InvalidItem, match="endless.jsonl:1: line of .* bytes is over the"):
        list(iter_items(endless))
