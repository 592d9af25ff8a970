"""The installed (non-editable) package finds its schemas: build the wheel, install it, validate shards.

The wheel is built by pip with build isolation (setuptools>=68 and wheel, as pyproject's
build-system asks), so pip needs its cache or a package index for those two; the toolkit's
own dependencies come from the test's interpreter, lst_data from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from support.synthetic_shards import synthetic_tables

from lst_data.config import RunConfig
from lst_data.core.config import updated
from lst_data.shards.join import join_records
from lst_data.shards.writer import write_shards

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from; copied, because setuptools writes build/ and *.egg-info beside the sources.
SOURCES = ("pyproject.toml", "README.md", "schemas", "lst_data", "lst_model", "pipelines")


def test_wheel_install_validates_shards(tmp_path):
    source, wheel_dir, target, shards = (tmp_path / name for name in ("source", "wheel", "site", "shards"))
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir), str(source)],
        check=True, cwd=tmp_path, timeout=600,
    )
    (wheel,) = wheel_dir.glob("lst_data-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lst_data/schemas/sample.v1.json" in names and "lst_data/schemas/tokens.v1.json" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True, cwd=tmp_path, timeout=600,
    )
    config = updated(RunConfig(), {"shard": {"samples_per_shard": 4}})
    write_shards(join_records(synthetic_tables(10, seed=50), config), shards, config, show_progress=False)

    env = {k: v for k, v in os.environ.items() if k != "LST_DATA_SCHEMA_DIR"}
    env["PYTHONPATH"] = str(target)  # ahead of the venv's editable install of the checkout
    where = subprocess.run(
        [sys.executable, "-c", "import lst_data.format.schema as s, lst_data; print(lst_data.__file__); print(s.SCHEMA_DIR)"],
        check=True, cwd=tmp_path, env=env, capture_output=True, text=True,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(target.resolve()) for p in where), where
    result = subprocess.run(
        [sys.executable, "-m", "lst_data.cli", "validate", str(shards)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"ok: 3 shards, 10 samples in {shards}"
