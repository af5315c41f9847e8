"""Small helpers for tests: input files, event tables, waiting on a condition."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pyarrow as pa
import pytest

# Resources whose tests must run here (comma-separated: redis, java, chromium, real_data).
# .ci/run sets it where it can install or find them, so a missing one fails the run instead of
# skipping.
REQUIRED = {r for r in os.environ.get("RECSVC_TESTS_REQUIRE", "").split(",") if r}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def events_table(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    """Clean events in the data contract's columns from (user, item, event, timestamp_ms) rows."""
    users, items, kinds, stamps = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": list(users),
            "item_id": list(items),
            "event": list(kinds),
            "timestamp_ms": pa.array(stamps, pa.int64()),
            "quantity": [1.0] * len(rows),
            "price": pa.array([None] * len(rows), pa.float64()),
        }
    )


def quiet():
    """A job's progress that goes nowhere, for tests that do not read it."""
    from recsvc.training.progress import Progress

    return Progress("t", io.StringIO())


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


def skip_for_missing(resource: str, reason: str, module_level: bool = False) -> NoReturn:
    """Skips a test that needs `resource` (redis, java, chromium or real_data), saying why; fails
    instead where RECSVC_TESTS_REQUIRE lists it, so coverage is never lost without a word."""
    if resource in REQUIRED:
        pytest.fail(f"{reason} (RECSVC_TESTS_REQUIRE lists {resource})", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def train_once(name: str, inputs, model_dir: Path, config):
    """`train(inputs, model_dir, config)`, quietly. Under `make mutation`
    (RECSVC_TEST_MODEL_CACHE set) a model is trained once per `name`, by the unmutated code of
    mutmut's first run, and copied for every mutant: each mutant runs its tests in a fresh
    session, where retraining would cost more than the tests themselves."""
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel
    from recsvc.training.pipeline import TrainResult, train
    from recsvc.training.progress import Progress

    cache = os.environ.get("RECSVC_TEST_MODEL_CACHE")
    cached = Path(cache) / name if cache else None
    if cached is not None and ModelStore(cached).current_version():
        shutil.copytree(cached, model_dir, dirs_exist_ok=True)
        store = ModelStore(model_dir)
        version = store.current_version()
        return TrainResult(version, model_dir, PublishedModel.load(store.path(version)).manifest)
    with open(os.devnull, "w") as quiet:
        result = train(inputs, model_dir, config, progress=Progress("train", quiet))
    # Only the unmutated code fills the cache: a mutant's model must never serve the next mutant.
    if cached is not None and "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cached.parent))
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        with contextlib.suppress(OSError):  # another worker got there first
            staging.rename(cached)
    return result


class RedisServer:
    """A real redis-server on a free loopback port, in `directory`; `persistent` keeps its
    data on disk (appendonly, fsync always) across a stop and start, as a production one."""

    def __init__(self, directory: Path, persistent: bool = False) -> None:
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            skip_for_missing(
                "redis",
                "redis-server is not installed (apt-get install redis-server; .ci/run does)",
            )
        self.binary = binary
        self.directory = directory
        self.persistent = persistent
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import socket

        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *durability, "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

        def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(accepting, "redis-server accepting connections")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
