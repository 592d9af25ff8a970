"""The build config the tests use on the espeak-ng demo corpus: the real pipeline, with a
20-cluster codebook and a small BPE so that a build is fast on 2 cores (shared by
conftest's `demo_build` and test_interop)."""

from __future__ import annotations

from lst_data.config import load_config

OVERRIDES = {"units": {"k": 20, "sample_frames": 20000}, "tokenizer": {"vocab_size": 100}, "ray": {"runner": "local"}}


def build_config(**sections):
    """The test build config, with some fields of some sections changed."""
    merged = {**OVERRIDES, **{k: {**OVERRIDES.get(k, {}), **v} for k, v in sections.items()}}
    return load_config(overrides=merged)
