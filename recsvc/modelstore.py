"""The model store: versioned model directories and an atomically switched `current` pointer.

Layout of a model directory:

    current                 one line: the version being served
    versions/<version>/     one published model (see recsvc.published)
    .staging-<pid>-*/       versions being written; never read; removed by the next publish
                            once the process that wrote it is gone

A version is written in full into a staging directory, flushed to disk, then renamed into
`versions/`; only then is `current` replaced (write a temporary file, fsync, rename). A
process killed at any moment therefore leaves the previous model current and intact.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from recsvc.errors import BadInput, PublishFailed

CURRENT_FILE = "current"
VERSIONS_DIR = "versions"
STAGING_PREFIX = ".staging-"


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    def check_exists(self) -> None:
        """BadInput where the directory is not there: a typo must not pass for an empty store."""
        if not self.root.is_dir():
            raise BadInput(f"model directory {self.root} does not exist")

    def current_version(self) -> str | None:
        try:
            version = (self.root / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def path(self, version: str) -> Path:
        return self.versions_dir / version

    def current_path(self) -> Path:
        """The current version's directory; BadInput when nothing is published yet."""
        version = self.current_version()
        if version is None:
            raise BadInput(f"no published model in {self.root}")
        return self.path(version)

    def versions(self) -> list[str]:
        """Published versions, oldest first (names sort by creation time)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir())

    def publish(self, write: Callable[[Path], None], suffix: str) -> str:
        """Writes a new version with `write(staging_dir)`, then makes it current."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_staging()
        staging = self.root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            write(staging)
            _fsync_tree(staging)
            version = self._new_version_name(suffix)
            os.rename(staging, self.path(version))
            _fsync_dir(self.versions_dir)
            self.set_current(version)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                # Some writers (numpy's) report a full disk without its errno: the free space
                # says it plainly.
                free_mb = shutil.disk_usage(self.root).free / 2**20
                raise PublishFailed(
                    f"could not publish a new version in {self.root}: "
                    f"{error.strerror or error} ({free_mb:,.1f} MB free on its file system); "
                    f"the current version ({self.current_version() or 'none'}) is unchanged"
                ) from error
            raise
        return version

    def set_current(self, version: str) -> None:
        if not (self.path(version)).is_dir():
            raise FileNotFoundError(f"no published version {version!r} in {self.root}")
        tmp = self.root / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
        with open(tmp, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / CURRENT_FILE)
        _fsync_dir(self.root)

    def prune(self, keep: int) -> list[str]:
        """Removes all but the newest `keep` versions; the current one always stays."""
        current = self.current_version()
        versions = self.versions()
        doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v != current]
        for version in doomed:
            # Rename first, so a half-deleted directory never looks like a version.
            trash = self.root / f"{STAGING_PREFIX}{os.getpid()}-deleting-{version}"
            os.rename(self.path(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
        return doomed

    def _new_version_name(self, suffix: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{stamp}-{suffix}"
        n = 2
        while self.path(name).exists():
            name = f"{stamp}-{suffix}-{n}"
            n += 1
        return name

    def _remove_abandoned_staging(self) -> None:
        for leftover in self.root.glob(f"{STAGING_PREFIX}*"):
            pid = leftover.name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if not pid.isdigit() or not _process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))
