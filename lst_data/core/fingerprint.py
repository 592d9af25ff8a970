"""Content fingerprints: what decides whether a step's earlier output can be kept.

A step is kept on resume only when the fingerprint of everything its output depends on is
unchanged: its config sections, the *content* of every file those sections name (a
codebook replaced under the same path changes the fingerprint), the corpus listing with
its transcripts, and the fingerprints of the steps it reads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from lst_data.core.config import Section, canonical_hash
from lst_data.core.digests import file_sha256
from lst_data.core.storage import is_remote, is_url, location


def path_fingerprint(value: str) -> str:
    """Content hash of a file or of a whole folder (relative paths + bytes); a name that is no path hashes as itself."""
    path = Path(value).expanduser()
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return canonical_hash([(p.relative_to(path).as_posix(), file_sha256(p)) for p in files])
    return canonical_hash({"name": value})


def named_files(section: Section, prefix: str = "") -> dict[str, str]:
    """{dotted field: value} for every set field of `section` (nested too) marked as naming a file."""
    found: dict[str, str] = {}
    for name, info in type(section).model_fields.items():
        value, extra = getattr(section, name), info.json_schema_extra  # (`doc` sets a dict, never a callable)
        if isinstance(value, Section):
            found.update(named_files(value, f"{prefix}{name}."))
        elif value is not None and isinstance(extra, dict) and extra.get("names_file"):
            found[prefix + name] = str(value)
    return found


def files_fingerprint(sections: Iterable[Section]) -> dict[str, str]:
    """{dotted field: content hash} of every file the sections name."""
    return {field: path_fingerprint(value) for section in sections for field, value in named_files(section).items()}


def table_fingerprint(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def listing_fingerprint(entries: pa.Table, audio_column: str, extra: Any) -> str:
    """A corpus listing (entries with their transcript bytes) plus size and mtime of every audio file."""
    return canonical_hash({"entries": table_fingerprint(entries),
                           "audio": [file_identity(p) for p in entries[audio_column].to_pylist()], "extra": extra})


def file_identity(path: str) -> tuple[str, int | None, int | str | None]:
    """(path, size, mtime in ns) of a local file; (URL, size, the store's version tag) of an object;
    sizes and tags None when it is missing. An object's tag (S3: its ETag) comes from the
    listing the reader made, so this costs no request per file."""
    target = location(path) if is_url(path) else path
    if isinstance(target, str) or not is_remote(target):  # a local path, or a file:// URL
        try:
            st = os.stat(target)
        except OSError:
            return path, None, None
        return path, st.st_size, st.st_mtime_ns
    remote = target
    try:
        return path, remote.fs.size(remote.path), remote.fs.ukey(remote.path)
    except OSError:
        return path, None, None
