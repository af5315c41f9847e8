"""Campaigns: an audience split into a treatment group and a control group held out at random,
and the measured result: conversion and revenue per arm, and the uplift with its interval.

`CampaignSpec` is what a marketer asks for; `Campaign` is what was planned from it (members,
their arm, channel, send hour and, for a recommendations offer, each member's own list) and is
stored as JSON in the event store. Planning lives in recsvc/serving/campaigns.py, beside the
audience ranking it uses.

The split is a hash of the campaign's salt and the user id, so a rerun gives the same groups.
The report compares the arms over the attribution window after the send: conversion (a
purchase of what was offered, or any purchase, as the campaign says) with a normal-approximation
95% interval for the difference and the two-proportion z-test; revenue per member with Welch's
interval and t-test; incremental revenue is the revenue uplift times the treated members.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.errors import InvalidArgument
from recsvc.experiments import Z_95, Mean, Rate, two_proportion_p_value, welch_p_value

MAX_CONTROL_SHARE = 0.9
DAY_MS = 86_400_000
CONVERSIONS = ("offered", "any")
BEST_CHANNEL = "best"  # each member's first configured channel they opted in to
OPTED_IN = frozenset({"1", "true", "yes", "y"})


def in_control(salt: str, user_id: str, share: float) -> bool:
    """Whether the user is held out: deterministic from the salt and the id."""
    digest = hashlib.sha256(f"{salt}\0control\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def opted_in(value: str) -> bool:
    return value.strip().lower() in OPTED_IN


@dataclass(frozen=True)
class CampaignSpec:
    """A campaign as asked for: who (FindAudience's criteria, narrowed by lifecycle stages and
    users-file attributes, capped in size), how many held out, what is offered, how it is
    judged, and by which channel."""

    name: str
    item_id: str = ""
    category: str = ""
    segment_id: str = ""
    min_churn_risk: float | None = None
    stages: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    size: int = 0  # 0 = everyone who matches
    control_share: float = 0.2
    offer_items: tuple[str, ...] = ()
    offer_category: str = ""
    offer_recommendations: int = 0  # k: each member's own recommendations at planning time
    conversion: str = "offered"  # "offered": a purchase of what was offered; "any"
    window_days: float = 14.0
    channel: str = ""  # "" = none chosen; a configured channel; or "best"
    salt: str = ""  # the control split's; "" = a fresh random one (give one to redo a split)

    def check(self, stages: tuple[str, ...], channels: list[str], max_k: int) -> None:
        """Everything that can be said wrong before the audience is ranked."""
        if not self.name or len(self.name) > 128:
            raise InvalidArgument("a campaign needs a name of 1..128 characters")
        if not 0.0 <= self.control_share <= MAX_CONTROL_SHARE:
            raise InvalidArgument(
                f"control share must be within 0..{MAX_CONTROL_SHARE}, got {self.control_share}"
            )
        if self.conversion not in CONVERSIONS:
            raise InvalidArgument(f"conversion must be one of {', '.join(CONVERSIONS)}")
        offers = sum(map(bool, (self.offer_items, self.offer_category, self.offer_recommendations)))
        if offers > 1:
            raise InvalidArgument("offer items, a category or recommendations: one of them")
        if self.conversion == "offered" and not offers:
            raise InvalidArgument(
                "an offer (items, a category or recommendations) is needed to count conversions"
            )
        if not 0 <= self.offer_recommendations <= max_k:
            raise InvalidArgument(f"offer_recommendations must be within 0..{max_k}")
        if not self.window_days > 0:
            raise InvalidArgument("the attribution window must be positive")
        if self.size < 0:
            raise InvalidArgument("size must not be negative")
        bad = [s for s in self.stages if s not in stages]
        if bad:
            raise InvalidArgument(f"unknown lifecycle stage {bad[0]!r}; one of {', '.join(stages)}")
        if self.channel and self.channel != BEST_CHANNEL and self.channel not in channels:
            raise InvalidArgument(
                f"unknown channel {self.channel!r}; one of {', '.join([*channels, BEST_CHANNEL])}"
            )


@dataclass
class Campaign:
    name: str
    salt: str
    created_ms: int
    criteria: dict[str, Any]  # how the audience was chosen, as given
    control_share: float
    offer_items: list[str] = field(default_factory=list)
    offer_category: str = ""
    conversion: str = "offered"
    window_days: float = 14.0
    members: list[str] = field(default_factory=list)
    control: list[bool] = field(default_factory=list)
    channel: str = ""
    channels: list[str] = field(default_factory=list)  # per member; empty with no channel
    send_hours: list[int] = field(default_factory=list)  # per member, UTC
    offer_recommendations: int = 0
    offers: dict[str, list[str]] = field(default_factory=dict)  # member -> own recommendations
    # How many matched the criteria, and how many of them each reach rule left out.
    reach: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Campaign:
        return cls(**json.loads(text))

    @property
    def treatment(self) -> list[str]:
        return [m for m, held in zip(self.members, self.control, strict=True) if not held]

    def offered(self, user_id: str) -> set[str]:
        """Items whose purchase counts as a conversion for this member (besides the category)."""
        return (
            set(self.offers.get(user_id, ()))
            if self.offer_recommendations
            else set(self.offer_items)
        )


def contacts(campaigns: list[Campaign], since_ms: int) -> dict[str, int]:
    """Per customer, the campaigns created after `since_ms` that put them in the treatment group
    (the control group is never contacted)."""
    counted: dict[str, int] = {}
    for campaign in campaigns:
        if campaign.created_ms > since_ms:
            for user in campaign.treatment:
                counted[user] = counted.get(user, 0) + 1
    return counted


def split(members: list[str], salt: str, share: float) -> list[bool]:
    return [in_control(salt, m, share) for m in members]


def report(
    campaign: Campaign, events: pa.Table, categories: dict[str, str], prices: dict[str, float]
) -> dict[str, Any]:
    """Per arm: members, converters, conversion, revenue per member, average order value; and
    the uplift of conversion and revenue per member, with 95% intervals and p-values."""
    start = campaign.created_ms
    end = start + int(campaign.window_days * DAY_MS)
    stamps = events.column("timestamp_ms").to_numpy()
    bought = pc.equal(events.column("event"), "purchase").to_numpy(zero_copy_only=False)
    window = events.filter(pa.array(bought & (stamps > start) & (stamps <= end))).to_pylist()

    def counts(row: dict[str, Any]) -> bool:
        if campaign.conversion == "any":
            return True
        item = row["item_id"]
        return item in campaign.offered(row["user_id"]) or (
            bool(campaign.offer_category) and categories.get(item) == campaign.offer_category
        )

    members = set(campaign.members)
    spend: dict[str, float] = {}
    orders: dict[str, set[int]] = {}
    for row in window:
        if row["user_id"] in members and counts(row):
            price = row["price"] if row["price"] is not None else prices.get(row["item_id"], 0.0)
            user = row["user_id"]
            spend[user] = spend.get(user, 0.0) + float(price) * float(row["quantity"] or 1.0)
            orders.setdefault(user, set()).add(int(row["timestamp_ms"]))
    arms: dict[str, Any] = {}
    values: dict[str, np.ndarray] = {}
    rates: dict[str, Rate] = {}
    for arm, held in (("treatment", False), ("control", True)):
        users = [m for m, c in zip(campaign.members, campaign.control, strict=True) if c == held]
        revenue = np.array([spend.get(u, 0.0) for u in users])
        converters = sum(1 for u in users if u in orders)
        n_orders = sum(len(orders.get(u, ())) for u in users)
        rates[arm], values[arm] = Rate(converters, len(users)), revenue
        low, high = rates[arm].wilson()
        arms[arm] = {
            "members": len(users),
            "converters": converters,
            "conversion": round(rates[arm].value, 6),
            "conversion_ci": [round(low, 6), round(high, 6)],
            "revenue_per_member": asdict(Mean.of(revenue)),
            "average_order_value": round(float(revenue.sum()) / n_orders, 4) if n_orders else 0.0,
        }
    t, c = rates["treatment"], rates["control"]
    diff = t.value - c.value
    spread = (
        math.sqrt(t.value * (1 - t.value) / t.trials + c.value * (1 - c.value) / c.trials)
        if t.trials and c.trials
        else 0.0
    )
    revenue_uplift, revenue_half = _mean_difference(values["treatment"], values["control"])
    treated = len(values["treatment"])
    low, high = revenue_uplift - revenue_half, revenue_uplift + revenue_half
    return {
        "campaign": campaign.name,
        "window": [start, end],
        "conversion": campaign.conversion,
        "arms": arms,
        "conversion_uplift": {
            "value": round(diff, 6),
            "ci": [round(diff - Z_95 * spread, 6), round(diff + Z_95 * spread, 6)],
            "p_value": round(two_proportion_p_value(c, t), 6),
        },
        "revenue_per_member_uplift": {
            "value": round(revenue_uplift, 4),
            "ci": [round(low, 4), round(high, 4)],
            "p_value": round(welch_p_value(values["control"], values["treatment"]), 6),
        },
        "incremental_revenue": {
            "value": round(revenue_uplift * treated, 2),
            "ci": [round(low * treated, 2), round(high * treated, 2)],
        },
    }


def _mean_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of means and the half-width of its 95% interval (Welch)."""
    if a.size < 2 or b.size < 2:
        return (float(a.mean()) if a.size else 0.0) - (float(b.mean()) if b.size else 0.0), 0.0
    half = Z_95 * math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return float(a.mean() - b.mean()), half
