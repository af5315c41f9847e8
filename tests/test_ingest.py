"""The data contract: every bad row is rejected with its line and reason; nothing is lost."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import read_rejects, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc.cli.main import main
from recsvc.config import Config, DataConfig, EventColumns, EventNames, EventsSource
from recsvc.errors import BadInput
from recsvc.training.ingest import RejectsWriter, load_dataset, load_events, load_items, load_users

HEADER = "user_id,item_id,event,timestamp,quantity,price"
NOW_MS = datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def load(path: Path, rejects: Path, config: DataConfig | None = None, **kwargs):
    return load_events(
        path, config or Config().data, RejectsWriter(rejects), now_ms=NOW_MS, **kwargs
    )


def test_each_bad_row_is_rejected_with_its_line_and_reason(tmp_path: Path) -> None:
    events = write_lines(
        tmp_path / "events.csv",
        HEADER,
        "u1,i1,view,2025-03-01T10:00:00Z,,",  # line 2: fine
        ",i1,view,2025-03-01T10:00:00Z,,",  # 3: no user
        "u1,,view,2025-03-01T10:00:00Z,,",  # 4: no item
        "u1,i1,wishlist,2025-03-01T10:00:00Z,,",  # 5: unknown event
        "u1,i1,view,yesterday,,",  # 6: unreadable timestamp
        "u1,i1,view,2025-02-30T10:00:00,,",  # 7: impossible date
        "u1,i1,view,2031-01-01T00:00:00Z,,",  # 8: future
        "u1,i1,purchase,2025-03-01T11:00:00Z,0,5.0",  # 9: quantity 0
        "u1,i1,purchase,2025-03-01T11:00:00Z,1.5,5.0",  # 10: fractional quantity
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,-3",  # 11: negative price
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,cheap",  # 12: price not a number
        "u1,i1,view",  # 13: too few fields
        "u1,i1,view,2025-03-01T10:00:00Z,,,extra",  # 14: too many fields
        "u1,i1,view,2025-03-01T10:00:00Z,,",  # 15: duplicate of line 2
        "u2,i2,cart,1740823200,2,",  # 16: fine (epoch seconds)
    )
    clean, report = load(events, tmp_path / "rejects")

    assert clean.num_rows == 2
    assert report.rows_read == 15
    assert report.duplicates_dropped == 1
    assert report.rejected_total == 12
    rows = read_rejects(tmp_path / "rejects" / "events.csv.rejects.csv")
    got = [(int(r["line"]), r["reason"]) for r in rows]
    assert got == [
        (3, "missing_user_id"),
        (4, "missing_item_id"),
        (5, "unknown_event"),
        (6, "bad_timestamp"),
        (7, "bad_timestamp"),
        (8, "future_timestamp"),
        (9, "bad_quantity"),
        (10, "bad_quantity"),
        (11, "bad_price"),
        (12, "bad_price"),
        (13, "malformed_row"),
        (14, "malformed_row"),
        (15, "duplicate"),
    ]
    by_line = {int(r["line"]): r for r in rows}
    assert "'wishlist'" in by_line[5]["detail"]
    assert "'yesterday'" in by_line[6]["detail"]
    assert by_line[15]["detail"] == "same event as line 2"
    assert by_line[13]["data"] == "u1,i1,view"
    assert by_line[12]["data"] == "u1,i1,purchase,2025-03-01T11:00:00Z,1,cheap"
    assert report.rejected["bad_price"] == 2
    assert "12 rejected" in report.summary() and "1 duplicates dropped" in report.summary()


def test_timestamp_forms_all_read_as_the_same_instant(tmp_path: Path) -> None:
    instant = ms("2025-03-01T10:00:00+00:00")
    events = write_lines(
        tmp_path / "events.csv",
        "user_id,item_id,event,timestamp",
        "u1,i1,view,2025-03-01T10:00:00Z",
        "u2,i1,view,2025-03-01T12:00:00+02:00",
        "u3,i1,view,2025-03-01 10:00:00",
        "u4,i1,view,1740823200",
        "u5,i1,view,1740823200000",
        "u6,i1,view,2025-03-01T10:00",
    )
    clean, report = load(events, tmp_path)
    assert report.rejected_total == 0
    assert clean.column("timestamp_ms").to_pylist() == [instant] * 6
    day = write_lines(
        tmp_path / "day.csv", "user_id,item_id,event,timestamp", "u,i,view,2025-03-01"
    )
    assert load(day, tmp_path)[0].column("timestamp_ms").to_pylist() == [
        ms("2025-03-01T00:00:00+00:00")
    ]


def test_other_log_shapes_load_through_config_mapping(tmp_path: Path) -> None:
    """A RetailRocket-shaped log: other column names, other event names, milliseconds."""
    events = write_lines(
        tmp_path / "rr.csv",
        "timestamp,visitorid,event,itemid,transactionid",
        "1433221332117,257597,view,355908,",
        "1433224214164,992329,addtocart,248676,",
        "1433221999827,111016,transaction,318965,4000",
    )
    config = dataclasses.replace(
        Config().data,
        events=EventsSource(
            columns=EventColumns(user_id="visitorid", item_id="itemid"),
            names=EventNames(cart=["addtocart"], purchase=["transaction"]),
        ),
    )
    clean, report = load(events, tmp_path, config)
    assert report.rejected_total == 0
    assert clean.column("event").to_pylist() == ["view", "cart", "purchase"]
    assert clean.column("user_id").to_pylist() == ["257597", "992329", "111016"]
    assert clean.column("timestamp_ms").to_pylist()[0] == 1433221332117


def test_ignored_event_values_are_counted_not_rejected(tmp_path: Path) -> None:
    events = write_lines(
        tmp_path / "tb.csv",
        "user_id,item_id,behavior_type,timestamp",
        "1,10,pv,1511544070",
        "1,10,fav,1511544071",
        "1,10,buy,1511544072",
    )
    config = dataclasses.replace(
        Config().data,
        events=EventsSource(
            columns=EventColumns(event="behavior_type"),
            names=EventNames(view=["pv"], purchase=["buy"], ignore=["fav"]),
        ),
    )
    clean, report = load(events, tmp_path, config)
    assert clean.column("event").to_pylist() == ["view", "purchase"]
    assert report.ignored == {"fav": 1}
    assert report.rejected_total == 0
    assert "1 ignored by config (fav 1)" in report.summary()


def test_parquet_rows_are_numbered_and_typed_columns_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": [1, 2, 3],
                "item_id": [10, 20, 30],
                "event": ["view", "nope", "purchase"],
                "timestamp": pa.array([1740823200, 1740823201, 1740823202], pa.int64()),
            }
        ),
        path,
    )
    clean, report = load(path, tmp_path / "rejects")
    assert clean.column("user_id").to_pylist() == ["1", "3"]
    rows = read_rejects(tmp_path / "rejects" / "events.parquet.rejects.csv")
    assert [(r["row"], r["reason"]) for r in rows] == [("2", "unknown_event")]
    assert report.accepted == 2


def test_events_for_items_missing_from_the_catalogue_are_rejected(tmp_path: Path) -> None:
    items = write_lines(tmp_path / "items.csv", "item_id,category", "i1,books")
    events = write_lines(
        tmp_path / "events.csv",
        "user_id,item_id,event,timestamp",
        "u1,i1,view,1740823200",
        "u1,i9,view,1740823200",
    )
    dataset = load_dataset(events, Config().data, items, rejects_dir=tmp_path / "rj", now_ms=NOW_MS)
    assert dataset.events.column("item_id").to_pylist() == ["i1"]
    assert dataset.reports[0].rejected == {"unknown_item": 1}


def test_items_file_rules(tmp_path: Path) -> None:
    items = write_lines(
        tmp_path / "items.csv",
        "item_id,category,brand,price,available,tags",
        "i1,books,acme,9.5,true,gift|eco",
        "i2,,acme,9.5,true,",  # 3: no category
        "i1,toys,acme,1,true,",  # 4: repeats i1
        "i3,toys,acme,-1,true,",  # 5: negative price
        "i4,toys,acme,1,maybe,",  # 6: bad availability flag
        "i5,toys,,,no,",  # 7: fine, unavailable
    )
    clean, _ = load_items(items, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.column("item_id").to_pylist() == ["i1", "i5"]
    assert clean.column("available").to_pylist() == [True, False]
    rows = read_rejects(tmp_path / "rj" / "items.csv.rejects.csv")
    assert [(int(r["line"]), r["reason"]) for r in rows] == [
        (3, "missing_category"),
        (4, "duplicate_item"),
        (5, "bad_price"),
        (6, "bad_available"),
    ]
    assert rows[1]["detail"] == "item_id already on line 2"


def test_users_file_keeps_attributes_and_rejects_repeats(tmp_path: Path) -> None:
    users = write_lines(
        tmp_path / "users.csv", "user_id,age_band,region", "u1,25-34,north", "u1,18-24,south"
    )
    clean, report = load_users(users, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.to_pylist() == [{"user_id": "u1", "age_band": "25-34", "region": "north"}]
    assert report.rejected == {"duplicate_user": 1}


def test_missing_required_column_is_bad_input(tmp_path: Path) -> None:
    events = write_lines(tmp_path / "e.csv", "user_id,item_id,timestamp", "u1,i1,1740823200")
    with pytest.raises(BadInput, match="lacks required column 'event'"):
        load(events, tmp_path)


def test_cli_exits_2_with_one_line_reason_for_unusable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_lines(tmp_path / "e.csv", "user_id,item_id,timestamp", "u1,i1,1740823200")
    code = main(["train", "--events", str(events), "--model-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("recsvc: error:")]
    assert errors == [err[-1]] and "lacks required column 'event'" in err[-1]

    code = main(["train", "--events", str(tmp_path / "absent.csv"), "--model-dir", str(tmp_path)])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01 not parquet at all")
    code = main(["train", "--events", str(garbage), "--model-dir", str(tmp_path / "m")])
    assert code == 2
    assert "unreadable" in capsys.readouterr().err
    assert not (tmp_path / "m" / "current").exists()


GOOD = "u{n},i{n},view,2025-03-01T10:00:00Z,1,2.5"
BAD = [
    ",i1,view,2025-03-01T10:00:00Z,1,2.5",
    "u1,i1,teleport,2025-03-01T10:00:00Z,1,2.5",
    "u1,i1,view,not-a-time,1,2.5",
    "u1,i1,view,2025-03-01T10:00:00Z,-2,2.5",
    "u1,i1,view",
    "u1,i1,view,2025-03-01T10:00:00Z,1,2.5,x,y",
    "",
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(st.integers(0, 5).map(lambda n: GOOD.format(n=n)), st.sampled_from(BAD)),
        max_size=40,
    )
)
def test_no_row_is_ever_lost(tmp_path: Path, lines: list[str]) -> None:
    """Read = accepted + rejected + duplicates; each line not accepted is in the rejects file."""
    events = write_lines(tmp_path / "events.csv", HEADER, *lines)
    rejects = tmp_path / "rejects"
    clean, report = load(events, rejects)
    assert report.rows_read == len(lines)
    assert report.accepted + report.rejected_total + report.duplicates_dropped == len(lines)
    assert clean.num_rows == report.accepted
    rejected_lines = (
        {int(r["line"]) for r in read_rejects(rejects / "events.csv.rejects.csv")}
        if report.rejected_total + report.duplicates_dropped
        else set()
    )
    seen_good: set[str] = set()
    for line_no, line in enumerate(lines, start=2):
        first_good = line not in BAD and line not in seen_good
        seen_good.add(line)
        assert (line_no not in rejected_lines) == first_good, (line_no, line)
