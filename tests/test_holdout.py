"""The validation split models are judged on, and the parameter search run on it.

Direct and fast (tables of a few hundred events): the holdout decides what every model, the
search and the quality gate are scored on, so its cut, its fallbacks and what it leaves in
training are pinned here exactly; `make mutation` judges the holdout-and-tuning area by this
file first.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pyarrow as pa
import pytest
from helpers import events_table, quiet, write_lines

from recsvc.config import Config, SignalsConfig, TrainingConfig, load_config
from recsvc.errors import BadInput
from recsvc.training import pipeline
from recsvc.training import search as searching
from recsvc.training.engines import fit_model, make_model
from recsvc.training.evaluate import (
    MIN_PURCHASES_TARGET,
    Holdout,
    holdout_from_mask,
    holdout_split,
    model_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.ingest import Dataset
from recsvc.training.pipeline import TrainInputs, tune_parameters
from recsvc.training.progress import Progress
from recsvc.training.search import (
    HISTORY_HALF_LIVES,
    REPEAT_WEIGHTS,
    TUNABLE,
    Search,
    default_params,
    search,
    suggest,
    with_signals,
)
from recsvc.training.tune import tune

SECOND = 1000


def pairs_of(holdout: Holdout) -> set[tuple[str, str]]:
    """The held-out (user, item) pairs, by id."""
    users, items = holdout.train.user_ids, holdout.train.item_ids
    rows, cols = holdout.test.nonzero()
    return {(str(users[r]), str(items[c])) for r, c in zip(rows, cols, strict=True)}


def pairs_in(events: pa.Table) -> set[tuple[str, str]]:
    """The (user, item) pairs of an event table: a split's training or held-out part."""
    return set(
        zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist(), strict=True)
    )


def trained_pairs(holdout: Holdout) -> set[tuple[str, str]]:
    return pairs_in(holdout.train_events)


def cycling_log(n: int = 100) -> list[tuple[str, str, str, int]]:
    """Ten users and thirteen items in turn, one purchase a second."""
    return [(f"u{t % 10}", f"i{(t * 7) % 13}", "purchase", t * SECOND) for t in range(n)]


def bursts(event: str) -> list[tuple[str, str, str, int]]:
    """Thirty users who each come once, for ten events in a row, like film raters."""
    return [
        (f"u{u}", f"i{(u + t) % 12}", event, (u * 100 + t) * SECOND)
        for u in range(30)
        for t in range(10)
    ]


def test_the_newest_share_of_events_is_held_out_at_one_cut_date() -> None:
    rows = cycling_log()
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1)
    assert holdout is not None and holdout.method == "temporal"
    stamps = np.array([r[3] for r in rows])
    assert holdout.cut_ms == int(np.quantile(stamps, 0.8)) == 79_200
    assert holdout.train_events.num_rows == 80  # stamps 0 .. 79 s, before the cut
    assert holdout.test_events is not None and holdout.test_events.num_rows == 20
    assert holdout.test_events.column("timestamp_ms").to_pylist() == [
        t * SECOND for t in range(80, 100)
    ]
    assert pairs_of(holdout) == {(f"u{t % 10}", f"i{(t * 7) % 13}") for t in range(80, 100)}
    assert holdout.test.shape == (10, 13)
    # Held-out pairs are marks, not weights: a purchase counts 1 like any other.
    assert set(holdout.test.data.tolist()) == {1.0}
    assert holdout.train.confidence.max() > 1.0


def test_an_event_at_the_cut_is_held_out_and_a_cut_at_the_oldest_moves_to_the_newest() -> None:
    # Nine events at the first moment and one later: the quantile falls on the first moment,
    # which would leave nothing to train on, so the cut moves to the newest event.
    rows = [(f"u{n % 3}", f"i{n % 4}", "view", 0) for n in range(9)]
    rows.append(("u0", "i0", "view", 5 * SECOND))
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1)
    assert holdout is not None and holdout.method == "temporal"
    assert holdout.cut_ms == 5 * SECOND
    assert holdout.train_events.num_rows == 9
    assert pairs_of(holdout) == {("u0", "i0")}


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_a_share_outside_zero_to_one_gives_no_holdout(share: float) -> None:
    assert holdout_split(events_table(cycling_log()), SignalsConfig(), share, seed=1) is None


def test_a_single_event_gives_no_holdout_and_two_can() -> None:
    one = [("u", "i", "view", SECOND)]
    assert holdout_split(events_table(one), SignalsConfig(), 0.5, seed=1) is None
    two = [("u", "i", "view", SECOND), ("u", "i", "view", 2 * SECOND)]
    holdout = holdout_split(events_table(two), SignalsConfig(), 0.5, seed=1)
    assert holdout is not None and pairs_of(holdout) == {("u", "i")}


def test_log_without_timestamps_holds_out_per_user() -> None:
    rows = [(f"u{u}", f"i{i}", "view", 0) for u in range(30) for i in range(10)]
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1)
    assert holdout is not None and holdout.method == "per_user" and holdout.cut_ms is None
    assert holdout.describe()["test_users"] > 20
    # A random fifth, drawn from the seed: the same seed draws the same split, another does not.
    assert 30 < holdout.test_events.num_rows < 90
    again = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1)
    other = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=2)
    assert again is not None and other is not None
    assert trained_pairs(again) == trained_pairs(holdout) != trained_pairs(other)


