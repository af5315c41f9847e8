"""The model store on its own: version names, failed publishes, abandoned staging, pruning."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsvc.errors import BadInput, PublishFailed
from recsvc.modelstore import STAGING_PREFIX, ModelStore


def _write(text: str):
    return lambda staging: (staging / "model").write_text(text)


def _half_written(error: BaseException):
    """A writer that fails with `error` after writing part of the version."""

    def write(staging: Path) -> None:
        (staging / "model").write_text("half")
        raise error

    return write


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

    with pytest.raises(PublishFailed, match=rf"disk full .*; the current version \({good}\)"):
        store.publish(_half_written(OSError("disk full")), suffix="als")
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
        # What a live prune is deleting: its name holds more dashes after the pid.
        live_trash = tmp_path / f"{STAGING_PREFIX}{writer.pid}-deleting-20261203T090807Z-ease"
        dead = tmp_path / f"{STAGING_PREFIX}{gone.pid}-def"
        odd = tmp_path / f"{STAGING_PREFIX}not-a-pid"
        for leftover in (live, live_trash, dead, odd):
            (leftover / "sub").mkdir(parents=True)
        store.publish(_write("x"), suffix="ease")
        assert _leftovers(store) == sorted([live.name, live_trash.name])
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


def test_a_version_is_on_disk_before_it_is_named_and_current_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What 'a killed process leaves the previous model intact' rests on: every file and
    directory of the staged version is flushed before the rename that names it, and the
    pointer's file and directory are flushed before publish returns."""
    store = ModelStore(tmp_path / "models")
    flushed: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        flushed.append(f"rename {Path(source).name} -> {Path(target).name}")
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)

    def write(staging: Path) -> None:
        (staging / "model").write_text("m")
        (staging / "part").mkdir()
        (staging / "part" / "arrays").write_text("a")

    version = store.publish(write, suffix="ease")
    named = next(i for i, step in enumerate(flushed) if step.startswith("rename"))
    staged = Path(flushed[named].split()[1])
    before = {Path(p).relative_to(store.root) for p in flushed[:named]}
    assert before == {
        Path(staged.name) / "model", Path(staged.name) / "part" / "arrays",
        Path(staged.name) / "part", Path(staged.name),
    }  # fmt: skip
    after = flushed[named + 1 :]
    assert after[0] == str(store.versions_dir)  # the new name itself made durable
    assert after[-1] == str(store.root)  # the pointer's rename made durable
    assert any(Path(p).parent == store.root and Path(p).name.startswith(".current.") for p in after)
    assert store.current_version() == version
    assert _leftovers(store) == [] and sorted(os.listdir(store.root)) == ["current", "versions"]


def test_a_writer_that_fails_with_its_own_error_keeps_that_error(tmp_path: Path) -> None:
    """Only the file system's failures become PublishFailed; a writer's bug stays itself, and
    still leaves nothing behind."""
    store = ModelStore(tmp_path)

    with pytest.raises(ValueError, match="a bug in the writer"):
        store.publish(_half_written(ValueError("a bug in the writer")), suffix="als")
    assert store.versions() == [] and store.current_version() is None
    assert _leftovers(store) == []


def test_a_full_disk_is_reported_with_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    usage = shutil.disk_usage(tmp_path)._replace(free=3 * 2**20 + 2**19)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage)

    def full(staging: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(PublishFailed) as failed:
        store.publish(full, suffix="als")
    assert str(failed.value) == (
        f"could not publish a new version in {tmp_path}: No space left on device (3.5 MB free"
        " on its file system); the current version (none) is unchanged"
    )


def test_a_store_never_published_to_has_no_versions_and_publishes_into_new_folders(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path / "a" / "b")
    assert store.versions() == [] and store.current_version() is None
    assert store.prune(0) == []
    version = store.publish(_write("x"), suffix="ease")
    assert store.versions() == [version] and store.current_path() == store.path(version)


def test_what_is_not_a_version_is_not_listed_and_an_empty_pointer_is_none(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version = store.publish(_write("x"), suffix="ease")
    (store.versions_dir / "notes.txt").write_text("a stray file")
    assert store.versions() == [version]
    (tmp_path / "current").write_text(f"  {version}\n\n")
    assert store.current_version() == version
    (tmp_path / "current").write_text("\n")
    assert store.current_version() is None


def test_prune_keeps_everything_when_asked_to_keep_more_than_there_are(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    published = [store.publish(_write(str(n)), suffix=f"v{n}") for n in range(3)]
    assert store.prune(5) == [] and store.prune(3) == []
    assert store.versions() == published
    assert store.prune(2) == published[:1]


def test_staging_of_a_writer_that_cannot_be_signalled_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer owned by another user answers 'not permitted' to the liveness probe: it is
    alive, and its half-written version must not be deleted under it."""
    store = ModelStore(tmp_path)
    theirs = tmp_path / f"{STAGING_PREFIX}424242-abc"
    theirs.mkdir()

    def kill(pid: int, signal: int) -> None:
        if pid == 424242:
            assert signal == 0, "the probe must not send a real signal"
            raise PermissionError(1, "Operation not permitted")
        raise ProcessLookupError

    monkeypatch.setattr(os, "kill", kill)
    store.publish(_write("x"), suffix="ease")
    assert _leftovers(store) == [theirs.name]


def _undeletable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Files called `name` cannot be deleted (as on a file system gone read-only)."""
    real_unlink = os.unlink

    def unlink(path: str, *args: object, **kwargs: object) -> None:
        if os.path.basename(path) == name:
            raise PermissionError(1, "Operation not permitted", path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_version_that_cannot_be_fully_deleted_is_still_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruning runs after a successful publish: a file that will not go must not fail the job.
    The version leaves the list at once; its remains wait under a staging name."""
    store = ModelStore(tmp_path)
    published = [store.publish(_write(str(n)), suffix=f"v{n}") for n in range(2)]
    _undeletable(monkeypatch, "model")
    assert store.prune(1) == published[:1]
    assert store.versions() == published[1:]
    assert [name.endswith(f"-deleting-{published[0]}") for name in _leftovers(store)] == [True]


def test_a_failed_publish_reports_its_own_error_when_the_cleanup_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    _undeletable(monkeypatch, "model")

    with pytest.raises(PublishFailed, match="disk full"):
        store.publish(_half_written(OSError("disk full")), suffix="als")
    assert store.versions() == [] and store.current_version() is None


def test_abandoned_staging_that_will_not_go_does_not_stop_a_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{STAGING_PREFIX}{gone.pid}-def"
    dead.mkdir()
    (dead / "stuck").write_text("x")
    _undeletable(monkeypatch, "stuck")
    version = store.publish(_write("x"), suffix="ease")
    assert store.current_version() == version
    assert _leftovers(store) == [dead.name]
