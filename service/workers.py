"""Several server processes on one port, supervised: the kernel spreads connections over them,
and the parent replaces a worker that dies.

Each worker is a full `serve` in its own process (spawned, not forked: gRPC's threads do not
survive a fork), bound to the same port with SO_REUSEPORT, which gRPC sets on Linux. Workers
memory-map the same model files, so each added worker shares the model's pages instead of
copying them; they share real-time state through the event store. The parent forwards SIGTERM
and SIGINT, so every worker drains, and exits 0 only if every worker did.

A worker that exits while the pool is not stopping (killed by the OOM killer, a crash in a
native library) is logged and replaced after a backoff that doubles with each exit in the last
minute; after MAX_EXITS such exits in that minute the parent stops the others and exits 1, so
that the pod's own restart policy takes over instead of a loop that never serves. Every worker
exports the pool's counts (`recsvc_worker_exits`, `recsvc_worker_replacements`,
`recsvc_workers_ready` against `recsvc_workers_configured`), so a pod at half capacity shows.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.config import ServingConfig
from recsvc.service.server import ServeOptions, announce

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
EXIT_WINDOW_SECONDS = 60.0
MAX_EXITS = 5  # unexpected exits within the window before the parent gives up
POLL_SECONDS = 0.2
# Slots of the pool's shared counters (one multiprocessing array every worker reads).
EXITS, REPLACEMENTS, READY = range(3)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PoolCollector(Collector):
    """The pool's shared counts, read at scrape time in whichever worker is scraped."""

    def __init__(self, counts: Any, configured: int) -> None:
        self.counts = counts
        self.configured = configured

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "recsvc_worker_exits",
            "Workers of this server that exited unexpectedly",
            value=self.counts[EXITS],
        )
        yield CounterMetricFamily(
            "recsvc_worker_replacements",
            "Workers started in place of one that exited",
            value=self.counts[REPLACEMENTS],
        )
        yield GaugeMetricFamily(
            "recsvc_workers_ready", "Workers serving now", value=self.counts[READY]
        )
        yield GaugeMetricFamily(
            "recsvc_workers_configured", "Workers this server runs (--workers)", self.configured
        )


def _worker(
    model_dir: Path,
    config: ServingConfig,
    options: ServeOptions,
    ready: Any,
    counts: Any,
    configured: int,
) -> None:
    import asyncio

    from recsvc.service.observability import JsonFormatter
    from recsvc.service.server import serve

    handler = logging.StreamHandler(sys.stderr)
    if options.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("recsvc.access").setLevel(
        logging.INFO if options.access_log else logging.WARNING
    )
    collector = PoolCollector(counts, configured)
    asyncio.run(serve(model_dir, config, options, on_ready=ready.set, collectors=[collector]))


@dataclasses.dataclass
class _Slot:
    """One worker position: its process, its readiness, and when it may be started again."""

    index: int
    process: multiprocessing.process.BaseProcess | None = None
    ready: Any = None
    start_at: float = 0.0  # monotonic time of the next start, while process is None
    exitcode: int | None = None  # of the last process, once the pool stops


