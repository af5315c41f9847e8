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
from recsvc.ids import id_problem
from recsvc.training.ingest import (
    RejectsWriter,
    load_dataset,
    load_events,
    load_items,
    load_users,
    parse_timestamps_ms,
)

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
    assert by_line[3]["detail"] == "user_id is empty"
    assert by_line[4]["detail"] == "item_id is empty"
    assert by_line[13]["detail"] == "expected 6 fields, got 3"
    assert by_line[14]["detail"] == "expected 6 fields, got 7"
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
    # Without quantity and price columns: one each, no price, in the contract's types.
    assert clean.column("quantity").to_pylist() == [1.0] * 6
    assert clean.schema.field("price").type == pa.float64()
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
    with pytest.raises(
        BadInput,
        match=r"lacks required column 'event' \(columns found: user_id, item_id, timestamp\)$",
    ):
        load(events, tmp_path)
    empty = write_lines(tmp_path / "empty.csv", "")
    with pytest.raises(BadInput, match=r"lacks required column 'user_id' \(columns found: none\)$"):
        load(empty, tmp_path)


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

    code = main(["train", "--events", str(tmp_path), "--model-dir", str(tmp_path / "m")])
    assert code == 2
    assert "is a directory: give the file itself" in capsys.readouterr().err

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


def test_bounds_are_inclusive_and_every_rejection_says_what_was_wrong(tmp_path: Path) -> None:
    """1970 itself and a price of 0 are fine; the future limit is `max_future_hours` after now,
    inclusive; a missing quantity is one; each detail names the field and what it should be."""
    limit_ms = int(NOW_MS + Config().data.max_future_hours * 3_600_000)
    events = write_lines(
        tmp_path / "events.csv",
        HEADER,
        "u1,i1,purchase,1970-01-01T00:00:00Z,,0",  # 2: fine
        "u1,i1,view,1969-12-31T23:59:59Z,,",  # 3: before 1970
        f"u1,i2,view,{limit_ms},,",  # 4: fine, at the limit
        f"u1,i3,view,{limit_ms + 1},,",  # 5: one millisecond past it
        "u1,i1,purchase,2025-03-01T11:00:00Z,0,5",  # 6
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,-0.5",  # 7
    )
    clean, report = load(events, tmp_path / "rejects")
    assert clean.column("item_id").to_pylist() == ["i1", "i2"]
    assert clean.column("quantity").to_pylist() == [1.0, 1.0]
    assert clean.column("price").to_pylist() == [0.0, None]
    assert clean.column("timestamp_ms").to_pylist() == [0, limit_ms]
    assert clean.column("timestamp_ms").type == pa.int64()
    assert (report.source, report.rows_read, report.accepted) == (str(events), 6, 2)
    rows = read_rejects(tmp_path / "rejects" / "events.csv.rejects.csv")
    assert [(int(r["line"]), r["reason"], r["detail"]) for r in rows] == [
        (3, "bad_timestamp", "timestamp is before 1970"),
        (5, "future_timestamp", "timestamp is more than 24 h in the future"),
        (6, "bad_quantity", "quantity '0' is not a positive whole number"),
        (7, "bad_price", "price '-0.5' is not a finite number >= 0"),
    ]


