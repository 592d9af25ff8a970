"""The private memory of a process over its life: what "the driver holds" means in numbers.

`RssAnon` (Linux, /proc/PID/status) counts a process's anonymous resident pages: its heap,
Arrow buffers, Python objects. Shared libraries and the page cache are not in it, so it
grows with what the process holds, not with what it maps.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def rss_anon_kib(pid: int) -> int | None:
    """RssAnon of `pid` in KiB, or None when the process is gone (or the field does not exist)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class SampledRun:
    returncode: int
    peak_rss_anon_kib: int
    seconds: float
    stderr: str


def run_sampling_memory(command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                        interval: float = 0.05, timeout: float = 3600) -> SampledRun:
    """Run `command`, sampling its RssAnon every `interval` seconds; its peak and exit code."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:  # a pipe could fill and stall the child
        process = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        peak = 0
        try:
            while process.poll() is None:
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"{command[0]} ran longer than {timeout} s")
                peak = max(peak, rss_anon_kib(process.pid) or 0)
                time.sleep(interval)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        errors.seek(0)
        return SampledRun(process.returncode, peak, time.perf_counter() - started, errors.read())
