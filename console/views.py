"""The data behind each console page, gathered from the serving core, the model store and the
event store. No HTTP here: app.py turns requests into these calls and the results into pages."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Loaded with the console, not by the first report page that needs it (about 0.4 s).
import scipy.stats  # noqa: F401

from recsvc.campaigns import Campaign, CampaignSpec
from recsvc.console import charts
from recsvc.console.state import ConsoleState
from recsvc.errors import NotFound
from recsvc.experiments import experiment_report
from recsvc.profiles import STAGES
from recsvc.serving import marketing
from recsvc.serving.campaigns import catalogue_facts
from recsvc.serving.values import Filters, ScoredItem

DAY_MS = 86_400_000
HISTORY_VERSIONS = 20  # versions on the overview's metrics chart
PAGE_SIZE = 50  # segment members per page
EVENTS_TTL_S = 10.0  # how long one read of the stored events serves the pages summarising them


@dataclass(frozen=True)
class ItemCard:
    item_id: str
    category: str
    brand: str
    price: float | None
    available: bool
    score: float | None = None
    reason: str = ""


def item_card(state: ConsoleState, item_id: str, scored: ScoredItem | None = None) -> ItemCard:
    model = state.core.serving.published
    row = model.item_index(item_id)
    if row is None:
        return ItemCard(item_id, "", "", None, False, scored.score if scored else None)
    items = model.items
    price = float(items.price[row])
    return ItemCard(
        item_id,
        str(items.categories[row]),
        str(items.brands[row]) if items.brands is not None else "",
        price if math.isfinite(price) else None,
        bool(items.available[row]),
        float(scored.score) if scored else None,
        scored.reason if scored else "",
    )


def cards(state: ConsoleState, items: Any) -> list[ItemCard]:
    return [item_card(state, i.item_id, i) for i in items]


# Overview


def overview(state: ConsoleState, metrics_url: str) -> dict[str, Any]:
    model = state.core.serving.published
    manifest = model.manifest
    return {
        "version": model.version,
        "model_type": manifest.get("model_type", ""),
        "created_at": manifest.get("created_at", ""),
        "n_users": manifest.get("n_users", 0),
        "n_items": manifest.get("n_items", 0),
        "n_interactions": manifest.get("n_interactions", 0),
        "metrics": manifest.get("metrics", {}).get("all", {}),
        "ingest": manifest.get("ingest", []),
        "cleaning": manifest.get("cleaning", {}),
        "history_chart": state.cached("history", lambda: _history_chart(state)),
        "server": server_metrics(metrics_url) if metrics_url else None,
        "activity": state.cached("activity", lambda: _activity(state)),
    }


def _manifest(state: ConsoleState, version: str) -> dict[str, Any]:
    try:
        return json.loads((state.models.path(version) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def versions(state: ConsoleState) -> list[dict[str, Any]]:
    """Every published version, newest first, with its holdout metrics and gate verdict."""
    current = state.models.current_version()
    rows = []
    for version in reversed(state.models.versions()):
        manifest = _manifest(state, version)
        gate = manifest.get("quality_gate", {})
        rows.append(
            {
                "version": version,
                "current": version == current,
                "model_type": manifest.get("model_type", "?"),
                "created_at": manifest.get("created_at", ""),
                "n_users": manifest.get("n_users", 0),
                "metrics": manifest.get("metrics", {}).get("all", {}),
                "gate": _verdict(gate),
            }
        )
    return rows


def _verdict(gate: dict[str, Any]) -> str:
    if not gate:
        return ""
    if not gate.get("checked", False):
        return f"not checked: {gate.get('reason', '')}"
    return f"passed: {gate.get('reason', '')}" if gate.get("passed", True) else "refused"


def _history_chart(state: ConsoleState) -> str:
    rows = list(reversed(versions(state)[:HISTORY_VERSIONS]))
    if not rows:
        return ""
    labels = [r["version"][:15] for r in rows]
    return charts.lines(
        labels,
        {
            "NDCG@10": [r["metrics"].get("ndcg@10", 0.0) for r in rows],
            "hit rate@10": [r["metrics"].get("hit_rate@10", 0.0) for r in rows],
        },
        "Holdout quality per published version",
    )


def server_metrics(url: str) -> dict[str, Any]:
    """Calls and mean latency per RPC from a server's Prometheus endpoint, or why not."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            text = response.read().decode()
    except (OSError, ValueError) as error:
        return {"error": f"not reachable: {error}"}
    calls: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            method = sample.labels.get("method", "")
            if sample.name == "recsvc_requests_total":
                calls[method] += sample.value
            elif sample.name == "recsvc_request_seconds_sum":
                seconds[method] += sample.value
    return {
        "rows": [
            {"method": m, "calls": int(n), "mean_ms": 1000 * seconds[m] / n if n else 0.0}
            for m, n in calls.most_common()
        ]
    }


