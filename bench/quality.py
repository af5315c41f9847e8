"""Quality on every real dataset in ../shared/data: of the lists the server returns, and of
each model family offline beside them (the diagnosis).

For each dataset: import it into the data contract and cut a test period off the end of the
log (see SPLITS). Served: the training job with the shipped defaults (`recsvc train`'s code, on
the training period only: it carves its own validation split, chooses the model and what each
lifecycle stage is served), then `recsvc serve` on the result and one plain Recommend call
(k=10, no flags) over gRPC for every test user; NDCG@10 of those lists. Offline: every model
family fitted on the training period at the shipped parameters, scored on the test period.
The goal is served >= 1.1x the best of item-kNN, ALS and EASE.

    .venv/bin/python bench/quality.py [--datasets a,b] [--models als,...] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from serving import wait_serving

from recsvc.config import Config
from recsvc.ids import sorted_positions
from recsvc.models import BlendRecommender
from recsvc.training.evaluate import (
    Holdout,
    holdout_from_mask,
    holdout_split,
    list_ndcg,
    model_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.importers import import_dataset
from recsvc.training.ingest import Dataset
from recsvc.training.interactions import build_interactions
from recsvc.training.pipeline import (
    TrainInputs,
    TrainResult,
    candidates,
    fit_model,
    ingest_and_clean,
    make_model,
    select_model,
    train,
)
from recsvc.training.progress import Progress
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
RECSVC = str(Path(sys.executable).with_name("recsvc"))

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
FAMILIES = ["popularity", "itemknn", "rp3beta", "als", "ease", "bpr", "lightfm"]
REFERENCE = ("itemknn", "als", "ease")
SHIPPED_EASE = "EASE, shipped"


def with_components(config: Config, half_life: float, repeat_weight: float) -> Config:
    """`config` with `signals.history_half_life` and every item model's `repeat_weight` set:
    issue 16's two components, which `plain` turns off and bench/components.py varies."""
    sections = {
        f.name: dataclasses.replace(section, repeat_weight=repeat_weight)
        for f in dataclasses.fields(config.model)
        if hasattr(section := getattr(config.model, f.name), "repeat_weight")
    }
    return dataclasses.replace(
        config,
        signals=dataclasses.replace(config.signals, history_half_life=half_life),
        model=dataclasses.replace(config.model, **sections),
    )


def plain(config: Config) -> Config:
    """The baselines' configuration: the shipped one without issue 16's components, every event
    of a user counting the same whenever it came (signals.history_half_life 0) and the item
    models scoring from neighbours alone (repeat_weight 0), as a hand-rolled implicit or EASE
    script has them; the same figures as the tables before those components."""
    return with_components(config, 0.0, 0.0)


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


def train_period(
    outer: Holdout, data_dir: Path, job: Path, progress: Progress
) -> tuple[TrainResult, float]:
    """`recsvc train`'s job with the shipped defaults on the training period, into job/models;
    the result and the job's seconds."""
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    pq.write_table(
        outer.train_events.select(
            ["user_id", "item_id", "event", "timestamp_ms", "quantity", "price"]
        ).rename_columns(["user_id", "item_id", "event", "timestamp", "quantity", "price"]),
        job / "events.parquet",
    )
    inputs = TrainInputs(
        job / "events.parquet",
        data_dir / "items.csv" if (data_dir / "items.csv").exists() else None,
        data_dir / "users.csv" if (data_dir / "users.csv").exists() else None,
    )
    started = time.perf_counter()
    result = train(inputs, job / "models", Config(), progress=progress)
    return result, time.perf_counter() - started


