"""Run-length view of unit sequences, for users who want deduplicated units.

LST and the shards keep units NOT deduplicated (one id per 40 ms frame, so word spans stay
frame spans). GSLM-style models use deduplicated units plus durations; this converts both
ways without losing anything: `expand(run_lengths(u)) == u`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RunLengths(NamedTuple):
    units: np.ndarray  # int16 [m]: each run's unit id
    durations: np.ndarray  # int32 [m]: frames in each run (sum = original length)


def run_lengths(units: np.ndarray) -> RunLengths:
    units = np.asarray(units)
    if units.size == 0:
        return RunLengths(units.astype(np.int16), np.zeros(0, dtype=np.int32))
    starts = np.flatnonzero(np.concatenate(([True], units[1:] != units[:-1])))
    durations = np.diff(np.append(starts, units.size)).astype(np.int32)
    return RunLengths(units[starts].astype(np.int16), durations)


def expand(runs: RunLengths) -> np.ndarray:
    return np.repeat(runs.units, runs.durations).astype(np.int16)
