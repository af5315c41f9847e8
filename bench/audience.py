"""Audience quality on real data: does FindAudience, ranked before a cut date, find who buys after?

For each dataset with purchases: cut the log at the newest TEST_SHARE of events; the pipeline
picks its default model on the period before the cut (as a scheduled `recsvc train` would) and
fits it there. Target items are those bought after the cut by at least MIN_BUYERS users the
model knows (a seeded sample of at most MAX_ITEMS). For each, every known user is ranked by
FindAudience's score (the model's affinity plus the user's propensity to buy, each standardised)
and by a popularity-of-user baseline (the user's purchases before the cut), and both rankings
are judged against the real buyers: AUC and precision at 100. "new buyers" repeats this without
users who had bought the item before the cut (the campaign question: who will buy it for the
first time).

    .venv/bin/python bench/audience.py [--datasets online-retail,tmall] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import rankdata

from recsvc.config import Config, ServingConfig
from recsvc.ids import sorted_positions
from recsvc.models import Recommender
from recsvc.serving.marketing import audience_scores
from recsvc.training.evaluate import validation_holdout
from recsvc.training.importers import import_dataset
from recsvc.training.ingest import Dataset
from recsvc.training.interactions import Interactions, build_interactions
from recsvc.training.pipeline import (
    TrainInputs,
    candidates,
    fit_model,
    ingest_and_clean,
    make_model,
    select_model,
)
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "online-retail": ("online-retail", "online-retail"),
    "tmall": ("tmall", "tmall-brand-2013"),
}
TEST_SHARE = 0.2
MIN_BUYERS = 5
MAX_ITEMS = 300
AT = 100
AUDIENCE = ServingConfig()  # FindAudience's ranking, with the shipped default weights


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random buyer outranks a random non-buyer (ties count half)."""
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    # Ties broken by user order, the same for both rankings.
    top = np.argsort(-scores, kind="stable")[:k]
    return float(positive[top].mean())


@dataclasses.dataclass
class CutLog:
    """A dataset cut at its newest TEST_SHARE of events, with the default model fitted before
    the cut, and the later purchases as (user row, item column) pairs of that model."""

    dataset: Dataset
    before: pa.Table
    cut_ms: int
    config: Config
    interactions: Interactions
    model: Recommender
    model_type: str
    later_purchases: np.ndarray  # (n, 2): item column, user row; unique


def cut_and_fit(name: str, work: Path, progress: Progress) -> CutLog:
    fmt, folder = DATASETS[name]
    data_dir = work / name
    if not (data_dir / "events.csv").exists():
        progress.say(import_dataset(fmt, SHARED / folder, data_dir).summary())
    config = Config()
    inputs = TrainInputs(
        data_dir / "events.csv",
        data_dir / "items.csv" if (data_dir / "items.csv").exists() else None,
    )
    dataset, _ = ingest_and_clean(inputs, config, data_dir / "rejects", progress)
    events = dataset.events
    stamps = events.column("timestamp_ms").to_numpy()
    cut = int(np.quantile(stamps, 1 - TEST_SHARE))
    before = events.filter(pc.less(events.column("timestamp_ms"), cut))
    after = events.filter(pc.greater_equal(events.column("timestamp_ms"), cut))
    train_part = dataclasses.replace(dataset, events=before)

    interactions = build_interactions(before, config.signals)
    names, skipped = candidates(config, interactions.shape)
    selection, _ = select_model(
        names, skipped, validation_holdout(before, config), train_part, config, progress
    )
    chosen = selection["selected"]
    if chosen == "blend":
        chosen = max(names, key=lambda n: selection["models"][n][selection["variant"]]["ndcg@10"])
    with progress.stage(f"{name}: fit {chosen} before the cut"):
        model = fit_model(make_model(chosen, config), interactions, train_part)

    bought = after.filter(pc.equal(after.column("event"), "purchase"))
    users = sorted_positions(
        interactions.user_ids,
        bought.column("user_id").to_numpy(zero_copy_only=False).astype(str),
    )
    items = sorted_positions(
        interactions.item_ids,
        bought.column("item_id").to_numpy(zero_copy_only=False).astype(str),
    )
    known = (users >= 0) & (items >= 0)
    pairs = np.unique(np.column_stack([items[known], users[known]]), axis=0)
    return CutLog(dataset, before, cut, config, interactions, model, chosen, pairs)


