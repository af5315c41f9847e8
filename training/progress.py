"""Progress lines for long work: stage, counts, rate, elapsed time."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO


@dataclass
class Tally:
    """What a stage got through; set by the stage, reported when it ends."""

    count: int | None = None
    unit: str = "rows"


class Progress:
    def __init__(self, job: str, stream: TextIO | None = None) -> None:
        self.job = job
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{self.job} {elapsed:7.2f}s] {message}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[Tally]:
        """Reports a stage's start, and its end with duration and rate."""
        self.say(f"{name} ...")
        tally = Tally()
        start = time.perf_counter()
        yield tally
        seconds = time.perf_counter() - start
        done = f"{name} done in {seconds:.2f}s"
        if tally.count is not None:
            done += f": {tally.count:,} {tally.unit}"
            if seconds > 0:
                done += f", {tally.count / seconds:,.0f} {tally.unit}/s"
        self.say(done)
