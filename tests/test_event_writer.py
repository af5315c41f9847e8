"""Event writes under concurrency and outages: group commit, order, bounded waits."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from recsvc.config import ServingConfig
from recsvc.errors import StoreUnavailable
from recsvc.events import SQLiteEventStore, open_event_store
from recsvc.serving.core import RecommenderCore
from recsvc.serving.values import EventInput


class CountingStore(SQLiteEventStore):
    """The SQLite store, counting transactions of events."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.appends: list[int] = []

    def append(self, events):  # type: ignore[no-untyped-def]
        self.appends.append(len(events))
        time.sleep(0.005)  # a commit's fsync: callers arriving meanwhile join the next batch
        return super().append(events)


def test_concurrent_single_event_calls_share_transactions_and_none_is_lost(
    tmp_path: Path,
) -> None:
    store = CountingStore(tmp_path / "events.db")
    core = RecommenderCore(ServingConfig(), store)
    start = threading.Barrier(64)
    answers: list[int] = []

    def caller(n: int) -> None:
        start.wait()
        answers.append(core.record_events([EventInput(f"u{n}", "i1", "view")]))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    core.close()
    assert answers == [1] * 64
    assert sorted(store.read_events().column("user_id").to_pylist()) == sorted(
        f"u{n}" for n in range(64)
    )
    assert sum(store.appends) == 64
    assert len(store.appends) < 32, f"{len(store.appends)} transactions for 64 calls"
    store.close()


def test_a_deletion_is_stored_after_the_events_queued_before_it(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "events.db")
    core = RecommenderCore(ServingConfig(), store)
    pending = [core.submit_events([EventInput("u1", f"i{n}", "view")]) for n in range(20)]
    deletion = core.submit_forget("u1", "asked")
    later = core.submit_events([EventInput("u2", "i1", "view")])
    assert [f.result(5) for f in pending] == [1] * 20
    assert deletion.result(5) == 20, "every event sent before the deletion is deleted"
    assert later.result(5) == 1
    assert store.read_events().column("user_id").to_pylist() == ["u2"]
    assert "u1" in store.forgotten_users()
    core.close()
    store.close()


def test_a_store_that_does_not_answer_costs_unavailable_within_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls are answered UNAVAILABLE in time, the outage is logged once when it starts and
    once when it ends; writes that had not started are withdrawn (a client's retry is no
    duplicate), the one under way when the store stopped answering is stored once."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "events.db"
    store = open_event_store(f"sqlite:///{path}")
    core = RecommenderCore(ServingConfig(event_store_timeout_s=0.3), store)
    core.record_events([EventInput("u1", "i1", "view")])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the database
    try:
        # The timeout answers, not SQLite's 10 s busy wait ("database is locked").
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
                core.record_events([EventInput("u2", "i1", "view")])
            with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
                core.forget_user("u1")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert core.record_events([EventInput("u3", "i1", "view")]) == 1
    users = store.read_events().column("user_id").to_pylist()
    assert users == ["u1", "u2", "u3"]
    assert store.forgotten_users() == {}, "a deletion answered UNAVAILABLE was never made"
    messages = [r.getMessage() for r in caplog.records if r.name == "recsvc.serving.writer"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("event store unreachable while waiting for a write")
    assert messages[1].startswith("event store reachable again after")
    assert not any(r.exc_info for r in caplog.records), "no traceback for an outage"
    core.close()
    store.close()
