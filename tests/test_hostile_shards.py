"""Hostile shards: every reading command reports the problem, in bounded memory, without a traceback.

Each case is a copy of a good shard directory with one thing done to it, the way shards
from elsewhere can be: a sparse member declaring 8 GiB (a crafted header, no data), a
200 MB JSON of nested brackets, a flipped unit byte, a deleted sample, a broken sidecar,
3 of 5 shards and no dataset.json. Where an attacker would, the sidecar is re-sealed
(its bytes and sha256 made to match the changed tar), so the refusal must come from the
member checks and not only from the hash. Each command runs in its own process, under a
wrapper that reports the child's peak RSS (`getrusage(RUSAGE_CHILDREN).ru_maxrss`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.synthetic_shards import synthetic_tables

from lst_data.cli import cli

ROOT = Path(__file__).resolve().parent.parent
MEMORY_LIMIT_MB = 500
N = 20  # 5 shards of 4
GIB = 2**30

# Runs argv in a child and prints its exit code, peak RSS (MB) and output as JSON.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": done.returncode, "peak_mb": peak_mb, "out": done.stdout, "err": done.stderr}))
"""
_LST_DATA = [sys.executable, "-c", "from lst_data.cli import main; main()"]
# load_records (lst_model) reads through lst_data.format.reader.iter_records, verifying by default;
# a bad shard is a BadShardError (a UserError), printed here as the CLIs print one: a line, exit 2.
_LOAD_RECORDS = [sys.executable, "-c", """
import sys
from lst_data.core.errors import UserError
from lst_model.data import load_records
try:
    print(len(load_records(sys.argv[1])), "records")
except UserError as err:
    print(f"load_records: error: {err}", file=sys.stderr)
    sys.exit(2)
"""]


