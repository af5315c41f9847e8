"""Several server processes on one port: the kernel spreads connections over them.

Each worker is a full `serve` in its own process (spawned, not forked: gRPC's threads do not
survive a fork), bound to the same port with SO_REUSEPORT, which gRPC sets on Linux. Workers
memory-map the same model files, so each added worker shares the model's pages instead of
copying them; they share real-time state through the event store. The parent forwards SIGTERM
and SIGINT, so every worker drains, and exits 0 only if every worker did.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import socket
import sys
from pathlib import Path

from recsvc.config import ServingConfig
from recsvc.service.server import ServeOptions

READY_TIMEOUT_SECONDS = 120.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _worker(model_dir: Path, config: ServingConfig, options: ServeOptions, ready) -> None:
    import asyncio
    import logging

    from recsvc.service.observability import JsonFormatter
    from recsvc.service.server import serve

    handler = logging.StreamHandler(sys.stderr)
    if options.log_format == "json":
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("recsvc.access").setLevel(
        logging.INFO if options.access_log else logging.WARNING
    )
    asyncio.run(serve(model_dir, config, options, on_ready=ready.set))


def serve_workers(
    model_dir: Path, config: ServingConfig, options: ServeOptions, workers: int
) -> int:
    """Runs `workers` server processes on one port until SIGTERM or SIGINT; the exit code."""
    port = options.port or free_port(options.host)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        metrics = options.metrics_port
        worker_options = dataclasses.replace(
            options,
            port=port,
            # One /metrics endpoint per worker (Prometheus scrapes each): port, port+1, ...
            metrics_port=None if metrics is None else (metrics + index if metrics else 0),
            quiet=True,
        )
        ready = context.Event()
        process = context.Process(
            target=_worker, args=(model_dir, config, worker_options, ready), daemon=False
        )
        process.start()
        processes.append((process, ready))

    def forward(signum: int, _frame: object) -> None:
        for process, _ in processes:
            if process.is_alive():
                process.terminate() if signum == signal.SIGTERM else _interrupt(process)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process, ready in processes:
        if not ready.wait(READY_TIMEOUT_SECONDS) or not process.is_alive():
            forward(signal.SIGTERM, None)
            for other, _ in processes:
                other.join(timeout=30)
            raise OSError(f"a worker did not start on {options.host}:{port}")
    print(f"recsvc serve: listening on {options.host}:{port} ({workers} workers)", flush=True)
    for process, _ in processes:
        process.join()
    codes = [process.exitcode for process, _ in processes]
    print("recsvc serve: stopped", flush=True)
    return 0 if all(code == 0 for code in codes) else 1


def _interrupt(process: multiprocessing.process.BaseProcess) -> None:
    import os

    if process.pid is not None:
        os.kill(process.pid, signal.SIGINT)
