"""Where a corpus and its shards live: a local path, or a URL on any filesystem fsspec supports.

`location("s3://bucket/corpus")` is a `upath.UPath` (pathlib's API over fsspec: `/`, `name`,
`glob`, `open`, `read_bytes`, `unlink`, ...); a plain path or a `file://` URL is a
`pathlib.Path`, so local runs take exactly the code paths they always did. Credentials and
endpoints come from each filesystem's usual configuration (for S3: the AWS environment
variables or config files, `AWS_ENDPOINT_URL` for an S3-compatible server); nothing here
names a cloud.

Object stores have no rename, so the helpers that write whole files atomically differ by
kind: a local file is written under a temporary name and renamed; an object is written by
one upload, which a reader sees whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from lst_data.core.errors import UserError

if TYPE_CHECKING:
    from typing_extensions import TypeIs
    from upath import UPath

    StoragePath = Path | UPath
else:
    StoragePath = Any


def is_url(value: str | os.PathLike[str] | StoragePath) -> bool:
    """Whether `value` names a location by URL (`scheme://...`) rather than a local path."""
    text = str(value)
    return "://" in text and urlsplit(text).scheme.isidentifier()


def location(value: str | os.PathLike[str] | StoragePath, what: str = "path") -> StoragePath:
    """A `Path` for a local path or `file://` URL, else a `UPath` on the URL's filesystem.

    A scheme fsspec does not know, or whose package is not installed (gcsfs for gs://), is a
    UserError naming `what` (the option or argument that gave it).
    """
    text = str(value)
    if not is_url(text):
        return Path(text)
    scheme = urlsplit(text).scheme
    if scheme == "file":
        return Path(urlsplit(text).path)
    from upath import UPath

    try:
        return UPath(text)
    except (ValueError, ImportError) as err:
        raise UserError(f"{what}: cannot open {scheme}:// URLs ({err}); install the fsspec package for "
                        f"{scheme}:// (s3fs for s3://, gcsfs for gs://, pyarrow for hdfs://)") from None


def is_remote(path: StoragePath) -> TypeIs[UPath]:
    """Whether `path` lives on a filesystem other than this machine's: a `UPath` (else a `Path`)."""
    return not isinstance(path, Path) or type(path).__module__.startswith("upath")


def write_bytes_atomic(path: StoragePath, data: bytes) -> None:
    """`data` as the whole content of `path`, never seen half written."""
    if is_remote(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def temporary_name(path: Path) -> Path:
    """A dot name of this process beside `path`: a retried task (its worker lost with its node) may
    still be writing its own."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def local_output(path: StoragePath) -> Iterator[Path]:
    """A local file to write what becomes `path` once the block ends without an error.

    Local: a temporary name beside `path`, renamed into place. Remote: a file in the system
    temp dir, uploaded as one object. Writers that need a real file (tar, Parquet, numpy,
    sentencepiece) write here.
    """
    if not is_remote(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="lst-upload-") as scratch:
        tmp = Path(scratch) / path.name
        yield tmp
        path.fs.put_file(str(tmp), path.path)


@contextlib.contextmanager
def local_input(path: StoragePath, *companions: StoragePath) -> Iterator[Path]:
    """`path` as a local file for the block: itself, or a download into the system temp dir
    (same name, so messages about it read the same) removed afterwards. `companions` (a
    sidecar) are downloaded beside it when they exist."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lst-download-") as scratch:
        local = Path(scratch) / path.name
        path.fs.get_file(path.path, str(local))
        for companion in companions:
            assert is_remote(companion), "the companions of a remote file are remote"
            with contextlib.suppress(FileNotFoundError):
                companion.fs.get_file(companion.path, str(Path(scratch) / companion.name))
        yield local


def arrow_filesystem(path: UPath) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a remote `path`: pyarrow reads and writes through fsspec."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(path.fs)), path.path


def write_parquet(table: pa.Table, path: StoragePath, **options: Any) -> None:
    """`pq.write_table` to a local path (as it always wrote) or an object."""
    if not is_remote(path):
        pq.write_table(table, path, **options)
        return
    filesystem, where = arrow_filesystem(path)
    pq.write_table(table, where, filesystem=filesystem, **options)


def read_parquet(path: StoragePath, **options: Any) -> pa.Table:
    """`pq.read_table` of a local or remote Parquet file, or of a folder of them (partitions)."""
    if not is_remote(path):
        return pq.read_table(path, **options)
    filesystem, where = arrow_filesystem(path)
    return pq.read_table(where, filesystem=filesystem, **options)


def parquet_file(path: StoragePath) -> pq.ParquetFile:
    """A Parquet file opened for its footer or for reading batch by batch."""
    if not is_remote(path):
        return pq.ParquetFile(path)
    filesystem, where = arrow_filesystem(path)
    return pq.ParquetFile(where, filesystem=filesystem)


def remove_tree(path: StoragePath) -> None:
    """Delete a folder (a prefix of objects) and everything in it; nothing when it is absent."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def read_all(paths: Sequence[UPath]) -> dict[str, bytes]:
    """{str(path): content} of remote files read together (concurrent requests where the
    filesystem is asynchronous, as S3 and GCS are); a file that cannot be read is left out."""
    if not paths:
        return {}
    fs = paths[0].fs
    found = fs.cat([p.path for p in paths], on_error="omit")
    by_path = {p.path: str(p) for p in paths}
    return {by_path[name]: data for name, data in found.items() if name in by_path and not isinstance(data, Exception)}


def walk_files(root: UPath) -> Iterator[tuple[UPath, list[UPath]]]:
    """(folder, its files sorted by name) for every folder under a remote `root`, depth first in
    sorted order: the order `os.walk` with sorted folders gives a local tree. One listing
    request per folder; the sizes and times it returns stay in fsspec's cache for `stat`."""
    fs, stack = root.fs, [root]
    while stack:
        folder = stack.pop()
        fs.invalidate_cache(folder.path)  # listed afresh, never from an earlier build's cache
        entries = sorted(fs.ls(folder.path, detail=True), key=lambda e: e["name"])
        files = [folder / e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] != "directory"]
        yield folder, files
        subfolders = [folder / e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]
        stack.extend(reversed(subfolders))