def test_user_last_n_holds_out_each_users_newest_events() -> None:
    rows = [("z", f"i{t}", "view", t * SECOND) for t in range(10)]
    rows += [("a", f"i{t}", "view", (10 + t) * SECOND) for t in range(5)]
    rows += [("b", "i9", "view", 17 * SECOND), ("b", "i8", "view", 12 * SECOND)]
    rows += [("c", "i1", "view", 19 * SECOND)]  # a single event stays in training
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1, user_last_n=2)
    assert holdout is not None and holdout.method == "user_last" and holdout.cut_ms is None
    assert trained_pairs(holdout) == {("z", f"i{t}") for t in range(8)} | {
        ("a", "i0"),
        ("a", "i1"),
        ("a", "i2"),
        ("b", "i8"),  # b has two events: only the newest is held out
        ("c", "i1"),
    }
    # i9 is held out for z and b, but no training event has it, so it cannot be scored.
    assert pairs_of(holdout) == {("z", "i8"), ("a", "i3"), ("a", "i4")}
    last = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1, user_last_n=1)
    assert last is not None and last.method == "user_last"
    assert pairs_of(last) == {("a", "i4")}  # z's i9 and b's i9 are unknown to training


def test_the_newest_share_of_each_user_is_rounded_up_and_ties_go_by_row_order() -> None:
    # Users who come once, in a burst: by date only the last user would be judged.
    rows = [("a", f"i{t}", "view", t * SECOND) for t in range(10)]  # 20% of 10: 2
    rows += [("b", f"i{t}", "view", (20 + t) * SECOND) for t in range(3)]  # of 3: 1 (0.6 up)
    rows += [("c", "i0", "view", 30 * SECOND), ("c", "i1", "view", 30 * SECOND)]  # a tie
    rows += [("d", "i5", "view", 40 * SECOND)]  # alone: stays in training
    rows += [("e", f"i{t}", "view", (50 + t) * SECOND) for t in range(6)]  # of 6: 2 (1.2 up)
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1, min_users=3)
    assert holdout is not None and holdout.method == "user_last_share"
    assert holdout.test_events is not None and holdout.test_events.num_rows == 6
    assert pairs_in(holdout.test_events) == {
        ("a", "i8"),
        ("a", "i9"),
        ("b", "i2"),
        ("c", "i1"),  # of two events at one moment, the later row is the newer
        ("e", "i4"),
        ("e", "i5"),
    }
    assert holdout.train_events.num_rows == len(rows) - 6


