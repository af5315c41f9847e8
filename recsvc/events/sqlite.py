"""The embedded event store: one SQLite file in WAL mode, so the server writes while a training
job reads (`sqlite:///path/events.db`, the default beside the models)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from recsvc.errors import AlreadyExists, StoreUnavailable
from recsvc.events.records import (
    EVENTS_SCHEMA,
    IMPRESSIONS_SCHEMA,
    OUTCOMES_SCHEMA,
    StoredEvent,
    forget_audit_line,
)

# How long a connection waits for another process's lock before it reports "locked".
BUSY_TIMEOUT_SECONDS = 10.0

# AUTOINCREMENT: an id is never handed out twice, even after the newest events are deleted;
# servers read new events by id (changes_after), so a reused id would be an event never seen.
EVENTS_TABLE = (
    """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    quantity REAL NOT NULL,
    price REAL,
    variant TEXT NOT NULL DEFAULT '',
    recommendation_id TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id)",
)
SCHEMA = (
    ";\n".join(EVENTS_TABLE)
    + """;
CREATE TABLE IF NOT EXISTS forgotten (
    user_id TEXT PRIMARY KEY,
    forgotten_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS impressions (
    recommendation_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    n_items INTEGER NOT NULL
);
"""
)


# What SQLite says when the database cannot be used now, as opposed to a broken schema.
OUTAGE_WORDS = ("locked", "busy", "disk", "I/O", "unable to open", "readonly", "full")


