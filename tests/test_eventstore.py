"""One contract, every event-store backend: SQLite (embedded) and Redis (a real redis-server).

Plus the SQLite store under several processes at once, as `serve --workers N` opens it."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from recsvc.errors import AlreadyExists, BadInput, StoreUnavailable
from recsvc.events import EventStore, SQLiteEventStore, StoredEvent, open_event_store

PROCESSES = 12
ROUNDS = 40
_prefixes = itertools.count()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        # A fresh key prefix per test: the same server, no state shared between tests.
        url = f"{request.getfixturevalue('redis_url')}?prefix=t{next(_prefixes)}"
    opened = open_event_store(url)
    yield opened
    opened.close()


def event(user: str, item: str, kind: str = "view", stamp: int = 1_700_000_000_000, **extra):
    return StoredEvent(user, item, kind, stamp, **extra)


def test_events_read_back_in_order_with_every_field(store: EventStore) -> None:
    stored = [
        event("u1", "i1", "view", 1),
        event("u2", "i2", "purchase", 2, quantity=3.0, price=9.5),
        event("u1", "i3", "cart", 3, recommendation_id="r1", variant="exp/a"),
    ]
    assert store.append(stored) == 3
    table = store.read_events()
    assert table.column("user_id").to_pylist() == ["u1", "u2", "u1"]
    assert table.column("timestamp_ms").to_pylist() == [1, 2, 3]
    assert table.column("quantity").to_pylist() == [1.0, 3.0, 1.0]
    assert table.column("price").to_pylist() == [None, 9.5, None]
    outcomes = store.read_outcomes()
    assert outcomes.to_pylist() == [
        {
            "variant": "exp/a",
            "recommendation_id": "r1",
            "event": "cart",
            "item_id": "i3",
            "quantity": 1.0,
            "price": None,
        }
    ]


def test_changes_after_is_a_cursor_over_new_events_and_deletions(store: EventStore) -> None:
    store.append([event("u1", "i1", stamp=10), event("u2", "i2", stamp=11)])
    events, forgotten = store.changes_after(0, 0)
    assert [(e[1], e[2], e[4]) for e in events] == [("u1", "i1", 10), ("u2", "i2", 11)]
    cursor = events[-1][0]
    assert store.changes_after(cursor, 0) == ([], {})
    store.append([event("u3", "i3", stamp=12)])
    later, _ = store.changes_after(cursor, 0)
    assert [e[1] for e in later] == ["u3"] and later[0][0] > cursor
    store.forget("u1")
    _, forgotten = store.changes_after(later[0][0], 0)
    assert set(forgotten) == {"u1"}
    when = forgotten["u1"]
    assert store.changes_after(later[0][0], when + 1)[1] == {}


def test_a_cursor_never_misses_events_stored_after_the_newest_ones_were_deleted(
    store: EventStore,
) -> None:
    """Deleting the newest events must not hand their ids to the next ones: a server whose
    cursor is past them would never see what is stored next."""
    store.append([event("kept", "i1"), event("gone", "i2")])
    events, _ = store.changes_after(0, 0)
    cursor = events[-1][0]
    store.forget("gone")
    store.append([event("new", "i3")])
    later, _ = store.changes_after(cursor, 0)
    assert [e[1] for e in later] == ["new"]


def test_a_store_from_before_increasing_ids_is_moved_with_its_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT"
            " NOT NULL, event TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, quantity REAL NOT"
            " NULL, price REAL, variant TEXT NOT NULL DEFAULT '', recommendation_id TEXT NOT"
            " NULL DEFAULT '')"
        )
        old.execute("INSERT INTO events VALUES (7, 'u1', 'i1', 'view', 5, 1.0, NULL, '', '')")
        old.execute("INSERT INTO events VALUES (9, 'u2', 'i2', 'cart', 6, 1.0, 2.5, '', '')")
    store = open_event_store(f"sqlite:///{path}")
    events, _ = store.changes_after(0, 0)
    assert [(e[0], e[1]) for e in events] == [(7, "u1"), (9, "u2")]
    store.forget("u2")
    store.append([event("u3", "i3")])
    assert [(e[0], e[1]) for e in store.changes_after(7, 0)[0]] == [(10, "u3")]
    store.close()


def test_forget_deletes_exactly_the_users_events_and_impressions(store: EventStore) -> None:
    store.append([event("gone", "i1"), event("kept", "i1"), event("gone", "i2")])
    store.record_impressions(
        [("r-gone", "gone", "exp/a", 1, 10), ("r-kept", "kept", "exp/a", 1, 10)]
    )
    assert store.forget("gone", reason="ticket 42") == 2
    assert store.read_events().column("user_id").to_pylist() == ["kept"]
    assert store.read_impressions().column("recommendation_id").to_pylist() == ["r-kept"]
    assert "gone" in store.forgotten_users()
    assert store.forget("nobody") == 0


def test_merge_moves_every_event_to_the_customer_and_forgets_the_anonymous_id(
    store: EventStore,
) -> None:
    store.append(
        [
            event("anon", "i1", "view", 10),
            event("cust", "i0", "purchase", 11, quantity=2.0, price=3.5),
            event("anon", "i2", "cart", 12, recommendation_id="r9", variant="exp/b"),
            event("other", "i3", "view", 13),
        ]
    )
    _, cursor_forgotten = store.changes_after(0, 0)
    last = max(e[0] for e in store.changes_after(0, 0)[0])
    assert store.merge("anon", "cust", "logged in") == 2
    table = store.read_events().to_pylist()
    assert {r["user_id"] for r in table} == {"cust", "other"}, "nothing left under anon"
    moved = [(r["item_id"], r["event"], r["timestamp_ms"]) for r in table if r["user_id"] == "cust"]
    assert sorted(moved) == [("i0", "purchase", 11), ("i1", "view", 10), ("i2", "cart", 12)]
    assert [(o["recommendation_id"], o["event"]) for o in store.read_outcomes().to_pylist()] == [
        ("r9", "cart")
    ], "the outcome follows the event"
    # Other servers take the moved events in as new ones, and the anonymous id as forgotten.
    events, forgotten = store.changes_after(last, 0)
    assert [(e[1], e[2]) for e in events] == [("cust", "i1"), ("cust", "i2")]
    assert "anon" in forgotten and "anon" not in cursor_forgotten
    # The customer's deletion now deletes what was merged.
    assert store.forget("cust") == 3
    assert store.merge("nobody", "cust") == 0


def test_impressions_are_counted_once_per_recommendation(store: EventStore) -> None:
    store.record_impressions([("r1", "u1", "exp/a", 1, 10), ("r2", "u2", "exp/b", 2, 10)])
    store.record_impressions([("r1", "u1", "exp/a", 1, 10)])  # a retried flush
    table = store.read_impressions()
    assert sorted(table.column("recommendation_id").to_pylist()) == ["r1", "r2"]


def test_campaigns_are_stored_once_by_name(store: EventStore) -> None:
    store.add_campaign("spring", '{"name": "spring"}')
    store.add_campaign("winback", '{"name": "winback"}')
    with pytest.raises(AlreadyExists, match="exists already"):
        store.add_campaign("spring", '{"name": "other"}')
    assert store.campaigns() == {"spring": '{"name": "spring"}', "winback": '{"name": "winback"}'}


def test_unknown_store_urls_are_refused() -> None:
    with pytest.raises(BadInput):
        open_event_store("mysql://somewhere/db")


def _open_and_append(path: str, start, user: str) -> None:
    start.wait()
    store = SQLiteEventStore(Path(path))
    store.append([StoredEvent(user, "item-1", "view", 1_700_000_000_000)])
    store.close()


def test_processes_opening_a_new_store_together_all_succeed(tmp_path: Path) -> None:
    # Workers start together and each opens the same new file; switching it to WAL once
    # answered "database is locked" to the losers, and a worker died before listening.
    context = multiprocessing.get_context("fork")
    for round_index in range(ROUNDS):
        path = str(tmp_path / f"events-{round_index}.db")
        start = context.Barrier(PROCESSES)
        processes = [
            context.Process(target=_open_and_append, args=(path, start, f"user-{n}"))
            for n in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0] * PROCESSES
        users = SQLiteEventStore(Path(path)).read_events().column("user_id").to_pylist()
        assert sorted(users) == sorted(f"user-{n}" for n in range(PROCESSES))


def test_a_redis_replica_is_woken_by_another_replicas_change(redis_url: str) -> None:
    import threading

    url = f"{redis_url}?prefix=wake{next(_prefixes)}"
    waiting, writing = open_event_store(url), open_event_store(url)
    waiting.wait_for_change(0.01)  # subscribes
    woke = threading.Event()

    def wait() -> None:
        waiting.wait_for_change(30.0)
        woke.set()

    thread = threading.Thread(target=wait)
    thread.start()
    writing.forget("someone")
    # Woken by the change, long before the 30 s the wait would otherwise last.
    assert woke.wait(10.0), "the waiting replica was never told of the change"
    thread.join()
    waiting.close()
    writing.close()


def test_a_redis_store_is_not_woken_by_its_own_changes(redis_url: str) -> None:
    """Its own writes are taken in by the writer: waking its syncs for them would read every
    event back."""
    import threading

    store = open_event_store(f"{redis_url}?prefix=own{next(_prefixes)}")
    store.wait_for_change(0.01)  # subscribes
    woke = threading.Event()
    thread = threading.Thread(target=lambda: (store.wait_for_change(1.0), woke.set()))
    started = time.monotonic()
    thread.start()
    store.append([StoredEvent("u1", "i1", "view", 1)])
    thread.join()
    assert time.monotonic() - started >= 0.9, "woken by its own append"


def test_deletions_stored_before_the_by_time_index_are_still_honoured(redis_url: str) -> None:
    import redis

    prefix = f"old{next(_prefixes)}"
    # A store written by an earlier version: the deletion in the hash only.
    redis.Redis.from_url(redis_url).hset(f"{prefix}:forgotten", "gone", 1234)
    store = open_event_store(f"{redis_url}?prefix={prefix}")
    store.forget("later")
    _, forgotten = store.changes_after(0, 0)
    assert forgotten["gone"] == 1234 and "later" in forgotten
    _, newer = store.changes_after(0, 1235)
    assert "gone" not in newer and "later" in newer
    store.close()


class _FailingDisk:
    """A connection whose every statement fails as SQLite reports `message`."""

    def __init__(self, message: str) -> None:
        self.message = message

    def execute(self, *_: object) -> None:
        raise sqlite3.OperationalError(self.message)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.append([event("u1", "i1")]),
        lambda s: s.forget("u1", reason="ticket 7"),
        lambda s: s.merge("anon", into="u1"),
        lambda s: s.changes_after(0, 0),
        lambda s: s.forgotten_users(),
        lambda s: s.read_events(),
    ],
    ids=["append", "forget", "merge", "changes_after", "forgotten_users", "read_events"],
)
def test_an_sqlite_outage_is_unavailable_and_names_the_store_and_a_schema_error_is_not(
    tmp_path: Path, call
) -> None:
    """A disk that fails now may work on a retry: StoreUnavailable (UNAVAILABLE to a client),
    naming the file and SQLite's words. A table that is not there is a bug: not retried."""
    path = tmp_path / "events.db"
    store = SQLiteEventStore(path)
    store._db = _FailingDisk("disk I/O error")  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable) as outage:
        call(store)
    assert str(outage.value) == f"event store {path}: disk I/O error"
    store._db = _FailingDisk("no such table: events")  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        call(store)