def measured(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    for name, table in dataclasses.asdict(synthetic_tables(N, seed=41)).items():
        pq.write_table(table, run / f"{name}.parquet")
    out = tmp_path_factory.mktemp("out") / "shards"
    result = CliRunner().invoke(cli, ["shard", str(run), "--out", str(out), "--samples-per-shard", "4"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.tar"))) == 5
    return out


def members_of(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_members(tar_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], raw_tail: bytes = b"") -> None:
    """A tar of `members`, then `raw_tail` (crafted header blocks) written as they are."""
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.fileobj.write(raw_tail)
        tar.offset += len(raw_tail)


def reseal(tar_path: Path) -> None:
    """Make the sidecar describe the changed tar (bytes, sha256), as someone forging a shard would."""
    side = tar_path.with_suffix(".json")
    data = json.loads(side.read_text())
    data.update(bytes=tar_path.stat().st_size, sha256=hashlib.sha256(tar_path.read_bytes()).hexdigest())
    side.write_text(json.dumps(data))


def sparse_header(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member header ('S') whose map puts 512 stored bytes at the end of `real_size`."""
    info = tarfile.TarInfo(name)
    info.size = 512
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(real_size - 512, 12, tarfile.GNU_FORMAT)  # sparse entry 0: offset
    header[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)  # ... and stored bytes
    header[482] = 0  # no extended sparse headers
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # real size: 8 GiB (base-256)
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(header))[0]
    return bytes(header) + b"{" * 512


def make_case(case: str, good: Path, target: Path) -> str:
    """Build case `case` in `target` from `good`; the id of a sample in the damaged shard."""
    shutil.copytree(good, target)
    tar = target / "train-000001.tar"
    index = pq.read_table(good / "index.parquet").to_pylist()
    ids = [r["id"] for r in index if r["shard"] == tar.name]
    members = members_of(tar)
    if case == "sparse-8gib":
        write_members(tar, members, raw_tail=sparse_header("zzzz.json", 8 * GIB))
        reseal(tar)
        assert tar.stat().st_size < 30_000
    elif case == "nested-json-200mb":
        assert members[0][0].name.endswith(".json")
        members[0] = (members[0][0], b"[" * 200_000_000)  # the first sample's KEY.json
        write_members(tar, members)
        reseal(tar)
    elif case == "flipped-unit-byte":
        units = next(info for info, _ in members if info.name.endswith(".units.npy"))
        raw = bytearray(tar.read_bytes())
        raw[units.offset_data + 150] ^= 0x01
        tar.write_bytes(bytes(raw))
    elif case == "deleted-sample":
        write_members(tar, [(i, d) for i, d in members if not i.name.startswith(members[-1][0].name.split(".")[0])])
        reseal(tar)
        return ids[-1]
    elif case == "broken-sidecar":
        data = json.loads(tar.with_suffix(".json").read_text())
        data.update(samples="4", bytes=[1, 2])
        tar.with_suffix(".json").write_text(json.dumps(data))
    elif case == "missing-dataset-json":
        for gone in ("train-000003", "train-000004"):
            (target / f"{gone}.tar").unlink()
            (target / f"{gone}.json").unlink()
        (target / "dataset.json").unlink()
        return next(r["id"] for r in index if r["shard"] == "train-000004.tar")
    return ids[0]


# case -> what validate must say, and what the other commands must say
EXPECTED = {
    "sparse-8gib": ("train-000001.tar: unsafe member: sparse member 'zzzz.json'", "train-000001.tar: sparse member 'zzzz"),
    "nested-json-200mb": ("json' of 200000000 bytes is over the 4194304-byte limit", "json' of 200000000 bytes is over"),
    "flipped-unit-byte": ("train-000001.tar: sha256 differs", "train-000001.tar: sha256 differs"),
    "deleted-sample": ("train-000001.tar: 3 samples, sidecar says 4", "train-000001.tar: 3 samples, sidecar says 4"),
    "broken-sidecar": ("train-000001.json: unreadable sidecar", "unreadable sidecar train-000001.json"),
    "missing-dataset-json": ("dataset.json: missing", None),
}
COMMANDS = ("validate", "show", "stats", "diff", "load_records")


@pytest.fixture(scope="module")
def results(good_dir, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every command on every case, each measured in its own process."""
    found = {}
    for case in EXPECTED:
        target = tmp_path_factory.mktemp("case") / case
        sample_id = make_case(case, good_dir, target)
        argv = {
            "validate": [*_LST_DATA, "validate", str(target)],
            "show": [*_LST_DATA, "show", str(target), sample_id],
            "stats": [*_LST_DATA, "stats", str(target)],
            "diff": [*_LST_DATA, "diff", str(target), str(good_dir)],
            "load_records": [*_LOAD_RECORDS, str(target)],
        }
        for command in COMMANDS:
            found[case, command] = measured(argv[command])
        if case == "nested-json-200mb":
            shutil.rmtree(target)  # 200 MB
    for (case, command), r in sorted(found.items()):
        last = (r["err"].strip().splitlines() or [""])[-1]
        print(f"{case:22s} {command:12s} exit {r['rc']}  peak {r['peak_mb']:5.0f} MB  {last[:150]}")
    return found


@pytest.mark.parametrize("case", list(EXPECTED))
def test_every_command_reports_the_problem_in_bounded_memory(case, results):
    validate_says, others_say = EXPECTED[case]
    for command in COMMANDS:
        r = results[case, command]
        output = r["out"] + r["err"]
        assert "Traceback" not in output and r["rc"] >= 0, (command, output)  # no crash, no traceback
        assert r["peak_mb"] < MEMORY_LIMIT_MB, (command, r["peak_mb"])
        if command == "validate":
            assert r["rc"] == 1 and validate_says in r["out"], output
        elif others_say is not None:
            assert r["rc"] == 2 and others_say in r["err"], (command, output)
            assert len(r["err"].strip().splitlines()) == 1 and ": error: " in r["err"], (command, output)


def test_a_folder_with_3_of_5_shards_and_no_dataset_json(results):
    """validate fails it; show cannot follow the index to a missing shard; the others warn."""
    r = {command: results["missing-dataset-json", command] for command in COMMANDS}
    assert "index.parquet: 0 rows for" not in r["validate"]["out"]
    assert "index.parquet: 4 rows for train-000003.tar, which has no sidecar or is not here" in r["validate"]["out"]
    assert r["show"]["rc"] == 2 and "not a shard of this directory" in r["show"]["err"]
    for command in ("stats", "load_records", "diff"):
        assert "has no dataset.json: cannot tell whether all its shards are here" in r[command]["err"], command
    assert r["stats"]["rc"] == 0 and " 12 " in r["stats"]["out"]  # tallied: the 12 samples present
    assert r["diff"]["rc"] == 1 and "shard train-000004.tar: only in B" in r["diff"]["out"]
    assert r["load_records"]["rc"] == 0 and "12 records" in r["load_records"]["out"]


def test_the_good_directory_passes_every_command(good_dir):
    sample_id = pq.read_table(good_dir / "index.parquet")["id"][0].as_py()
    for argv in ([*_LST_DATA, "validate", str(good_dir)], [*_LST_DATA, "show", str(good_dir), sample_id],
                 [*_LST_DATA, "stats", str(good_dir)], [*_LOAD_RECORDS, str(good_dir)]):  # fmt: skip
        r = measured(argv)
        assert r["rc"] == 0 and "Traceback" not in r["err"], r
        assert r["peak_mb"] < MEMORY_LIMIT_MB


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS/VmHWM from /proc")
def test_training_pipeline_refuses_each_hostile_case_in_bounded_memory(good_dir, tmp_path):
    """The webdataset pipeline (torch imported: ~800 MB RSS here before any shard): peak minus that < 500 MB."""
    cases = {case: tmp_path / case for case in EXPECTED if case != "missing-dataset-json"}
    for case, target in cases.items():
        make_case(case, good_dir, target)
    script = """
import json, sys
from lst_data.format.loader import shard_pipeline
from lst_data.format.reader import BadShardError

def status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

before = status_kb("VmRSS")  # after importing torch
said = {}
for target in sys.argv[1:]:
    try:
        said[target] = f"read {sum(len(b) for b in shard_pipeline(target, batch_size=4, shuffle=False))} samples"
    except BadShardError as err:
        said[target] = str(err)
grown = (status_kb("VmHWM") - before) / 1024  # an upper bound: the import's own peak counts too
print(json.dumps({"said": said, "grown_mb": grown}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, *map(str, cases.values())],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    print(f"training pipeline: peak {report['grown_mb']:.0f} MB above the RSS after importing torch")
    assert report["grown_mb"] < MEMORY_LIMIT_MB
    for case, target in cases.items():
        assert EXPECTED[case][1] in report["said"][str(target)], (case, report["said"][str(target)])


# ---------------------------------------------------------------- in-process: the same defences, case by case


def _reseal_first_json(good: Path, target: Path, new_json: bytes) -> Path:
    shutil.copytree(good, target)
    tar = target / "train-000000.tar"
    members = members_of(tar)
    members[0] = (members[0][0], new_json)
    write_members(tar, members)
    reseal(tar)
    return tar


def test_nested_json_under_the_size_cap_is_refused_by_depth(good_dir, tmp_path):
    from lst_data.format.reader import BadShardError, iter_records

    _reseal_first_json(good_dir, tmp_path / "d", b"[" * 1_000_000 + b"]" * 1_000_000)
    with pytest.raises(BadShardError, match=r"train-000000.tar: sample .*json is not valid JSON \(depth limit"):
        list(iter_records(tmp_path / "d"))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "d")])
    assert result.exit_code == 1 and "undecodable sample" in result.output and "depth limit" in result.output


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(words=[1, 2]), "word 0 is not an object with the fields"),
        (lambda d: d["words"][0].update(start_frame=2**40), "word 0 start_frame is of the wrong type or out of range"),
        (lambda d: d["words"][0].update(start="0.1"), "word 0 start is of the wrong type"),
        (lambda d: d["bpe"][0].update(extra=1), "bpe 0 is not an object with the fields"),
        (lambda d: d["silences"][-1].pop("end_frame"), "silence .* is not an object with the fields"),
        (lambda d: d["words"][-1].update(end=-0.5), "word .* end is of the wrong type or out of range"),
        (lambda d: d.update(duration=1e300), "duration missing, of the wrong type or out of range"),
        (lambda d: d.update(sample_rate=True), "sample_rate"),
        (lambda d: d.update(aligner={"backend": [[["deep"]]]}), "aligner is not an object of plain values"),
        (lambda d: d.pop("text"), "text missing"),
        (lambda d: d.update(n_frames=d["n_frames"] + 1), "n_frames"),
        (lambda d: d.update(schema_version=[1]), "schema_version"),
    ],
)  # fmt: skip
def test_malformed_sample_json_is_a_one_line_reason_never_a_type_error(good_dir, change, message):
    from lst_data.format.reader import decode_members, iter_raw_samples
    from lst_data.format.records import MalformedSample

    key, members = next(iter_raw_samples(good_dir / "train-000000.tar"))
    data = json.loads(members["json"])
    change(data)
    with pytest.raises(MalformedSample, match=message):
        decode_members(key, {**members, "json": json.dumps(data).encode()})


def test_huge_integers_and_infinite_floats_are_refused(good_dir):
    from lst_data.format.reader import decode_members, iter_raw_samples

    key, members = next(iter_raw_samples(good_dir / "train-000000.tar"))
    text = members["json"].decode()
    for bad in (text.replace('"sample_rate":16000', '"sample_rate":' + "9" * 400),
                text.replace('"sample_rate":16000', '"sample_rate":1e999')):  # fmt: skip
        assert bad != text
        with pytest.raises(ValueError, match="sample_rate|infinity"):
            decode_members(key, {**members, "json": bad.encode()})


def test_a_sidecar_nested_deeply_or_huge_is_refused_without_a_crash(good_dir, tmp_path):
    from lst_data.format.layout import Sidecar

    side = tmp_path / "train-000000.json"
    for content in (b"[" * 100_000, b'{"samples": ' + b"[" * 900 + b"]" * 900 + b"}", b" " * 200_000):
        side.write_bytes(content)
        with pytest.raises(ValueError):
            Sidecar.read(side)


def test_pax_sparse_and_oversized_extended_headers_are_refused(tmp_path):
    from lst_data.format.reader import BadShardError, iter_shard

    sparse = tarfile.TarInfo("a.json")
    sparse.pax_headers = {"GNU.sparse.size": str(8 * GIB), "GNU.sparse.map": f"{8 * GIB - 512},512",
                          "GNU.sparse.name": "a.json"}  # fmt: skip
    sparse.size = 512
    with tarfile.open(tmp_path / "p-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(sparse, io.BytesIO(b"{" * 512))
    with pytest.raises(BadShardError, match="sparse member"):
        list(iter_shard(tmp_path / "p-000000.tar", verify=False))
    long_name = tarfile.TarInfo("b.json")
    long_name.pax_headers = {"comment": "x" * 100_000}
    long_name.size = 2
    with tarfile.open(tmp_path / "q-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(long_name, io.BytesIO(b"{}"))
    with pytest.raises(BadShardError, match="extended header of .* bytes"):
        list(iter_shard(tmp_path / "q-000000.tar", verify=False))


def test_a_units_header_that_declares_more_than_it_holds_is_refused():
    import numpy as np

    from lst_data.format.reader import load_units

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype="<i4"))
    header["shape"] = (10**12,)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with pytest.raises(ValueError, match=r"declares shape \(1000000000000,\)"):
        load_units(buffer.getvalue() + b"\0" * 64)


def test_random_byte_flips_never_give_a_traceback(good_dir, tmp_path):
    """Damage anywhere in a tar (headers, JSON, units, padding): validate lists it, show ends in one line."""
    import random

    from lst_data.core.cli_options import run_cli

    target = tmp_path / "fuzz"
    shutil.copytree(good_dir, target)
    tar = target / "train-000000.tar"
    original = tar.read_bytes()
    sample_id = pq.read_table(good_dir / "index.parquet")["id"][0].as_py()
    rng = random.Random(5)
    for _ in range(25):
        raw = bytearray(original)
        for position in rng.sample(range(len(raw)), 3):
            raw[position] = rng.randrange(256)
        tar.write_bytes(bytes(raw))
        reseal(tar)  # so the damage is met by the parsers, not only by the hash
        for args in (["validate", str(target)], ["show", str(target), sample_id], ["stats", str(target)]):
            with pytest.raises(SystemExit) as exited:
                run_cli(cli, "lst-data", args)
            assert exited.value.code in (0, 1, 2), args
