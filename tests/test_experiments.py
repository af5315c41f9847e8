"""Experiment statistics: known counts in, the right rates, intervals and tests out."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import binomtest, chi2_contingency, ttest_ind

from recsvc.cli.main import main
from recsvc.config import ExperimentConfig, VariantConfig
from recsvc.events import StoredEvent, open_event_store
from recsvc.experiments import (
    Mean,
    Rate,
    VariantResult,
    assign_variant,
    experiment_report,
    format_report,
    two_proportion_p_value,
    welch_p_value,
)


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
    store.append(
        [StoredEvent("u", "i", "purchase", 2, 2.0, 3.0, variant="home/a", recommendation_id="r3")]
    )
    store.close()
    assert main(["experiments", "report", "--event-store", url, "--json"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["home/a"]["impressions"] == 5 and rows["home/a"]["conversions"]["successes"] == 2
    # 2 x 3.0 over five lists; the unpriced purchase is worth nothing without a catalogue.
    assert rows["home/a"]["revenue_per_impression"]["value"] == pytest.approx(1.2)
    assert rows["home/b"]["revenue_per_user"]["value"] == 0.0
    assert main(["experiments", "report", "--event-store", url]) == 0
    assert "home/b" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("successes", "trials"), [(0, 10), (10, 10), (1, 3), (150, 1000), (7, 2000)]
)
def test_wilson_interval_matches_scipy(successes: int, trials: int) -> None:
    expected = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    low, high = Rate(successes, trials).wilson()
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-6)
    assert Rate(0, 0).wilson() == (0.0, 0.0) and Rate(0, 0).value == 0.0


@pytest.mark.parametrize(
    ("a", "b"), [((45, 100), (60, 100)), ((3, 40), (0, 25)), ((200, 2000), (300, 1000))]
)
def test_p_value_matches_the_chi_square_test_without_correction(a, b) -> None:
    """The pooled two-proportion z-test is the 2x2 chi-square test without Yates' correction."""
    table = [[a[0], a[1] - a[0]], [b[0], b[1] - b[0]]]
    expected = chi2_contingency(table, correction=False).pvalue
    assert two_proportion_p_value(Rate(*a), Rate(*b)) == pytest.approx(expected, rel=1e-6)
    assert two_proportion_p_value(Rate(*b), Rate(*a)) == pytest.approx(expected, rel=1e-6)
    # Undefined (no trials, or no variation at all): "no evidence", never an error.
    assert two_proportion_p_value(Rate(*a), Rate(0, 0)) == 1.0
    assert two_proportion_p_value(Rate(0, 10), Rate(0, 30)) == 1.0


def test_variants_split_users_by_weight() -> None:
    experiment = ExperimentConfig(
        "home",
        "salt",
        [VariantConfig("a", 1.0), VariantConfig("off", 0.0), VariantConfig("b", 2.0),
         VariantConfig("c", 1.0)],
    )  # fmt: skip
    names = Counter(assign_variant(experiment, f"user-{n}").name for n in range(20_000))
    assert names["off"] == 0
    for name, share in (("a", 0.25), ("b", 0.5), ("c", 0.25)):
        assert names[name] / 20_000 == pytest.approx(share, abs=0.015), names


def test_report_groups_variants_by_experiment_and_counts_each_list_once() -> None:
    imp, out = tables({"e/a": (100, 10, 5), "e/b": (100, 30, 5), "f/x": (50, 0, 0),
                       "f/y": (50, 25, 1), "g/v/1": (20, 0, 0), "g/v/2": (20, 4, 0)})  # fmt: skip
    carts = pa.table({"variant": ["f/x"], "recommendation_id": ["f/x-0"], "event": ["cart"]})
    rows = {r.variant: r for r in experiment_report(imp, pa.concat_tables([out, carts]))}
    assert [rows[v].impressions for v in ("e/a", "e/b", "f/x", "f/y")] == [100, 100, 50, 50]
    assert rows["f/x"].clicks == Rate(1, 50) and rows["f/x"].conversions == Rate(0, 50)
    assert rows["e/b"].clicks == Rate(30, 100) and rows["f/y"].conversions == Rate(1, 50)
    assert rows["e/a"].click_p_value is None and rows["f/x"].click_p_value is None  # controls
    # No click at all is zero clicks; a variant's own name may hold a slash.
    assert rows["g/v/1"].clicks == Rate(0, 20) and rows["g/v/1"].click_p_value is None
    assert rows["g/v/2"].click_p_value == pytest.approx(
        two_proportion_p_value(Rate(0, 20), Rate(4, 20))
    )
    assert rows["e/b"].click_p_value == pytest.approx(
        two_proportion_p_value(Rate(10, 100), Rate(30, 100))
    )
    assert rows["f/y"].click_p_value == pytest.approx(
        two_proportion_p_value(Rate(1, 50), Rate(25, 50))
    )
    assert rows["f/y"].conversion_p_value == pytest.approx(
        two_proportion_p_value(Rate(0, 50), Rate(1, 50))
    )