def test_the_wall_clock_bounds_the_future_when_no_now_is_given(tmp_path: Path) -> None:
    hour = 3_600_000
    now = datetime.now(UTC).timestamp() * 1000
    events = write_lines(
        tmp_path / "events.csv",
        HEADER,
        f"u1,i1,view,{int(now + hour)},,",
        f"u1,i2,view,{int(now + 48 * hour)},,",
    )
    clean, report = load_events(events, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.column("item_id").to_pylist() == ["i1"]
    assert report.rejected == {"future_timestamp": 1}


def test_events_for_unknown_items_say_so(tmp_path: Path) -> None:
    items = write_lines(tmp_path / "items.csv", "item_id,category", "i1,books")
    events = write_lines(tmp_path / "events.csv", HEADER, "u1,i9,view,1740823200,,")
    dataset = load_dataset(events, Config().data, items, rejects_dir=tmp_path / "rj", now_ms=NOW_MS)
    assert dataset.events.num_rows == 0
    rows = read_rejects(tmp_path / "rj" / "events.csv.rejects.csv")
    assert rows[0]["detail"] == "item_id is not in the items file"


def test_items_and_users_files_account_for_every_row(tmp_path: Path) -> None:
    items = write_lines(
        tmp_path / "items.csv",
        "item_id,category,brand,price,available,tags",
        "i1,books,acme,0,true,gift",  # 2: fine, free
        ",books,acme,1,true,",  # 3: no id
        "i2,toys,,,YES,",  # 4: fine, no price
        "i3,toys",  # 5: malformed
        "i4,toys,acme,-2,true,",  # 6
    )
    clean, report = load_items(items, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.to_pylist() == [
        {"item_id": "i1", "category": "books", "brand": "acme", "price": 0.0,
         "available": True, "tags": "gift"},
        {"item_id": "i2", "category": "toys", "brand": "", "price": None,
         "available": True, "tags": ""},
    ]  # fmt: skip
    assert (report.source, report.rows_read, report.accepted) == (str(items), 5, 2)
    rows = read_rejects(tmp_path / "rj" / "items.csv.rejects.csv")
    assert [(int(r["line"]), r["reason"], r["detail"]) for r in rows][:1] == [
        (3, "missing_item_id", "item_id is empty")
    ]
    assert [(int(r["line"]), r["reason"]) for r in rows][1:] == [
        (5, "malformed_row"),
        (6, "bad_price"),
    ]
    assert rows[2]["detail"] == "price '-2' is not a finite number >= 0"

    bare = write_lines(tmp_path / "bare.csv", "item_id,category", "i1,books", "i2,")
    clean, _ = load_items(bare, Config().data, RejectsWriter(tmp_path / "rj2"))
    assert clean.to_pylist() == [
        {"item_id": "i1", "category": "books", "brand": "", "price": None,
         "available": True, "tags": ""},
    ]  # fmt: skip
    assert read_rejects(tmp_path / "rj2" / "bare.csv.rejects.csv")[0]["detail"] == (
        "category is empty"
    )

    users = write_lines(
        tmp_path / "users.csv", "user_id,age_band", ",25-34", "u1,25-34", "u1,18-24", "u2"
    )
    clean, report = load_users(users, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.to_pylist() == [{"user_id": "u1", "age_band": "25-34"}]
    assert (report.source, report.rows_read, report.accepted) == (str(users), 4, 1)
    rows = read_rejects(tmp_path / "rj" / "users.csv.rejects.csv")
    assert [(int(r["line"]), r["reason"], r["detail"]) for r in rows][:2] == [
        (2, "missing_user_id", "user_id is empty"),
        (4, "duplicate_user", "user_id already on line 3"),
    ]
    assert rows[2]["reason"] == "malformed_row"


def test_typed_and_numeric_timestamp_columns_read_as_epoch_milliseconds() -> None:
    instant = ms("2025-03-01T10:00:00+00:00")

    def column(values: list, kind: pa.DataType) -> pa.ChunkedArray:
        return pa.chunked_array([pa.array(values, kind)])

    cases = [
        column([instant * 1000], pa.timestamp("us", tz="Asia/Shanghai")),
        column([instant // 1000], pa.timestamp("s")),
        column([instant // 1000], pa.int64()),  # epoch seconds
        column([instant], pa.int64()),  # epoch milliseconds
        column([instant / 1000], pa.float64()),
        column([str(instant)], pa.string()),
        # One text column in several forms takes the slow path, form by form.
        column(["2025-03-01T10:00:00Z", "2025-03-01T10:00:00", str(instant // 1000)], pa.string()),
        column(["2025-03-01T18:00:00+08:00"], pa.string()),
    ]
    for case in cases:
        assert parse_timestamps_ms(case).tolist() == [instant] * len(case), case.type


def test_a_missing_price_is_not_the_same_event_as_any_price(tmp_path: Path) -> None:
    events = write_lines(
        tmp_path / "events.csv",
        HEADER,
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,",
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,0",
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,1",
        "u1,i1,purchase,2025-03-01T11:00:00Z,1,1",  # the one duplicate
    )
    clean, report = load(events, tmp_path / "rejects")
    assert clean.column("price").to_pylist() == [None, 0.0, 1.0]
    assert report.duplicates_dropped == 1


def test_rejects_go_to_a_new_nested_folder_in_file_order(tmp_path: Path) -> None:
    users = write_lines(tmp_path / "users.csv", "user_id", "u1", "u2", "u1", "u2")
    target = tmp_path / "a" / "b" / "rejects"
    _, report = load_users(users, Config().data, RejectsWriter(target))
    assert report.rejects_path == str(target / "users.csv.rejects.csv")
    rows = read_rejects(target / "users.csv.rejects.csv")
    assert [(int(r["line"]), r["data"]) for r in rows] == [(4, "u1"), (5, "u2")]


def test_a_row_that_is_not_utf8_is_rejected_and_the_rest_read(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_bytes(
        (HEADER + "\n").encode()
        + GOOD.format(n=1).encode()
        + b"\nu\xff2,i2,view,2025-03-01T10:00:00Z,1,2.5\n"
        + b"u3,i3,view,2025-03-01T10:00:00Z,1,\xe4\xb8\n"  # a cut multi-byte character
        + "u4,商品4,view,2025-03-01T10:00:00Z,1,2.5\n".encode()
    )
    clean, report = load(events, tmp_path / "rejects")
    assert clean.column("item_id").to_pylist() == ["i1", "商品4"]
    assert (report.rows_read, report.accepted, dict(report.rejected)) == (4, 2, {"bad_encoding": 2})
    rejects = read_rejects(tmp_path / "rejects" / "events.csv.rejects.csv")
    assert [(r["line"], r["reason"], r["detail"]) for r in rejects] == [
        ("3", "bad_encoding", "user_id holds bytes that are not UTF-8 (shown as \ufffd)"),
        ("4", "bad_encoding", "price holds bytes that are not UTF-8 (shown as \ufffd)"),
    ]
    assert rejects[0]["data"].startswith("u\ufffd2,i2,view")


def test_a_binary_parquet_column_that_is_not_utf8_is_rejected_by_row(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([b"u1", b"u\xfe", b"u3"], pa.binary()),
                "item_id": ["i1", "i2", "i3"],
                "event": ["view"] * 3,
                "timestamp": ["2025-03-01T10:00:00Z"] * 3,
            }
        ),
        path,
    )
    clean, _ = load(path, tmp_path / "rejects")
    assert clean.column("user_id").to_pylist() == ["u1", "u3"]
    rejects = read_rejects(tmp_path / "rejects" / "events.parquet.rejects.csv")
    assert [(r["row"], r["reason"]) for r in rejects] == [("2", "bad_encoding")]


@pytest.mark.parametrize(
    ("user_id", "item_id", "detail"),
    [
        ("u\x001", "i1", r"user_id 'u\x001' holds a control character"),
        ("u1", "i\t1", r"item_id 'i\t1' holds a control character"),
        ("u" * 257, "i1", "user_id is longer than 256 characters"),
        ("u1", "i" * 10_000, "item_id is longer than 256 characters"),
    ],
)
def test_an_id_the_server_would_refuse_is_a_bad_id(
    tmp_path: Path, user_id: str, item_id: str, detail: str
) -> None:
    events = write_lines(
        tmp_path / "e.csv",
        HEADER,
        GOOD.format(n=1),
        f'"{user_id}","{item_id}",view,2025-03-01T10:00:00Z,1,2.5',
        "u" * 256 + ",商品,view,2025-03-01T10:00:00Z,1,2.5",  # at the limit, in characters
    )
    _, report = load(events, tmp_path / "rejects")
    assert report.accepted == 2 and dict(report.rejected) == {"bad_id": 1}
    (reject,) = read_rejects(tmp_path / "rejects" / "e.csv.rejects.csv")
    assert (reject["line"], reject["detail"]) == ("3", detail)


def test_the_id_limit_is_the_servers(tmp_path: Path) -> None:
    events = write_lines(tmp_path / "e.csv", HEADER, GOOD.format(n=12345))
    _, report = load(events, tmp_path / "rejects", max_id_length=5)
    assert dict(report.rejected) == {"bad_id": 1}
    items = write_lines(tmp_path / "items.csv", "item_id,category", "i1,a", "i123456,a")
    users = write_lines(tmp_path / "users.csv", "user_id", "u1", "u\x7f")
    dataset = load_dataset(None, Config().data, items, users, max_id_length=5)
    assert [dict(r.rejected) for r in dataset.reports] == [{"bad_id": 1}, {"bad_id": 1}]


@pytest.mark.parametrize("column", ["price", "quantity"])
@pytest.mark.parametrize("value", ["1e400", "-1e400", "inf", "nan"])
def test_a_number_that_is_not_finite_is_rejected(tmp_path: Path, column: str, value: str) -> None:
    price, quantity = (value, "1") if column == "price" else ("2.5", value)
    events = write_lines(
        tmp_path / "e.csv", HEADER, f"u1,i1,view,2025-03-01T10:00:00Z,{quantity},{price}"
    )
    _, report = load(events, tmp_path / "rejects")
    assert dict(report.rejected) == {f"bad_{column}": 1}


def test_an_infinite_price_in_a_typed_parquet_column_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pq.write_table(
        pa.table({"item_id": ["i1", "i2"], "category": ["a", "a"], "price": [1.0, float("inf")]}),
        path,
    )
    _, report = load_items(path, Config().data, RejectsWriter(tmp_path / "rejects"))
    assert dict(report.rejected) == {"bad_price": 1}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 5).map(lambda n: GOOD.format(n=n).encode()),
            st.binary(max_size=60),
            st.lists(st.binary(max_size=12), min_size=6, max_size=6).map(b",".join),
        ),
        max_size=30,
    )
)
def test_hostile_bytes_never_abort_the_read_and_every_row_is_accounted_for(
    tmp_path: Path, lines: list[bytes]
) -> None:
    events = tmp_path / "events.csv"
    events.write_bytes(HEADER.encode() + b"\n" + b"\n".join(lines) + b"\n")
    config = dataclasses.replace(
        Config().data,
        events=dataclasses.replace(
            Config().data.events, names=EventNames(view=["view"], ignore=["x"])
        ),
    )
    clean, report = load(events, tmp_path / "rejects", config)
    assert report.rows_read == (
        report.accepted
        + report.rejected_total
        + report.duplicates_dropped
        + sum(report.ignored.values())
    )
    assert clean.num_rows == report.accepted
    for user_id, item_id in zip(
        clean.column("user_id").to_pylist(), clean.column("item_id").to_pylist(), strict=True
    ):
        assert id_problem(user_id, 256) is None and id_problem(item_id, 256) is None


def test_one_corrupt_byte_costs_one_row_not_the_nightly_run(
    shop_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (shop_dir / "events.csv").read_bytes().splitlines(keepends=True)[:3000]
    lines[1500] = lines[1500].replace(b",", b"\xff,", 1)
    events = tmp_path / "events.csv"
    events.write_bytes(b"".join(lines))
    code = main(["train", "--events", str(events), "--model-dir", str(tmp_path / "m")])
    assert code == 0, capsys.readouterr().err
    (reject,) = read_rejects(next((tmp_path / "m").rglob("events.csv.rejects.csv")))
    assert (reject["line"], reject["reason"]) == ("1501", "bad_encoding")


def test_items_and_users_files_name_themselves_in_errors(tmp_path: Path) -> None:
    items = write_lines(tmp_path / "items.csv", "item_id,brand", "i1,acme")
    with pytest.raises(BadInput, match=r"^items file .* lacks required column 'category'"):
        load_items(items, Config().data, RejectsWriter(None))
    users = write_lines(tmp_path / "users.csv", "customer,region", "c1,north")
    with pytest.raises(BadInput, match=r"^users file .* lacks required column 'user_id'"):
        load_users(users, Config().data, RejectsWriter(None))


def test_an_items_file_is_judged_on_the_columns_it_is_read_for(tmp_path: Path) -> None:
    """Columns the catalogue does not use (a description, a supplier) are not read: a byte
    that is not UTF-8 in one of them costs nothing, and a rejected row's data shows the
    columns that were read."""
    items = tmp_path / "items.csv"
    items.write_bytes(
        b"item_id,description,category,supplier\n"
        b"i1,caf\xe9 cr\xe8me,food,s1\n"  # Latin-1 in an unused column
        b"i2,plain,,s2\n"
    )
    clean, _ = load_items(items, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.column("item_id").to_pylist() == ["i1"] and clean.num_columns == 6
    (reject,) = read_rejects(tmp_path / "rj" / "items.csv.rejects.csv")
    assert (reject["line"], reject["reason"], reject["data"]) == ("3", "missing_category", "i2,")


def test_an_items_file_without_optional_columns_keeps_the_contracts_types(tmp_path: Path) -> None:
    for lines in (["i1,books"], []):  # rows, and a header alone
        bare = write_lines(tmp_path / "bare.csv", "item_id,category", *lines)
        clean, _ = load_items(bare, Config().data, RejectsWriter(None))
        assert clean.schema.field("price").type == pa.float64()
        assert clean.schema.field("available").type == pa.bool_()
        assert clean.schema.field("brand").type == pa.string()
        assert clean.schema.field("tags").type == pa.string()


def test_an_availability_flag_is_a_known_word_or_empty(tmp_path: Path) -> None:
    items = write_lines(
        tmp_path / "items.csv",
        "item_id,category,available",
        "i1,a,",  # empty: available
        "i2,a,N",
        "i3,a,Maybe",
        "i4,a,t",
    )
    clean, _ = load_items(items, Config().data, RejectsWriter(tmp_path / "rj"))
    assert clean.column("available").to_pylist() == [True, False, True]
    (reject,) = read_rejects(tmp_path / "rj" / "items.csv.rejects.csv")
    assert (reject["line"], reject["detail"]) == ("4", "available 'maybe' is not true/false")


def test_bad_ids_in_the_catalogue_and_users_file_say_which_id(tmp_path: Path) -> None:
    items = write_lines(tmp_path / "items.csv", "item_id,category", "i1,a", "i123456,a")
    users = write_lines(tmp_path / "users.csv", "user_id", "u1", "u\x7f", "u123456")
    load_dataset(None, Config().data, items, users, rejects_dir=tmp_path / "rj", max_id_length=5)
    (item,) = read_rejects(tmp_path / "rj" / "items.csv.rejects.csv")
    assert item["detail"] == "item_id is longer than 5 characters"
    first, second = read_rejects(tmp_path / "rj" / "users.csv.rejects.csv")
    assert first["detail"] == r"user_id 'u\x7f' holds a control character"
    assert second["detail"] == "user_id is longer than 5 characters"


def test_each_file_reports_the_seconds_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seconds from the loader's own start and end, on a clock that moves 2.5 s a reading."""
    readings = iter(range(100))
    monkeypatch.setattr("time.perf_counter", lambda: 2.5 * next(readings))
    items = write_lines(tmp_path / "items.csv", "item_id,category", "i1,a")
    users = write_lines(tmp_path / "users.csv", "user_id", "u1")
    events = write_lines(tmp_path / "events.csv", HEADER, GOOD.format(n=1))
    dataset = load_dataset(events, Config().data, items, users, now_ms=NOW_MS)
    assert [r.seconds for r in dataset.reports] == [2.5, 2.5, 2.5]
    assert dataset.reports[2].summary().endswith("; 0 duplicates dropped; 0 rows/s")


def test_numbers_in_exponent_form_either_case_and_pandas_nan_for_missing(tmp_path: Path) -> None:
    events = write_lines(
        tmp_path / "e.csv",
        HEADER,
        "u1,i1,purchase,2025-03-01T10:00:00Z,1e0,1.5e2",
        "u2,i1,purchase,2025-03-01T10:00:00Z,2E0,2.5E1",
    )
    clean, report = load(events, tmp_path / "rj")
    assert report.rejected_total == 0
    assert clean.column("quantity").to_pylist() == [1.0, 2.0]
    assert clean.column("price").to_pylist() == [150.0, 25.0]
    # pandas writes a missing number as NaN, not null: missing, not junk.
    path = tmp_path / "e.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u2"],
                "item_id": ["i1", "i1"],
                "event": ["purchase", "purchase"],
                "timestamp": ["2025-03-01T10:00:00Z"] * 2,
                "quantity": pa.array([float("nan"), 3.0]),
                "price": pa.array([float("nan"), 4.0]),
            }
        ),
        path,
    )
    clean, report = load(path, tmp_path / "rj")
    assert report.rejected_total == 0
    assert clean.column("quantity").to_pylist() == [1.0, 3.0]
    assert clean.column("price").to_pylist() == [None, 4.0]


def test_numeric_timestamps_at_their_edges(tmp_path: Path) -> None:
    """1e11 is the first value read as milliseconds (1973); one less is seconds (the year
    5138, so in the future); a negative number in a numeric column is before 1970, not
    unreadable."""
    path = tmp_path / "e.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u2", "u3"],
                "item_id": ["i1", "i1", "i1"],
                "event": ["view"] * 3,
                "timestamp": pa.array([100_000_000_000, 99_999_999_999, -5], pa.int64()),
            }
        ),
        path,
    )
    clean, _ = load(path, tmp_path / "rj")
    assert clean.column("timestamp_ms").to_pylist() == [100_000_000_000]
    rows = read_rejects(tmp_path / "rj" / "e.parquet.rejects.csv")
    assert [(r["row"], r["reason"], r["detail"]) for r in rows] == [
        ("2", "future_timestamp", "timestamp is more than 24 h in the future"),
        ("3", "bad_timestamp", "timestamp is before 1970"),
    ]


