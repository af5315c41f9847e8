"""Churn risk on real logs: the model the training run fits against the recency rule behind the
`at_risk` stage, on the same time cut the job uses (training/churn.py): features two horizons
before the log's end and labels from the horizon after, to fit; features one horizon before the
end and labels from the last horizon, to judge. ROC AUC and precision in the riskiest decile.

    .venv/bin/python bench/churn.py [--datasets online-retail tmall] [--horizon-days 30]

Skips, saying so, where ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
from quality import SHARED, prepare

from recsvc.config import Config, MarketingConfig
from recsvc.training.churn import fit_churn
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["online-retail", "tmall"])
    parser.add_argument("--horizon-days", type=float, default=30.0)
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "quality")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is not there (the real datasets live beside the checkout)")
        return
    config = dataclasses.replace(Config(), marketing=MarketingConfig(args.horizon_days))
    progress = Progress("churn", sys.stderr)
    results = {}
    for name in args.datasets:
        # The whole log (the churn cut is taken at its end), cleaned as training cleans it.
        outer, _ = prepare(name, args.work, config, progress)
        events = pa.concat_tables([outer.train_events, outer.test_events])
        started = time.perf_counter()
        _, _, evidence = fit_churn(events, config)
        evidence["seconds"] = round(time.perf_counter() - started, 2)
        results[name] = evidence
        print(f"{name}: {json.dumps(evidence)}", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
