"""The model store on its own: version names, failed publishes, abandoned staging, pruning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsvc.errors import BadInput, PublishFailed
from recsvc.modelstore import STAGING_PREFIX, ModelStore


def _write(text: str):
    return lambda staging: (staging / "model").write_text(text)


def _leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.glob(f"{STAGING_PREFIX}*"))


def test_version_names_are_the_utc_time_and_suffix_and_never_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = time.struct_time((2026, 12, 3, 9, 8, 7, 3, 337, 0))
    monkeypatch.setattr(time, "gmtime", lambda *_: frozen)
    store = ModelStore(tmp_path)
    names = [store.publish(_write(str(n)), suffix="ease") for n in range(3)]
    assert names == ["20261203T090807Z-ease", "20261203T090807Z-ease-2", "20261203T090807Z-ease-3"]
    assert store.versions() == names
    assert [(store.path(n) / "model").read_text() for n in names] == ["0", "1", "2"]


def test_a_failed_write_leaves_nothing_behind_and_the_current_version_serving(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    good = store.publish(_write("good"), suffix="als")

    def half_written(staging: Path) -> None:
        (staging / "model").write_text("half")
        raise OSError("disk full")

    with pytest.raises(PublishFailed, match=rf"disk full .*; the current version \({good}\)"):
        store.publish(half_written, suffix="als")
    assert store.versions() == [good]
    assert store.current_version() == good
    assert _leftovers(store) == []


def test_abandoned_staging_is_removed_only_once_its_writer_is_gone(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        live = tmp_path / f"{STAGING_PREFIX}{writer.pid}-abc"
        dead = tmp_path / f"{STAGING_PREFIX}{gone.pid}-def"
        odd = tmp_path / f"{STAGING_PREFIX}not-a-pid"
        for leftover in (live, dead, odd):
            (leftover / "sub").mkdir(parents=True)
        store.publish(_write("x"), suffix="ease")
        assert _leftovers(store) == [live.name]
        assert writer.poll() is None, "checking a writer must not signal it"
    finally:
        writer.kill()
        writer.wait()


def test_prune_leaves_no_half_deleted_directories(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    published = [store.publish(_write(str(n)), suffix=f"v{n}") for n in range(3)]
    assert store.prune(1) == published[:2]
    assert store.versions() == [published[2]]
    assert _leftovers(store) == []
    assert sorted(os.listdir(tmp_path)) == ["current", "versions"]


def test_errors_name_the_directory_and_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(BadInput, match=re.escape(f"no published model in {tmp_path / 'models'}")):
        store.current_path()
    with pytest.raises(BadInput, match="does not exist"):
        store.check_exists()
    with pytest.raises(FileNotFoundError, match="no published version 'v9'"):
        store.set_current("v9")
