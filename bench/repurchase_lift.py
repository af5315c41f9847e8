"""What-if: the stage policy's "blend" strategy with other repurchase lifts (REPURCHASE_LIFT).

Trains with the shipped defaults on a dataset's training period as `bench/quality.py` left it
(var/bench/data/NAME/served/events.parquet: run that first), once per lift, and prints the
validation NDCG@10 of each strategy's served lists over all validation users (the stage
choice's evidence). Used to judge whether a data-chosen lift would beat a fixed one.

    .venv/bin/python bench/repurchase_lift.py taobao 0.5,1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import recsvc.serving.policy as policy
from recsvc.config import Config
from recsvc.training.pipeline import TrainInputs, train
from recsvc.training.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("lifts", help="comma-separated, in spreads of the best scores")
    args = parser.parse_args()
    data = ROOT / "var" / "bench" / "data" / args.dataset
    items = data / "items.csv"
    inputs = TrainInputs(
        data / "served" / "events.parquet", items if items.exists() else None, None
    )
    for lift in (float(x) for x in args.lifts.split(",")):
        policy.REPURCHASE_LIFT = lift  # read at call time by the stage choice's scoring
        with tempfile.TemporaryDirectory() as models, open(os.devnull, "w") as quiet:
            result = train(inputs, Path(models), Config(), progress=Progress("lift", quiet))
        evidence = result.manifest["evaluation"]["lifecycle"]["evidence"]["all"]
        print(f"{args.dataset} lift {lift:g}: {json.dumps(evidence)}", flush=True)


if __name__ == "__main__":
    main()
