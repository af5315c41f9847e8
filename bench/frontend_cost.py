"""What the frontend calls cost in the serving core per call, without gRPC, on a cache miss
(each user or item asked once) and on a hit (the same request again), beside Recommend's.

bench/serving.py measures them through a server under h2load, which repeats a few requests:
the hit path. This gives the miss path that a real mix of visitors also pays.

    .venv/bin/python bench/frontend_cost.py --model-dir var/models
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recsvc.config import load_config
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore

CANDIDATES = 50  # RankItems: a category page's worth


def per_call_us(calls: list[Callable[[], object]]) -> float:
    started = time.perf_counter()
    for call in calls:
        call()
    return 1e6 * (time.perf_counter() - started) / len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    store = ModelStore(args.model_dir)
    version = store.current_version()
    assert version is not None, f"no model published in {args.model_dir}"
    published = PublishedModel.load(store.path(version))
    users = [str(u) for u in published.user_ids[: args.users]]
    rng = np.random.default_rng(1)
    items = [str(i) for i in published.item_ids[rng.choice(published.item_ids.size, args.users)]]
    pages = [
        [str(i) for i in published.item_ids[rng.choice(published.item_ids.size, CANDIDATES)]]
        for _ in users
    ]

    def calls(core: RecommenderCore) -> dict[str, list[Callable[[], object]]]:
        return {
            "Recommend": [lambda u=u: core.recommend(u, 10) for u in users],
            "RankItems (50)": [
                lambda u=u, p=p: core.rank_items(u, p) for u, p in zip(users, pages, strict=True)
            ],
            "FrequentlyBoughtTogether": [lambda i=i: core.bought_together([i], 10) for i in items],
            "RecommendPage": [lambda u=u: core.recommend_page(u) for u in users],
            "RecommendCategories": [lambda u=u: core.recommend_categories(u, 5) for u in users],
        }

    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        core = RecommenderCore(load_config(args.config).serving)
        core.swap(published)
        for name, batch in calls(core).items():
            miss = per_call_us(batch)
            hit = per_call_us(batch)
            results.setdefault(name, {"miss": [], "hit": []})
            results[name]["miss"].append(miss)
            results[name]["hit"].append(hit)
    summary = {
        "model": f"{published.manifest.get('model_type')} {version}",
        "items": int(published.item_ids.size),
        "calls_per_case": len(users),
        "us_per_call_median": {
            name: {case: round(statistics.median(v), 1) for case, v in cases.items()}
            for name, cases in results.items()
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
