"""Small helpers for writing input files in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_rejects(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Polls `condition` until it holds (synchronisation, not a sleep); fails with `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
