"""Shared fixtures: the sample shop and a model trained on it, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from recsvc.config import Config
from training.pipeline import TrainInputs, TrainResult, train
from training.progress import Progress
from training.sample_shop import SampleShop, generate_shop

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
    model_dir = tmp_path_factory.mktemp("models")
    with open(os.devnull, "w") as quiet:
        return train(shop_inputs, model_dir, Config(), progress=Progress("train", quiet))