def served(name: str, outer: Holdout, data_dir: Path, progress: Progress) -> dict:
    """The shipped defaults end to end: train on the training period, serve, ask Recommend for
    every test user over gRPC; NDCG@10 of what came back, judged as the models are."""
    job = data_dir / "served"
    result, job_seconds = train_period(outer, data_dir, job, progress)

    truth = outer.judged
    users = np.flatnonzero(np.diff(truth.indptr))
    server = subprocess.Popen(
        [RECSVC, "serve", "--model-dir", str(job / "models"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        target = _listening_on(server)
        wait_serving(target)
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.RecommenderStub(channel)
        scores, strategies = np.zeros(users.size), Counter()
        with progress.stage(f"{name}: Recommend for {users.size:,} test users") as tally:
            for n, user in enumerate(users.tolist()):
                reply = stub.Recommend(
                    pb.RecommendRequest(user_id=str(outer.train.user_ids[user]), k=10),
                    timeout=30,
                )
                strategies[f"{reply.lifecycle_stage}: {reply.strategy}"] += 1
                ids = np.array([i.item_id for i in reply.items], dtype=str)
                ranked = sorted_positions(outer.train.item_ids, ids) if ids.size else ids
                relevant = truth.indices[truth.indptr[user] : truth.indptr[user + 1]]
                scores[n] = list_ndcg(np.asarray(ranked), relevant)
            tally.count, tally.unit = users.size, "users"
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return {
        "ndcg@10": round(float(scores.mean()), 6),
        "ndcg_se@10": round(float(scores.std() / np.sqrt(max(users.size, 1))), 6),
        "users": int(users.size),
        "job_s": round(job_seconds, 1),
        "model": result.manifest["model_type"],
        "lifecycle": result.manifest["serving"]["lifecycle"],
        "served_by_stage": dict(strategies.most_common()),
    }


def _listening_on(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("recsvc serve: listening on "):
            # Drain the rest so the server never blocks on a full pipe.
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return line.split("listening on ", 1)[1].split()[0].rstrip(",")
    raise RuntimeError("recsvc serve exited before listening")


def run_dataset(name: str, work: Path, families: list[str], progress: Progress) -> dict:
    described = SPLITS[name][2]
    config = Config()
    outer, train_part = prepare(name, work, config, progress)
    served_row = served(name, outer, work / name, progress)
    progress.say(f"{name}: served ndcg@10 {served_row['ndcg@10']:.4f}")

    # The default choice sees only the training period, as a scheduled `recsvc train` would.
    started = time.perf_counter()
    names, skipped = candidates(config, outer.train.shape)
    inner = validation_holdout(outer.train_events, config)
    selection, _ = select_model(names, skipped, inner, train_part, config, progress)
    chosen = selection["selected"]
    progress.say(f"{name}: default selection -> {chosen} ({selection['reason']})")
    selection_seconds = time.perf_counter() - started

    # The test period is judged like the pipeline judges its validation split. The families
    # are the baselines (`plain`); EASE again with everything shipped shows what issue 16's
    # components give one model without the job's search, choice and stage policy.
    variant = outer.variant
    baseline = plain(config)
    plain_split = dataclasses.replace(
        outer,
        train=build_interactions(
            outer.train_events, baseline.signals, outer.train.user_ids, outer.train.item_ids
        ),
    )
    runs = [(family, family, baseline, plain_split) for family in families]
    if "ease" in families:
        runs.append((SHIPPED_EASE, "ease", config, outer))
    rows: dict[str, dict] = {}
    for row, family, family_config, split in runs:
        if family == "ease" and min(outer.train.shape) > config.model.ease.max_items:
            continue
        with progress.stage(f"{name}: fit and score {row}"):
            start = time.perf_counter()
            model = fit_model(make_model(family, family_config), split.train, train_part)
            fit_seconds = time.perf_counter() - start
            metrics = ranking_metrics(model_scorer(model), split)
        rows[row] = {"fit_s": round(fit_seconds, 2), **metrics}
        progress.say(f"{name} {row}: ndcg@10 {metrics[variant].get('ndcg@10', 0):.4f}")
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
        "served": served_row,
        "served_vs_best_reference": round(served_row["ndcg@10"] / reference, 4)
        if reference
        else None,
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
        SHIPPED_EASE,
        "served",
        "served / best ref.",
        "offline default (chosen)",
        "job s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [
            r["dataset"],
            f"{r['test_period']} ({r['split']['method']})",
            f"{r['split']['repeat_share']:.0%}",
            r["variant"],
        ]
        for family in [*FAMILIES, SHIPPED_EASE]:
            value = r["models"].get(family, {}).get(r["variant"], {}).get("ndcg@10")
            cells.append("-" if value is None else f"{value:.4f}")
        chosen = r["selected"]
        if chosen == "blend":
            members = [m["model_type"] for m in r["blend"]["members"]]
            weights = r["blend"]["weights"]
            chosen = " + ".join(f"{w:.2f} {m}" for m, w in zip(members, weights, strict=True))
        cells.append(f"**{r['served']['ndcg@10']:.4f}**")
        cells.append(f"**{r['served_vs_best_reference']:.3f}x**")
        cells.append(f"{r['default_ndcg@10']:.4f} ({chosen})")
        cells.append(f"{r['served']['job_s']:.0f}")
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
        print(f"{r['dataset']} served per stage: {r['served']['served_by_stage']}")
    print(f"wrote {args.json}; numpy {np.__version__}")


if __name__ == "__main__":
    main()
