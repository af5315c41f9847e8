"""Precision marketing over the serving model: live profiles, segments and campaign audiences.

Transport-independent like the rest of the core: plain values in, plain values out, domain
errors (NotFound, InvalidArgument) for the interceptor to map to status codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from recsvc.errors import InvalidArgument, NotFound
from recsvc.ids import sorted_positions
from recsvc.profiles import (
    PRICE_BANDS,
    WEEKDAYS,
    UserProfiles,
    apply_fresh,
    stage_span_of,
    stored_row,
)
from recsvc.serving.model import ServingModel

Fresh = list[tuple[str, str, int]]  # (item, event, time) since the model was trained


@dataclass(frozen=True)
class Audience:
    user_ids: list[str]
    scores: list[float]
    basis: str  # how users were ranked, for the campaign's records
    model_version: str


def live_facts(
    serving: ServingModel, user_id: str, fresh: Fresh, with_spend: bool = True
) -> tuple[int | None, dict]:
    """The user's profile row (None if training never saw them) and their stored facts
    advanced by fresh events. Without `with_spend`, fresh purchases add no money (no price
    look-ups): enough for the stage, which reads only times."""
    profiles = serving.published.profiles
    row = profiles.index(user_id)
    facts = stored_row(profiles, row)
    if fresh:
        prices = serving.price_of(fresh) if with_spend else {}
        facts = apply_fresh(facts, fresh, profiles.rules, prices)
    return row, facts


class UserStage(NamedTuple):
    stage: str
    since_ms: int  # the stage holds while the profile clock stays in [since_ms, until_ms)
    until_ms: int
    profile_row: int | None


def user_stage(serving: ServingModel, user_id: str, fresh: Fresh, now_ms: int) -> UserStage:
    """On every Recommend: the stage reads times only, so no prices are looked up."""
    row, facts = live_facts(serving, user_id, fresh, with_spend=False)
    return UserStage(*stage_span_of(facts, serving.published.profiles.rules, now_ms), row)


def user_profile(serving: ServingModel, user_id: str, fresh: Fresh, now_ms: int) -> dict[str, Any]:
    """Everything known about one user; NotFound when neither training nor RecordEvents has
    seen them."""
    profiles = serving.published.profiles
    row, facts = live_facts(serving, user_id, fresh)
    if row is None and not fresh:
        raise NotFound(f"user {user_id!r} has no profile in model {serving.version}")
    attributes: dict[str, str] = {}
    top_categories: list[tuple[str, float]] = []
    top_brands: list[tuple[str, float]] = []
    price_band, hours, weekdays, cluster = "", [], [], -1
    churn_risk = float("nan")
    if row is not None:
        values = profiles.attributes[row].tolist()
        attributes = {n: v for n, v in zip(profiles.attribute_names, values, strict=True) if v}
        top_categories = profiles.tags("category", row)
        top_brands = profiles.tags("brand", row)
        band = int(profiles.price_band[row])
        price_band = PRICE_BANDS[band] if band >= 0 else ""
        hours = [int(h) for h in profiles.active_hours[row] if h >= 0]
        weekdays = [WEEKDAYS[int(d)] for d in profiles.active_weekdays[row] if d >= 0]
        cluster = int(profiles.cluster[row])
        churn_risk = float(profiles.churn_risk[row])
    rfm = profiles.rfm(facts["last_purchase_ms"], facts["orders"], facts["monetary"], now_ms)
    return {
        "user_id": user_id,
        "attributes": attributes,
        "top_categories": top_categories,
        "top_brands": top_brands,
        "price_band": price_band,
        "active_hours_utc": hours,
        "active_weekdays": weekdays,
        "rfm": rfm,
        "lifecycle_stage": stage_span_of(facts, profiles.rules, now_ms)[0],
        "cluster_segment_id": f"cluster:{cluster}" if cluster >= 0 else "",
        "rfm_segment_id": f"rfm:{rfm['segment']}",
        "first_seen_ms": facts["first_ms"],
        "last_seen_ms": facts["last_ms"],
        "fresh_events": len(fresh),
        "model_version": serving.version,
        # As of training; None for a customer it did not score (no purchase yet).
        "churn_risk": churn_risk if np.isfinite(churn_risk) else None,
    }


def list_segments(serving: ServingModel, kind: str = "") -> list[dict[str, Any]]:
    if kind not in ("", "rfm", "cluster"):
        raise InvalidArgument(f"kind must be rfm, cluster or empty, got {kind!r}")
    return [s for s in serving.published.segments if not kind or s["kind"] == kind]


def get_segment(serving: ServingModel, segment_id: str) -> dict[str, Any]:
    for segment in serving.published.segments:
        if segment["id"] == segment_id:
            return segment
    raise NotFound(f"segment {segment_id!r} is not in model {serving.version}")


def segment_members(serving: ServingModel, segment_id: str, now_ms: int) -> np.ndarray:
    """Boolean mask over profile rows: who is in the segment now."""
    get_segment(serving, segment_id)  # NotFound for an unknown id
    profiles = serving.published.profiles
    kind, _, name = segment_id.partition(":")
    if kind == "cluster":
        return np.asarray(profiles.cluster) == int(name)
    return profiles.rfm_segments(now_ms) == name


def find_audience(
    serving: ServingModel,
    *,
    item_id: str,
    category: str,
    segment_id: str,
    k: int,
    exclude_buyers: bool,
    left_out: set[str],
    fresh_buyers: Callable[[set[str]], set[str]],
    now_ms: int,
    propensity_weight: float = 1.0,
    min_churn_risk: float | None = None,
) -> Audience:
    """The k users most likely to buy the item (or from the category), optionally within a
    segment; or, for a segment (or a churn-risk threshold) alone, its most valuable members by
    RFM. With `min_churn_risk`, only customers whose churn risk (as of training) reaches it.
    `left_out` (forgotten users) never appear; `fresh_buyers(item_ids)` gives those who bought
    any of them since training, asked only when buyers are to be left out."""
    if item_id and category:
        raise InvalidArgument("give item_id or category, not both")
    if not (item_id or category or segment_id or min_churn_risk is not None):
        raise InvalidArgument("give an item_id, a category, a segment_id or a min_churn_risk")
    model = serving.published
    profiles = model.profiles
    if item_id or category:
        affinity, basis, targets = _affinity(serving, item_id, category)
        scores = audience_scores(affinity, np.diff(model.purchased_indptr), propensity_weight)
        if propensity_weight:
            basis += f" + {propensity_weight:g} x purchase propensity"
        user_ids = model.user_ids
        eligible = np.isfinite(scores)
        if segment_id:
            members = segment_members(serving, segment_id, now_ms)
            rows = serving.profile_rows
            eligible &= (rows >= 0) & members[np.maximum(rows, 0)]
            basis += f", within {segment_id}"
        if exclude_buyers:
            if targets.size:
                eligible &= ~_bought_any(serving, targets)
            # A new item is its own only target: nobody bought it before training.
            target_ids = set(model.item_ids[targets].tolist()) if targets.size else {item_id}
            left_out = left_out | fresh_buyers(target_ids)
        risk_rows = serving.profile_rows
    else:
        user_ids = profiles.user_ids
        scores = _rfm_value(profiles, now_ms)
        if segment_id:
            eligible = segment_members(serving, segment_id, now_ms)
            basis = f"members of {segment_id}, by RFM value (100 R + 10 F + M, then spend)"
        else:
            eligible = np.ones(user_ids.size, dtype=bool)
            basis = "customers by RFM value (100 R + 10 F + M, then spend)"
        risk_rows = np.arange(user_ids.size)
    if min_churn_risk is not None:
        risk = np.asarray(profiles.churn_risk)[np.maximum(risk_rows, 0)]
        eligible &= (risk_rows >= 0) & (risk >= min_churn_risk)  # NaN (not scored): never
        basis += f", churn risk >= {min_churn_risk:g}"
    if left_out:
        names = np.array(sorted(left_out))
        eligible &= sorted_positions(names, user_ids.astype(names.dtype)) < 0
    candidates = np.flatnonzero(eligible)
    order = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    return Audience(
        [str(u) for u in user_ids[order]],
        [float(s) for s in scores[order]],
        basis,
        serving.version,
    )


def audience_scores(
    affinity: np.ndarray, purchases: np.ndarray, propensity_weight: float
) -> np.ndarray:
    """How likely each user is to buy: the model's affinity for the target and the user's
    propensity to buy at all (log of items bought), each standardised across users.

    A recommender's scores rank items for one user; across users they are not calibrated, and
    how much a user buys matters as much as what they like (see bench/audience.py)."""
    score = _standardised(np.asarray(affinity, dtype=np.float64))
    if propensity_weight:
        score = score + propensity_weight * _standardised(np.log1p(purchases.astype(np.float64)))
    return score


def _standardised(values: np.ndarray) -> np.ndarray:
    spread = values.std() if values.size else 0.0
    return (values - values.mean()) / spread if spread > 0 else values - values.mean()


def _rfm_value(profiles: UserProfiles, now_ms: int) -> np.ndarray:
    """100 R + 10 F + M with spend as a tie-break below one point; 0 for non-buyers."""
    orders = np.asarray(profiles.orders)
    monetary = np.asarray(profiles.monetary, dtype=np.float64)
    r, f, m = profiles.stored_rfm_scores(now_ms)
    spend = monetary / (1.0 + monetary.max()) if monetary.size else monetary
    value = 100.0 * r + 10.0 * f + m + spend
    return np.where(orders > 0, value, 0.0)


def _affinity(
    serving: ServingModel, item_id: str, category: str
) -> tuple[np.ndarray, str, np.ndarray]:
    """(score per model user, how it was computed, the target item indices)."""
    model = serving.published
    n_users = int(model.user_ids.size)
    if item_id:
        item = model.item_index(item_id)
        if item is not None:
            targets = np.array([item])
            scores = model.model.user_affinity(targets, n_users)
            return scores, f"{model.model.model_type} score for {item_id}", targets
        coldstart = model.coldstart
        new = coldstart.new_item_index(item_id) if coldstart is not None else None
        if new is None:
            raise NotFound(f"item {item_id!r} is neither in model {model.version} nor new")
        scores = coldstart.user_affinity_to_new_item(new)
        return scores, f"hybrid score from the attributes of new item {item_id}", np.empty(0, int)
    code = serving.category_vocabulary.get(category)
    if code is None or not category:
        raise NotFound(f"category {category!r} has no item in model {model.version}")
    targets = np.flatnonzero(serving.category_codes == code)
    scores = model.model.user_affinity(targets, n_users)
    basis = f"{model.model.model_type} mean score over {targets.size} {category} items"
    return scores, basis, targets


def _bought_any(serving: ServingModel, items: np.ndarray) -> np.ndarray:
    """Per model user: bought any of `items` before the model was trained."""
    model = serving.published
    indices = np.asarray(model.purchased_indices)
    hits = np.flatnonzero(np.isin(indices, items))
    buyers = np.searchsorted(np.asarray(model.purchased_indptr), hits, side="right") - 1
    bought = np.zeros(model.user_ids.size, dtype=bool)
    bought[buyers] = True
    return bought
