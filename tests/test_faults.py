"""Faults an operator meets that no other test stages: a disk that fills during publish."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import skip_for_missing

from recsvc.cli.main import main
from recsvc.modelstore import ModelStore
from recsvc.training.pipeline import TrainInputs


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `path`: a real file system that really fills up."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        skip_for_missing(
            "tmpfs", f"cannot mount a tmpfs here (root with CAP_SYS_ADMIN needed): {mounted.stderr}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_bytes: int) -> Path:
    """A ballast file taking all but `leave_bytes` of the file system's free space."""
    free = shutil.disk_usage(path).free
    ballast = path / "ballast"
    with open(ballast, "wb") as handle:
        handle.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = free - leave_bytes
        while left > 0:
            handle.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return ballast


def test_a_full_disk_during_publish_keeps_the_current_version_and_says_so(
    shop_inputs: TrainInputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_disk(tmp_path / "disk", 64) as disk:
        model_dir = disk / "models"
        train = [
            "train", "--events", str(shop_inputs.events), "--items", str(shop_inputs.items),
            "--users", str(shop_inputs.users), "--model-dir", str(model_dir),
            "--rejects-dir", str(tmp_path / "rejects"),
        ]  # fmt: skip
        assert main(train) == 0
        store = ModelStore(model_dir)
        current = store.current_version()
        size = sum(f.stat().st_size for f in store.path(current).rglob("*") if f.is_file())
        capsys.readouterr()

        ballast = fill(disk, size // 2)  # room for half a version
        assert main(train) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"recsvc: error: could not publish a new version in {model_dir}")
        assert " MB free on its file system); " in err[-1]
        assert err[-1].endswith(f"the current version ({current}) is unchanged")
        assert not any("Traceback" in line for line in err)
        assert store.current_version() == current and store.versions() == [current]
        assert not [p for p in model_dir.iterdir() if p.name.startswith(".staging")]

        os.remove(ballast)  # room again: the next night's run publishes
        assert main(train) == 0
        assert store.current_version() != current and len(store.versions()) == 2
