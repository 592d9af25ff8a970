"""Writers refuse any resolved output path outside their output folder."""

from __future__ import annotations

import pytest

from lst_data.core.paths import inside


def test_inside_accepts_names_in_the_folder(tmp_path):
    assert inside(tmp_path, "a.flac") == (tmp_path / "a.flac").resolve()
    assert inside(tmp_path / "audio", "k_0123.wav").parent == (tmp_path / "audio").resolve()


@pytest.mark.parametrize("name", ["../x.wav", "x/../../x.wav", "/tmp/x.wav", "a/../../../etc/passwd"])
def test_inside_refuses_escapes(tmp_path, name):
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / "out", name)


def test_inside_refuses_a_symlink_that_leads_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path / "out", "link/x.wav")


@pytest.mark.parametrize("stage", ["align", "units", "tokenize"])
def test_a_stage_refuses_to_write_into_the_manifest_folder(tmp_path, stage):
    """Its rejects.parquet and done.json would replace ingest's."""
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    from lst_data.core.tables import MANIFEST_SCHEMA

    pq.write_table(MANIFEST_SCHEMA.empty_table(), tmp_path / "manifest.parquet")
    (tmp_path / "done.json").write_text("{}")
    lst_data = Path(sys.executable).parent / "lst-data"
    result = subprocess.run([str(lst_data), stage, str(tmp_path), "--out", str(tmp_path), "--runner", "local"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--out" in result.stderr and "holds the manifest" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "done.json").read_text() == "{}"


def test_a_stage_reads_a_builds_partitioned_manifest(tmp_path):
    """`lst-data align RUN/ingest` reads the build's manifest.parquet folder, partitions in order."""
    import pyarrow.parquet as pq
    import pytest
    from support.synthetic_shards import synthetic_tables

    from lst_data.core.errors import InputError
    from lst_data.core.runner import read_manifest

    manifest = synthetic_tables(7, seed=3).manifest
    folder = tmp_path / "ingest" / "manifest.parquet"
    folder.mkdir(parents=True)
    pq.write_table(manifest.slice(4), folder / "part-00001.parquet")
    pq.write_table(manifest.slice(0, 4), folder / "part-00000.parquet")
    for given in (tmp_path / "ingest", folder):
        assert read_manifest(given).column("id").to_pylist() == manifest.column("id").to_pylist()
    for part in folder.iterdir():
        part.unlink()
    with pytest.raises(InputError, match="no manifest at"):
        read_manifest(tmp_path / "ingest")
