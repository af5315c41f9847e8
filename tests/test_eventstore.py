"""The SQLite event store under several processes at once, as `serve --workers N` opens it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from recsvc.eventstore import SQLiteEventStore, StoredEvent

PROCESSES = 12
ROUNDS = 40


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
