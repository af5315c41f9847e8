"""`recsvc tune`: hyper-parameter search with Optuna, within a time budget, without peeking.

The log is cut twice. The newest `validation_share` of events is the test period: the search
never sees it. The rest is cut again the same way, and every trial trains on the older part and
is scored on the newer one. Only when the search is over is the winner (and the configuration
it replaces) fitted on everything before the test period and scored on it once: an honest
estimate of what tuning bought. The written configuration then trains on all data as usual.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from recsvc.config import Config, dump_config
from recsvc.errors import BadInput
from recsvc.training.engines import fit_model, make_model
from recsvc.training.evaluate import (
    SELECTION_METRIC,
    model_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.pipeline import TrainInputs, candidates, ingest_and_clean
from recsvc.training.progress import Progress
from recsvc.training.search import TUNABLE, search, with_signals


def tune(
    inputs: TrainInputs,
    config: Config,
    out: Path,
    models: list[str] | None = None,
    budget_s: float = 600.0,
    trials: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Searches, writes the best configuration to `out` (TOML) and the trials beside it."""
    progress = progress or Progress("tune")
    dataset, _ = ingest_and_clean(inputs, config, out.parent / "rejects", progress)
    share = config.training.validation_share
    outer = validation_holdout(dataset.events, config)
    inner = outer and validation_holdout(outer.train_events, config)
    if outer is None or inner is None:
        raise BadInput("too little data to tune: need a test period and a validation period")
    names, skipped = candidates(
        dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, type="auto", candidates=models or TUNABLE),
        ),
        outer.train.shape,
    )
    unknown = sorted(set(names) - set(TUNABLE))
    if unknown:
        raise BadInput(f"cannot tune {unknown[0]!r}; tunable models: {', '.join(TUNABLE)}")
    for name, why in skipped.items():
        progress.say(f"not tuning {name}: {why}")
    variant = inner.variant
    past = dataclasses.replace(dataset, events=inner.train_events)
    progress.say(
        f"search trains on {inner.train_events.num_rows:,} events and validates on the next "
        f"{inner.describe()['test_pairs']:,} pairs; the last {share:.0%} of the log "
        f"({outer.describe()['test_pairs']:,} pairs) is kept for the final check"
    )
    found = search(inner, past, config, names, budget_s, trials, progress=progress)
    study, best, default_best = found.study, found.best, found.best_default()
    tuned, default = found.config_of(best, config), found.config_of(default_best, config)
    before_test = dataclasses.replace(dataset, events=outer.train_events)

    def test_score(chosen: Config) -> float:
        split = with_signals(outer, chosen.signals)
        model = fit_model(make_model(chosen.model.type, chosen), split.train, before_test)
        return ranking_metrics(model_scorer(model), split)[variant].get(SELECTION_METRIC, 0.0)

    with progress.stage("final check on the test period"):
        result = {
            "model": tuned.model.type,
            "params": best.params,
            "variant": variant,
            "trials": len(study.trials),
            "seconds": found.seconds,
            "validation": {"tuned": best.value, "default": default_best.value},
            "test": {"tuned": test_score(tuned), "default": test_score(default)},
            "default_model": default.model.type,
            "search_data_end_ms": int(inner.train_events.column("timestamp_ms").to_numpy().max())
            if inner.cut_ms is not None
            else None,
            "test_cut_ms": outer.cut_ms,
        }
    header = (
        f"Written by `recsvc tune` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{result['trials']} trials in {result['seconds']:.0f} s.\n"
        f"Best: {tuned.model.type}, validation {SELECTION_METRIC} {best.value:.4f} "
        f"(defaults: {default.model.type} {default_best.value:.4f}).\n"
        f"On the held-back test period: tuned {result['test']['tuned']:.4f}, "
        f"defaults {result['test']['default']:.4f}.\n"
        "Train with it: recsvc train --config THIS_FILE ..."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_config(tuned, header))
    trials_path = out.with_suffix(".trials.json")
    trials_path.write_text(
        json.dumps(
            {
                **result,
                "all_trials": [
                    {"number": t.number, "value": t.value, "params": t.params} for t in study.trials
                ],
            },
            indent=2,
        )
        + "\n"
    )
    progress.say(
        f"best {tuned.model.type}: validation {best.value:.4f} vs defaults "
        f"{default_best.value:.4f}; test period {result['test']['tuned']:.4f} vs "
        f"{result['test']['default']:.4f}; wrote {out} and {trials_path}"
    )
    return result
