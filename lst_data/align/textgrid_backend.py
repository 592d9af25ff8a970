"""Import alignments a user already has: one TextGrid per utterance, named by id or key.

The directory is searched recursively, so `mfa align` output (OUT/speaker/utt.TextGrid)
works as it is. No audio is read and nothing is trimmed: the TextGrid is the truth.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lst_data.align.base import AlignFailure, Alignment, AlignRequest, ImportedAligner, hash_files
from lst_data.align.config import AlignConfig
from lst_data.align.textgrid_io import read_tiers, tiers_to_alignment


def index_textgrids(directory: str | Path) -> dict[str, Path]:
    """File stem -> path of every *.TextGrid under `directory` (first in sorted order wins)."""
    index: dict[str, Path] = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.suffix.lower() == ".textgrid" and path.is_file():
            index.setdefault(path.stem, path)
    return index


def lowercase_words(alignment: Alignment) -> Alignment:
    return replace(alignment, words=[replace(w, label=w.label.lower()) for w in alignment.words])


class TextGridAligner(ImportedAligner):
    name = "textgrid"

    def __init__(self, config: AlignConfig) -> None:
        tg = config.textgrid
        if tg.directory is None:
            raise ValueError("align.textgrid.directory must name the directory of TextGrids")
        self.directory = Path(tg.directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"align.textgrid.directory {self.directory} is not a directory")
        self.word_tier, self.phone_tier = tg.word_tier, tg.phone_tier
        self.index = index_textgrids(self.directory)
        # The directory's identity, not its bytes: hashing every TextGrid in every worker would
        # read the whole corpus of alignments once per worker.
        self._model_hash = hash_files(
            extra=f"{self.directory.resolve()}|{self.word_tier}|{self.phone_tier}|{len(self.index)}"
        )

    def align_one(self, request: AlignRequest) -> Alignment | AlignFailure:
        path = self.index.get(request.id) or self.index.get(request.key)
        if path is None:
            return AlignFailure("align_failed", f"no {request.id}.TextGrid under {self.directory}")
        try:
            tiers = read_tiers(path, self.word_tier, self.phone_tier)
        except (ValueError, OSError, IndexError) as err:
            return AlignFailure("align_failed", f"{path.name}: {err}")
        return lowercase_words(tiers_to_alignment(tiers))
