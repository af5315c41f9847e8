"""Experiment statistics: known counts in, the right rates, intervals and tests out."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from recsvc.cli import main
from recsvc.eventstore import StoredEvent, open_event_store
from recsvc.experiments import Rate, experiment_report, two_proportion_p_value


def tables(counts: dict[str, tuple[int, int, int]]) -> tuple[pa.Table, pa.Table]:
    """variant -> (impressions, clicked lists, converted lists)."""
    impressions, outcomes = [], []
    for variant, (shown, clicked, converted) in counts.items():
        for n in range(shown):
            rid = f"{variant}-{n}"
            impressions.append((rid, variant))
            if n < clicked:
                outcomes += [(variant, rid, "view"), (variant, rid, "view")]  # one list, twice
            if n < converted:
                outcomes.append((variant, rid, "purchase"))
    outcomes.append(("e/a", "never-served", "purchase"))  # not an impression: ignored
    imp = pa.table(
        {"recommendation_id": [r for r, _ in impressions], "variant": [v for _, v in impressions]}
    )
    out = pa.table(
        {
            "variant": [v for v, _, _ in outcomes],
            "recommendation_id": [r for _, r, _ in outcomes],
            "event": [e for _, _, e in outcomes],
        }
    )
    return imp, out


def test_rates_intervals_and_significance() -> None:
    report = experiment_report(*tables({"e/a": (2000, 200, 40), "e/b": (2000, 300, 44)}))
    a, b = report
    assert (a.variant, a.impressions, a.clicks.successes, a.conversions.successes) == (
        "e/a",
        2000,
        200,
        40,
    )
    assert a.click_p_value is None
    assert b.clicks.value == pytest.approx(0.15)
    low, high = b.clicks.wilson()
    assert low < 0.15 < high and high - low < 0.04
    assert b.click_p_value is not None and b.click_p_value < 1e-4  # 10% vs 15% on 2000 each
    assert b.conversion_p_value is not None and b.conversion_p_value > 0.5  # 2.0% vs 2.2%


def test_p_value_matches_a_textbook_case() -> None:
    # 45/100 vs 60/100: pooled z = 2.124, two-sided p = 0.0337.
    assert two_proportion_p_value(Rate(45, 100), Rate(60, 100)) == pytest.approx(0.0337, abs=1e-3)
    assert two_proportion_p_value(Rate(0, 0), Rate(1, 10)) == 1.0


def test_report_command_reads_the_event_store(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_event_store(url)
    store.record_impressions(
        [(f"r{n}", "u", "home/a" if n % 2 else "home/b", 0, 10) for n in range(10)]
    )
    store.append([StoredEvent("u", "i", "purchase", 1, variant="home/a", recommendation_id="r1")])
    store.close()
    assert main(["experiments", "report", "--event-store", url, "--json"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["home/a"]["impressions"] == 5 and rows["home/a"]["conversions"]["successes"] == 1
    assert main(["experiments", "report", "--event-store", url]) == 0
    assert "home/b" in capsys.readouterr().out
