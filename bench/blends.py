"""Validation and test NDCG@10 of every blend the pipeline can choose, on real datasets.

Uses bench/quality.py's splits: the pipeline's own validation split (carved from the training
period) and the test period. For each dataset it scores item-kNN, ALS and EASE alone, every
weighting of every pair of them, and the equal blend of all three, on both splits: how well
the validation ranking of blends carries over to the test period.

    .venv/bin/python bench/blends.py [--datasets movielens-100k,online-retail]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality  # noqa: E402

from recsvc.config import Config  # noqa: E402
from recsvc.models import BlendRecommender, Recommender  # noqa: E402
from training.evaluate import Holdout, model_scorer, ranking_metrics, validation_holdout  # noqa: E402
from training.pipeline import TrainInputs, fit_model, ingest_and_clean, make_model  # noqa: E402
from training.progress import Progress  # noqa: E402

FAMILIES = ("als", "itemknn", "ease")


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
    fmt, folder, _ = quality.SPLITS[name]
    data_dir = work / name
    if not (data_dir / "events.csv").exists():
        progress.say(quality.import_dataset(fmt, quality.SHARED / folder, data_dir).summary())
    config = Config()
    optional = {f: data_dir / f for f in ("items.csv", "users.csv") if (data_dir / f).exists()}
    inputs = TrainInputs(
        data_dir / "events.csv", optional.get("items.csv"), optional.get("users.csv")
    )
    dataset, _ = ingest_and_clean(inputs, config, data_dir / "rejects", progress)
    outer = quality.outer_split(name, data_dir, dataset.events, config)
    train_part = dataclasses.replace(dataset, events=outer.train_events)
    inner = validation_holdout(outer.train_events, config)
    assert inner is not None
    families = [
        f for f in FAMILIES if f != "ease" or outer.train.shape[1] <= config.model.ease.max_items
    ]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    split: tuple[str, Holdout]
    for split in (("validation", inner), ("test", outer)):
        label, holdout = split
        with progress.stage(f"{name}: {label}"):
            fitted = {
                f: fit_model(make_model(f, config), holdout.train, train_part) for f in families
            }
            for key, model in blends(fitted).items():
                metrics = ranking_metrics(model_scorer(model), holdout)[holdout.variant]
                table.setdefault(key, {})[label] = (metrics["ndcg@10"], metrics["ndcg_se@10"])
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