def browse_then_buy(
    users: int, repeat_buyers: int = 0, held_out_views: int = 2
) -> list[tuple[str, str, str, int]]:
    """Each user views three items, then at one later moment views `held_out_views` more and
    buys the first they viewed; the first `repeat_buyers` users also buy their second twice."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(users):
        items = [f"i{i}" for i in rng.choice(30, 5, replace=False)]
        rows += [(f"u{u}", item, "view", (1 + n) * SECOND) for n, item in enumerate(items[:3])]
        rows += [(f"u{u}", i, "view", 5 * SECOND) for i in items[3 : 3 + held_out_views]]
        rows.append((f"u{u}", items[0], "purchase", 5 * SECOND))
        if u < repeat_buyers:
            rows.append((f"u{u}", items[1], "purchase", 2 * SECOND))
            rows.append((f"u{u}", items[1], "purchase", 5 * SECOND))
    return rows


@pytest.mark.parametrize(
    ("users", "target"), [(MIN_PURCHASES_TARGET, "purchases"), (MIN_PURCHASES_TARGET - 1, "events")]
)
def test_the_job_judges_on_held_out_purchases_where_it_has_enough_of_them(
    users: int, target: str
) -> None:
    """What a shop sells judges its models: a validation holdout with MIN_PURCHASES_TARGET
    purchases or more among other events keeps only the purchases; with fewer, every event."""
    holdout = validation_holdout(events_table(browse_then_buy(users)), Config())
    assert holdout is not None and holdout.target == target
    bought = holdout.test_purchased
    assert bought is not None and bought.nnz == users
    assert holdout.repeat_share == (1.0 if target == "purchases" else 1 / 3)
    if target == "purchases":
        assert (holdout.test != bought).nnz == 0
    else:
        assert holdout.test.nnz == 3 * users  # two views and a purchase
    assert holdout.describe()["target"] == target


def test_where_purchases_are_half_the_held_out_pairs_or_more_every_event_judges() -> None:
    """Film ratings: the liked ones are purchases, most of the log; all of them judge."""
    holdout = validation_holdout(
        events_table(browse_then_buy(MIN_PURCHASES_TARGET, held_out_views=1)), Config()
    )
    assert holdout is not None and holdout.test_purchased is not None
    assert 2 * holdout.test_purchased.nnz == 2 * MIN_PURCHASES_TARGET == holdout.test.nnz
    assert holdout.target == "events"


@pytest.mark.parametrize(("repeat_buyers", "variant"), [(0, "new"), (40, "new"), (60, "all")])
def test_where_held_out_purchases_repeat_no_earlier_purchase_models_are_judged_on_new_items(
    repeat_buyers: int, variant: str
) -> None:
    """Users return to what they viewed (pairs repeat) but at most 5% of held-out purchases
    repeat a purchase: judged on items not bought, and the judged pairs leave bought ones out."""
    holdout = validation_holdout(events_table(browse_then_buy(1000, repeat_buyers)), Config())
    assert holdout is not None and holdout.repeat_share >= 0.05
    assert holdout.purchase_repeat_share == pytest.approx(repeat_buyers / (1000 + repeat_buyers))
    assert holdout.variant == variant
    judged = holdout.judged
    assert judged.multiply(holdout.train.purchased).nnz == (
        0 if variant == "new" else repeat_buyers
    )


def test_too_few_users_after_the_cut_date_fall_back_to_each_users_newest_events() -> None:
    # Each user comes once, in a burst, like film raters: a cut date leaves few users to judge.
    rows = bursts("view")
    by_date = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1)
    assert by_date is None or by_date.describe()["test_users"] <= 1
    per_user = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1, min_users=20)
    assert per_user is not None and per_user.method == "user_last_share"
    assert per_user.describe()["test_users"] == 30
    assert per_user.train_events.num_rows == 30 * 8  # each user's newest 2 of 10 held out


def test_each_users_newest_are_taken_where_the_cut_date_judges_nobody() -> None:
    # By date the held-out event is an item nobody trained on: no holdout. Per user, a's repeat
    # of i is judged: one user, more than none.
    rows = [("a", "i", "view", 0), ("a", "i", "view", SECOND)]
    rows += [("b", "j", "view", 2 * SECOND), ("b", "k", "view", 3 * SECOND)]
    assert holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1) is None
    holdout = holdout_split(events_table(rows), SignalsConfig(), 0.2, seed=1, min_users=1)
    assert holdout is not None and holdout.method == "user_last_share"
    assert pairs_of(holdout) == {("a", "i")}


def test_the_cut_date_is_kept_when_each_users_newest_would_judge_no_more_users() -> None:
    # Every user buys all along, so the cut date already judges all ten: asking for more
    # users than there are must not swap in the per-user split, which judges no more.
    holdout = holdout_split(events_table(cycling_log()), SignalsConfig(), 0.2, seed=1, min_users=50)
    assert holdout is not None and holdout.method == "temporal"
    assert holdout.describe()["test_users"] == 10


def test_a_mask_leaving_either_side_empty_or_nothing_scorable_gives_no_holdout() -> None:
    events = events_table(cycling_log(20))
    everything = np.ones(20, dtype=bool)
    assert holdout_from_mask(events, SignalsConfig(), everything, "temporal", 0) is None
    assert holdout_from_mask(events, SignalsConfig(), ~everything, "temporal", 0) is None
    # The later events are all by a user the training part never saw: nothing to score.
    strangers = events_table([*cycling_log(10), ("new", "i0", "view", 99 * SECOND)])
    mask = np.r_[np.ones(10, dtype=bool), False]
    assert holdout_from_mask(strangers, SignalsConfig(), mask, "temporal", 0) is None
    mask = np.arange(20) < 15
    holdout = holdout_from_mask(events, SignalsConfig(view=2.0), mask, "temporal", 15 * SECOND)
    assert holdout is not None
    assert (holdout.method, holdout.cut_ms) == ("temporal", 15 * SECOND)
    assert holdout.train_events.num_rows == 15 and holdout.test_events.num_rows == 5
    assert holdout.train.user_ids.size == 10  # the training part's own id space


@pytest.mark.parametrize(
    "training",
    [
        TrainingConfig(validation_share=0.3),
        TrainingConfig(holdout_user_last_n=1),
        TrainingConfig(validation_share=0.2, min_holdout_users=20),
    ],
)
def test_the_jobs_validation_split_is_carved_with_its_training_settings(
    training: TrainingConfig,
) -> None:
    rows = bursts("purchase")
    events = events_table(rows)
    config = dataclasses.replace(Config(), training=training, signals=SignalsConfig(purchase=3.0))
    got = validation_holdout(events, config)
    want = holdout_split(
        events,
        config.signals,
        training.validation_share,
        training.seed,
        training.holdout_user_last_n,
        training.min_holdout_users,
    )
    assert got is not None and want is not None
    assert (got.method, got.cut_ms) == (want.method, want.cut_ms)
    assert trained_pairs(got) == trained_pairs(want) and pairs_of(got) == pairs_of(want)
    assert got.train.confidence.max() == want.train.confidence.max()


def test_the_jobs_split_of_a_log_without_time_follows_its_seed() -> None:
    rows = [(f"u{u}", f"i{i}", "view", 0) for u in range(20) for i in range(8)]
    events = events_table(rows)
    splits = [
        validation_holdout(
            events, dataclasses.replace(Config(), training=TrainingConfig(seed=seed))
        )
        for seed in (3, 3, 4)
    ]
    assert all(s is not None for s in splits)
    assert trained_pairs(splits[0]) == trained_pairs(splits[1]) != trained_pairs(splits[2])
    assert trained_pairs(splits[0]) == trained_pairs(
        holdout_split(events, SignalsConfig(), 0.15, seed=3)
    )


# The parameter search.


def test_a_search_range_widens_to_hold_the_configured_value() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    searching._float(trial, "above", 1.0, 2.0, 10.0)
    searching._float(trial, "below", 1.0, 2.0, 0.5)
    searching._float(trial, "unset", 1.0, 2.0, 0.0)
    searching._int(trial, "count", 10, 20, 40, log=True)
    searching._int(trial, "low", 10, 20, 3, log=False)
    searching._int(trial, "none", 10, 20, 0, log=False)
    searching._int(trial, "one", 10, 20, 1, log=False)
    got = {key: (d.low, d.high, d.log, type(d).__name__) for key, d in trial.distributions.items()}
    assert got == {
        "above": (1.0, 10.0, True, "FloatDistribution"),
        "below": (0.5, 2.0, True, "FloatDistribution"),
        "unset": (1.0, 2.0, True, "FloatDistribution"),
        "count": (10, 40, True, "IntDistribution"),
        "low": (3, 20, False, "IntDistribution"),
        "none": (10, 20, False, "IntDistribution"),
        "one": (1, 20, False, "IntDistribution"),
    }


SIGNALS_SPACE = {
    "signals.view": (0.1, 4.0, True),
    "signals.cart": (1.0, 20.0, True),
    "signals.scaling": ("log", "bm25", "none"),
    "signals.history_half_life": (0.0, 5.0, 10.0, 20.0, 50.0, 200.0),
}
# The search space, as the README's design notes give it: (low, high, log) or the choices.
SEARCH_SPACE = {
    "als": {
        "als.factors": (16, 256, True),
        "als.regularization": (1e-3, 1.0, True),
        "als.alpha": (0.5, 50.0, True),
        "als.iterations": (5, 30, False),
    },
    "bpr": {
        "bpr.factors": (16, 256, True),
        "bpr.learning_rate": (1e-3, 0.3, True),
        "bpr.regularization": (1e-4, 0.1, True),
        "bpr.iterations": (20, 300, True),
    },
    "itemknn": {
        "itemknn.neighbours": (10, 500, True),
        "itemknn.weighting": ("cosine", "bm25"),
        "itemknn.repeat_weight": (0.0, 0.3, 1.0, 3.0),
    },
    "ease": {"ease.l2": (1.0, 5000.0, True), "ease.repeat_weight": (0.0, 0.3, 1.0, 3.0)},
    "lightfm": {
        "lightfm.factors": (16, 128, True),
        "lightfm.learning_rate": (5e-3, 0.2, True),
        "lightfm.epochs": (5, 60, True),
    },
}


@pytest.mark.parametrize("name", TUNABLE)
def test_each_model_is_searched_over_its_ranges_and_the_signals(name: str) -> None:
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest(trial, name, Config())  # the shipped values lie inside every range
    got = {
        key: tuple(d.choices)
        if isinstance(d, optuna.distributions.CategoricalDistribution)
        else (d.low, d.high, d.log)
        for key, d in trial.distributions.items()
    }
    assert got == {**SIGNALS_SPACE, **SEARCH_SPACE[name]}
    ints = {
        k
        for k, d in trial.distributions.items()
        if isinstance(d, optuna.distributions.IntDistribution)
    }
    assert ints == {
        k
        for k in SEARCH_SPACE[name]
        if k.split(".")[1] in ("factors", "iterations", "neighbours", "epochs")
    }


@pytest.mark.parametrize("name", TUNABLE)
def test_the_first_trial_of_each_model_is_its_configured_parameters(name: str) -> None:
    config = Config()
    params = default_params(name, config)
    assert params["model"] == name
    keys = ("view", "cart", "scaling", "history_half_life")
    assert {k: params[f"signals.{k}"] for k in keys} == {
        "view": 1.0,
        "cart": 4.0,
        "scaling": "log",
        "history_half_life": 20.0,
    }
    section = dataclasses.asdict(getattr(config.model, name))
    # Sizes and choices the search never moves are not parameters of a trial.
    assert set(params) - {"model", *(f"signals.{k}" for k in keys)} == {
        f"{name}.{key}" for key in section if key not in ("max_items", "loss", "form")
    }
    again = suggest(optuna.trial.FixedTrial(params), name, config)
    assert again == dataclasses.replace(config, model=dataclasses.replace(config.model, type=name))


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        (
            "als",
            {"als.factors": 32, "als.regularization": 0.2, "als.alpha": 3.0, "als.iterations": 7},
            {"factors": 32, "regularization": 0.2, "alpha": 3.0, "iterations": 7},
        ),
        (
            "bpr",
            {
                "bpr.factors": 20,
                "bpr.learning_rate": 0.01,
                "bpr.regularization": 0.001,
                "bpr.iterations": 50,
            },
            {"factors": 20, "learning_rate": 0.01, "regularization": 0.001, "iterations": 50},
        ),
        (
            "itemknn",
            {"itemknn.neighbours": 30, "itemknn.weighting": "cosine", "itemknn.repeat_weight": 1.0},
            {"neighbours": 30, "weighting": "cosine", "repeat_weight": 1.0},
        ),
        ("ease", {"ease.l2": 50.0, "ease.repeat_weight": 0.3}, {"l2": 50.0, "repeat_weight": 0.3}),
        (
            "lightfm",
            {"lightfm.factors": 24, "lightfm.learning_rate": 0.02, "lightfm.epochs": 12},
            {"factors": 24, "learning_rate": 0.02, "epochs": 12},
        ),
    ],
)
def test_a_trial_sets_its_models_parameters_and_the_signals_and_nothing_else(
    name: str, values: dict, expected: dict
) -> None:
    config = Config()
    signals = {
        "signals.view": 0.5,
        "signals.cart": 9.0,
        "signals.scaling": "bm25",
        "signals.history_half_life": 5.0,
    }
    tried = suggest(optuna.trial.FixedTrial({**signals, **values}), name, config)
    got = (tried.signals.view, tried.signals.cart, tried.signals.scaling)
    assert got == (0.5, 9.0, "bm25") and tried.signals.history_half_life == 5.0
    assert tried.signals.purchase == config.signals.purchase
    assert tried.model.type == name
    section = getattr(tried.model, name)
    assert {key: getattr(section, key) for key in expected} == expected
    for other in TUNABLE:
        if other != name:
            assert getattr(tried.model, other) == getattr(config.model, other)
    assert tried.training == config.training and tried.cleaning == config.cleaning


def two_tastes(users: int = 40, seed: int = 0) -> list[tuple[str, str, str, int]]:
    """Two groups of users, each buying from its own half of a 16-item catalogue; a user's
    items are never repeated, so the split is judged on unseen items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        half = (u % 2) * 8
        for n, item in enumerate(rng.permutation(8)[:6]):
            rows.append((f"u{u}", f"i{half + item}", "purchase", (n * users + u) * SECOND))
    return rows


