"""Hyper-parameter search on a validation split (Optuna's TPE within a time budget).

`recsvc tune` runs it on an inner split of the training period and writes a configuration; the
training job runs it on its own validation split under `training.tune_budget_s` and trains with
what it found where that beats the shipped parameters clearly. Every trial fits on the split's
training part and is scored on its held-out part: the split's own later events, never anything
the caller keeps back.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import optuna

from recsvc.config import Config, SignalsConfig
from recsvc.training.engines import fit_model, make_model
from recsvc.training.evaluate import SELECTION_METRIC, Holdout, model_scorer, ranking_metrics
from recsvc.training.ingest import Dataset
from recsvc.training.interactions import build_interactions
from recsvc.training.progress import Progress

TUNABLE = ("als", "bpr", "itemknn", "ease", "lightfm")
# signals.history_half_life tried, in moments (0: every event of a user counts the same).
HISTORY_HALF_LIVES = (0.0, 5.0, 10.0, 20.0, 50.0, 200.0)
# repeat_weight tried for item-kNN and EASE (0: the neighbours' evidence alone).
REPEAT_WEIGHTS = (0.0, 0.3, 1.0, 3.0)


def _float(trial: optuna.Trial, key: str, low: float, high: float, current: float) -> float:
    """A log-uniform suggestion whose range also holds `current` (the configured value), so the
    trial that reproduces the configuration lies inside the search space."""
    if current > 0:
        low, high = min(low, current), max(high, current)
    return trial.suggest_float(key, low, high, log=True)


def _int(trial: optuna.Trial, key: str, low: int, high: int, current: int, log: bool) -> int:
    """The same for an integer parameter."""
    if current > 0:
        low, high = min(low, current), max(high, current)
    return trial.suggest_int(key, low, high, log=log)


def _repeat_weight(trial: optuna.Trial, name: str, current: float, repeats: bool) -> float:
    """An item-based model's repeat_weight, from REPEAT_WEIGHTS and the configured value; the
    configured value where served lists never hold what users know (`repeats` false)."""
    if not repeats:
        return current
    return trial.suggest_categorical(f"{name}.repeat_weight", sorted({*REPEAT_WEIGHTS, current}))


def suggest(trial: optuna.Trial, name: str, config: Config, repeats: bool = True) -> Config:
    """`config` with the trial's signals and the parameters of model `name`; `repeats` false
    where the split is judged on unseen items (a repeat weight changes nothing there)."""
    m = config.model
    signals = dataclasses.replace(
        config.signals,
        view=_float(trial, "signals.view", 0.1, 4.0, config.signals.view),
        cart=_float(trial, "signals.cart", 1.0, 20.0, config.signals.cart),
        scaling=trial.suggest_categorical("signals.scaling", ["log", "bm25", "none"]),
        history_half_life=trial.suggest_categorical(
            "signals.history_half_life",
            sorted({*HISTORY_HALF_LIVES, config.signals.history_half_life}),
        ),
    )
    if name == "als":
        params: Any = dataclasses.replace(
            m.als,
            factors=_int(trial, "als.factors", 16, 256, m.als.factors, log=True),
            regularization=_float(trial, "als.regularization", 1e-3, 1.0, m.als.regularization),
            alpha=_float(trial, "als.alpha", 0.5, 50.0, m.als.alpha),
            iterations=_int(trial, "als.iterations", 5, 30, m.als.iterations, log=False),
        )
    elif name == "bpr":
        params = dataclasses.replace(
            m.bpr,
            factors=_int(trial, "bpr.factors", 16, 256, m.bpr.factors, log=True),
            learning_rate=_float(trial, "bpr.learning_rate", 1e-3, 0.3, m.bpr.learning_rate),
            regularization=_float(trial, "bpr.regularization", 1e-4, 0.1, m.bpr.regularization),
            iterations=_int(trial, "bpr.iterations", 20, 300, m.bpr.iterations, log=True),
        )
    elif name == "itemknn":
        params = dataclasses.replace(
            m.itemknn,
            neighbours=_int(trial, "itemknn.neighbours", 10, 500, m.itemknn.neighbours, log=True),
            weighting=trial.suggest_categorical("itemknn.weighting", ["cosine", "bm25"]),
            repeat_weight=_repeat_weight(trial, "itemknn", m.itemknn.repeat_weight, repeats),
        )
    elif name == "ease":
        params = dataclasses.replace(
            m.ease,
            l2=_float(trial, "ease.l2", 1.0, 5000.0, m.ease.l2),
            repeat_weight=_repeat_weight(trial, "ease", m.ease.repeat_weight, repeats),
        )
    else:
        params = dataclasses.replace(
            m.lightfm,
            factors=_int(trial, "lightfm.factors", 16, 128, m.lightfm.factors, log=True),
            learning_rate=_float(
                trial, "lightfm.learning_rate", 5e-3, 0.2, m.lightfm.learning_rate
            ),
            epochs=_int(trial, "lightfm.epochs", 5, 60, m.lightfm.epochs, log=True),
        )
    model = dataclasses.replace(m, type=name, **{name: params})
    return dataclasses.replace(config, signals=signals, model=model)


def default_params(name: str, config: Config, repeats: bool = True) -> dict[str, Any]:
    """The trial that reproduces `config` for model `name`, so the search starts from it."""
    values: dict[str, Any] = {"model": name}
    for key in ("view", "cart", "scaling", "history_half_life"):
        values[f"signals.{key}"] = getattr(config.signals, key)
    for key, value in dataclasses.asdict(getattr(config.model, name)).items():
        if key not in ("max_items", "loss", "form") and (repeats or key != "repeat_weight"):
            values[f"{name}.{key}"] = value
    return values


def with_signals(holdout: Holdout, signals: SignalsConfig) -> Holdout:
    """The same split with the training matrix rebuilt under other signal weights."""
    train = build_interactions(holdout.train_events, signals)
    return dataclasses.replace(holdout, train=train)


@dataclass
class Search:
    """A finished search: the study, and the names it searched over."""

    study: optuna.Study
    names: list[str]
    seconds: float
    repeats: bool = True  # whether repeat weights were searched (see suggest)

    @property
    def best(self) -> optuna.trial.FrozenTrial:
        return self.study.best_trial

    def config_of(self, trial: optuna.trial.FrozenTrial, config: Config) -> Config:
        """`config` with `trial`'s signals and its model's parameters."""
        name = trial.params["model"]
        return suggest(optuna.trial.FixedTrial(trial.params), name, config, self.repeats)

    def best_default(self) -> optuna.trial.FrozenTrial:
        """The best of the first trials, which are the shipped parameters of each model."""
        defaults = [t for t in self.study.trials if t.number < len(self.names)]
        return max(defaults, key=lambda t: t.value if t.value is not None else -1.0)


def search(
    split: Holdout,
    past: Dataset,
    config: Config,
    names: list[str],
    budget_s: float,
    trials: int | None = None,
    known: dict[str, float] | None = None,
    progress: Progress | None = None,
) -> Search:
    """Searches `names` (models in TUNABLE) and the signal weights on `split`. The first trials
    are `config`'s own parameters for each model, so the search can only match or beat them;
    `known` gives their scores where the caller has them already (not fitted again). `trials`
    caps the trials, those first ones included; `budget_s` stops the search between trials."""
    progress = progress or Progress("tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    known = known or {}
    variant = split.variant
    repeats = variant != "unseen"
    defaults = {
        name: suggest(
            optuna.trial.FixedTrial(default_params(name, config, repeats)), name, config, repeats
        )
        for name in names
    }

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("model", names)
        trial_config = suggest(trial, name, config, repeats)
        if name in known and trial_config == defaults[name]:
            return known[name]
        trial_split = with_signals(split, trial_config.signals)
        model = fit_model(make_model(name, trial_config), trial_split.train, past)
        return ranking_metrics(model_scorer(model), trial_split)[variant].get(SELECTION_METRIC, 0.0)

    started = time.perf_counter()

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        elapsed = time.perf_counter() - started
        progress.say(
            f"trial {trial.number + 1}: {trial.params['model']} {SELECTION_METRIC} "
            f"{trial.value:.4f}; best {study.best_value:.4f} ({study.best_params['model']}); "
            f"{elapsed:.0f}/{budget_s:.0f} s"
        )

    sampler = optuna.samplers.TPESampler(seed=config.training.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for name in names:
        study.enqueue_trial(default_params(name, config, repeats))
    study.optimize(
        objective,
        n_trials=trials,
        timeout=budget_s,
        callbacks=[report],
    )
    return Search(study, names, round(time.perf_counter() - started, 1), repeats)
