"""Shared fixtures: the sample shop and a model trained on it, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RedisServer, train_once

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
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the Debian package; .ci/run installs it) on a free loopback port,
    for this test session only."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()