@pytest.fixture(scope="module")
def split() -> tuple[Holdout, Dataset]:
    events = events_table(two_tastes())
    holdout = holdout_split(events, SignalsConfig(), 0.3, seed=1)
    assert holdout is not None and holdout.variant == "unseen"
    return holdout, Dataset(holdout.train_events, None, None, [])


def test_the_signals_rebuild_the_training_matrix_and_nothing_else(split) -> None:
    holdout, _ = split
    rebuilt = with_signals(
        holdout, SignalsConfig(purchase=2.0, scaling="none", history_half_life=0.0)
    )
    assert rebuilt.test is holdout.test and rebuilt.train_events is holdout.train_events
    assert (rebuilt.method, rebuilt.cut_ms) == (holdout.method, holdout.cut_ms)
    assert set(rebuilt.train.confidence.data.tolist()) == {2.0}
    assert holdout.train.confidence.max() != 2.0


def test_the_search_starts_from_the_configured_models_and_scores_every_trial_honestly(
    split, monkeypatch: pytest.MonkeyPatch
) -> None:
    holdout, past = split
    config = Config()
    fitted: list[str] = []

    def counted(model, interactions, dataset):
        fitted.append(type(model).__name__)
        assert dataset is past
        return fit_model(model, interactions, dataset)

    monkeypatch.setattr(searching, "fit_model", counted)
    done = search(holdout, past, config, ["itemknn", "ease"], 600.0, 5, known={"itemknn": 0.5})
    trials = done.study.trials
    assert len(trials) == 5 and done.names == ["itemknn", "ease"]
    # Judged on unseen items: a repeat weight would change nothing, so none is searched.
    assert not done.repeats
    assert trials[0].params == default_params("itemknn", config, repeats=False)
    assert trials[1].params == default_params("ease", config, repeats=False)
    assert not any("repeat_weight" in k for t in trials for k in t.params)
    assert "ease.repeat_weight" in default_params("ease", config)
    assert trials[0].value == 0.5, "a known score is taken, not fitted again"
    assert len(fitted) == 4
    # The best of the configured models (EASE), though a later trial of EASE beats it.
    assert done.best_default().number == 1
    assert done.best.value == max(t.value for t in trials) > trials[1].value
    # Each trial's score is its configuration fitted on the split's training part and scored
    # on the split's own variant (unseen items here).
    for trial in trials[1:]:
        tried = done.config_of(trial, config)
        rebuilt = with_signals(holdout, tried.signals)
        model = fit_model(make_model(trial.params["model"], tried), rebuilt.train, past)
        metrics = ranking_metrics(model_scorer(model), rebuilt)
        assert trial.value == pytest.approx(metrics["unseen"]["ndcg@10"], abs=1e-9)
        assert metrics["unseen"]["ndcg@10"] != pytest.approx(metrics["all"]["ndcg@10"])
    assert done.config_of(trials[1], config) == dataclasses.replace(
        config, model=dataclasses.replace(config.model, type="ease")
    )


