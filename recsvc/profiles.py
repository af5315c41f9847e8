"""Customer profiles: the arrays training writes, and the rules both training and serving apply.

A profile is what a marketer reads about one customer: attributes from the users file, tags
from behaviour (top categories and brands with their share of the user's event weight,
preferred price band, active hours and weekdays), RFM scores and segment, lifecycle stage and
behavioural cluster. Training stores them as column arrays (one row per user, sorted ids) so
that server processes memory-map them; serving re-applies the recency rules to the stored
times plus the user's fresh events, so stage, recency and RFM stay current between trainings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.config import ProfilesConfig
from recsvc.ids import lookup_sorted

DAY_MS = 86_400_000
# Open ends of a stage's span of validity (int64 milliseconds).
EARLIEST_MS, LATEST_MS = -(2**63), 2**63 - 1
STAGES = ("new", "active", "reactivated", "at_risk", "churned")
PRICE_BANDS = ("budget", "value", "mid", "upper", "premium")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NO_PURCHASE_SEGMENT = "prospect"
# The RFM segment map on (recency score, frequency score), each 1-5; the first match wins and
# together they cover all 25 cells. Names follow the usual marketing vocabulary.
RFM_SEGMENTS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("champions", (4, 5), (4, 5)),
    ("loyal", (3, 5), (3, 5)),
    ("cant_lose_them", (1, 1), (4, 5)),
    ("at_risk", (1, 2), (3, 5)),
    ("new_customers", (5, 5), (1, 1)),
    ("promising", (4, 5), (1, 2)),
    ("need_attention", (3, 3), (1, 2)),
    ("hibernating", (2, 2), (1, 2)),
    ("lost", (1, 1), (1, 2)),
)
# The arrays saved as <name>.npy, with their dtypes (None: strings, as built).
_ARRAYS = {
    "user_ids": None,
    "has_events": np.bool_,
    "first_ms": np.int64,
    "last_ms": np.int64,
    "reactivated_ms": np.int64,  # newest event that followed a gap (0: none)
    "last_purchase_ms": np.int64,  # 0: never bought
    "orders": np.int32,
    "monetary": np.float64,
    "price_band": np.int8,  # index into PRICE_BANDS, -1 unknown
    "active_hours": np.int8,  # (n, 3) hours of day (UTC), busiest first, -1 pad
    "active_weekdays": np.int8,  # (n, 2) index into WEEKDAYS, -1 pad
    "cluster": np.int16,  # behavioural cluster, -1 none
    "attributes": None,  # (n, len(attribute_names)) strings from the users file
    "category_indptr": np.int64,  # CSR rows: top categories per user
    "category_codes": np.int32,
    "category_weights": np.float32,
    "category_vocabulary": None,
    "brand_indptr": np.int64,
    "brand_codes": np.int32,
    "brand_weights": np.float32,
    "brand_vocabulary": None,
    "churn_risk": np.float32,  # 0..1 of no purchase within the churn horizon; NaN: not scored
}
# Arrays a model published before them lacks: filled with these values on load.
_ADDED_LATER = {"churn_risk": np.nan}
META_FILE = "profiles.json"


@dataclass(frozen=True)
class LifecycleRules:
    new_ms: int
    at_risk_ms: int
    churned_ms: int
    reactivated_gap_ms: int

    @classmethod
    def of(cls, config: ProfilesConfig | dict[str, Any]) -> LifecycleRules:
        get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
        return cls(
            new_ms=int(float(get("new_days")) * DAY_MS),
            at_risk_ms=int(float(get("at_risk_days")) * DAY_MS),
            churned_ms=int(float(get("churned_days")) * DAY_MS),
            reactivated_gap_ms=int(float(get("reactivated_gap_days")) * DAY_MS),
        )

    def stage(
        self, has_events: bool, first_ms: int, last_ms: int, reactivated_ms: int, now_ms: int
    ) -> str:
        """One user's stage: the same checks as `stages`, without numpy, for the request path."""
        if has_events and now_ms - last_ms >= self.churned_ms:
            return "churned"
        if has_events and now_ms - last_ms >= self.at_risk_ms:
            return "at_risk"
        if not has_events or now_ms - first_ms < self.new_ms:
            return "new"
        if reactivated_ms > 0 and now_ms - reactivated_ms < self.at_risk_ms:
            return "reactivated"
        return "active"

    def stage_span(
        self, has_events: bool, first_ms: int, last_ms: int, reactivated_ms: int, now_ms: int
    ) -> tuple[str, int, int]:
        """The stage at `now_ms` and the span [since, until) of "now" over which it holds.

        Each check compares "now" with a fixed time, so the stage can change only at those
        times: the request path caches a stage for as long as its clock stays in the span."""
        edges = []
        if has_events:
            edges += [first_ms + self.new_ms, last_ms + self.at_risk_ms, last_ms + self.churned_ms]
        if reactivated_ms > 0:
            edges.append(reactivated_ms + self.at_risk_ms)
        since = max((e for e in edges if e <= now_ms), default=EARLIEST_MS)
        until = min((e for e in edges if e > now_ms), default=LATEST_MS)
        return self.stage(has_events, first_ms, last_ms, reactivated_ms, now_ms), since, until

    def stages(
        self,
        has_events: np.ndarray,
        first_ms: np.ndarray,
        last_ms: np.ndarray,
        reactivated_ms: np.ndarray,
        now_ms: int,
    ) -> np.ndarray:
        """Stage index (into STAGES) per user, by the documented order of checks."""
        idle = now_ms - last_ms
        stage = np.full(has_events.shape, STAGES.index("active"), dtype=np.int8)
        reactivated = (reactivated_ms > 0) & (now_ms - reactivated_ms < self.at_risk_ms)
        stage[reactivated] = STAGES.index("reactivated")
        stage[(now_ms - first_ms < self.new_ms) | ~has_events] = STAGES.index("new")
        stage[has_events & (idle >= self.at_risk_ms)] = STAGES.index("at_risk")
        stage[has_events & (idle >= self.churned_ms)] = STAGES.index("churned")
        return stage


