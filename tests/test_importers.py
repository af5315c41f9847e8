"""Importers map each public dataset's layout onto the data contract and account for every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_rejects, skip_for_missing, write_lines

from recsvc.cli.main import EXIT_BAD_INPUT, main
from recsvc.config import Config
from recsvc.errors import BadInput
from recsvc.training.importers import EXCLUDED_FILE, REPORT_FILE, import_dataset
from recsvc.training.ingest import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def events_of(out: Path) -> list[tuple[str, str, str, int]]:
    """(user, item, event, timestamp_ms) of the imported events, read back through ingest."""
    dataset = load_dataset(
        out / "events.csv",
        Config().data,
        out / "items.csv" if (out / "items.csv").exists() else None,
        out / "users.csv" if (out / "users.csv").exists() else None,
        rejects_dir=out / "rejects",
    )
    assert all(r.rejected_total == 0 for r in dataset.reports), [
        r.summary() for r in dataset.reports
    ]
    e = dataset.events
    return sorted(
        zip(
            e.column("user_id").to_pylist(),
            e.column("item_id").to_pylist(),
            e.column("event").to_pylist(),
            e.column("timestamp_ms").to_pylist(),
            strict=True,
        )
    )


def test_online_retail_keeps_clean_purchase_lines_and_lists_the_rest(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "online_retail.csv",
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,"
        "United Kingdom",
        "536366,71053,WHITE METAL LANTERN,2,2010-12-01 09:00:00,3.39,,United Kingdom",
        "C536379,71053,WHITE METAL LANTERN,-1,2010-12-01 09:41:00,3.39,17850,United Kingdom",
        "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18.0,12583,France",
        "536371,22728,ALARM CLOCK BAKELIKE PINK,24,2010-12-01 09:00:00,0,12583,France",
        '536372,22727,"ALARM CLOCK, BAKELIKE RED ",24,2010-12-01 09:01:00,3.75,12583,France',
    )
    result = import_dataset("online-retail", src, tmp_path / "out")
    assert events_of(tmp_path / "out") == [
        ("12583", "22727", "purchase", 1291194060000),
        ("17850", "85123A", "purchase", 1291191960000),
    ]
    assert read_rejects(tmp_path / "out" / EXCLUDED_FILE) == [
        {"file": "online_retail.csv", "line": "3", "reason": "missing_customer"},
        {"file": "online_retail.csv", "line": "4", "reason": "cancellation"},
        {"file": "online_retail.csv", "line": "5", "reason": "not_a_product"},
        {"file": "online_retail.csv", "line": "6", "reason": "non_positive_price"},
    ]
    assert sum(result.excluded.values()) + result.written["events.csv"] == 6
    items = (tmp_path / "out" / "items.csv").read_text().splitlines()
    assert items[1:] == ['"22727","RED","",3.75,true,""', '"85123A","HOLDER","",2.55,true,""']
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["excluded"]["cancellation"] == 1


def test_movielens_100k_ratings_become_strong_and_weak_events(tmp_path: Path) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    write_lines(src / "u.data", "1\t10\t5\t881250949", "1\t11\t2\t881250950", "2\t10\t4\t881250951")
    flags = ["0"] * 19
    action = flags.copy()
    action[1] = action[16] = "1"  # Action, Thriller
    write_lines(
        src / "u.item",
        "10|Film A (1995)|01-Jan-1995||http://x|" + "|".join(action),
        "11|Film B (1995)|01-Jan-1995||http://y|" + "|".join(flags),
    )
    write_lines(src / "u.user", "1|24|M|technician|85711", "2|53|F|other|94043")
    import_dataset("movielens", src, tmp_path / "out")
    assert [e[:3] for e in events_of(tmp_path / "out")] == [
        ("1", "10", "purchase"),
        ("1", "11", "view"),
        ("2", "10", "purchase"),
    ]
    items = (tmp_path / "out" / "items.csv").read_text().splitlines()
    assert items[1] == '"10","Action","",,true,"Action|Thriller"'
    assert items[2].startswith('"11","unknown"')
    users = (tmp_path / "out" / "users.csv").read_text().splitlines()
    assert users == [
        '"user_id","age_band","gender","occupation"',
        '"1","18-24","M","technician"',
        '"2","45-54","F","other"',
    ]


def test_taobao_maps_behaviours_and_excludes_stray_timestamps(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "UserBehavior_head.csv",
        "1,2268318,2520377,pv,1511544070",
        "1,2268318,2520377,fav,1511544080",
        "1,2268318,2520377,cart,1511544090",
        "1,2268318,2520377,buy,1511544100",
        "1,9,7,pv,1505000000",
        "1,9,7,click,1511544100",
    )
    result = import_dataset("taobao", src, tmp_path / "out")
    assert [e[2] for e in events_of(tmp_path / "out")] == ["cart", "cart", "purchase", "view"]
    assert dict(result.excluded) == {"outside_collection_window": 1, "unknown_behavior": 1}
    excluded = read_rejects(tmp_path / "out" / EXCLUDED_FILE)
    assert [(r["line"], r["reason"]) for r in excluded] == [
        ("6", "unknown_behavior"),
        ("5", "outside_collection_window"),
    ]


def test_tmall_dates_are_days_in_2013_at_china_midnight(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "t_alibaba_data.csv",
        "user_id,brand_id,type,visit_datetime",
        "10944750,13451,0,6-4",
        "10944750,13451,0,6-4",
        "10944750,13451,1,6-5",
        "10944750,13451,2,6-5",
        "10944750,13451,3,6-5",
        "10944750,13451,0,June 4",
    )
    result = import_dataset("tmall", src, tmp_path / "out")
    events = events_of(tmp_path / "out")
    june_4_china = 1370275200000  # 2013-06-04T00:00:00+08:00
    assert ("10944750", "13451", "view", june_4_china) in events
    assert {e[2] for e in events} == {"view", "purchase", "cart"}
    # A repeated click on one day is one event; so are collect and cart (both 'cart').
    assert len(events) == 3
    assert dict(result.excluded) == {"bad_date": 1}


def test_multibehavior_writes_test_pairs_apart_from_training_events(tmp_path: Path) -> None:
    src = tmp_path / "mb"
    src.mkdir()
    write_lines(src / "view.txt", "1 1", "1 2", "2 1")
    write_lines(src / "cart.txt", "1 2")
    write_lines(src / "buy.txt", "1 2", "2 1")
    write_lines(src / "test.txt", "1 3", "2 2")
    result = import_dataset("multibehavior", src, tmp_path / "out")
    assert result.written == {"events.csv": 6, "test-events.csv": 2}
    events = events_of(tmp_path / "out")
    assert {e[3] for e in events} == {0}
    assert ("1", "3", "purchase", 0) not in events
    assert (tmp_path / "out" / "test-events.csv").read_text().count("purchase") == 2


def test_bad_sources_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        import_dataset("taobao", tmp_path / "missing.csv", tmp_path / "out")
    with pytest.raises(BadInput, match="unknown format"):
        import_dataset("instacart", tmp_path, tmp_path / "out")
    with pytest.raises(BadInput, match=r"view\.txt does not exist"):
        import_dataset("multibehavior", tmp_path, tmp_path / "out")
    assert main(["data", "import", "--format", "tmall", str(tmp_path / "no"), "x"]) == (
        EXIT_BAD_INPUT
    )


REAL = [
    # format, folder, events written, excluded source rows
    ("online-retail", "online-retail", 396_337, 145_572),
    ("movielens", "movielens-100k", 100_000, 0),
    ("movielens", "movielens-latest-small", 100_836, 0),
    ("taobao", "taobao-userbehavior", 84_252, 35),
    ("tmall", "tmall-brand-2013", 182_880, 0),
    ("multibehavior", "mbcgcn-multibehavior", 1_161_610, 0),
]


@pytest.mark.parametrize(("fmt", "folder", "events", "excluded"), REAL)
def test_real_dataset_imports_whole(
    fmt: str, folder: str, events: int, excluded: int, tmp_path: Path
) -> None:
    """Counts agree with the figures in ../shared/data/README.md (every row accounted for)."""
    source = SHARED_DATA / folder
    if not source.exists():
        skip_for_missing("real_data", f"real data not available: {source} is absent")
    result = import_dataset(fmt, source, tmp_path)
    assert result.written["events.csv"] == events
    assert sum(result.excluded.values()) == excluded
