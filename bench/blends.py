"""Validation and test NDCG@10 of every blend the pipeline can choose, on real datasets.

Uses bench/quality.py's splits: the pipeline's own validation split (carved from the training
period) and the test period. For each dataset it scores the pipeline's default candidates (ALS,
item-kNN, EASE where the catalogue allows) alone, every weighting of every pair of them, and the
equal blend of all, on both splits: how well the validation ranking of blends carries over to
the test period.

    .venv/bin/python bench/blends.py [--datasets movielens-100k,online-retail]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


import quality

from recsvc.config import Config
from recsvc.models import BlendRecommender, Recommender
from recsvc.training.evaluate import model_scorer, ranking_metrics, validation_holdout
from recsvc.training.pipeline import candidates, fit_model, make_model
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def blends(fitted: dict[str, Recommender]) -> dict[str, Recommender]:
    """Each family alone, every pair at 0.25 / 0.5 / 0.75, and the equal blend of all."""
    out: dict[str, Recommender] = dict(fitted)
    for a, b in itertools.combinations(fitted, 2):
        for weight in (0.25, 0.5, 0.75):
            blend = BlendRecommender.of_fitted([fitted[a], fitted[b]], [weight, 1 - weight])
            out[f"{weight:.2f} {a} + {1 - weight:.2f} {b}"] = blend
    if len(fitted) > 2:
        equal = [1 / len(fitted)] * len(fitted)
        out["equal blend of all"] = BlendRecommender.of_fitted(list(fitted.values()), equal)
    return out


def run(name: str, work: Path, progress: Progress) -> None:
    config = Config()
    outer, train_part = quality.prepare(name, work, config, progress)
    inner = validation_holdout(outer.train_events, config)
    assert inner is not None
    families, _ = candidates(config, outer.train.shape)  # EASE only where it fits
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for label, holdout in (("validation", inner), ("test", outer)):
        with progress.stage(f"{name}: {label}"):
            fitted = {
                f: fit_model(make_model(f, config), holdout.train, train_part) for f in families
            }
            for key, model in blends(fitted).items():
                metrics = ranking_metrics(model_scorer(model), holdout)[holdout.variant]
                table.setdefault(key, {})[label] = (
                    metrics["ndcg@10"],
                    metrics["ndcg_se@10"],
                )
    print(f"\n{name} (judged on {outer.variant} items): NDCG@10 (standard error)")
    print("| model | validation | test |\n|---|---|---|")
    for key, row in sorted(table.items(), key=lambda kv: -kv[1]["validation"][0]):
        cells = [f"{row[s][0]:.4f} ({row[s][1]:.4f})" for s in ("validation", "test")]
        print(f"| {key} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="movielens-100k,online-retail,tmall")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    args = parser.parse_args()
    if not quality.SHARED.exists():
        sys.exit(f"bench/blends.py: {quality.SHARED} is absent; the real datasets are needed")
    progress = Progress("blends")
    for name in args.datasets.split(","):
        run(name, args.work, progress)


if __name__ == "__main__":
    main()