def test_formatted_report_lines() -> None:
    """The table operators read: aligned columns, rates with their intervals, p per variant."""
    text = format_report(experiment_report(*tables({"e/a": (200, 20, 2), "e/b": (200, 40, 2)})))
    assert text.splitlines() == [
        "variant                          impressions  click-through (95% CI)             p"
        "  conversion (95% CI)                p",
        "e/a                                      200   10.00% [ 6.57%, 14.94%]     control"
        "    1.00% [ 0.27%,  3.57%]     control",
        "e/b                                      200   20.00% [15.05%, 26.09%]      0.0051"
        "    1.00% [ 0.27%,  3.57%]      1.0000",
    ]


def test_report_on_a_store_without_impressions(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_event_store(url)
    store.append([StoredEvent("u", "i", "view", 1)])
    store.close()
    assert main(["experiments", "report", "--event-store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["experiments", "report", "--event-store", url]) == 0
    assert "no impressions recorded yet" in capsys.readouterr().out


def test_revenue_per_impression_and_per_user_with_intervals_and_welch() -> None:
    """Known spend in, the means, their intervals and Welch's test out; a purchase stored
    without a price is valued at the catalogue's."""
    impressions, outcomes = [], []
    spend = {"e/a": [10.0, 0.0, 0.0, 5.0] * 50, "e/b": [20.0, 0.0, 8.0, 0.0] * 50}
    for variant, amounts in spend.items():
        for n, amount in enumerate(amounts):
            rid = f"{variant}-{n}"
            impressions.append((rid, variant, f"{variant}-user-{n % 100}"))
            if amount and n % 4 == 2:  # bought 2 of the item at half: price x quantity
                outcomes.append((variant, rid, "purchase", "i1", 2.0, amount / 2))
            elif amount:
                outcomes.append((variant, rid, "purchase", "i-no-price", 1.0, None))
            outcomes.append((variant, rid, "view", "i1", 1.0, None))  # a click is no revenue
    catalogue = {"i-no-price": 10.0}
    spend["e/a"] = [10.0, 0.0, 0.0, 10.0] * 50  # the catalogue prices the unpriced: 10
    spend["e/b"] = [10.0, 0.0, 8.0, 0.0] * 50
    imp = pa.table(
        {name: [row[n] for row in impressions]
         for n, name in enumerate(["recommendation_id", "variant", "user_id"])}
    )  # fmt: skip
    columns = ["variant", "recommendation_id", "event", "item_id", "quantity", "price"]
    out = pa.table({name: [row[n] for row in outcomes] for n, name in enumerate(columns)})
    rows = {r.variant: r for r in experiment_report(imp, out, catalogue)}
    for variant in ("e/a", "e/b"):
        values = np.array(spend[variant])
        mean = rows[variant].revenue_per_impression
        assert mean.value == pytest.approx(values.mean()) and mean.n == 200
        half = 1.959964 * values.std(ddof=1) / np.sqrt(200)
        assert (mean.low, mean.high) == pytest.approx((values.mean() - half, values.mean() + half))
        users = values.reshape(2, 100).sum(axis=0)  # each of 100 users saw two lists
        assert rows[variant].revenue_per_user.value == pytest.approx(users.mean())
        assert rows[variant].revenue_per_user.n == 100
    expected = ttest_ind(spend["e/a"], spend["e/b"], equal_var=False).pvalue
    assert rows["e/b"].revenue_p_value == pytest.approx(expected)
    assert rows["e/a"].revenue_p_value is None, "the control"
    text = format_report(list(rows.values()))
    assert "revenue per impression (95% CI)" in text and "control" in text.splitlines()[-2]


def test_a_mean_and_its_interval_exactly() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * np.std(values, ddof=1) / 2.0
    assert Mean.of(values) == Mean(2.5, pytest.approx(2.5 - half), pytest.approx(2.5 + half), 4)
    assert Mean.of(np.array([])) == Mean(0.0, 0.0, 0.0, 0)
    assert Mean.of(np.array([7.0])) == Mean(7.0, 7.0, 7.0, 1), "one value: no spread to tell"
    two = Mean.of(np.array([1.0, 3.0]))  # sd sqrt(2) over sqrt(2) values: half-width Z_95
    assert (two.low, two.high) == (pytest.approx(2 - 1.959964), pytest.approx(2 + 1.959964))


def test_welch_p_value_against_the_textbook_formula() -> None:
    from scipy.stats import t as student_t

    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0, 5.0, 6.0, 9.0])
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    statistic = (a.mean() - b.mean()) / np.sqrt(va + vb)
    freedom = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    expected = 2 * student_t.sf(abs(statistic), freedom)
    assert welch_p_value(a, b) == pytest.approx(expected)
    assert welch_p_value(b, a) == pytest.approx(expected)
    pair, other = np.array([1.0, 2.0]), np.array([4.0, 6.0])  # two values each: a test
    vp, vo = pair.var(ddof=1) / 2, other.var(ddof=1) / 2
    small = (pair.mean() - other.mean()) / np.sqrt(vp + vo)
    small_freedom = (vp + vo) ** 2 / (vp**2 + vo**2)
    assert welch_p_value(pair, other) == pytest.approx(2 * student_t.sf(abs(small), small_freedom))
    assert welch_p_value(other, pair) == welch_p_value(pair, other) < 1.0
    assert welch_p_value(np.array([1.0]), b) == 1.0, "one value: no test"
    assert welch_p_value(a, np.array([2.0])) == 1.0
    assert welch_p_value(np.full(5, 2.0), np.full(4, 2.0)) == 1.0, "no spread at all"
    assert welch_p_value(np.full(5, 2.0), b) < 0.05, "one constant arm still compares"


def test_revenue_sums_each_list_and_counts_a_missing_quantity_once() -> None:
    impressions = pa.table(
        {
            "recommendation_id": ["r1", "r2", "r3", "r4"],
            "variant": ["e/a", "e/a", "e/b", "e/b"],
            "user_id": ["u1", "u2", "u3", "u3"],
        }
    )
    outcomes = pa.table(
        {
            "variant": ["e/a", "e/a", "e/b"],
            "recommendation_id": ["r1", "r1", "r3"],
            "event": ["purchase", "purchase", "purchase"],
            "item_id": ["i1", "i2", "i1"],
            "quantity": pa.array([None, 2.0, 1.0], pa.float64()),
            "price": pa.array([3.0, None, 5.0], pa.float64()),
        }
    )
    rows = {r.variant: r for r in experiment_report(impressions, outcomes, {"i2": 4.0})}
    # r1: 3.0 x 1 (no quantity) + 4.0 (the catalogue's) x 2 = 11.0 after one list.
    assert rows["e/a"].revenue_per_impression.value == pytest.approx(11.0 / 2)
    assert rows["e/a"].revenue_per_user.value == pytest.approx(11.0 / 2)
    assert rows["e/b"].revenue_per_user.value == pytest.approx(5.0), "u3's two lists, one user"
    assert rows["e/b"].revenue_per_user_p_value == pytest.approx(
        welch_p_value(np.array([11.0, 0.0]), np.array([5.0]))
    )
    # An older store: outcomes without prices, or impressions without users: no revenue.
    for older in (
        experiment_report(impressions, outcomes.drop_columns(["price"])),
        experiment_report(impressions.drop_columns(["user_id"]), outcomes),
    ):
        assert all(r.revenue_per_impression is None for r in older)
        assert "revenue per impression" not in format_report(older)


def test_the_formatted_revenue_line() -> None:
    money = Mean(1.5, 1.0, 2.0, 10)
    row = VariantResult("e/b", 10, Rate(2, 10), Rate(1, 10), 0.5, 0.25, money, money, 0.125, 0.0625)
    lines = format_report([row]).splitlines()
    assert lines[1].split() == ["e/b", "10", "20.00%", "[", "5.67%,", "50.98%]", "0.5000",
                                "10.00%", "[", "1.79%,", "40.42%]", "0.2500"]  # fmt: skip
    assert lines[-3] == "" and lines[-2].split() == [
        "variant", "revenue", "per", "impression", "(95%", "CI)", "p",
        "revenue", "per", "user", "(95%", "CI)", "p",
    ]  # fmt: skip
    assert lines[-1].split() == ["e/b", "1.50", "[", "1.00,", "2.00]", "0.1250", "1.50", "[",
                                 "1.00,", "2.00]", "0.0625"]  # fmt: skip


def test_a_variant_named_with_a_slash_stays_in_its_experiment() -> None:
    impressions, outcomes = tables({"e/a": (50, 10, 5), "e/b/2": (50, 20, 9)})
    rows = {r.variant: r for r in experiment_report(impressions, outcomes)}
    assert rows["e/a"].click_p_value is None, "the experiment's first variant is its control"
    assert rows["e/b/2"].click_p_value is not None, "judged against e/a, not a control of its own"
