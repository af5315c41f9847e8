"""Speed of the training job on a generated log of about 1,000,000 events.

Runs the whole job (ingest, clean, matrix, holdout, evaluate candidates, gate, fit, publish) in a
fresh process per run, and reports medians over the runs: wall time, ingest rate, peak resident
memory (ru_maxrss of the child). Then times our ALS fit against a bare `implicit` fit on the same
matrix, interleaved, and reports the median ratio (our overhead).

    .venv/bin/python bench/pipeline.py [--runs 3] [--als-runs 5] [--against-no-search]

--against-no-search interleaves each run with one of the same job with the parameter search off
(training.tune_budget_s = 0) and reports the median ratio of their wall times: what the shipped
search budget costs, measured in one session.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

SHOP = {"users": 20_000, "items": 5_000, "weeks": 8}  # about 1.03M events with seed 7
STAGE = re.compile(r"\] (?P<stage>.+) done in (?P<seconds>[\d.]+)s")
INGEST_RATE = re.compile(r"ingest done in [\d.]+s: (?P<rows>[\d,]+) rows, (?P<rate>[\d,]+) rows/s")


def generate(directory: Path) -> None:
    if (directory / "events.csv").exists():
        return
    subprocess.run(
        [
            str(Path(sys.executable).with_name("recsvc")),
            "data",
            "generate",
            "--seed",
            "7",
            "--out",
            str(directory),
            *(f"--{k}={v}" for k, v in SHOP.items()),
        ],
        check=True,
    )


def run_pipeline(shop: Path, model_dir: Path, config: Path | None = None) -> dict[str, float]:
    shutil.rmtree(model_dir, ignore_errors=True)
    args = [
        "train",
        *(["--config", str(config)] if config else []),
        "--events",
        str(shop / "events.csv"),
        "--items",
        str(shop / "items.csv"),
        "--users",
        str(shop / "users.csv"),
        "--model-dir",
        str(model_dir),
    ]
    # The child reports its own peak resident memory when the job is done.
    program = (
        "import resource, sys\n"
        "from recsvc.cli.main import main\n"
        f"code = main({args!r})\n"
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    log = done.stderr
    stages = {m["stage"]: float(m["seconds"]) for m in STAGE.finditer(log)}
    rate = INGEST_RATE.search(log)
    peak = re.search(r"peak_kib (\d+)", log)
    assert rate is not None and peak is not None, log
    return {
        "wall_s": wall,
        "ingest_rows": float(rate["rows"].replace(",", "")),
        "ingest_rows_per_s": float(rate["rate"].replace(",", "")),
        "peak_rss_mib": int(peak[1]) / 1024,
        **{f"stage {k}": v for k, v in stages.items()},
    }


def als_overhead(shop: Path, runs: int) -> dict[str, float]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsvc.config import Config
    from recsvc.training.interactions import build_interactions
    from recsvc.training.pipeline import TrainInputs, ingest_and_clean, make_model
    from recsvc.training.progress import Progress

    config = Config()
    quiet = Progress("als", open(os.devnull, "w"))  # noqa: SIM115
    dataset, _ = ingest_and_clean(TrainInputs(shop / "events.csv"), config, shop / "rejects", quiet)
    matrix = build_interactions(dataset.events, config.signals).confidence
    als = config.model.als
    ours, bare = [], []
    with threadpool_limits(1, "blas"):
        for _ in range(runs):
            start = time.perf_counter()
            make_model("als", config).fit(matrix)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            AlternatingLeastSquares(
                factors=als.factors,
                regularization=als.regularization,
                alpha=als.alpha,
                iterations=als.iterations,
                random_state=config.training.seed,
            ).fit(matrix, show_progress=False)
            bare.append(time.perf_counter() - start)
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return {
        "matrix": f"{matrix.shape[0]:,} x {matrix.shape[1]:,}, {matrix.nnz:,} pairs",
        "ours_median_s": statistics.median(ours),
        "bare_median_s": statistics.median(bare),
        "ratio_median": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--als-runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "pipeline")
    parser.add_argument("--against-no-search", action="store_true")
    args = parser.parse_args()
    shop = args.work / "shop"
    generate(shop)
    no_search = args.work / "no-search.toml"
    if args.against_no_search:
        no_search.write_text("[training]\ntune_budget_s = 0\n")
    runs, without = [], []
    for n in range(args.runs):
        runs.append(run_pipeline(shop, args.work / "models"))
        print(
            f"run {n + 1}/{args.runs}: {runs[-1]['wall_s']:.1f} s, "
            f"ingest {runs[-1]['ingest_rows_per_s']:,.0f} rows/s, "
            f"peak {runs[-1]['peak_rss_mib']:,.0f} MiB",
            flush=True,
        )
        if args.against_no_search:
            without.append(run_pipeline(shop, args.work / "models", no_search))
            print(f"  the same job without the search: {without[-1]['wall_s']:.1f} s", flush=True)
    if without:
        ratios = [r["wall_s"] / w["wall_s"] for r, w in zip(runs, without, strict=True)]
        print(
            f"\nWith the shipped search against without it: medians "
            f"{statistics.median(r['wall_s'] for r in runs):.1f} s against "
            f"{statistics.median(w['wall_s'] for w in without):.1f} s; "
            f"median ratio {statistics.median(ratios):.2f}x"
        )
    if runs:  # --runs 0 measures only the ALS overhead
        print(
            f"\nWhole pipeline, medians of {args.runs} runs "
            f"({platform.node()}, {os.cpu_count()} CPUs)"
        )
        for key in runs[0]:
            values = [r[key] for r in runs if key in r]
            print(f"  {key:<40} {statistics.median(values):>14,.2f}")
    overhead = als_overhead(shop, args.als_runs)
    print(f"\nALS fit on {overhead['matrix']}, medians of {args.als_runs} interleaved runs")
    print(f"  recsvc ALSRecommender.fit   {overhead['ours_median_s']:.2f} s")
    print(f"  bare implicit ALS.fit       {overhead['bare_median_s']:.2f} s")
    print(f"  ratio (median of ratios)    {overhead['ratio_median']:.3f}")


if __name__ == "__main__":
    main()
