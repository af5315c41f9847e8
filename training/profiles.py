"""Builds customer profiles and segments from one training run's clean inputs.

Everything is computed with sorts and bincounts over the event columns, so a log of millions of
events takes seconds. Segments are of two kinds: RFM segments (rules on the RFM scores) and
behavioural clusters (k-means over the users' vectors); each is described for a marketer by
size, top categories, average order value and stage mix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import Config
from recsvc.ids import sorted_positions
from recsvc.models import FactorRecommender, Recommender
from recsvc.profiles import (
    PRICE_BANDS,
    STAGES,
    LifecycleRules,
    UserProfiles,
)
from recsvc.training.interactions import encode_sorted

QUINTILES = (0.2, 0.4, 0.6, 0.8)
SVD_FACTORS = 32
KMEANS_ITERATIONS = 25
HIGH_CHURN_RISK = 0.5  # segments count the members at or above it


def build_profiles(
    events: pa.Table,
    items: pa.Table | None,
    users: pa.Table | None,
    config: Config,
) -> UserProfiles:
    """One profile per user in the events or the users file, as of the newest event."""
    profile_cfg = config.profiles
    # Ids are dictionary-encoded once: per-event work is on integer codes, never on strings.
    user_codes, event_users = encode_sorted(events.column("user_id"))
    listed = (
        users.column("user_id").to_numpy(zero_copy_only=False).astype(str)
        if users is not None
        else np.empty(0, dtype=str)
    )
    user_ids = np.union1d(event_users, listed) if listed.size else event_users
    n = user_ids.size
    user = sorted_positions(user_ids, event_users)[user_codes]
    stamps = events.column("timestamp_ms").to_numpy()
    bought = pc.equal(events.column("event"), "purchase").to_numpy(zero_copy_only=False)
    catalogue_row = _catalogue_rows(events, items)
    now_ms = int(stamps.max()) if stamps.size else 0
    rules = LifecycleRules.of(profile_cfg)

    order = np.lexsort((stamps, user))
    user_sorted, stamps_sorted = user[order], stamps[order]
    has_events = np.bincount(user, minlength=n) > 0
    first_ms = np.zeros(n, dtype=np.int64)
    last_ms = np.zeros(n, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]]) if n else []
    if stamps.size:
        first_ms[user_sorted[starts]] = stamps_sorted[starts]
        ends = np.r_[np.asarray(starts)[1:], user_sorted.size] - 1
        last_ms[user_sorted[ends]] = stamps_sorted[ends]
    # An event that follows a long enough gap in the same user's history is a return.
    reactivated_ms = np.zeros(n, dtype=np.int64)
    returned = np.flatnonzero(
        (user_sorted[1:] == user_sorted[:-1])
        & (stamps_sorted[1:] - stamps_sorted[:-1] >= rules.reactivated_gap_ms)
    )
    np.maximum.at(reactivated_ms, user_sorted[returned + 1], stamps_sorted[returned + 1])

    price = _event_prices(events, items, catalogue_row)
    last_purchase_ms = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_purchase_ms, user[bought], stamps[bought])
    # An order is one purchase moment: the lines of one basket share a timestamp.
    baskets = np.unique(np.column_stack([user[bought], stamps[bought]]), axis=0)
    orders = (
        np.bincount(baskets[:, 0], minlength=n).astype(np.int32)
        if baskets.size
        else (np.zeros(n, dtype=np.int32))
    )
    quantity = events.column("quantity").to_numpy()
    monetary = np.bincount(user[bought], weights=(quantity * price)[bought], minlength=n)

    buyers = orders > 0
    days = (now_ms - last_purchase_ms[buyers]) / 86_400_000
    rfm_edges = {
        "recency_days": _edges(days),
        "frequency": _edges(orders[buyers]),
        "monetary": _edges(monetary[buyers]),
    }
    event_weight = _weights(events, config)
    arrays: dict[str, np.ndarray] = {
        "user_ids": user_ids,
        "has_events": has_events,
        "first_ms": first_ms,
        "last_ms": last_ms,
        "reactivated_ms": reactivated_ms,
        "last_purchase_ms": last_purchase_ms,
        "orders": orders,
        "monetary": monetary,
        "price_band": _price_bands(user, price, event_weight, n, items),
        "active_hours": _busiest(user, (stamps // 3_600_000) % 24, 24, 3, n),
        # 1970-01-01 was a Thursday: day 0 is weekday 3 counting from Monday.
        "active_weekdays": _busiest(user, (stamps // 86_400_000 + 3) % 7, 7, 2, n),
        "cluster": np.full(n, -1, dtype=np.int16),
        "churn_risk": np.full(n, np.nan, dtype=np.float32),  # set by the churn model
    }
    for kind in ("category", "brand"):
        vocabulary, codes = _catalogue_codes(items, kind)
        indptr, codes, tag_weights = _top_tags(
            user,
            np.append(codes, -1)[catalogue_row],  # row -1 (not in the catalogue): code -1
            vocabulary.size,
            event_weight,
            n,
            profile_cfg.top_tags,
        )
        arrays |= {
            f"{kind}_indptr": indptr,
            f"{kind}_codes": codes,
            f"{kind}_weights": tag_weights,
            f"{kind}_vocabulary": vocabulary.astype(str),
        }
    names, attributes = _attributes(user_ids, users)
    arrays["attributes"] = attributes
    meta = {
        "as_of_ms": now_ms,
        "rules": {
            "new_days": profile_cfg.new_days,
            "at_risk_days": profile_cfg.at_risk_days,
            "churned_days": profile_cfg.churned_days,
            "reactivated_gap_days": profile_cfg.reactivated_gap_days,
        },
        "rfm_edges": rfm_edges,
    }
    return UserProfiles(arrays, names, meta)


def _weights(events: pa.Table, config: Config) -> np.ndarray:
    weight = np.zeros(events.num_rows)
    column = events.column("event")
    for name in ("view", "cart", "purchase"):
        weight[pc.equal(column, name).to_numpy(zero_copy_only=False)] = config.signals.weight(name)
    return weight


def _edges(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return [0.0] * len(QUINTILES)
    return [float(v) for v in np.quantile(values.astype(float), QUINTILES)]


def _catalogue_rows(events: pa.Table, items: pa.Table | None) -> np.ndarray:
    """Row of each event's item in the catalogue; -1 where the catalogue lacks it."""
    if items is None:
        return np.full(events.num_rows, -1, dtype=np.int64)
    codes, event_items = encode_sorted(events.column("item_id"))
    catalogue = items.column("item_id").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(catalogue)
    pos = sorted_positions(catalogue[order], event_items)
    return np.where(pos >= 0, order[np.maximum(pos, 0)], -1)[codes]


