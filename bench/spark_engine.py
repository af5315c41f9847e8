"""The Spark engine against the local engine on a real log: same job, ALS on both.

Online Retail imported into the data contract and written as Parquet; `recsvc train`'s pipeline
runs twice with model.type = als, once with training.engine = local (implicit's ALS) and once
with training.engine = spark (MLlib's ALS, local[2]). Reported: the holdout NDCG@10 of each
(the pipeline's own validation split, identical for both) and the wall time of each job.

    .venv/bin/python bench/spark_engine.py [--dataset online-retail] [--master local[2]]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pyarrow.parquet as pq
from audience import DATASETS, SHARED

from recsvc.config import Config
from recsvc.training.importers import import_dataset
from recsvc.training.ingest import load_dataset
from recsvc.training.pipeline import TrainInputs, train
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="online-retail", choices=sorted(DATASETS))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"bench/spark_engine.py: {SHARED} is absent; the real datasets are needed")
    fmt, folder = DATASETS[args.dataset]
    data_dir = args.work / args.dataset
    if not (data_dir / "events.csv").exists():
        import_dataset(fmt, SHARED / folder, data_dir)
    progress = Progress("spark-bench")
    base = Config()
    raw = load_dataset(data_dir / "events.csv", base.data).events
    parquet = data_dir / "events.parquet"
    # The contract's columns: timestamp as milliseconds is read as such by both engines.
    pq.write_table(
        raw.rename_columns(["user_id", "item_id", "event", "timestamp", "quantity", "price"]),
        parquet,
    )
    items = data_dir / "items.csv" if (data_dir / "items.csv").exists() else None
    results = {}
    for engine in ("local", "spark"):
        config = dataclasses.replace(
            base,
            model=dataclasses.replace(base.model, type="als", blend=False),
            training=dataclasses.replace(
                base.training,
                engine=engine,
                spark_master=args.master,
                quality_gate_tolerance=-1.0,
            ),
            profiles=dataclasses.replace(base.profiles, coldstart=False),
        )
        with tempfile.TemporaryDirectory() as models:
            started = time.perf_counter()
            result = train(TrainInputs(parquet, items), Path(models), config, progress=progress)
            seconds = time.perf_counter() - started
        variant = result.manifest["evaluation"]["variant"]
        ndcg = result.manifest["metrics"][variant]["ndcg@10"]
        results[engine] = (ndcg, seconds)
    print(
        f"\n{args.dataset}, ALS {base.model.als.factors} factors, {base.model.als.iterations} "
        f"iterations, Spark {args.master}\n"
    )
    print("| engine | holdout NDCG@10 | job seconds |")
    print("|---|---:|---:|")
    for engine, (ndcg, seconds) in results.items():
        print(f"| {engine} | {ndcg:.4f} | {seconds:.1f} |")
    local, spark = results["local"], results["spark"]
    print(f"\nspark / local: NDCG {spark[0] / local[0]:.3f}, time {spark[1] / local[1]:.2f}x")


if __name__ == "__main__":
    main()
