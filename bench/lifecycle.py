"""Which strategy serves each lifecycle stage best? Measured on real logs, per stage.

Cut the log at the newest TEST_SHARE of events; compute every user's lifecycle stage at the cut
with the shipped rules (recsvc/profiles.py); fit the pipeline's default model before the cut.
Then, for the users who buy after the cut, compare the lists each strategy of
`[serving.lifecycle]` would serve (personal: the model; repurchase: what they bought before,
strongest first, then trending; trending; popular) by NDCG@10 against what they bought after the
cut, separately for each stage. The shipped defaults should follow these numbers.

    .venv/bin/python bench/lifecycle.py [--datasets online-retail,tmall] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
from audience import DATASETS, SHARED, cut_and_fit

from recsvc.ids import sorted_positions
from recsvc.models import TrendingRecommender
from recsvc.profiles import STAGES
from recsvc.training.profiles import build_profiles
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]

K = 10
STRATEGIES = ("personal", "repurchase", "trending", "popular")


def ndcg(ranked: np.ndarray, relevant: set[int]) -> float:
    gains = [1.0 / np.log2(rank + 2) for rank, item in enumerate(ranked[:K]) if item in relevant]
    ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(K, len(relevant))))
    return float(sum(gains) / ideal) if ideal else 0.0


def run_dataset(name: str, work: Path, progress: Progress) -> dict:
    log = cut_and_fit(name, work, progress)
    interactions, model = log.interactions, log.model
    trending = TrendingRecommender().fit(interactions.recent)
    trending_order = np.argsort(-np.asarray(trending.item_scores), kind="stable")
    popular_order = np.argsort(-np.asarray(interactions.confidence.getnnz(axis=0)), kind="stable")

    profiles = build_profiles(log.before, log.dataset.items, None, log.config)
    stages = profiles.stages(log.cut_ms)
    stage_of_row = stages[sorted_positions(profiles.user_ids, interactions.user_ids)]
    relevant: dict[int, set[int]] = {}
    for item, user in log.later_purchases.tolist():
        relevant.setdefault(user, set()).add(item)

    purchased, confidence = interactions.purchased, interactions.confidence
    per_stage: dict[str, dict[str, list[float]]] = {}
    with progress.stage(f"{name}: strategies for {len(relevant):,} buyers") as tally:
        for user, wanted in relevant.items():
            stage = STAGES[int(stage_of_row[user])]
            row = per_stage.setdefault(stage, {s: [] for s in STRATEGIES})
            personal = model.recommend(np.array([user]), K)[0][0]
            again = purchased.indices[purchased.indptr[user] : purchased.indptr[user + 1]]
            strength = np.asarray(confidence[user, again].todense()).ravel()
            again = again[np.argsort(-strength, kind="stable")]
            head = trending_order[: K + again.size]
            fill = head[~np.isin(head, again)][:K]
            repurchase = np.concatenate([again, fill])[:K] if again.size else personal
            lists = {
                "personal": personal,
                "repurchase": repurchase,
                "trending": trending_order[:K],
                "popular": popular_order[:K],
            }
            for strategy, ranked in lists.items():
                row[strategy].append(ndcg(ranked, wanted))
        tally.count, tally.unit = len(relevant), "buyers"
    return {
        "dataset": name,
        "model": log.model_type,
        "stages": {
            stage: {"buyers": len(row["personal"])} | {s: float(np.mean(v)) for s, v in row.items()}
            for stage, row in sorted(per_stage.items(), key=lambda kv: STAGES.index(kv[0]))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "lifecycle.json")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"bench/lifecycle.py: {SHARED} is absent; the real datasets are needed")
    progress = Progress("lifecycle")
    results = [run_dataset(name, args.work, progress) for name in args.datasets.split(",")]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nNDCG@{K} of each strategy, per lifecycle stage at the cut\n")
    print("| dataset | model | stage | buyers | " + " | ".join(STRATEGIES) + " |")
    print("|---|---|---|---:|" + "---:|" * len(STRATEGIES))
    for r in results:
        for stage, m in r["stages"].items():
            cells = " | ".join(f"{m[s]:.4f}" for s in STRATEGIES)
            print(f"| {r['dataset']} | {r['model']} | {stage} | {m['buyers']:,} | {cells} |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
