"""The event store: events recorded by the server, read by the next training run.

Chosen by URL, like Gorse's storage: `sqlite:///path/events.db` (the embedded default, one file
in WAL mode, so the server writes while a training job reads), or `redis://host:port/db` (shared
by server replicas on several machines; recsvc/events/redis.py). Privacy deletions live here too:
`forget` removes a user's events and remembers the user, so that every later training run leaves
them out of every input, and appends a line to an audit log beside the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pyarrow as pa

from recsvc.errors import BadInput
from recsvc.events.records import (
    EVENTS_SCHEMA,
    IMPRESSIONS_SCHEMA,
    OUTCOMES_SCHEMA,
    StoredEvent,
    forget_audit_line,
)
from recsvc.events.sqlite import SQLiteEventStore

__all__ = [
    "EVENTS_SCHEMA",
    "IMPRESSIONS_SCHEMA",
    "OUTCOMES_SCHEMA",
    "EventStore",
    "SQLiteEventStore",
    "StoredEvent",
    "forget_audit_line",
    "open_event_store",
    "open_models_store",
    "store_url",
]
# The store `recsvc serve` keeps beside the models when none is configured.
DEFAULT_STORE_FILE = "events.db"


class EventStore(Protocol):
    def append(self, events: list[StoredEvent]) -> int:
        """Stores the events at once (all or none); returns the id of the last. Their ids are
        the len(events) consecutive ids ending there, above every id stored before."""
        ...

    def forget(self, user_id: str, reason: str = "") -> int: ...

    def merge(self, user_id: str, into: str, reason: str = "") -> int:
        """Moves `user_id`'s events to `into` (stored anew, with new ids, so that every server
        takes them in) and forgets `user_id`, atomically; returns the events moved."""
        ...

    def forgotten_users(self) -> dict[str, int]: ...

    def changes_after(
        self, event_id: int, forgotten_ms: int
    ) -> tuple[list[tuple[int, str, str, str, int]], dict[str, int]]: ...

    def read_events(self) -> pa.Table: ...

    def add_campaign(self, name: str, spec: str) -> None:
        """Stores a campaign's JSON under its name; AlreadyExists if the name is taken."""
        ...

    def campaigns(self) -> dict[str, str]:
        """Every stored campaign's JSON by name."""
        ...

    def read_outcomes(self) -> pa.Table: ...

    def record_impressions(self, rows: list[tuple[str, str, str, int, int]]) -> None: ...

    def read_impressions(self) -> pa.Table: ...

    def wait_for_change(self, timeout: float) -> None:
        """Returns when another process may have stored a change, or after `timeout` s."""
        ...

    def close(self) -> None: ...


def store_url(model_dir: Path, configured: str = "") -> str:
    """The URL rule: a store named on the command line or in the config, else the SQLite file
    beside the models."""
    return configured or f"sqlite:///{(Path(model_dir) / DEFAULT_STORE_FILE).resolve()}"


def open_models_store(
    model_dir: Path, configured: str = "", existing: bool = False
) -> EventStore | None:
    """The store of the servers that serve `model_dir` (see store_url). With `existing`
    (commands that only read it), None where the default file is not there and BadInput where
    a named store is not: a reader never creates a store."""
    if existing and not configured and not (Path(model_dir) / DEFAULT_STORE_FILE).exists():
        return None
    return open_event_store(store_url(model_dir, configured), existing=existing)


def open_event_store(url: str, existing: bool = False, timeout: float | None = None) -> EventStore:
    """The store named by `url`; a bare path means SQLite. With `existing` (commands that only
    read a store), a SQLite file that is not there is BadInput, never created. `timeout` bounds
    each call to a networked store (a server's; batch commands wait longer)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "sqlite"):
        path = parsed.path if parsed.scheme else url
        if parsed.scheme and parsed.netloc:  # sqlite://relative/path
            path = parsed.netloc + parsed.path
        if not path:
            raise BadInput(f"event store URL {url!r} names no file")
        if existing and not Path(path).is_file():
            raise BadInput(f"event store {url}: {path} does not exist")
        return SQLiteEventStore(Path(path))
    if parsed.scheme == "redis":
        from recsvc.events.redis import RedisEventStore  # redis-py only when asked for

        return RedisEventStore(url) if timeout is None else RedisEventStore(url, timeout)
    raise BadInput(
        f"unknown event store {url!r}: use sqlite:///path/events.db or redis://host:port/db"
    )
