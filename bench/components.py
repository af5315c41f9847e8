"""What issue 16's components give one model: a model family fitted with each combination of
`signals.history_half_life` and `repeat_weight` (everything else shipped), scored on the job's
own validation split of the training period (what the job's search sees) and on the test
period of `bench/quality.py` (what users meet). Run `bench/quality.py` first: it imports the
datasets into var/bench/data.

    .venv/bin/python bench/components.py --datasets taobao,tmall --models ease \\
        --half-lives 0,20 --repeat-weights 0,1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from quality import ROOT, SPLITS, prepare, with_components

from recsvc.config import Config
from recsvc.training.evaluate import Holdout, model_scorer, ranking_metrics, validation_holdout
from recsvc.training.ingest import Dataset
from recsvc.training.interactions import build_interactions
from recsvc.training.pipeline import fit_model, make_model
from recsvc.training.progress import Progress


def score(split: Holdout, past: Dataset, family: str, config: Config) -> float:
    """NDCG@10 of `family` fitted on the split's training part with `config`'s signals."""
    train = build_interactions(
        split.train_events, config.signals, split.train.user_ids, split.train.item_ids
    )
    rebuilt = dataclasses.replace(split, train=train)
    model = fit_model(make_model(family, config), rebuilt.train, past)
    return ranking_metrics(model_scorer(model), rebuilt)[rebuilt.variant]["ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(SPLITS))
    parser.add_argument("--models", default="ease")
    parser.add_argument("--half-lives", default="0,20")
    parser.add_argument("--repeat-weights", default="0,1")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "data")
    args = parser.parse_args()
    quiet = Progress("components", open(os.devnull, "w"))  # noqa: SIM115
    print("dataset | model | history_half_life | repeat_weight | validation | test period")
    for name in args.datasets.split(","):
        config = Config()
        outer, past = prepare(name, args.work, config, quiet)
        inner = validation_holdout(outer.train_events, config)
        assert inner is not None
        for family in args.models.split(","):
            for half_life in (float(h) for h in args.half_lives.split(",")):
                for weight in (float(w) for w in args.repeat_weights.split(",")):
                    tried = with_components(config, half_life, weight)
                    figures = [score(split, past, family, tried) for split in (inner, outer)]
                    print(
                        f"{name} | {family} | {half_life:g} | {weight:g} | "
                        f"{figures[0]:.4f} | {figures[1]:.4f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