def test_where_users_come_back_the_search_starts_from_and_tunes_the_repeat_weight() -> None:
    """A log of repeat purchases is judged on all items: the repeat weight is searched, the
    first trial is the configured one, and each trial's configuration carries its weight."""
    rows = two_tastes()
    again = [(u, i, e, t + 10_000 * SECOND) for u, i, e, t in rows]  # every purchase repeated
    holdout = holdout_split(events_table(rows + again), SignalsConfig(), 0.3, seed=1)
    assert holdout is not None and holdout.variant == "all"
    config = Config()
    done = search(holdout, Dataset(holdout.train_events, None, None, []), config, ["itemknn"],
                  600.0, 6)  # fmt: skip
    trials = done.study.trials
    assert done.repeats is True
    assert trials[0].params == default_params("itemknn", config)
    assert trials[0].params["itemknn.repeat_weight"] == config.model.itemknn.repeat_weight
    assert len({t.params["itemknn.repeat_weight"] for t in trials}) > 1
    for trial in trials:
        tried = done.config_of(trial, config).model.itemknn.repeat_weight
        assert tried == trial.params["itemknn.repeat_weight"]


def test_the_search_stops_at_its_budget_and_its_best_default_is_the_best_first_trial(
    split,
) -> None:
    holdout, past = split
    config = Config()
    rushed = search(holdout, past, config, ["itemknn"], budget_s=1e-9)
    assert len(rushed.study.trials) == 1, "the budget ends the search after its first trial"
    assert isinstance(rushed.seconds, float) and rushed.seconds == round(rushed.seconds, 1)
    done = search(holdout, past, config, ["itemknn", "ease"], 600.0, 3, known={"itemknn": 0.99})
    assert isinstance(done, Search) and len(done.study.trials) == 3
    assert done.best_default().number == 0 and done.best_default().value == 0.99