def run_dataset(name: str, work: Path, progress: Progress) -> dict:
    log = cut_and_fit(name, work, progress)
    config, interactions, model, pairs = (
        log.config,
        log.interactions,
        log.model,
        log.later_purchases,
    )
    item_of_pair, counts = np.unique(pairs[:, 0], return_counts=True)
    targets = item_of_pair[counts >= MIN_BUYERS]
    rng = np.random.default_rng(config.training.seed)
    if targets.size > MAX_ITEMS:
        targets = np.sort(rng.choice(targets, MAX_ITEMS, replace=False))
    n_users = interactions.user_ids.size
    # The baseline: users who buy most first (distinct items bought before the cut).
    purchases_per_user = np.diff(interactions.purchased.indptr)
    activity = purchases_per_user.astype(float)
    purchased = interactions.purchased.tocsc()

    results: dict[str, dict[str, list[float]]] = {
        variant: {
            key: []
            for key in (
                "model_auc",
                "affinity_auc",
                "base_auc",
                "model_p",
                "affinity_p",
                "base_p",
            )
        }
        for variant in ("all users", "new buyers")
    }
    with progress.stage(f"{name}: rank users for {targets.size} items") as tally:
        for item in targets.tolist():
            positive = np.zeros(n_users, dtype=bool)
            positive[pairs[pairs[:, 0] == item, 1]] = True
            affinity = model.user_affinity(np.array([item]), n_users)
            scores = audience_scores(
                affinity, purchases_per_user, AUDIENCE.audience_propensity_weight
            )
            earlier = np.zeros(n_users, dtype=bool)
            earlier[purchased.indices[purchased.indptr[item] : purchased.indptr[item + 1]]] = True
            for variant, keep in (
                ("all users", np.ones(n_users, bool)),
                ("new buyers", ~earlier),
            ):
                pos = positive[keep]
                if not pos.any() or pos.all():
                    continue
                row = results[variant]
                for ranker, ranking in (
                    ("model", scores),
                    ("affinity", affinity),
                    ("base", activity),
                ):
                    row[f"{ranker}_auc"].append(auc(ranking[keep], pos))
                    row[f"{ranker}_p"].append(precision_at(ranking[keep], pos, AT))
        tally.count, tally.unit = targets.size, "items"
    summary = {
        variant: {key: float(np.mean(values)) for key, values in row.items()}
        | {"items": len(row["model_auc"])}
        for variant, row in results.items()
    }
    return {
        "dataset": name,
        "model": log.model_type,
        "users": int(n_users),
        "cut_ms": log.cut_ms,
        "target_items": int(targets.size),
        "results": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "audience.json")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"bench/audience.py: {SHARED} is absent; the real datasets are needed")
    progress = Progress("audience")
    results = [run_dataset(name, args.work, progress) for name in args.datasets.split(",")]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nAudience quality ({platform.node()}): mean over target items\n")
    print(
        "| dataset | model | users | items | buyers | AUC FindAudience | AUC affinity only | "
        f"AUC baseline | P@{AT} FindAudience | P@{AT} affinity only | P@{AT} baseline |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for variant, m in r["results"].items():
            print(
                f"| {r['dataset']} | {r['model']} | {r['users']:,} | {m['items']} | {variant} | "
                f"{m['model_auc']:.3f} | {m['affinity_auc']:.3f} | {m['base_auc']:.3f} | "
                f"{m['model_p']:.3f} | {m['affinity_p']:.3f} | {m['base_p']:.3f} |"
            )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