def _catalogue_codes(items: pa.Table | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted vocabulary, code per catalogue row) of a text column; -1 where empty."""
    if items is None:
        return np.empty(0, dtype=str), np.empty(0, dtype=np.int64)
    values = np.asarray(items.column(name).fill_null("").to_numpy(zero_copy_only=False), str)
    vocabulary, codes = np.unique(values, return_inverse=True)
    codes = codes.astype(np.int64)
    if vocabulary.size and vocabulary[0] == "":
        vocabulary, codes = vocabulary[1:], codes - 1
    return vocabulary, codes


def _event_prices(events: pa.Table, items: pa.Table | None, row: np.ndarray) -> np.ndarray:
    """Each event's unit price: the event's own, else the catalogue's, else 0."""
    price = events.column("price").to_numpy(zero_copy_only=False).astype(float)
    if items is not None:
        catalogue = np.append(
            items.column("price").to_numpy(zero_copy_only=False).astype(float), np.nan
        )
        price = np.where(np.isnan(price), catalogue[row], price)  # row -1: the appended NaN
    return np.nan_to_num(price, nan=0.0)


def _price_bands(
    user: np.ndarray, price: np.ndarray, weight: np.ndarray, n: int, items: pa.Table | None
) -> np.ndarray:
    """Band of each user's weighted mean price, on the catalogue's price quintiles."""
    band = np.full(n, -1, dtype=np.int8)
    known = price > 0
    if items is None or not known.any():
        return band
    catalogue = items.column("price").to_numpy(zero_copy_only=False).astype(float)
    catalogue = catalogue[~np.isnan(catalogue)]
    if catalogue.size == 0:
        return band
    edges = np.quantile(catalogue, QUINTILES)
    total = np.bincount(user[known], weights=weight[known], minlength=n)
    spent = np.bincount(user[known], weights=(weight * price)[known], minlength=n)
    has = total > 0
    mean = np.divide(spent, total, out=np.zeros(n), where=has)
    band[has] = np.searchsorted(edges, mean[has], side="right").astype(np.int8)
    assert band.max() < len(PRICE_BANDS)
    return band


def _busiest(user: np.ndarray, slot: np.ndarray, slots: int, keep: int, n: int) -> np.ndarray:
    """The `keep` slots (hours, weekdays) with most events per user, busiest first."""
    counts = np.bincount(user * slots + slot, minlength=n * slots).reshape(n, slots)
    top = np.argsort(-counts, axis=1, kind="stable")[:, :keep]
    return np.where(np.take_along_axis(counts, top, axis=1) > 0, top, -1).astype(np.int8)