def quantile_score(values: np.ndarray, edges: list[float], higher_is_better: bool) -> np.ndarray:
    """1-5 from four quintile edges; ties stay together."""
    above = (np.asarray(values, dtype=float)[..., None] > np.asarray(edges, dtype=float)).sum(-1)
    return (1 + above if higher_is_better else 5 - above).astype(np.int8)


def rfm_segment(recency: int, frequency: int) -> str:
    for name, (r_low, r_high), (f_low, f_high) in RFM_SEGMENTS:
        if r_low <= recency <= r_high and f_low <= frequency <= f_high:
            return name
    return NO_PURCHASE_SEGMENT


# rfm_segment for every (r, f) cell, so that a million users are named in one indexing step.
_SEGMENT_GRID = np.array(
    [[rfm_segment(r, f) for f in range(6)] for r in range(6)], dtype=object
).astype(str)


@dataclass
class UserProfiles:
    """Column arrays, one row per user; `meta` holds the RFM edges and lifecycle rules."""

    arrays: dict[str, np.ndarray]
    attribute_names: list[str]
    meta: dict[str, Any]

    @property
    def user_ids(self) -> np.ndarray:
        return self.arrays["user_ids"]

    @property
    def size(self) -> int:
        return int(self.user_ids.size)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @cached_property
    def rules(self) -> LifecycleRules:  # read on every request: parsed once
        return LifecycleRules.of(self.meta["rules"])

    def index(self, user_id: str) -> int | None:
        return lookup_sorted(self.user_ids, user_id)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, dtype in _ARRAYS.items():  # the format's arrays, in their declared dtypes
            array = np.asarray(self.arrays[name], dtype=dtype)
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        meta = {**self.meta, "attribute_names": self.attribute_names}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> UserProfiles:
        meta = json.loads((directory / META_FILE).read_text())
        arrays = {
            name: np.asarray(
                np.load(
                    directory / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False
                )
            )
            for name in _ARRAYS
            if name not in _ADDED_LATER or (directory / f"{name}.npy").is_file()
        }
        for name, value in _ADDED_LATER.items():
            if name not in arrays:
                arrays[name] = np.full(arrays["user_ids"].size, value, dtype=_ARRAYS[name])
        return cls(arrays, list(meta.pop("attribute_names")), meta)

    def stages(self, now_ms: int) -> np.ndarray:
        """Every user's stage index (into STAGES) as of `now_ms`, from the stored times."""
        return self.rules.stages(
            self.has_events, self.first_ms, self.last_ms, self.reactivated_ms, now_ms
        )

    def rfm_scores(
        self, days: np.ndarray, orders: np.ndarray, monetary: np.ndarray, now_ms: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R, F, M), each 1-5 on the training run's buyer quintiles, as of `now_ms`.

        The recency edges move with the clock: as time passes since the training data ended,
        every buyer's recency grows alike, so scoring against the edges as they were would
        slowly empty the best segments (a clock moved by a month leaves no champion). Shifted,
        a customer's R changes only with their own purchases, and live segments agree with the
        training run's segments until someone buys."""
        edges = self.meta["rfm_edges"]
        moved_days = max(0.0, (now_ms - int(self.meta.get("as_of_ms", now_ms))) / DAY_MS)
        return (
            quantile_score(days, [e + moved_days for e in edges["recency_days"]], False),
            quantile_score(orders, edges["frequency"], True),
            quantile_score(monetary, edges["monetary"], True),
        )

    def stored_rfm_scores(self, now_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every user's (R, F, M) from the stored facts, as of `now_ms`."""
        days = (now_ms - np.asarray(self.last_purchase_ms)) / DAY_MS
        return self.rfm_scores(days, np.asarray(self.orders), np.asarray(self.monetary), now_ms)

    def rfm_segments(self, now_ms: int) -> np.ndarray:
        """Every user's RFM segment as of `now_ms` ("prospect" for those who never bought)."""
        r, f, _ = self.stored_rfm_scores(now_ms)
        names = _SEGMENT_GRID[r, f]
        return np.where(self.orders > 0, names, NO_PURCHASE_SEGMENT)

    def tags(self, kind: str, row: int) -> list[tuple[str, float]]:
        indptr = self.arrays[f"{kind}_indptr"]
        start, end = int(indptr[row]), int(indptr[row + 1])
        vocabulary = self.arrays[f"{kind}_vocabulary"]
        codes = self.arrays[f"{kind}_codes"][start:end]
        weights = self.arrays[f"{kind}_weights"][start:end]
        return [(str(vocabulary[c]), float(w)) for c, w in zip(codes, weights, strict=True)]

    def rfm(self, last_purchase_ms: int, orders: int, monetary: float, now_ms: int) -> dict:
        """Recency in days, the three 1-5 scores and the segment, as of `now_ms`."""
        if orders <= 0:
            return {
                "recency_days": -1.0,
                "frequency": 0,
                "monetary": 0.0,
                "r": 0,
                "f": 0,
                "m": 0,
                "segment": NO_PURCHASE_SEGMENT,
            }
        days = max(0.0, (now_ms - last_purchase_ms) / DAY_MS)
        r, f, m = (
            int(score[0])
            for score in self.rfm_scores(
                np.array([days]), np.array([orders]), np.array([monetary]), now_ms
            )
        )
        return {
            "recency_days": round(days, 2),
            "frequency": int(orders),
            "monetary": round(float(monetary), 2),
            "r": r,
            "f": f,
            "m": m,
            "segment": rfm_segment(r, f),
        }


def stored_row(profiles: UserProfiles, row: int | None) -> dict[str, Any]:
    """The stored facts of one user (row None: a user only seen in fresh events)."""
    if row is None:
        return {
            "has_events": False,
            "first_ms": 0,
            "last_ms": 0,
            "reactivated_ms": 0,
            "last_purchase_ms": 0,
            "orders": 0,
            "monetary": 0.0,
        }
    a = profiles.arrays
    return {
        "has_events": bool(a["has_events"][row]),
        "first_ms": int(a["first_ms"][row]),
        "last_ms": int(a["last_ms"][row]),
        "reactivated_ms": int(a["reactivated_ms"][row]),
        "last_purchase_ms": int(a["last_purchase_ms"][row]),
        "orders": int(a["orders"][row]),
        "monetary": float(a["monetary"][row]),
    }


def apply_fresh(
    facts: dict[str, Any],
    fresh: list[tuple[str, str, int]],
    rules: LifecycleRules,
    price_of: dict[str, float],
) -> dict[str, Any]:
    """The stored facts advanced by the user's fresh (item, event, time) events, oldest first:
    the same rules training applied to the log, so a returning customer is reactivated and a
    new purchase counts at once."""
    facts = dict(facts)
    orders: set[int] = set()
    for item_id, event, stamp in sorted(fresh, key=lambda e: e[2]):
        if not facts["has_events"]:
            facts.update(has_events=True, first_ms=stamp, last_ms=stamp)
        elif stamp > facts["last_ms"]:
            if stamp - facts["last_ms"] >= rules.reactivated_gap_ms:
                facts["reactivated_ms"] = stamp
            facts["last_ms"] = stamp
        if event == "purchase":
            facts["last_purchase_ms"] = max(facts["last_purchase_ms"], stamp)
            if stamp not in orders:
                orders.add(stamp)
                facts["orders"] += 1
            facts["monetary"] += price_of.get(item_id, 0.0)
    return facts


def stage_span_of(
    facts: dict[str, Any], rules: LifecycleRules, now_ms: int
) -> tuple[str, int, int]:
    return rules.stage_span(
        facts["has_events"], facts["first_ms"], facts["last_ms"], facts["reactivated_ms"], now_ms
    )
