"""How the cost grows: the training job at 1M, 3M and 10M generated events, and Recommend's
serving speed at 10K, 100K and 1M items.

Training: `recsvc data generate` shops whose users grow with the event count and whose items
grow with its square root (a shop's catalogue grows slower than its traffic), each trained once
by `recsvc train` with the shipped defaults (bench/pipeline.py's run: wall clock, peak resident
memory of the job, each stage's time).

Serving: bench/million.py's generated ALS models (users = items, 64 factors, HNSW index),
served with bench/all-rules.toml (every rule and an experiment on) and measured by
bench/serving.py with its default client (h2load), one run each.

    .venv/bin/python bench/scaling.py train --events 1000000 3000000 10000000
    .venv/bin/python bench/scaling.py serve --items 10000 100000 [--million var/bench/million]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "bench" / "scaling"
RECSVC = str(Path(sys.executable).with_name("recsvc"))
# bench/pipeline.py's shop: about 1.03M events with seed 7 over 8 weeks.
BASE_EVENTS, BASE_USERS, BASE_ITEMS = 1_030_000, 20_000, 5_000


def shop_for(events: int) -> dict[str, int]:
    factor = events / BASE_EVENTS
    return {
        "users": round(BASE_USERS * factor),
        "items": round(BASE_ITEMS * math.sqrt(factor)),
        "weeks": 8,
    }


def train(sizes: list[int]) -> list[dict[str, object]]:
    rows = []
    for events in sizes:
        shop = shop_for(events)
        directory = WORK / f"shop-{events}"
        if not (directory / "events.csv").exists():
            subprocess.run(
                [RECSVC, "data", "generate", "--seed", "7", "--out", str(directory),
                 *(f"--{k}={v}" for k, v in shop.items())],
                check=True,
            )  # fmt: skip
        result = run_pipeline(directory, WORK / f"models-{events}")
        row = {"events_asked": events, **shop, **result}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def serve(items: list[int], million: Path | None) -> list[dict[str, object]]:
    rows = []
    models = [(n, WORK / f"generated-{n}") for n in items]
    if million is not None:
        models.append((1_000_000, million))
    for n, directory in models:
        if not directory.exists():
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "million.py"), "--out", str(directory),
                 "--users", str(n), "--items", str(n)],
                check=True,
            )  # fmt: skip
        out = WORK / f"serving-{n}.json"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "serving.py"), "--model-dir", str(directory),
             "--config", str(ROOT / "bench" / "all-rules.toml"), "--label", f"items-{n}",
             "--repeats", "3", "--duration", "6", "--json", str(out)],
            check=True, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        result = json.loads(out.read_text())
        row = {"items": n, **result}
        print(json.dumps({k: row[k] for k in ("items", "ratio_median", "cpu_us_per_call")}))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    training = sub.add_parser("train")
    training.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000])
    serving = sub.add_parser("serve")
    serving.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    serving.add_argument("--million", type=Path, default=None)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = train(args.events) if args.what == "train" else serve(args.items, args.million)
    (WORK / f"{args.what}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