def _activity(state: ConsoleState) -> dict[str, Any]:
    """What the servers stored: events by type over the last day and week, and per day."""
    if state.store is None:
        return {"total": 0}
    events = _stored_events(state)
    if events.num_rows == 0:
        return {"total": 0}
    stamps = events.column("timestamp_ms").to_numpy()
    newest = int(stamps.max())
    kinds = events.column("event").to_pylist()
    day = Counter(k for k, t in zip(kinds, stamps, strict=True) if t > newest - DAY_MS)
    week = Counter(k for k, t in zip(kinds, stamps, strict=True) if t > newest - 7 * DAY_MS)
    days = (newest - stamps) // DAY_MS
    recent = np.bincount(days[days < 14].astype(int), minlength=14)[::-1]
    labels = [
        time.strftime("%m-%d", time.gmtime((newest - d * DAY_MS) / 1000)) for d in range(13, -1, -1)
    ]
    return {
        "total": events.num_rows,
        "newest_ms": newest,
        "day": dict(day),
        "week": dict(week),
        "chart": charts.bars(labels, recent.tolist(), "Events stored per day (last 14 days)"),
    }


def _stored_events(state: ConsoleState) -> pa.Table:
    """The event store's events, read once for every page that summarises them (a scan)."""
    assert state.store is not None
    return state.cached("events", state.store.read_events, ttl=EVENTS_TTL_S)


# Customers


def customer(
    state: ConsoleState, user_id: str, filters: Filters, exclude_purchased: bool
) -> dict[str, Any]:
    core = state.core
    try:
        profile = core.user_profile(user_id)
    except NotFound as error:
        profile, unknown = None, str(error)
    else:
        unknown = ""
    listed = core.recommend(user_id, 10, filters, exclude_purchased, count_impression=False)
    page = core.recommend_page(user_id, filters, exclude_purchased, count_impression=False)
    viewed = core.recently_viewed(user_id, 10)
    model = core.serving.published
    row = model.user_index(user_id)
    bought = (
        [str(model.item_ids[i]) for i in model.purchased_by(row)[:10]] if row is not None else []
    )
    cart = [i for i, _ in viewed[:3]] or bought[:3]
    together = core.bought_together(cart, 6, filters) if cart else None
    return {
        "user_id": user_id,
        "profile": profile,
        "unknown": unknown,
        "recommended": cards(state, listed.items),
        "strategy": listed.strategy,
        "stage": listed.lifecycle_stage,
        "fallback": listed.fallback,
        "rows": [(r.title, r.anchor, cards(state, r.items)) for r in page.rows],
        "viewed": [
            (item_card(state, i), time.strftime("%Y-%m-%d %H:%M", time.gmtime(t / 1000)))
            for i, t in viewed
        ],
        "bought": [item_card(state, i) for i in bought],
        "together_for": cart,
        "together": cards(state, together.items) if together else [],
    }


# Items


def item(state: ConsoleState, item_id: str) -> dict[str, Any]:
    core = state.core
    card = item_card(state, item_id)
    similar = core.similar_items(item_id, 8)  # NotFound for an unknown item
    together = core.bought_together([item_id], 8)
    audience = core.find_audience(item_id=item_id, k=10, exclude_buyers=True)
    model = core.serving.published
    row = model.item_index(item_id)
    buyers = 0
    if row is not None:
        column = model.purchased_indices == row
        buyers = int(column.sum())
    return {
        "card": card,
        "similar": cards(state, similar.items),
        "together": cards(state, together.items),
        "together_strategy": together.strategy,
        "audience": list(zip(audience.user_ids, audience.scores, strict=True)),
        "audience_basis": audience.basis,
        "buyers_in_training": buyers,
        "trend": _sales_trend(state, item_id),
    }


