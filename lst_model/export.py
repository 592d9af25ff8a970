"""A training checkpoint into an exported folder (`export_checkpoint`, `lst-model export`);
the folder's format is lst_model.pretrained, `lst_model.model.load_pretrained` reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

from lst_data.core.digests import file_sha256
from lst_model.errors import OptionError
from lst_model.model import build_model, load_pretrained
from lst_model.pretrained import (
    DTYPES,
    ExportResult,
    exported_folder,
    save_pretrained,
)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None) -> ExportResult:
    """`lst-model export`: the model of a training checkpoint (or of an exported folder, e.g.
    to change its dtype) into `out_dir`, with the run's training-transcript digests."""
    from lst_model.data import TRAINING_TEXTS

    checkpoint = Path(checkpoint)
    folder = exported_folder(checkpoint)
    if folder is not None:
        model, config = load_pretrained(folder)
        spec, space, source = config.spec, config.space, config.source
        dtype = dtype or (config.weights_dtype if config.weights_dtype in DTYPES else None)
    else:
        from lst_model.train import load_checkpoint

        state = load_checkpoint(checkpoint)
        spec, space = state["spec"], state["token_space"]
        model = build_model(spec.model, space.size)
        model.load_state_dict(state["model"])
        source = {"checkpoint_sha256": file_sha256(checkpoint), "step": state["step"], "run_spec_sha256": spec.hash,
                  "text_corpus_sha256": state.get("text_corpus") or None, "init_sha256": state.get("init_sha256") or None}
        folder = checkpoint.parent
    out = Path(out_dir)
    if out.resolve() == folder.resolve():
        raise OptionError(f"{out} is the folder exported from; give another", "--out")
    result = save_pretrained(model, spec, space, out, dtype=dtype, source=source)
    digests = folder / TRAINING_TEXTS
    if digests.is_file():
        shutil.copyfile(digests, out / TRAINING_TEXTS)
    else:
        (out / TRAINING_TEXTS).unlink(missing_ok=True)  # an earlier export's, of another run
    return result