class WorkerPool:
    """Starts `workers` server processes on one port and keeps that many running."""

    def __init__(
        self, model_dir: Path, config: ServingConfig, options: ServeOptions, workers: int
    ) -> None:
        self.model_dir = model_dir
        self.config = config
        self.options = options
        self.workers = workers

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT (exit 0 if every worker drained cleanly), or until
        workers exit in a loop (exit 1)."""
        self._context = multiprocessing.get_context("spawn")
        self._counts = self._context.Array("q", 3)
        self._port = self.options.port or free_port(self.options.host)
        self._slots = [_Slot(index) for index in range(self.workers)]
        self._exits: deque[float] = deque()
        self._stopping = False
        for slot in self._slots:
            self._start(slot)
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        self._wait_all_ready()
        announce(
            f"recsvc serve: listening on {self.options.host}:{self._port} ({self.workers} workers)"
        )
        code = self._supervise()
        announce("recsvc serve: stopped")
        return code

    def _start(self, slot: _Slot) -> None:
        metrics = self.options.metrics_port
        options = dataclasses.replace(
            self.options,
            port=self._port,
            # One /metrics endpoint per worker (Prometheus scrapes each): port, port+1, ...
            metrics_port=None if metrics is None else (metrics + slot.index if metrics else 0),
            quiet=True,
        )
        slot.ready = self._context.Event()
        slot.process = self._context.Process(
            target=_worker,
            args=(self.model_dir, self.config, options, slot.ready, self._counts, self.workers),
            daemon=False,
        )
        slot.process.start()

    def _wait_all_ready(self) -> None:
        for slot in self._slots:
            assert slot.process is not None and slot.ready is not None
            if not slot.ready.wait(READY_TIMEOUT_SECONDS) or not slot.process.is_alive():
                self._forward(signal.SIGTERM, None)
                self._join_all()
                raise OSError(f"a worker did not start on {self.options.host}:{self._port}")
        self._publish_ready()

    def _publish_ready(self) -> None:
        """The ready count every worker's /metrics shows: live workers that have loaded."""
        self._counts[READY] = sum(
            1
            for slot in self._slots
            if slot.process is not None and slot.process.is_alive() and slot.ready.is_set()
        )

    def _supervise(self) -> int:
        while True:
            running = [s for s in self._slots if s.process is not None]
            if self._stopping and not running:
                break
            sentinels = [s.process.sentinel for s in running if s.process is not None]
            multiprocessing.connection.wait(sentinels, timeout=POLL_SECONDS)
            for slot in self._slots:
                if slot.process is not None and not slot.process.is_alive():
                    if self._stopping:
                        slot.exitcode, slot.process = slot.process.exitcode, None
                    elif not self._replace_later(slot):
                        log.error(
                            "recsvc serve: workers exited %d times within %.0f s; giving up "
                            "(the pod's restart policy takes over)",
                            len(self._exits),
                            EXIT_WINDOW_SECONDS,
                        )
                        self._forward(signal.SIGTERM, None)
                        self._join_all()
                        return 1
                if (
                    slot.process is None
                    and not self._stopping
                    and time.monotonic() >= slot.start_at
                ):
                    self._start(slot)
                    with self._counts.get_lock():
                        self._counts[REPLACEMENTS] += 1
                    log.warning(
                        "recsvc serve: worker %d replaced by pid %s", slot.index, slot.process.pid
                    )
            self._publish_ready()
        return 0 if all(slot.exitcode == 0 for slot in self._slots) else 1

    def _replace_later(self, slot: _Slot) -> bool:
        """Records an unexpected exit and schedules the slot's restart; False to give up."""
        process = slot.process
        assert process is not None
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - EXIT_WINDOW_SECONDS:
            self._exits.popleft()
        with self._counts.get_lock():
            self._counts[EXITS] += 1
        slot.ready, slot.process = None, None
        code = process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else code
        if len(self._exits) >= MAX_EXITS:
            return False
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (len(self._exits) - 1))
        slot.start_at = now + delay
        log.error(
            "recsvc serve: worker %d (pid %d) exited with %s; starting a new one in %.1f s",
            slot.index,
            process.pid,
            how,
            delay,
        )
        return True

    def _forward(self, signum: int, _frame: object) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                if signum == signal.SIGTERM:
                    slot.process.terminate()
                elif slot.process.pid is not None:
                    os.kill(slot.process.pid, signal.SIGINT)

    def _join_all(self) -> None:
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(timeout=30)


def serve_workers(
    model_dir: Path, config: ServingConfig, options: ServeOptions, workers: int
) -> int:
    """Runs `workers` supervised server processes on one port; the exit code."""
    return WorkerPool(model_dir, config, options, workers).run()