def test_the_search_counts_its_seconds_to_a_tenth(split, monkeypatch: pytest.MonkeyPatch) -> None:
    holdout, past = split
    ticks = iter(100.0 + 1.2789 * n for n in range(100))
    monkeypatch.setattr(searching, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    done = search(holdout, past, Config(), ["itemknn"], 600.0, 2, known={"itemknn": 0.5})
    # The clock is read at the start, after each of the two trials, and at the end.
    assert done.seconds == 3.8  # 3 x 1.2789 s, to a tenth


def test_the_search_reports_each_trial_and_repeats_itself_from_its_seed(
    split, capsys: pytest.CaptureFixture[str]
) -> None:
    holdout, past = split
    config = Config()
    capsys.readouterr()
    first = search(holdout, past, config, ["itemknn"], 600.0, 4, known={"itemknn": 0.5})
    lines = [line for line in capsys.readouterr().err.splitlines() if "] trial " in line]
    assert len(lines) == 4 and lines[0].startswith("[tune ")
    assert lines[0].endswith("] trial 1: itemknn ndcg@10 0.5000; best 0.5000 (itemknn); 0/600 s")
    assert lines[3].split("] ")[1].startswith("trial 4: itemknn ndcg@10 ")
    again = search(holdout, past, config, ["itemknn"], 600.0, 4, known={"itemknn": 0.5})
    assert [t.params for t in again.study.trials] == [t.params for t in first.study.trials]
    reseeded = dataclasses.replace(config, training=TrainingConfig(seed=7))
    other = search(holdout, past, reseeded, ["itemknn"], 600.0, 4, known={"itemknn": 0.5})
    assert [t.params for t in other.study.trials][1:] != [t.params for t in first.study.trials][1:]


def finished_search(values: list[float], names: list[str], seconds: float = 1.5) -> Search:
    """A search whose trials scored `values`: the first is itemknn at its configured
    parameters, the others itemknn with 30 neighbours and views weighing 2."""
    study = optuna.create_study(direction="maximize")
    distributions = {
        "model": optuna.distributions.CategoricalDistribution(names),
        "signals.view": optuna.distributions.FloatDistribution(0.1, 4.0, log=True),
        "signals.cart": optuna.distributions.FloatDistribution(1.0, 20.0, log=True),
        "signals.scaling": optuna.distributions.CategoricalDistribution(["log", "bm25", "none"]),
        "signals.history_half_life": optuna.distributions.CategoricalDistribution(
            HISTORY_HALF_LIVES
        ),
        "itemknn.neighbours": optuna.distributions.IntDistribution(1, 500, log=True),
        "itemknn.weighting": optuna.distributions.CategoricalDistribution(["cosine", "bm25"]),
        "itemknn.repeat_weight": optuna.distributions.CategoricalDistribution(REPEAT_WEIGHTS),
    }
    for n, value in enumerate(values):
        params = default_params("itemknn", Config())
        if n:
            params.update({"itemknn.neighbours": 30, "signals.view": 2.0})
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )
    return Search(study, names, seconds)


def test_the_best_default_is_among_the_first_trials_only_and_skips_failed_ones() -> None:
    # One model: trial 0 is its configured parameters; trial 1, better, is a tuned one.
    done = finished_search([0.1, 0.9], ["itemknn"])
    assert done.best_default().number == 0 and done.best.number == 1
    study = optuna.create_study(direction="maximize")
    distributions = {"model": optuna.distributions.CategoricalDistribution(["itemknn", "ease"])}
    study.add_trial(
        optuna.trial.create_trial(
            params={"model": "itemknn"},
            distributions=distributions,
            state=optuna.trial.TrialState.FAIL,
        )
    )
    study.add_trial(
        optuna.trial.create_trial(params={"model": "ease"}, distributions=distributions, value=0.0)
    )
    assert Search(study, ["itemknn", "ease"], 0.0).best_default().number == 1


# The job's use of the search (training.pipeline.tune_parameters), called directly.


def tuning_config(**training: object) -> Config:
    return dataclasses.replace(
        Config(), training=dataclasses.replace(Config().training, **training)
    )


def evaluation_of(variant: str, scores: dict[str, float], seconds: float = 0.1) -> dict:
    return {
        "seconds": {name: seconds for name in scores},
        "models": {name: {variant: {"ndcg@10": score}} for name, score in scores.items()},
    }


@pytest.mark.parametrize(
    ("config", "names", "with_holdout", "reason"),
    [
        (tuning_config(tune_budget_s=0.0), ["als"], True, "training.tune_budget_s is 0"),
        (tuning_config(tune_trials=0), ["als"], True, "training.tune_trials is 0"),
        (tuning_config(tune_trials=-1), ["als"], True, "training.tune_trials is 0"),
        (tuning_config(), ["als"], False, "no holdout"),
        (
            tuning_config(engine="spark"),
            ["als"],
            True,
            "the spark engine fits on the cluster; the search runs on the local engine only",
        ),
        (
            tuning_config(),
            ["popularity", "rp3beta"],
            True,
            "no tunable candidate (tunable: als, bpr, itemknn, ease, lightfm)",
        ),
    ],
)
def test_the_job_says_why_it_did_not_search(
    split, config: Config, names: list[str], with_holdout: bool, reason: str
) -> None:
    holdout, past = split
    evaluation = evaluation_of(holdout.variant, dict.fromkeys(names, 0.1))
    chosen, evidence = tune_parameters(
        names, holdout if with_holdout else None, evaluation, past, config, quiet()
    )
    assert chosen is None and evidence == {"searched": False, "reason": reason}


