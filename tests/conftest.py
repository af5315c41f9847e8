"""Shared fixtures: the sample shop and a model trained on it, built once per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import skip_for_missing

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from recsvc.config import Config
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
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
    """The sample shop's model. Under `make mutation` (RECSVC_TEST_MODEL_CACHE set) it is
    trained once, by the unmutated code of mutmut's first run, and copied for every mutant:
    each mutant runs its tests in a fresh session, and retraining would dominate the run."""
    model_dir = tmp_path_factory.mktemp("models")
    cache = os.environ.get("RECSVC_TEST_MODEL_CACHE")
    if cache and ModelStore(Path(cache)).current_version():
        shutil.copytree(cache, model_dir, dirs_exist_ok=True)
        store = ModelStore(model_dir)
        version = store.current_version()
        return TrainResult(version, model_dir, PublishedModel.load(store.path(version)).manifest)
    with open(os.devnull, "w") as quiet:
        result = train(shop_inputs, model_dir, Config(), progress=Progress("train", quiet))
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=Path(cache).parent))
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        with contextlib.suppress(OSError):  # another worker got there first
            staging.rename(cache)
    return result


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
