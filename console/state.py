"""What the console reads: the published model (followed as new versions are published) and the
event store, through the same serving core the gRPC server answers with, so that every number
and list on a page is the one a frontend or a marketer's gRPC call would get."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from recsvc.config import ServingConfig
from recsvc.events import EventStore
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore, close_published_core, open_published_core

T = TypeVar("T")
# How often a page may look for a newly published version (a directory read).
RELOAD_CHECK_S = 2.0
# How long slow summaries of the event store (a scan) are reused.
SUMMARY_TTL_S = 30.0


@dataclass
class ConsoleState:
    model_dir: Path
    config: ServingConfig
    models: ModelStore
    store: EventStore | None
    core: RecommenderCore
    _checked_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cached: dict[str, tuple[float, object]] = field(default_factory=dict)

    @classmethod
    def open(cls, model_dir: Path, config: ServingConfig, event_store: str = "") -> ConsoleState:
        models = ModelStore(model_dir)
        models.check_exists()
        core = open_published_core(model_dir, config, event_store)
        return cls(model_dir, config, models, core.event_store, core, time.monotonic())

    def follow_current(self, now_please: bool = False) -> None:
        """Takes in what the servers stored (events, deletions) and swaps in the current version
        when another was published or rolled back to (looked for every RELOAD_CHECK_S, or at
        once with `now_please`)."""
        if self.store is not None:
            self.core.sync()
        now = time.monotonic()
        if now - self._checked_at < RELOAD_CHECK_S and not now_please:
            return
        with self._lock:
            self._checked_at = now
            current = self.models.current_version()
            if current and current != self.core.version:
                self.core.swap(PublishedModel.load(self.models.path(current)))
                self._cached.clear()

    def cached(self, key: str, compute: Callable[[], T], ttl: float = SUMMARY_TTL_S) -> T:
        """`compute()` reused for `ttl` seconds and while the model version stays."""
        full = f"{self.core.version}:{key}"
        hit = self._cached.get(full)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]  # type: ignore[return-value]
        value = compute()
        self._cached[full] = (time.monotonic(), value)
        return value

    def forget_cached(self) -> None:
        self._cached.clear()

    def close(self) -> None:
        close_published_core(self.core)