def test_a_candidate_whose_fit_takes_a_fifth_of_the_budget_is_not_searched(split) -> None:
    holdout, past = split
    config = tuning_config(tune_budget_s=10.0, tune_trials=3)
    evaluation = evaluation_of(holdout.variant, {"itemknn": 0.2, "ease": 0.3}, seconds=2.0)
    evaluation["seconds"]["ease"] = 2.01  # a hair over a fifth of 10 s
    chosen, evidence = tune_parameters(
        ["itemknn", "ease"], holdout, evaluation, past, config, quiet()
    )
    assert evidence["searched"] and evidence["trials"] == 3
    assert evidence["not_searched"] == {
        "ease": "one fit and scoring took 2 s, over 20% of the budget"
    }
    assert evidence["shipped"] == {"itemknn": 0.2}, "only what was searched"
    evaluation["seconds"]["itemknn"] = 2.5
    chosen, evidence = tune_parameters(
        ["itemknn", "ease"], holdout, evaluation, past, config, quiet()
    )
    assert chosen is None and evidence == {
        "searched": False,
        "reason": "every candidate too slow",
        "not_searched": {
            "itemknn": "one fit and scoring took 2 s, over 20% of the budget",
            "ease": "one fit and scoring took 2 s, over 20% of the budget",
        },
    }


@pytest.mark.parametrize(
    ("best", "adopted"),
    [(0.4 * 1.01, False), (0.4 * 1.01 + 1e-9, True), (0.5, True), (0.39, False)],
)
def test_the_job_trains_with_a_tuned_configuration_only_past_the_margin(
    split, monkeypatch: pytest.MonkeyPatch, best: float, adopted: bool
) -> None:
    """Tuned parameters must beat the best candidate at its configured parameters, searched
    or not, by more than 1%: here the best shipped is EASE at 0.4 (not searched: too slow)."""
    holdout, past = split
    config = tuning_config(tune_budget_s=10.0, tune_trials=7)
    names = ["itemknn", "ease", "popularity"]
    evaluation = evaluation_of(holdout.variant, {"itemknn": 0.3, "ease": 0.4, "popularity": 0.1})
    evaluation["seconds"]["ease"] = 5.0
    calls = []

    def fake_search(*args):
        calls.append(args)
        return finished_search([0.3, best], ["itemknn"])

    monkeypatch.setattr(pipeline, "search", fake_search)
    said = io.StringIO()
    everything = dataclasses.replace(past, events=events_table(two_tastes()))
    progress = Progress("t", said)
    chosen, evidence = pipeline.tune_parameters(
        names, holdout, evaluation, everything, config, progress
    )
    assert "] parameter search (10 s, 7 trials at most) ...\n" in said.getvalue()
    ((split_arg, past_arg, config_arg, tunable, budget, trials, known, shown),) = calls
    assert shown is progress
    assert split_arg is holdout and config_arg is config
    assert past_arg.events is holdout.train_events, "the search sees the training part only"
    assert (tunable, budget, trials, known) == (["itemknn"], 10.0, 7, {"itemknn": 0.3})
    verdict = "trained with the tuned parameters" if adopted else "kept the shipped ones"
    reason = (
        f"best trial itemknn {best:.4f} against the best model at its configured parameters, "
        f"ease 0.4000, on the validation split: {verdict} (a tuned configuration must beat "
        "them by more than 1%)"
    )
    assert evidence == {
        "searched": True,
        "budget_s": 10.0,
        "seconds": 1.5,
        "trials": 2,
        "shipped": {"itemknn": 0.3},
        "best_shipped": {"model": "ease", "ndcg@10": 0.4},
        "not_searched": {"ease": "one fit and scoring took 5 s, over 20% of the budget"},
        "best": {
            "model": "itemknn",
            "params": {
                **default_params("itemknn", Config()),
                **({"itemknn.neighbours": 30, "signals.view": 2.0} if best > 0.3 else {}),
            },
            "ndcg@10": max(best, 0.3),
        },
        "adopted": adopted,
        "reason": reason,
    }
    assert said.getvalue().rstrip().endswith(f"parameter search: {reason}")
    if not adopted:
        assert chosen is None
        return
    assert chosen is not None
    assert chosen.model.type == "auto", "the job still chooses among the candidates"
    assert chosen.model.itemknn.neighbours == 30 and chosen.signals.view == 2.0
    assert chosen.model.ease == config.model.ease and chosen.training == config.training


def test_a_cap_of_one_trial_scores_the_shipped_parameters_and_keeps_them(split) -> None:
    holdout, past = split
    evaluation = evaluation_of(holdout.variant, {"itemknn": 0.2})
    chosen, evidence = tune_parameters(
        ["itemknn"], holdout, evaluation, past, tuning_config(tune_trials=1),
        quiet(),
    )  # fmt: skip
    assert chosen is None and evidence["searched"] and evidence["trials"] == 1
    assert evidence["best"]["ndcg@10"] == 0.2 and not evidence["adopted"]


# `recsvc tune` (training.tune.tune), called directly on a small log.


