"""A/B experiments: deterministic bucketing, and the report on what each variant achieved.

Bucketing hashes the experiment's salt with the user id, so a user stays in one variant across
calls, processes and restarts, and changing the salt reshuffles everyone. The report counts,
per variant, the lists served (impressions), those followed by a view or cart event carrying
their recommendation id (click-through) and those followed by a purchase (conversion), with
Wilson 95% intervals and a two-sided two-proportion z-test against the first variant; and the
revenue of those purchases (price x quantity, from the event or else the catalogue) per
impression and per user, with 95% intervals and Welch's t-test against the first variant (a
mean over thousands of lists or users is close to normal, even for skewed spend).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import ExperimentConfig, VariantConfig

Z_95 = 1.959964


def assign_variant(experiment: ExperimentConfig, user_id: str) -> VariantConfig:
    """The user's variant: a hash of salt and user id, spread over the variants by weight."""
    digest = hashlib.sha256(f"{experiment.salt}\0{user_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(v.weight for v in experiment.variants)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.weight / total
        if point < edge:
            return variant
    return experiment.variants[-1]


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    def wilson(self) -> tuple[float, float]:
        """95% Wilson score interval: sound near 0 and 1, unlike value +- 1.96 sd."""
        n = self.trials
        if n == 0:
            return 0.0, 0.0
        p = self.value
        centre = p + Z_95**2 / (2 * n)
        spread = Z_95 * math.sqrt(p * (1 - p) / n + Z_95**2 / (4 * n * n))
        denominator = 1 + Z_95**2 / n
        return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def two_proportion_p_value(a: Rate, b: Rate) -> float:
    """Two-sided p-value of H0 "same rate" (pooled z-test); 1.0 when it cannot be computed."""
    if a.trials == 0 or b.trials == 0:
        return 1.0
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if spread == 0:
        return 1.0
    z = (b.value - a.value) / spread
    return math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class Mean:
    """A mean with its 95% interval (normal approximation) over `n` values."""

    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> Mean:
        n = int(values.size)
        if n == 0:
            return cls(0.0, 0.0, 0.0, 0)
        mean = float(values.mean())
        half = Z_95 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
        return cls(mean, mean - half, mean + half, n)


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of H0 "same mean" (Welch's t-test); 1.0 when it cannot be computed."""
    from scipy.stats import ttest_ind

    if a.size < 2 or b.size < 2 or (a.std() == 0 and b.std() == 0):
        return 1.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class VariantResult:
    variant: str
    impressions: int
    clicks: Rate
    conversions: Rate
    click_p_value: float | None  # against the control (first) variant; None for the control
    conversion_p_value: float | None
    # None where the stored events carry no prices or impressions no users (older stores).
    revenue_per_impression: Mean | None = None
    revenue_per_user: Mean | None = None
    revenue_p_value: float | None = None  # per impression, against the control
    revenue_per_user_p_value: float | None = None


def _revenues(
    impressions: pa.Table, outcomes: pa.Table, prices: dict[str, float]
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per variant: the revenue that followed each impression, and each user's."""
    if "price" not in outcomes.column_names or "user_id" not in impressions.column_names:
        return None
    bought = outcomes.filter(pc.equal(outcomes.column("event"), "purchase")).to_pylist()
    following: dict[str, float] = {}
    for row in bought:
        price = row["price"] if row["price"] is not None else prices.get(row["item_id"], 0.0)
        amount = float(row["quantity"] or 1.0) * float(price)
        following[row["recommendation_id"]] = following.get(row["recommendation_id"], 0.0) + amount
    per_impression: dict[str, list[float]] = {}
    per_user: dict[str, dict[str, float]] = {}
    for rid, variant, user in zip(
        impressions.column("recommendation_id").to_pylist(),
        impressions.column("variant").to_pylist(),
        impressions.column("user_id").to_pylist(),
        strict=True,
    ):
        amount = following.get(rid, 0.0)
        per_impression.setdefault(variant, []).append(amount)
        users = per_user.setdefault(variant, {})
        users[user] = users.get(user, 0.0) + amount
    return {
        v: (np.array(per_impression[v]), np.array(list(per_user[v].values())))
        for v in per_impression
    }


def experiment_report(
    impressions: pa.Table, outcomes: pa.Table, prices: dict[str, float] | None = None
) -> list[VariantResult]:
    """Per variant ("experiment/variant"): impressions, click-through, conversion, and the
    revenue per impression and per user (`prices`: the catalogue's, by item id, for purchases
    stored without a price)."""
    if impressions.num_rows == 0:
        return []
    revenues = _revenues(impressions, outcomes, prices or {})
    served = impressions.group_by("variant").aggregate([("recommendation_id", "count")])
    counts = dict(
        zip(
            served.column("variant").to_pylist(),
            served.column("recommendation_id_count").to_pylist(),
            strict=True,
        )
    )
    shown = set(impressions.column("recommendation_id").to_pylist())

    def followed(kinds: list[str]) -> dict[str, int]:
        rows = outcomes.filter(pc.is_in(outcomes.column("event"), pa.array(kinds)))
        rows = rows.filter(pc.is_in(rows.column("recommendation_id"), pa.array(list(shown))))
        distinct = rows.group_by(["variant", "recommendation_id"]).aggregate([])
        per_variant = distinct.group_by("variant").aggregate([("recommendation_id", "count")])
        return dict(
            zip(
                per_variant.column("variant").to_pylist(),
                per_variant.column("recommendation_id_count").to_pylist(),
                strict=True,
            )
        )

    clicked, converted = followed(["view", "cart"]), followed(["purchase"])
    results: list[VariantResult] = []
    for variant in sorted(counts):
        n = int(counts[variant])
        money = revenues.get(variant) if revenues is not None else None
        results.append(
            VariantResult(
                variant,
                n,
                Rate(int(clicked.get(variant, 0)), n),
                Rate(int(converted.get(variant, 0)), n),
                None,
                None,
                Mean.of(money[0]) if money is not None else None,
                Mean.of(money[1]) if money is not None else None,
            )
        )
    by_experiment: dict[str, list[VariantResult]] = {}
    for result in results:
        by_experiment.setdefault(result.variant.split("/", 1)[0], []).append(result)
    report = []
    for group in by_experiment.values():
        control = group[0]
        report.append(control)
        for other in group[1:]:
            money = revenues is not None
            report.append(
                VariantResult(
                    other.variant,
                    other.impressions,
                    other.clicks,
                    other.conversions,
                    two_proportion_p_value(control.clicks, other.clicks),
                    two_proportion_p_value(control.conversions, other.conversions),
                    other.revenue_per_impression,
                    other.revenue_per_user,
                    welch_p_value(revenues[control.variant][0], revenues[other.variant][0])
                    if money
                    else None,
                    welch_p_value(revenues[control.variant][1], revenues[other.variant][1])
                    if money
                    else None,
                )
            )
    return report


def format_report(results: list[VariantResult]) -> str:
    lines = [
        f"{'variant':<32} {'impressions':>11}  {'click-through (95% CI)':<28} "
        f"{'p':>7}  {'conversion (95% CI)':<28} {'p':>7}"
    ]
    for r in results:

        def cell(rate: Rate) -> str:
            low, high = rate.wilson()
            return f"{rate.value:7.2%} [{low:6.2%}, {high:6.2%}]"

        def p(value: float | None) -> str:
            return "control" if value is None else f"{value:7.4f}"

        lines.append(
            f"{r.variant:<32} {r.impressions:>11,}  {cell(r.clicks):<28} {p(r.click_p_value):>7}"
            f"  {cell(r.conversions):<28} {p(r.conversion_p_value):>7}"
        )
    if all(r.revenue_per_impression is not None for r in results):
        lines += ["", f"{'variant':<32} {'revenue per impression (95% CI)':<34} {'p':>7}  "
                  f"{'revenue per user (95% CI)':<34} {'p':>7}"]  # fmt: skip
        for r in results:

            def money(mean: Mean | None) -> str:
                assert mean is not None
                return f"{mean.value:9.2f} [{mean.low:9.2f}, {mean.high:9.2f}]"

            lines.append(
                f"{r.variant:<32} {money(r.revenue_per_impression):<34} "
                f"{p(r.revenue_p_value):>7}  {money(r.revenue_per_user):<34} "
                f"{p(r.revenue_per_user_p_value):>7}"
            )
    return "\n".join(lines)