@contextlib.contextmanager
def _outage_is_unavailable(path: Path) -> Iterator[None]:
    """A database that cannot be written now (locked past the busy timeout, a full disk, an I/O
    error, a file that cannot be opened) is StoreUnavailable: a retry later may succeed.
    A context, not a decorator: mutmut leaves decorated functions unmutated."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if not any(word in str(error) for word in OUTAGE_WORDS):
            raise  # a schema changed under us, a bug: not for a client to retry
        raise StoreUnavailable(f"event store {path}: {error}") from error


class SQLiteEventStore:
    """One SQLite file in WAL mode; every append is one transaction, synced to disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.audit_path = path.with_name(path.name + ".audit.log")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._impressions_db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open("FULL")
        return self._db

    def _open(self, synchronous: str) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False, isolation_level=None
        )
        # Switching a new file to WAL takes an exclusive lock and SQLite may answer "locked"
        # without waiting when other processes (server workers starting together) open it at the
        # same moment; so retry for as long as the busy timeout would have waited.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                _never_reuse_ids(db)
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.01)
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db

    def append(self, events: list[StoredEvent]) -> int:
        """Stores the events in one transaction; returns the id of the last (their ids are the
        len(events) consecutive ids ending there: the transaction holds the write lock)."""
        with _outage_is_unavailable(self.path), self._lock:
            db = self._connection()
            db.execute("BEGIN")
            try:
                # A StoredEvent is a tuple in the columns' order: no per-event conversion.
                db.executemany(
                    "INSERT INTO events (user_id, item_id, event, timestamp_ms, quantity, price,"
                    " variant, recommendation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    events,
                )
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return int(last)

    def forget(self, user_id: str, reason: str = "") -> int:
        now = int(time.time() * 1000)
        with _outage_is_unavailable(self.path), self._lock:
            db = self._connection()
            db.execute("BEGIN")
            try:
                removed = db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
                db.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,))
                db.execute(
                    "INSERT OR REPLACE INTO forgotten (user_id, forgotten_ms) VALUES (?, ?)",
                    (user_id, now),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            with open(self.audit_path, "a", encoding="utf-8") as log:
                log.write(forget_audit_line(user_id, removed, reason, now) + "\n")
        return removed

    def merge(self, user_id: str, into: str, reason: str = "") -> int:
        now = int(time.time() * 1000)
        with _outage_is_unavailable(self.path), self._lock:
            db = self._connection()
            db.execute("BEGIN")
            try:
                moved = db.execute(
                    "INSERT INTO events (user_id, item_id, event, timestamp_ms, quantity, price,"
                    " variant, recommendation_id) SELECT ?, item_id, event, timestamp_ms,"
                    " quantity, price, variant, recommendation_id FROM events WHERE user_id = ?"
                    " ORDER BY id",
                    (into, user_id),
                ).rowcount
                db.execute("DELETE FROM events WHERE user_id = ?", (user_id,))
                db.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,))
                db.execute(
                    "INSERT OR REPLACE INTO forgotten (user_id, forgotten_ms) VALUES (?, ?)",
                    (user_id, now),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            with open(self.audit_path, "a", encoding="utf-8") as log:
                log.write(forget_audit_line(user_id, moved, reason, now, merged_into=into) + "\n")
        return moved

    def changes_after(
        self, event_id: int, forgotten_ms: int
    ) -> tuple[list[tuple[int, str, str, str, int]], dict[str, int]]:
        """Events stored after id `event_id` as (id, user, item, event, time), and users
        forgotten at or after `forgotten_ms`: how server workers share real-time state."""
        with _outage_is_unavailable(self.path), self._lock:
            db = self._connection()
            events = db.execute(
                "SELECT id, user_id, item_id, event, timestamp_ms FROM events WHERE id > ?"
                " ORDER BY id",
                (event_id,),
            ).fetchall()
            forgotten = db.execute(
                "SELECT user_id, forgotten_ms FROM forgotten WHERE forgotten_ms >= ?",
                (forgotten_ms,),
            ).fetchall()
        return events, {user: int(ms) for user, ms in forgotten}

    def forgotten_users(self) -> dict[str, int]:
        """User id -> when it was forgotten (epoch ms)."""
        with _outage_is_unavailable(self.path), self._lock:
            rows = (
                self._connection().execute("SELECT user_id, forgotten_ms FROM forgotten").fetchall()
            )
        return {user: int(ms) for user, ms in rows}

    def add_campaign(self, name: str, spec: str) -> None:
        with _outage_is_unavailable(self.path), self._lock:
            try:
                self._connection().execute(
                    "INSERT INTO campaigns (name, spec) VALUES (?, ?)", (name, spec)
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"a campaign named {name!r} exists already") from None

    def campaigns(self) -> dict[str, str]:
        with _outage_is_unavailable(self.path), self._lock:
            rows = self._connection().execute("SELECT name, spec FROM campaigns").fetchall()
        return dict(rows)

    def read_events(self) -> pa.Table:
        """All stored events in the data contract's clean columns, oldest first."""
        return self._query(
            f"SELECT {', '.join(EVENTS_SCHEMA.names)} FROM events ORDER BY id", EVENTS_SCHEMA
        )

    def read_outcomes(self) -> pa.Table:
        """Events that followed a recommendation: variant, recommendation id, event."""
        return self._query(
            "SELECT variant, recommendation_id, event, item_id, quantity, price FROM events"
            " WHERE recommendation_id != ''",
            OUTCOMES_SCHEMA,
        )

    def _query(self, sql: str, schema: pa.Schema) -> pa.Table:
        """The rows of `sql` as a table whose columns are `schema`'s, in that order."""
        with _outage_is_unavailable(self.path), self._lock:
            rows = self._connection().execute(sql).fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema.names]
        return pa.table(
            [pa.array(values, f.type) for values, f in zip(columns, schema, strict=True)],
            schema=schema,
        )

    def record_impressions(self, rows: list[tuple[str, str, str, int, int]]) -> None:
        """(recommendation_id, user_id, variant, timestamp_ms, n_items) per response served."""
        with _outage_is_unavailable(self.path), self._lock:
            # Impressions are statistics, written every second: their own connection does not
            # wait for the disk (WAL with synchronous=NORMAL survives a crash of the process,
            # not of the machine); events keep synchronous=FULL.
            if self._impressions_db is None:
                self._impressions_db = self._open("NORMAL")
            db = self._impressions_db
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR IGNORE INTO impressions"
                " (recommendation_id, user_id, variant, timestamp_ms, n_items)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")

    def read_impressions(self) -> pa.Table:
        return self._query(
            "SELECT recommendation_id, variant, user_id FROM impressions", IMPRESSIONS_SCHEMA
        )

    def wait_for_change(self, timeout: float) -> None:
        time.sleep(timeout)  # SQLite tells no one of a commit: readers poll

    def close(self) -> None:
        with self._lock:
            for db in (self._db, self._impressions_db):
                if db is not None:
                    db.close()
            self._db = self._impressions_db = None


def _never_reuse_ids(db: sqlite3.Connection) -> None:
    """Moves a store made before ids were AUTOINCREMENT to a table that has it, ids kept."""
    if _ids_increase(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _ids_increase(db):  # another process may have moved it meanwhile
            db.execute("ALTER TABLE events RENAME TO events_before_autoincrement")
            db.execute("DROP INDEX IF EXISTS events_by_user")
            for statement in EVENTS_TABLE:
                db.execute(statement)
            db.execute("INSERT INTO events SELECT * FROM events_before_autoincrement")
            db.execute("DROP TABLE events_before_autoincrement")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _ids_increase(db: sqlite3.Connection) -> bool:
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
    return "AUTOINCREMENT" in sql.upper()
