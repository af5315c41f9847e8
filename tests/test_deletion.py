"""Privacy deletion in detail: the store's transaction and audit line, real-time state, and
which events a server takes in after a deletion or from before its model's data ended."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import events_table

from recsvc.errors import InvalidArgument
from recsvc.events import open_event_store
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.serving.model import trained_at_ms
from recsvc.serving.state import RealtimeHistory
from recsvc.serving.values import EventInput
from recsvc.training.pipeline import TrainResult


@pytest.fixture(scope="module")
def published(trained: TrainResult) -> PublishedModel:
    return PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))


def _core(published: PublishedModel, store=None) -> RecommenderCore:
    core = RecommenderCore(event_store=store)
    core.swap(published)
    return core


def _items(core: RecommenderCore, user: str) -> list[str]:
    return [item for item, _, _ in core.realtime.of(user)]


def test_each_deletion_writes_one_audit_line_with_what_it_removed(tmp_path: Path) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    store.append(
        [
            *(_stored("u1", f"i{n}") for n in range(3)),
            _stored("u2", "i9"),
        ]
    )
    before = time.time()
    assert store.forget("u1") == 3
    assert store.forget("u1", "second request 用户") == 0
    lines = (tmp_path / "events.db.audit.log").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["user_id"], r["events_deleted"], r["reason"]) for r in records] == [
        ("u1", 3, ""),
        ("u1", 0, "second request 用户"),
    ]
    at = time.mktime(time.strptime(records[0]["at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 2 <= at <= time.time() + 1
    assert store.read_events().column("user_id").to_pylist() == ["u2"]
    store.close()


def test_a_deletion_that_fails_half_way_deletes_nothing_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    store = open_event_store(f"sqlite:///{path}")
    store.append([_stored("u1", "i1"), _stored("u1", "i2")])
    with sqlite3.connect(path) as other:
        other.execute("ALTER TABLE forgotten RENAME TO forgotten_away")
    with pytest.raises(sqlite3.OperationalError, match="forgotten"):
        store.forget("u1")
    assert store.read_events().num_rows == 2, "the events' deletion was rolled back"
    with sqlite3.connect(path) as other:
        other.execute("ALTER TABLE forgotten_away RENAME TO forgotten")
    assert store.forget("u1") == 2
    assert store.read_events().num_rows == 0
    store.close()


def _stored(user: str, item: str, stamp: int | None = None):
    core = RecommenderCore()
    event = EventInput(user, item, "view", timestamp_ms=stamp or int(time.time() * 1000))
    return core.check_events([event])[0]


def test_forgetting_without_an_event_store_drops_real_time_state(
    published: PublishedModel,
) -> None:
    core = _core(published)
    core.record_events([EventInput("u0001", "i0001", "view")])
    assert _items(core, "u0001") == ["i0001"]
    assert core.forget_user("u0001") == 0, "nothing stored, nothing deleted"
    assert core.realtime.of("u0001") == []
    assert core.recommend("u0001", 5).fallback
    with pytest.raises(InvalidArgument, match="user_id must not be empty"):
        core.forget_user("")


def test_a_model_trained_after_the_deletion_may_know_the_user_again(
    published: PublishedModel,
) -> None:
    """The deletion's time is the wall clock's: a model whose run started after it holds only
    what the user did since, and personalises them again."""
    core = _core(published)
    user = str(published.user_ids[0])
    core.forget_user(user)
    assert core.forgotten_since_training(user)
    retrained = dataclasses.replace(
        published,
        version=published.version + "-later",
        manifest={**published.manifest, "started_at_ms": int(time.time() * 1000) + 60_000},
    )
    core.swap(retrained)
    assert trained_at_ms(retrained) > trained_at_ms(published)
    assert not core.forgotten_since_training(user)
    assert not core.recommend(user, 5).fallback


def test_events_are_taken_in_batch_after_batch_but_not_those_the_model_has(
    published: PublishedModel, tmp_path: Path
) -> None:
    core = _core(published, open_event_store(f"sqlite:///{tmp_path / 'e.db'}"))
    data_end = int(published.manifest["data_end_ms"])
    user = "visitor-1"
    core.record_events([EventInput(user, "i0001", "view", timestamp_ms=data_end - 1)])
    core.record_events([EventInput(user, "i0002", "view", timestamp_ms=data_end)])
    core.record_events([EventInput(user, "i0003", "view", timestamp_ms=data_end + 1)])
    core.record_events([EventInput(user, "i0004", "cart", timestamp_ms=data_end + 2)])
    assert _items(core, user) == ["i0003", "i0004"], "events up to the data's end are trained on"
    core.event_store.close()


def test_an_event_recorded_after_a_deletion_stays_though_its_clock_is_behind(
    published: PublishedModel, tmp_path: Path
) -> None:
    core = _core(published, open_event_store(f"sqlite:///{tmp_path / 'e.db'}"))
    user = "visitor-2"
    core.record_events([EventInput(user, "i0001", "view")])
    core.forget_user(user)
    assert core.realtime.of(user) == []
    # A client whose clock is behind stamps its next event before the deletion.
    behind = core.event_store.forgotten_users()[user] - 1
    assert behind > int(published.manifest["data_end_ms"])
    core.record_events([EventInput(user, "i0002", "view", timestamp_ms=behind)])
    core.record_events([EventInput("someone-else", "i0003", "view")])
    assert _items(core, user) == ["i0002"]
    core.event_store.close()


def test_real_time_deletion_drops_events_up_to_its_time_and_keeps_the_bound() -> None:
    history = RealtimeHistory(per_user=3, users=10)
    for stamp in (100, 200, 300):
        history.add("u", f"i{stamp}", "view", stamp)
    history.add("v", "i1", "view", 100)
    history.forget_before("u", 200)
    assert history.of("u") == [("i300", "view", 300)]
    for stamp in (400, 500, 600):
        history.add("u", f"i{stamp}", "view", stamp)
    assert [e[2] for e in history.of("u")] == [400, 500, 600], "still at most 3 per user"
    history.forget_before("u", 600)
    assert history.of("u") == []
    history.forget("v")
    assert history.of("v") == []
    history.forget_before("nobody", 1)


def test_a_replica_takes_in_the_others_events_once_and_follows_its_deletions(
    published: PublishedModel, tmp_path: Path
) -> None:
    """Two server processes on one store: what one records reaches the other at its next sync,
    each event once however often it syncs; a deletion made by one drops the user there too."""
    url = f"sqlite:///{tmp_path / 'e.db'}"
    writer = _core(published, open_event_store(url))
    reader = _core(published, open_event_store(url))
    user, after = "visitor-3", int(published.manifest["data_end_ms"]) + 1
    writer.record_events([EventInput(user, "i0001", "view", timestamp_ms=after)])
    writer.record_events([EventInput(user, "i0002", "cart", timestamp_ms=after + 1)])
    assert _items(reader, user) == []
    reader.sync()
    assert _items(reader, user) == ["i0001", "i0002"]
    reader.sync()
    writer.record_events([EventInput(user, "i0003", "view", timestamp_ms=after + 2)])
    reader.sync()
    reader.sync()
    assert _items(reader, user) == ["i0001", "i0002", "i0003"], "each event taken in once"
    writer.forget_user(user)
    reader.sync()
    assert _items(reader, user) == []
    assert reader.forgotten_since_training(user)
    audit = (tmp_path / "e.db.audit.log").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["reason"] for line in audit] == [""]
    # The user comes back with a clock behind the deletion: that visit is kept by every
    # replica, at every later sync (the deletion is not applied again).
    behind = writer.event_store.forgotten_users()[user] - 1
    writer.record_events([EventInput(user, "i0004", "view", timestamp_ms=behind)])
    reader.sync()
    reader.sync()
    assert _items(reader, user) == _items(writer, user) == ["i0004"]
    writer.event_store.close()
    reader.event_store.close()


def test_the_training_job_leaves_out_a_forgotten_users_events_to_the_deletion_and_profile() -> None:
    from recsvc.training.ingest import Dataset
    from recsvc.training.pipeline import leave_out_forgotten

    events = events_table(
        [("gone", "i1", "view", 100), ("gone", "i2", "view", 300), ("kept", "i1", "view", 100)]
    )
    users = pa.table({"user_id": ["gone", "kept"], "region": ["north", "south"]})
    dataset = Dataset(events, None, users, [])
    left, (touched, dropped) = leave_out_forgotten(dataset, {"gone": 200})
    # What the user did after the deletion (they came back) stays; their profile row does not.
    assert left.events.column("item_id").to_pylist() == ["i2", "i1"]
    assert (touched, dropped) == (1, 1)
    assert left.users is not None and left.users.to_pylist() == [
        {"user_id": "kept", "region": "south"}
    ]
