"""Served lists from the approximate index against exact serving, with the same rules.

The index's own recall@10 (in the manifest) compares raw top-10s. This compares what Recommend
returns: the same users, config and rules (filters, the category cap, boosts), once through the
index and once scoring the whole catalogue; recall@10 is the share of the exact list that the
approximate one holds. Also times both paths per list (one process, cold list cache).

    .venv/bin/python bench/served_recall.py --model-dir var/bench/million \\
        --config bench/all-rules.toml --users 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from recsvc.config import load_config
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore

ROOT = Path(__file__).resolve().parents[1]


def served(core: RecommenderCore, users: list[str], k: int) -> tuple[list[set[str]], float]:
    started = time.perf_counter()
    lists = [{i.item_id for i in core.recommend(user, k).items} for user in users]
    return lists, (time.perf_counter() - started) / len(users) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    config = load_config(args.config).serving
    store = ModelStore(args.model_dir)
    version = store.current_version()
    if version is None:
        raise SystemExit(f"no published model in {args.model_dir}")
    published = PublishedModel.load(store.path(version))
    if published.ann is None:
        raise SystemExit(f"model {version} has no approximate index")
    rng = np.random.default_rng(args.seed)
    users = rng.choice(np.asarray(published.user_ids), args.users, replace=False).tolist()
    approximate, exact = RecommenderCore(config), RecommenderCore(config)
    approximate.swap(published)
    exact.swap(dataclasses.replace(published, ann=None))
    got, approximate_ms = served(approximate, users, args.k)
    want, exact_ms = served(exact, users, args.k)
    recalls = [len(a & e) / len(e) for a, e in zip(got, want, strict=True) if e]
    print(
        json.dumps(
            {
                "model_version": version,
                "users": len(users),
                "k": args.k,
                "index_recall@10": published.manifest["ann"]["recall@10"],
                "served_recall@10": round(statistics.mean(recalls), 4),
                "approximate_ms_per_list": round(approximate_ms, 3),
                "exact_ms_per_list": round(exact_ms, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
