"""Offline quality on every real dataset in ../shared/data, with a time-respecting split.

For each dataset: import it into the data contract, cut a test period off the end of the log
(see SPLITS), let the pipeline choose its default model using only the training period (it
carves its own validation split from the end of that period, exactly as `recsvc train` does),
then fit every model family on the whole training period and score all of them on the test
period. The row "default" is the model the pipeline chose; the target is that it matches the
best of item-kNN, ALS and EASE and is far above popularity.

    .venv/bin/python bench/quality.py [--datasets a,b] [--models als,...] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa

from recsvc.config import Config
from recsvc.models import BlendRecommender
from recsvc.training.evaluate import (
    Holdout,
    holdout_from_mask,
    holdout_split,
    model_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.importers import import_dataset
from recsvc.training.ingest import Dataset
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
# dataset name: (import format, source folder, test period)
SPLITS = {
    "online-retail": ("online-retail", "online-retail", "newest 20% of events"),
    "movielens-100k": ("movielens", "movielens-100k", "newest 20% of events"),
    "movielens-latest-small": (
        "movielens",
        "movielens-latest-small",
        "newest 20% of events",
    ),
    "taobao": ("taobao", "taobao-userbehavior", "newest 20% of events"),
    "tmall": (
        "tmall",
        "tmall-brand-2013",
        "2013-07-16..08-15 (the contest's last month)",
    ),
    "multibehavior": (
        "multibehavior",
        "mbcgcn-multibehavior",
        "the given test.txt purchases",
    ),
}
TEST_SHARE = 0.2
TMALL_CUT_MS = 1373904000000  # 2013-07-16T00:00:00+08:00
FAMILIES = ["popularity", "itemknn", "als", "ease", "bpr", "lightfm"]
REFERENCE = ("itemknn", "als", "ease")


def outer_split(name: str, data_dir: Path, events: pa.Table, config: Config) -> Holdout:
    """Training period and test period for one dataset (see SPLITS)."""
    signals = config.signals
    if name == "multibehavior":
        test, _ = ingest_and_clean(
            TrainInputs(data_dir / "test-events.csv"),
            config,
            data_dir / "rejects-test",
            Progress("test", open(os.devnull, "w")),  # noqa: SIM115
        )
        before = np.arange(events.num_rows + test.events.num_rows) < events.num_rows
        split = holdout_from_mask(
            pa.concat_tables([events, test.events]),
            signals,
            before,
            "given test.txt",
            None,
        )
    elif name == "tmall":
        before = events.column("timestamp_ms").to_numpy() < TMALL_CUT_MS
        split = holdout_from_mask(events, signals, before, "temporal", TMALL_CUT_MS)
    else:
        split = holdout_split(
            events,
            signals,
            TEST_SHARE,
            config.training.seed,
            0,
            config.training.min_holdout_users,
        )
    assert split is not None
    return split


def prepare(name: str, work: Path, config: Config, progress: Progress) -> tuple[Holdout, Dataset]:
    """The dataset imported (once) and cleaned, its test split, and its training period."""
    fmt, folder, _ = SPLITS[name]
    data_dir = work / name
    if not (data_dir / "events.csv").exists():
        progress.say(import_dataset(fmt, SHARED / folder, data_dir).summary())
    inputs = TrainInputs(
        data_dir / "events.csv",
        data_dir / "items.csv" if (data_dir / "items.csv").exists() else None,
        data_dir / "users.csv" if (data_dir / "users.csv").exists() else None,
    )
    dataset, _ = ingest_and_clean(inputs, config, data_dir / "rejects", progress)
    outer = outer_split(name, data_dir, dataset.events, config)
    return outer, dataclasses.replace(dataset, events=outer.train_events)


def run_dataset(name: str, work: Path, families: list[str], progress: Progress) -> dict:
    described = SPLITS[name][2]
    config = Config()
    outer, train_part = prepare(name, work, config, progress)

    # The default choice sees only the training period, as a scheduled `recsvc train` would.
    started = time.perf_counter()
    names, skipped = candidates(config, outer.train.shape[1])
    inner = validation_holdout(outer.train_events, config)
    selection = select_model(names, skipped, inner, train_part, config, progress)
    chosen = selection["selected"]
    progress.say(f"{name}: default selection -> {chosen} ({selection['reason']})")
    selection_seconds = time.perf_counter() - started

    # The test period is judged like the pipeline judges its validation split.
    variant = outer.variant
    rows: dict[str, dict] = {}
    for family in families:
        if family == "ease" and outer.train.shape[1] > config.model.ease.max_items:
            continue
        with progress.stage(f"{name}: fit and score {family}"):
            start = time.perf_counter()
            model = fit_model(make_model(family, config), outer.train, train_part)
            fit_seconds = time.perf_counter() - start
            metrics = ranking_metrics(model_scorer(model), outer)
        rows[family] = {"fit_s": round(fit_seconds, 2), **metrics}
        progress.say(f"{name} {family}: ndcg@10 {metrics[variant].get('ndcg@10', 0):.4f}")
    if chosen == "blend":
        with progress.stage(f"{name}: fit and score the chosen blend"):
            blend = BlendRecommender(
                selection["blend"]["members"], selection["blend"]["weights"]
            ).fit(outer.train.confidence)
            rows["blend"] = {
                "fit_s": 0.0,
                **ranking_metrics(model_scorer(blend), outer),
            }
    reference = max(
        (rows[f][variant]["ndcg@10"] for f in REFERENCE if f in rows),
        default=float("nan"),
    )
    default = rows[chosen][variant]["ndcg@10"] if chosen in rows else float("nan")
    return {
        "dataset": name,
        "test_period": described,
        "split": outer.describe(),
        "train_shape": list(outer.train.shape),
        "selected": chosen,
        "blend": selection["blend"]
        and {k: v for k, v in selection["blend"].items() if k != "metrics"},
        "selection_reason": selection["reason"],
        "selection_s": round(selection_seconds, 1),
        "models": rows,
        "default_ndcg@10": default,
        "best_reference_ndcg@10": reference,
        "default_vs_best_reference": round(default / reference, 4) if reference else None,
        "variant": variant,
        "default_vs_popularity": round(default / rows["popularity"][variant]["ndcg@10"], 2)
        if rows.get("popularity", {}).get(variant, {}).get("ndcg@10")
        else None,
    }


def table(results: list[dict]) -> str:
    header = [
        "dataset",
        "test period",
        "repeats",
        "judged on",
        *FAMILIES,
        "default (chosen)",
        "default / best ref.",
        "default / popularity",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [
            r["dataset"],
            f"{r['test_period']} ({r['split']['method']})",
            f"{r['split']['repeat_share']:.0%}",
            r["variant"],
        ]
        for family in FAMILIES:
            value = r["models"].get(family, {}).get(r["variant"], {}).get("ndcg@10")
            cells.append("-" if value is None else f"{value:.4f}")
        chosen = r["selected"]
        if chosen == "blend":
            members = [m["model_type"] for m in r["blend"]["members"]]
            weights = r["blend"]["weights"]
            chosen = " + ".join(f"{w:.2f} {m}" for m, w in zip(members, weights, strict=True))
        cells.append(f"{r['default_ndcg@10']:.4f} ({chosen})")
        cells.append(f"{r['default_vs_best_reference']:.3f}")
        cells.append(f"{r['default_vs_popularity']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(SPLITS))
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "quality.json")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"bench/quality.py: {SHARED} is absent; the real datasets are needed")
    progress = Progress("quality")
    results = []
    for name in args.datasets.split(","):
        results.append(run_dataset(name, args.work, args.models.split(","), progress))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nNDCG@10 on the test period ({platform.node()}, {platform.processor() or ''})\n")
    print(table(results))
    for r in results:
        for variant in ("all", "new", "unseen"):
            values = {f: m.get(variant, {}).get("ndcg@10") for f, m in r["models"].items()}
            print(f"{r['dataset']} ndcg@10 on {variant} items: {values}")
        print(f"{r['dataset']} fit seconds: { {f: m['fit_s'] for f, m in r['models'].items()} }")
    print(f"wrote {args.json}; numpy {np.__version__}")


if __name__ == "__main__":
    main()