def write_log(path: Path, rows: list[tuple[str, str, str, int]], bad: bool = False) -> Path:
    """The rows as an events CSV from 2026-01-01; `bad` adds a row of an unknown event."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [
        f"{user},{item},{event},{start + timedelta(milliseconds=stamp):%Y-%m-%dT%H:%M:%SZ}"
        for user, item, event, stamp in rows
    ]
    if bad:
        lines.append("u0,i0,teleport,2026-01-01T00:00:00Z")
    return write_lines(path, "user_id,item_id,event,timestamp", *lines)


def test_tune_searches_checks_on_the_test_period_and_writes_what_won(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_log(tmp_path / "events.csv", two_tastes(users=80), bad=True)
    out = tmp_path / "out" / "tuned.toml"
    # A configured model type is not what is tuned: the models asked for are.
    config = dataclasses.replace(
        Config(),
        model=dataclasses.replace(Config().model, type="als"),
        training=TrainingConfig(min_holdout_users=0),  # cut by date, both times
    )
    said = io.StringIO()
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "CST-8"
    time.tzset()
    try:
        result = tune(
            TrainInputs(events), config, out, ["itemknn", "ease"], 600.0, 4,
            Progress("t", said),
        )  # fmt: skip
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()
    assert set(result) == {
        "model", "params", "variant", "trials", "seconds", "validation", "test",
        "default_model", "search_data_end_ms", "test_cut_ms",
    }  # fmt: skip
    assert result["model"] in ("itemknn", "ease") and result["trials"] == 4
    assert result["params"]["model"] == result["model"] and result["variant"] == "unseen"
    assert result["default_model"] in ("itemknn", "ease")
    assert result["validation"]["tuned"] >= result["validation"]["default"]
    assert result["test"]["default"] > 0.0 and result["test"]["tuned"] > 0.0
    assert result["search_data_end_ms"] < result["test_cut_ms"]
    tuned = load_config(out)
    assert tuned.model.type == result["model"]
    text = out.read_text()
    header = re.match(
        r"# Written by `recsvc tune` on (\d{4}-\d\d-\d\d \d\d:\d\d) UTC: 4 trials in \d+ s\.\n"
        rf"# Best: {result['model']}, validation ndcg@10 0\.\d{{4}} "
        r"\(defaults: \w+ 0\.\d{4}\)\.\n"
        r"# On the held-back test period: tuned 0\.\d{4}, defaults 0\.\d{4}\.\n"
        r"# Train with it: recsvc train --config THIS_FILE \.\.\.\n",
        text,
    )
    assert header, text[:400]
    # Stamped in UTC, whatever the machine's zone (the run was made in UTC+8).
    stamp = datetime.strptime(header.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=10)
    trials_text = out.with_suffix(".trials.json").read_text()
    assert trials_text.startswith('{\n  "model": ') and trials_text.endswith("}\n")
    written = json.loads(trials_text)
    assert [t["number"] for t in written["all_trials"]] == [0, 1, 2, 3]
    assert all(set(t) == {"number", "value", "params"} for t in written["all_trials"])
    assert max(t["value"] for t in written["all_trials"]) == result["validation"]["tuned"]
    assert {k: written[k] for k in result} == json.loads(json.dumps(result))
    # The rejected row lands beside the output, as the job's would.
    rejects = list((tmp_path / "out" / "rejects").glob("*"))
    assert rejects and "teleport" in "".join(p.read_text() for p in rejects)
    log = said.getvalue()
    assert "] search trains on " in log and " pairs) is kept for the final check\n" in log
    assert "] trial 1: itemknn ndcg@10 " in log and "] final check on the test period" in log
    assert (
        log.rstrip().endswith(f"; wrote {out} and {out.with_suffix('.trials.json')}")
        and f"] best {result['model']}: validation " in log
    )
    assert capsys.readouterr().err == "", "everything goes to the progress it was given"


def test_tune_says_what_it_cannot_tune_and_when_there_is_too_little_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_log(tmp_path / "events.csv", two_tastes(users=80))
    with pytest.raises(BadInput) as refused:
        tune(TrainInputs(events), Config(), tmp_path / "a.toml", ["itemknn", "popularity"], 60.0, 2)
    assert str(refused.value) == (
        "cannot tune 'popularity'; tunable models: als, bpr, itemknn, ease, lightfm"
    )
    # Enough for a test period (i again at the end), too little left for a validation period.
    rows = [("u", "i", "view", 0), ("u", "j", "view", SECOND), ("u", "i", "view", 2 * SECOND)]
    tiny = write_log(tmp_path / "tiny.csv", rows)
    with pytest.raises(BadInput) as refused:
        tune(TrainInputs(tiny), Config(), tmp_path / "b.toml", ["itemknn"], 60.0, 2)
    assert str(refused.value) == (
        "too little data to tune: need a test period and a validation period"
    )
    # A log without time: split per user, so there is no search cut to report. EASE left out by
    # its size limit is named; the default progress writes to the console as "tune".
    timeless = [(u, i, e, 0) for u, i, e, _ in two_tastes(users=80)]
    config = dataclasses.replace(
        Config(),
        model=dataclasses.replace(
            Config().model, ease=dataclasses.replace(Config().model.ease, max_items=2)
        ),
    )
    capsys.readouterr()
    result = tune(
        TrainInputs(write_log(tmp_path / "t.csv", timeless)), config,
        tmp_path / "a" / "b" / "c.toml", ["itemknn", "ease"], 60.0, 2,
    )  # fmt: skip
    assert result["search_data_end_ms"] is None and result["test_cut_ms"] is None
    err = capsys.readouterr().err
    assert "[tune " in err and "] not tuning ease: " in err and "max_items" in err
