"""A wheel built from the tracked files alone (as from a clean clone) installs into a fresh
virtual environment and works with no Makefile step: it carries the generated gRPC code,
claims no generic top-level import name, generates the sample shop, trains and serves."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from test_server_e2e import start_server

from recsvc.v1 import recommender_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clone = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (t.decode() for t in tracked)):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    assert not list(clone.glob("recsvc/v1/*_pb2*.py"))  # generated code is never committed
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=clone, check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("recsvc-*.whl")
    return built


def test_the_wheel_carries_the_contract_and_one_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "recsvc/v1/recommender_pb2.py" in names and "recsvc/v1/recommender_pb2_grpc.py" in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"recsvc"}, tops
    layers = (
        "training/pipeline.py",
        "service/server.py",
        "loadtest/runner.py",
        "cli/main.py",
        "console/app.py",
        "console/templates/base.html",
        "console/static/console.css",
    )
    for layer in layers:
        assert f"recsvc/{layer}" in names, layer


def test_a_fresh_venv_with_the_wheel_generates_trains_and_serves(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    recsvc = env_dir / "bin" / "recsvc"
    shop, models = tmp_path / "shop", tmp_path / "models"
    subprocess.run([recsvc, "data", "generate", "--seed", "3", "--out", shop], check=True)
    subprocess.run(
        [recsvc, "train", "--events", shop / "events.csv", "--items", shop / "items.csv",
         "--users", shop / "users.csv", "--model-dir", models],
        check=True, capture_output=True,
    )  # fmt: skip
    running = start_server(models, "--console-port", "0", command=str(recsvc))
    try:
        running.wait_for_health(health_pb2.HealthCheckResponse.SERVING)
        listed = running.stub.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=5)
        assert len(listed.items) == 5 and not listed.fallback
        # The console inside the server, its templates and styles from the wheel.
        console = next(line for line in running.output if "console on " in line)
        address = console.split("console on ", 1)[1].strip()
        with urllib.request.urlopen(f"{address}customers?user_id=u0001", timeout=10) as page:
            assert "Recommend now" in page.read().decode()
        with urllib.request.urlopen(f"{address}static/console.css", timeout=10) as style:
            assert b"--accent" in style.read()
    finally:
        code, output = running.stop()
    assert code == 0, output