def _top_tags(
    user: np.ndarray, codes: np.ndarray, n_values: int, weight: np.ndarray, n: int, keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user, the `keep` value codes with the largest share of the user's event weight."""
    present = codes >= 0
    width = max(1, n_values)
    pairs, inverse = np.unique(
        user[present].astype(np.int64) * width + codes[present], return_inverse=True
    )
    sums = np.bincount(inverse, weights=weight[present])
    pair_user, pair_code = pairs // width, pairs % width
    totals = np.bincount(pair_user, weights=sums, minlength=n)
    share = sums / np.where(totals[pair_user] > 0, totals[pair_user], 1.0)
    order = np.lexsort((-share, pair_user))
    rank = np.arange(order.size) - np.searchsorted(pair_user[order], pair_user[order])
    kept = order[rank < keep]
    counts = np.bincount(pair_user[kept], minlength=n)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return indptr, pair_code[kept].astype(np.int32), share[kept].astype(np.float32)


def _attributes(user_ids: np.ndarray, users: pa.Table | None) -> tuple[list[str], np.ndarray]:
    if users is None:
        return [], np.empty((user_ids.size, 0), dtype=str)
    names = [c for c in users.column_names if c != "user_id"]
    rows = sorted_positions(
        user_ids, users.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    )
    table = np.full((user_ids.size, len(names)), "", dtype=object)
    for j, name in enumerate(names):
        table[rows, j] = users.column(name).to_pylist()
    return names, table.astype(str)


def assign_clusters(
    profiles: UserProfiles,
    model: Recommender,
    model_user_ids: np.ndarray,
    confidence: sp.csr_matrix,
    clusters: int,
    seed: int,
) -> str:
    """k-means over the users' vectors, written into `profiles`; returns what was clustered."""
    import faiss

    if isinstance(model, FactorRecommender):
        vectors, source = np.asarray(model.user_factors, dtype=np.float32), "model user factors"
    else:
        from scipy.sparse.linalg import svds

        rank = min(SVD_FACTORS, min(confidence.shape) - 1)
        if rank < 1:
            return "none: too little data"
        left, singular, _ = svds(confidence.astype(np.float64), k=rank, random_state=seed)
        vectors, source = (left * singular).astype(np.float32), f"truncated SVD, {rank} factors"
    k = min(clusters, vectors.shape[0])
    if k < 2:
        return "none: too few users"
    # Unit length, so that clusters group tastes rather than activity levels.
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    kmeans = faiss.Kmeans(
        vectors.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False
    )
    kmeans.train(np.ascontiguousarray(vectors))
    _, assigned = kmeans.index.search(np.ascontiguousarray(vectors), 1)
    rows = sorted_positions(profiles.user_ids, np.asarray(model_user_ids, dtype=str))
    profiles.arrays["cluster"][rows[rows >= 0]] = assigned[rows >= 0, 0]
    return f"k-means (k={k}) over {source}"


def describe_segments(profiles: UserProfiles, clustering: str) -> list[dict[str, Any]]:
    """Every RFM segment and cluster, described for a marketer."""
    now_ms = int(profiles.meta["as_of_ms"])
    stages = profiles.stages(now_ms)
    rfm = profiles.rfm_segments(now_ms)
    segments = [
        _describe(profiles, rfm == name, stages, f"rfm:{name}", "rfm", name, "RFM scores")
        for name in sorted(set(rfm.tolist()))
    ]
    for cluster in sorted(set(profiles.cluster.tolist()) - {-1}):
        segment = _describe(
            profiles,
            profiles.cluster == cluster,
            stages,
            f"cluster:{cluster}",
            "cluster",
            "",
            clustering,
        )
        top = ", ".join(c for c, _ in segment["top_categories"][:3])
        segment["name"] = f"cluster {cluster}: {top or 'no category data'}"
        segments.append(segment)
    return segments


def _top_categories(profiles: UserProfiles, members: np.ndarray) -> list[tuple[str, float]]:
    indptr = profiles.category_indptr
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(profiles.size), counts)
    chosen = members[rows]
    weights = np.bincount(
        profiles.category_codes[chosen],
        weights=profiles.category_weights[chosen],
        minlength=profiles.category_vocabulary.size,
    )
    total = weights.sum()
    order = np.argsort(-weights)[:5]
    return [
        (str(profiles.category_vocabulary[c]), round(float(weights[c] / total), 4))
        for c in order
        if weights[c] > 0
    ]


def _describe(
    profiles: UserProfiles,
    members: np.ndarray,
    stages: np.ndarray,
    segment_id: str,
    kind: str,
    name: str,
    method: str,
) -> dict[str, Any]:
    orders = int(profiles.orders[members].sum())
    return {
        "id": segment_id,
        "kind": kind,
        "name": name,
        "size": int(members.sum()),
        "top_categories": _top_categories(profiles, members),
        "average_order_value": round(float(profiles.monetary[members].sum()) / orders, 2)
        if orders
        else 0.0,
        "stage_mix": {stage: int((stages[members] == i).sum()) for i, stage in enumerate(STAGES)},
        "clustering": method,
        **_churn_of(profiles, members),
    }


def _churn_of(profiles: UserProfiles, members: np.ndarray) -> dict[str, Any]:
    """The mean churn risk of the members it scored, and how many are at high risk."""
    risk = np.asarray(profiles.churn_risk)[members]
    scored = risk[np.isfinite(risk)]
    return {
        "churn_risk": round(float(scored.mean()), 4) if scored.size else None,
        "high_churn_risk": int((scored >= HIGH_CHURN_RISK).sum()),
    }
