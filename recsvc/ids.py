"""Ids: what makes a valid one, and look-ups in sorted id arrays (no per-process dict, and they
work on memory-mapped ids)."""

from __future__ import annotations

import re

import numpy as np


def sorted_positions(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each of `wanted` in the sorted, unique `sorted_ids`; -1 where absent."""
    if sorted_ids.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    wanted = np.asarray(wanted)
    width = _width(sorted_ids)
    if width is not None and wanted.dtype.kind == "U":
        # Search in the ids' own dtype: a wider query dtype would make numpy cast (copy) the
        # whole id array on every call. Longer ids cannot be present, and would be truncated.
        too_long = np.char.str_len(wanted) > width if wanted.size else np.zeros(0, bool)
        wanted = wanted.astype(sorted_ids.dtype)
    else:
        too_long = np.zeros(wanted.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
    return np.where((sorted_ids[pos] == wanted) & ~too_long, pos, -1).astype(np.int64)


def _width(ids: np.ndarray) -> int | None:
    """Characters in a fixed-width unicode id array's dtype."""
    return ids.dtype.itemsize // 4 if ids.dtype.kind == "U" else None


def lookup_sorted(sorted_ids: np.ndarray, key: str) -> int | None:
    """Binary search in a sorted id array: no per-process dict, works on memory-mapped ids."""
    width = _width(sorted_ids)
    if width is not None:
        if len(key) > width:
            return None
        probe: object = np.array(key, dtype=sorted_ids.dtype)  # no cast of the whole array
    else:
        probe = key
    pos = int(np.searchsorted(sorted_ids, probe))
    if pos < sorted_ids.size and sorted_ids[pos] == key:
        return pos
    return None


# Characters no id may hold, as a regular expression that Python, Arrow (RE2) and Spark (Java)
# all read alike: the C0 controls (NUL, tab, newline, ...) and DEL. A real shop's ids never hold
# them, and they break CSV exports, log lines and terminals downstream.
CONTROL_CHARACTER = r"[\x00-\x1f\x7f]"
_CONTROL_CHARACTER = re.compile(CONTROL_CHARACTER)


def id_problem(value: str, max_length: int) -> str | None:
    """Why `value` cannot be an id (user, item, segment), or None: the one rule that training's
    ingest (column-wise, as `bad_id`) and every request apply."""
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    if _CONTROL_CHARACTER.search(value):
        return "holds a control character"
    return None