def test_an_impossible_date_costs_only_its_own_row_in_a_column_of_mixed_forms() -> None:
    instant = ms("2025-03-01T10:00:00+00:00")
    column = pa.chunked_array(
        [["2025-02-30T10:00:00", "2025-03-01T10:00:00", "2025-13-01", "2025-03-01T10:00:00Z"]]
    )
    got = parse_timestamps_ms(column).tolist()
    assert got[1::2] == [instant, instant] and all(v != v for v in got[0::2])
    # Epoch numbers among other forms: 1e11 is the first read as milliseconds here too.
    column = pa.chunked_array([["2025-03-01T10:00:00Z", "100000000000", "99999"]])
    assert parse_timestamps_ms(column).tolist() == [instant, 100_000_000_000, 99_999_000]


def test_each_repeat_names_its_own_first_line_whatever_lies_between(tmp_path: Path) -> None:
    events = write_lines(
        tmp_path / "events.csv",
        HEADER,
        "u1,i1,view,2025-03-01T10:00:00Z,,",  # 2
        "u2,i1,view,2025-03-01T10:00:00Z,,",  # 3: another user, same item and moment
        "u1,i1,view,2025-03-01T10:00:00Z,,",  # 4: repeats 2
        "u3,i2,cart,2025-03-01T11:00:00Z,2,",  # 5
        "u3,i2,cart,2025-03-01T11:00:00Z,2,",  # 6: repeats 5
        "u2,i1,view,2025-03-01T10:00:00Z,,",  # 7: repeats 3
    )
    clean, report = load(events, tmp_path / "rj")
    assert clean.num_rows == 3 and report.duplicates_dropped == 3
    rows = read_rejects(tmp_path / "rj" / "events.csv.rejects.csv")
    assert [(r["line"], r["detail"]) for r in rows] == [
        ("4", "same event as line 2"),
        ("6", "same event as line 5"),
        ("7", "same event as line 3"),
    ]
