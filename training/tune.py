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

import optuna

from recsvc.config import Config, SignalsConfig, dump_config
from recsvc.errors import BadInput
from recsvc.training.evaluate import Holdout, model_scorer, ranking_metrics, validation_holdout
from recsvc.training.interactions import build_interactions
from recsvc.training.pipeline import (
    SELECTION_METRIC,
    TrainInputs,
    candidates,
    fit_model,
    ingest_and_clean,
    make_model,
)
from recsvc.training.progress import Progress

TUNABLE = ("als", "bpr", "itemknn", "ease", "lightfm")


def suggest(trial: optuna.Trial, name: str, config: Config) -> Config:
    """`config` with the trial's signals and the parameters of model `name`."""
    signals = dataclasses.replace(
        config.signals,
        view=trial.suggest_float("signals.view", 0.1, 4.0, log=True),
        cart=trial.suggest_float("signals.cart", 1.0, 20.0, log=True),
        scaling=trial.suggest_categorical("signals.scaling", ["log", "bm25", "none"]),
    )
    m = config.model
    if name == "als":
        params: Any = dataclasses.replace(
            m.als,
            factors=trial.suggest_int("als.factors", 16, 256, log=True),
            regularization=trial.suggest_float("als.regularization", 1e-3, 1.0, log=True),
            alpha=trial.suggest_float("als.alpha", 0.5, 50.0, log=True),
            iterations=trial.suggest_int("als.iterations", 5, 30),
        )
    elif name == "bpr":
        params = dataclasses.replace(
            m.bpr,
            factors=trial.suggest_int("bpr.factors", 16, 256, log=True),
            learning_rate=trial.suggest_float("bpr.learning_rate", 1e-3, 0.3, log=True),
            regularization=trial.suggest_float("bpr.regularization", 1e-4, 0.1, log=True),
            iterations=trial.suggest_int("bpr.iterations", 20, 300, log=True),
        )
    elif name == "itemknn":
        params = dataclasses.replace(
            m.itemknn,
            neighbours=trial.suggest_int("itemknn.neighbours", 10, 500, log=True),
            weighting=trial.suggest_categorical("itemknn.weighting", ["cosine", "bm25"]),
        )
    elif name == "ease":
        params = dataclasses.replace(
            m.ease, l2=trial.suggest_float("ease.l2", 1.0, 5000.0, log=True)
        )
    else:
        params = dataclasses.replace(
            m.lightfm,
            factors=trial.suggest_int("lightfm.factors", 16, 128, log=True),
            learning_rate=trial.suggest_float("lightfm.learning_rate", 5e-3, 0.2, log=True),
            epochs=trial.suggest_int("lightfm.epochs", 5, 60, log=True),
        )
    model = dataclasses.replace(m, type=name, **{name: params})
    return dataclasses.replace(config, signals=signals, model=model)


def default_params(name: str, config: Config) -> dict[str, Any]:
    """The trial that reproduces `config` for model `name`, so the search starts from it."""
    values: dict[str, Any] = {"model": name}
    for key in ("view", "cart", "scaling"):
        values[f"signals.{key}"] = getattr(config.signals, key)
    for key, value in dataclasses.asdict(getattr(config.model, name)).items():
        if key not in ("max_items", "loss"):
            values[f"{name}.{key}"] = value
    return values


def with_signals(holdout: Holdout, signals: SignalsConfig) -> Holdout:
    """The same split with the training matrix rebuilt under other signal weights."""
    train = build_interactions(holdout.train_events, signals)
    return dataclasses.replace(holdout, train=train)


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset, _ = ingest_and_clean(inputs, config, out.parent / "rejects", progress)
    share, seed = config.training.validation_share, config.training.seed
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

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("model", names)
        trial_config = suggest(trial, name, config)
        split = with_signals(inner, trial_config.signals)
        model = fit_model(make_model(name, trial_config), split.train, past)
        return ranking_metrics(model_scorer(model), split)[variant].get(SELECTION_METRIC, 0.0)

    started = time.perf_counter()

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        elapsed = time.perf_counter() - started
        progress.say(
            f"trial {trial.number + 1}: {trial.params['model']} {SELECTION_METRIC} "
            f"{trial.value:.4f}; best {study.best_value:.4f} ({study.best_params['model']}); "
            f"{elapsed:.0f}/{budget_s:.0f} s, {(trial.number + 1) / elapsed:.2f} trials/s"
        )

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for name in names:  # the defaults first: tuning can only match or beat them on validation
        study.enqueue_trial(default_params(name, config))
    study.optimize(objective, n_trials=trials, timeout=budget_s, callbacks=[report])

    best = study.best_trial
    tuned = suggest(optuna.trial.FixedTrial(best.params), best.params["model"], config)
    default_trials = [t for t in study.trials if t.number < len(names) and t.value is not None]
    default_best = max(default_trials, key=lambda t: t.value or 0.0)
    default = suggest(
        optuna.trial.FixedTrial(default_best.params), default_best.params["model"], config
    )
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
            "seconds": round(time.perf_counter() - started, 1),
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