def _sales_trend(state: ConsoleState, item_id: str) -> str:
    """Purchases of the item per day, as the servers recorded them (since training)."""
    if state.store is None:
        return ""
    events = _stored_events(state)
    mask = pc.and_(
        pc.equal(events.column("item_id"), item_id), pc.equal(events.column("event"), "purchase")
    )
    stamps = events.filter(mask).column("timestamp_ms").to_numpy()
    if stamps.size == 0:
        return ""
    first = int(stamps.min()) // DAY_MS
    counts = np.bincount((stamps // DAY_MS - first).astype(int))
    labels = [
        time.strftime("%m-%d", time.gmtime((first + d) * DAY_MS / 1000)) for d in range(counts.size)
    ]
    return charts.bars(
        labels, counts.tolist(), f"Purchases of {item_id} per day (recorded since training)"
    )


# Segments


def segments(state: ConsoleState) -> dict[str, Any]:
    listed = state.core.list_segments()

    def mix_chart() -> str:
        labels = [s["id"] for s in listed]
        parts = {stage: [s["stage_mix"].get(stage, 0) for s in listed] for stage in STAGES}
        return charts.stacked(
            labels, parts, "Members per lifecycle stage", height=0.3 * len(labels) + 1.2
        )

    return {
        "segments": listed,
        "mix_chart": state.cached("segment-mix", mix_chart, ttl=math.inf) if listed else "",
    }


def segment(state: ConsoleState, segment_id: str, page: int) -> dict[str, Any]:
    core = state.core
    described = core.get_segment(segment_id)  # NotFound for an unknown id
    serving = core.serving
    profiles = serving.published.profiles
    now = core.now_ms(serving)
    rows = np.flatnonzero(marketing.segment_members(serving, segment_id, now))
    value = np.asarray(profiles.monetary)[rows]
    rows = rows[np.argsort(-value, kind="stable")]
    start = page * PAGE_SIZE
    chosen = rows[start : start + PAGE_SIZE]
    stages = profiles.stages(now)
    risk = np.asarray(profiles.churn_risk)
    members = [
        {
            "user_id": str(profiles.user_ids[r]),
            "orders": int(profiles.orders[r]),
            "monetary": float(profiles.monetary[r]),
            "stage": STAGES[int(stages[r])],
            "churn_risk": float(risk[r]) if np.isfinite(risk[r]) else None,
        }
        for r in chosen
    ]
    return {
        "segment": described,
        "members": members,
        "page": page,
        "pages": max(1, math.ceil(rows.size / PAGE_SIZE)),
        "size": int(rows.size),
    }


# Campaigns


def campaign_spec(form: dict[str, str]) -> CampaignSpec:
    """A CampaignSpec from the console's form (the CLI's flags, as fields)."""

    def number(name: str, default: float) -> float:
        text = form.get(name, "").strip()
        return float(text) if text else default

    attributes = []
    for pair in form.get("attributes", "").split(","):
        name, sep, value = pair.strip().partition("=")
        if sep and name:
            attributes.append((name.strip(), value.strip()))
    churn = form.get("min_churn_risk", "").strip()
    return CampaignSpec(
        form.get("name", "").strip(),
        item_id=form.get("item_id", "").strip(),
        category=form.get("category", "").strip(),
        segment_id=form.get("segment_id", "").strip(),
        min_churn_risk=float(churn) if churn else None,
        stages=tuple(s for s in STAGES if form.get(f"stage_{s}")),
        attributes=tuple(attributes),
        size=int(number("size", 0)),
        control_share=number("control_share", 0.2),
        offer_items=tuple(i for i in form.get("offer_items", "").replace(",", " ").split() if i),
        offer_category=form.get("offer_category", "").strip(),
        offer_recommendations=int(number("offer_recommendations", 0)),
        conversion=form.get("conversion", "offered"),
        window_days=number("window_days", 14.0),
        channel=form.get("channel", "").strip(),
    )


def campaign_preview(campaign: Campaign, sample: int = 20) -> dict[str, Any]:
    treated = len(campaign.treatment)
    return {
        "members": len(campaign.members),
        "treatment": treated,
        "control": len(campaign.members) - treated,
        "reach": campaign.reach,
        "basis": campaign.criteria.get("basis", ""),
        "sample": list(
            zip(
                campaign.members[:sample],
                campaign.control[:sample],
                (campaign.channels or [""] * len(campaign.members))[:sample],
                campaign.send_hours[:sample],
                strict=True,
            )
        ),
    }


def campaign_result(state: ConsoleState, name: str) -> dict[str, Any]:
    campaign, result = state.core.campaign_with_report(name)
    arms = result["arms"]
    names = ("treatment", "control")
    conversion = charts.bars(
        list(names),
        [arms[a]["conversion"] for a in names],
        "Conversion (95% CI)",
        errors=[tuple(arms[a]["conversion_ci"]) for a in names],
        width=3.4,
    )
    revenue = charts.bars(
        list(names),
        [arms[a]["revenue_per_member"]["value"] for a in names],
        "Revenue per member (95% CI)",
        errors=[
            (arms[a]["revenue_per_member"]["low"], arms[a]["revenue_per_member"]["high"])
            for a in names
        ],
        width=3.4,
    )
    return {"campaign": campaign, "result": result, "charts": (conversion, revenue)}


# Experiments


def experiments(state: ConsoleState) -> list[Any]:
    if state.store is None:
        return []
    impressions = state.store.read_impressions()
    if impressions.num_rows == 0:
        return []
    outcomes = state.store.read_outcomes()
    _, prices = catalogue_facts(state.core.serving.published, outcomes)
    return experiment_report(impressions, outcomes, prices)
