"""Shared fixtures: the sample shop and a model trained on it, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import skip_for_missing, train_once

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from recsvc.config import Config
from recsvc.training.pipeline import TrainInputs, TrainResult
from recsvc.training.sample_shop import SampleShop, generate_shop

SHOP_SEED = 7


@pytest.fixture(scope="session")
def shop() -> SampleShop:
    return generate_shop(SHOP_SEED)


@pytest.fixture(scope="session")
def shop_dir(shop: SampleShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shop")
    shop.write(directory)
    return directory


@pytest.fixture(scope="session")
def shop_inputs(shop_dir: Path) -> TrainInputs:
    return TrainInputs(shop_dir / "events.csv", shop_dir / "items.csv", shop_dir / "users.csv")


@pytest.fixture(scope="session")
def trained(shop_inputs: TrainInputs, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_once("sample", shop_inputs, tmp_path_factory.mktemp("models"), Config())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server (the Debian package; .ci/run installs it) on a free loopback port,
    for this test session only."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        skip_for_missing(
            "redis", "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)
