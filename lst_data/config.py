"""The run configuration: every stage's section, with every default in code and documented.

A run is driven by one YAML file (`--config`) plus `--set a.b=v` overrides, over these
defaults. The canonical hash of the resolved config (sorted-key JSON) goes into the
provenance of every output, so two outputs made with different settings can never be
confused; each stage also hashes only its own section, so changing the quantizer does not
invalidate alignments. Validation (types, ranges, enum values) happens here, on load,
before any stage runs (`lst_data.core.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lst_data.align.config import AlignConfig
from lst_data.core.config import (
    RayConfig,
    Section,
    canonical_hash,
    config_layers,
    doc,
    to_dict,
    validate_section,
)
from lst_data.ingest.config import IngestConfig
from lst_data.shards.config import ShardConfig
from lst_data.tokenize.config import TokenizerConfig
from lst_data.units.config import UnitsConfig

SEED_MAX = 2**32 - 1


class RunConfig(Section):
    seed: int = doc("Seed for every random choice in the run.", 0, ge=0, le=SEED_MAX)
    ingest: IngestConfig = doc("Corpus ingest.", IngestConfig)
    align: AlignConfig = doc("Forced alignment.", AlignConfig)
    units: UnitsConfig = doc("Speech-unit quantization.", UnitsConfig)
    tokenizer: TokenizerConfig = doc("BPE tokenizer.", TokenizerConfig)
    shard: ShardConfig = doc("WebDataset shards.", ShardConfig)
    ray: RayConfig = doc("Execution.", RayConfig)

    def section_hash(self, name: str) -> str:
        """Hash of one stage's section (plus the seed): what that stage's outputs depend on."""
        return canonical_hash({"seed": self.seed, name: to_dict(getattr(self, name))})

    @property
    def hash(self) -> str:
        return canonical_hash(self)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, assignments: Sequence[str] = ()
) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (a nested dict), then `--set` assignments."""
    return validate_section(RunConfig, config_layers(path, overrides, assignments))
