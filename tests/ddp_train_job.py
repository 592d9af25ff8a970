"""Run by tests/test_train_distributed.py under torchrun (or alone): train on toy records,
stopping at --stop-at first and then resuming to the end in the same processes. DDP or FSDP,
with or without activation checkpointing: whatever --spec's train section says; with --text
(and --tokenizer) a streamed text corpus feeds the text share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist
from support.toy_corpus import ToyLanguage, synthetic_dataset_json, synthetic_records

from lst_model.config import load_run_spec
from lst_model.text_corpus import TextStream
from lst_model.tokens import TokenSpace
from lst_model.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--spec", required=True, help="overrides as JSON")
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--text", default=None)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()
    language = ToyLanguage.make(0)
    records = synthetic_records(30, seed=0, language=language)
    dataset = synthetic_dataset_json(language)
    space = TokenSpace.from_dataset_json(dataset)
    spec = load_run_spec(overrides=json.loads(args.spec))
    texts = TextStream.open(args.text, args.tokenizer, dataset, space.text_vocab_size) if args.text else None
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:  # one process group for both calls (train() would otherwise start and end its own)
        dist.init_process_group("gloo")
    if args.stop_at is not None:
        train(spec, records, space, args.out, texts=texts, stop_at_step=args.stop_at)
    train(spec, records, space, args.out, texts=texts)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
