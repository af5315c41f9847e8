"""Publishes a generated model of 1,000,000 users x 1,000,000 items with 64 factors.

The factors have structure (users and items drawn around 2,000 taste clusters), so that nearest
neighbours are meaningful and the approximate index's recall is a real measurement. Each user has
a 10-item history and 2 purchases (also the event log its profiles and segments come
from); items have categories, prices, availability, promotions and
first-seen times, so that every business rule has something to act on. The published version is
an ordinary ALS model: `recsvc serve` loads it like any other.

    .venv/bin/python bench/million.py --out var/bench/million [--users N --items N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsvc.config import Config
from recsvc.models import ALSRecommender, PopularityRecommender, TrendingRecommender
from recsvc.modelstore import ModelStore
from recsvc.profiles import UserProfiles
from recsvc.published import ItemAttributes, write_published
from recsvc.training.pipeline import build_ann
from recsvc.training.profiles import assign_clusters, build_profiles, describe_segments
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]

FACTORS = 64
CLUSTERS = 2_000
HISTORY = 10


def ids(prefix: str, n: int) -> np.ndarray:
    width = len(str(n))
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


def generate(n_users: int, n_items: int, seed: int, progress: Progress) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    with progress.stage("factors") as tally:
        centres = rng.standard_normal((CLUSTERS, FACTORS)).astype(np.float32)
        item_cluster = rng.integers(0, CLUSTERS, n_items)
        items = centres[item_cluster] + 0.5 * rng.standard_normal((n_items, FACTORS)).astype(
            np.float32
        )
        user_cluster = rng.integers(0, CLUSTERS, n_users)
        users = centres[user_cluster] + 0.5 * rng.standard_normal((n_users, FACTORS)).astype(
            np.float32
        )
        tally.count, tally.unit = n_users + n_items, "vectors"
    with progress.stage("histories") as tally:
        # Items of the user's own cluster, found through a cluster -> items table.
        order = np.argsort(item_cluster, kind="stable")
        starts = np.searchsorted(item_cluster[order], np.arange(CLUSTERS))
        sizes = np.diff(np.r_[starts, n_items])
        picks = rng.random((n_users, HISTORY))
        own = np.maximum(sizes[user_cluster], 1)[:, None]
        columns = order[
            np.minimum(
                starts[user_cluster][:, None] + (picks * own).astype(np.int64),
                n_items - 1,
            )
        ]
        columns = np.sort(columns, axis=1)
        rows = np.repeat(np.arange(n_users), HISTORY)
        history = sp.csr_matrix(
            (
                np.log1p(rng.integers(1, 9, n_users * HISTORY)).astype(np.float32),
                (rows, columns.ravel()),
            ),
            shape=(n_users, n_items),
        )
        history.sum_duplicates()
        bought = history[:, :].copy()
        bought.data[:] = 1.0
        keep = rng.random(bought.nnz) < 0.2
        bought.data[~keep] = 0.0
        bought.eliminate_zeros()
        tally.count, tally.unit = history.nnz, "history entries"
    counts = np.bincount(history.indices, minlength=n_items).astype(np.float32)
    model = ALSRecommender(factors=FACTORS)
    model._keep_factors(users, items)
    popularity = PopularityRecommender()
    popularity.item_scores = counts
    trending = TrendingRecommender()
    trending.item_scores = counts * rng.random(n_items).astype(np.float32)
    now = int(time.time() * 1000)
    attributes = ItemAttributes(
        # Taste clusters cut across categories, as in a real shop (a style spans departments).
        categories=np.char.add("cat-", rng.integers(0, 200, n_items).astype(str)),
        available=rng.random(n_items) > 0.02,
        price=rng.lognormal(3.0, 1.0, n_items).astype(np.float32),
        tags=np.where(rng.random(n_items) < 0.01, "promoted", ""),
        first_seen_ms=now - rng.integers(0, 365, n_items) * 86_400_000,
    )
    user_ids, item_ids = ids("u", n_users), ids("i", n_items)
    profiles, segments = marketing(
        history, bought, user_ids, item_ids, attributes, model, rng, now, progress
    )
    return {
        "model": model,
        "fallback": popularity,
        "trending": trending,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "items": attributes,
        "purchased": bought,
        "history": history,
        "profiles": profiles,
        "segments": segments,
        "data_end_ms": now,
    }


def marketing(
    history: sp.csr_matrix,
    bought: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    attributes: ItemAttributes,
    model: ALSRecommender,
    rng: np.random.Generator,
    now: int,
    progress: Progress,
) -> tuple[UserProfiles, list[dict]]:
    """Profiles and segments from an event log implied by the histories: a view per history
    entry and a purchase per bought item, spread over the last 120 days."""
    config = Config()
    with progress.stage("profiles and segments") as tally:
        views, purchases = history.tocoo(), bought.tocoo()
        users = np.concatenate([views.row, purchases.row])
        items = np.concatenate([views.col, purchases.col])
        events = pa.table(
            {
                "user_id": pa.array(user_ids[users]),
                "item_id": pa.array(item_ids[items]),
                "event": pa.array(["view"] * views.nnz + ["purchase"] * purchases.nnz),
                "timestamp_ms": pa.array(now - rng.integers(0, 120 * 86_400_000, users.size)),
                "quantity": pa.array(np.ones(users.size)),
                "price": pa.array(attributes.price[items].astype(np.float64)),
            }
        )
        catalogue = pa.table(
            {
                "item_id": pa.array(item_ids),
                "category": pa.array(attributes.categories),
                "brand": pa.array(np.full(item_ids.size, "")),
                "price": pa.array(attributes.price.astype(np.float64)),
            }
        )
        profiles = build_profiles(events, catalogue, None, config)
        clustering = assign_clusters(
            profiles,
            model,
            user_ids,
            history,
            config.profiles.clusters,
            config.training.seed,
        )
        segments = describe_segments(profiles, clustering)
        tally.count, tally.unit = events.num_rows, "events"
    return profiles, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "million")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    progress = Progress("million")
    parts = generate(args.users, args.items, args.seed, progress)
    config = Config()
    ann, ann_info = build_ann(parts["model"], config, progress)  # type: ignore[arg-type]
    manifest = {
        "model_type": "als",
        "params": parts["model"].get_params(),  # type: ignore[attr-defined]
        "data_end_ms": parts.pop("data_end_ms"),
        "started_at_ms": 0,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_users": args.users,
        "n_items": args.items,
        "metrics": {},
        "serving": {"exclude_seen": False, "fallback": "popularity"},
        "evaluation": {"variant": "all"},
        "config": {"signals": {"view": 1.0, "cart": 4.0, "purchase": 8.0, "scaling": "log"}},
        "ann": ann_info,
        "generated": {
            "seed": args.seed,
            "clusters": CLUSTERS,
            "history_per_user": HISTORY,
        },
    }
    with progress.stage("publish"):
        version = ModelStore(args.out).publish(
            lambda staging: write_published(staging, manifest=manifest, ann=ann, **parts),  # type: ignore[arg-type]
            suffix="million",
        )
    size = sum(
        f.stat().st_size for f in ModelStore(args.out).path(version).rglob("*") if f.is_file()
    )
    progress.say(f"published {version} in {args.out}: {size / 2**20:,.0f} MiB on disk")


if __name__ == "__main__":
    main()
