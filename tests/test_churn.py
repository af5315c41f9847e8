"""Churn risk: the features and labels on a log with a known answer, the training run's choice
between the model and the recency rule, and the score in profiles and audiences."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsvc.config import Config, MarketingConfig
from recsvc.errors import InvalidArgument
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.training.churn import FEATURES, did_not_buy, features, fit_churn
from recsvc.training.inputs import TrainInputs
from recsvc.training.pipeline import TrainResult, ingest_and_clean
from recsvc.training.progress import Progress

DAY = 86_400_000


def _log(rows: list[tuple[str, str, str, int, float]]) -> pa.Table:
    users, items, kinds, days, prices = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": list(users),
            "item_id": list(items),
            "event": list(kinds),
            "timestamp_ms": pa.array([int(d * DAY) for d in days], pa.int64()),
            "quantity": [1.0] * len(rows),
            "price": list(prices),
        }
    )


def test_features_and_labels_see_only_their_side_of_the_cut() -> None:
    log = _log(
        [
            ("a", "i1", "purchase", 10, 5.0),
            ("a", "i2", "purchase", 10, 3.0),  # same order
            ("a", "i1", "view", 50, 0.0),
            ("a", "i3", "purchase", 70, 2.0),  # after the cut: a label, not a feature
            ("b", "i1", "view", 20, 0.0),  # never bought before the cut: not a customer
            ("b", "i1", "purchase", 65, 4.0),
            ("c", "i2", "purchase", 40, 1.0),
        ]
    )
    users, rows = features(log, 60 * DAY, 30 * DAY)
    assert users.tolist() == ["a", "c"]
    a = dict(zip(FEATURES, rows[0].tolist(), strict=True))
    assert a["days_since_purchase"] == 50 and a["days_since_event"] == 10
    assert a["orders"] == 1 and a["monetary"] == 8.0 and a["average_order_value"] == 8.0
    assert a["events_last_horizon"] == 1 and a["events_horizon_before"] == 2
    assert a["distinct_items_bought"] == 2 and a["distinct_items_seen"] == 2
    assert a["tenure_days"] == 50
    assert did_not_buy(log, users, 60 * DAY, 90 * DAY).tolist() == [0, 1]


@pytest.fixture(scope="module")
def core(trained: TrainResult) -> RecommenderCore:
    core = RecommenderCore()
    core.swap(PublishedModel.load(ModelStore(trained.model_dir).path(trained.version)))
    return core


def test_the_model_is_judged_against_the_rule_and_the_better_is_served(
    shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    # The sample shop spans eight weeks: two 14-day horizons fit before its end.
    config = dataclasses.replace(Config(), marketing=MarketingConfig(churn_horizon_days=14))
    quiet = Progress("churn", open(os.devnull, "w"))  # noqa: SIM115
    dataset, _ = ingest_and_clean(shop_inputs, config, tmp_path / "rejects", quiet)
    users, risk, churn = fit_churn(dataset.events, config)
    assert churn["test_customers"] > 500
    better = "model" if churn["model"]["roc_auc"] > churn["recency_rule"]["roc_auc"] else None
    assert churn["served"] == (better or "recency rule")
    assert churn["model"]["roc_auc"] > 0.6, "the churners planted in the shop are foreseeable"
    assert users.size == risk.size and ((risk >= 0) & (risk <= 1)).all()


def test_a_log_too_short_for_the_cut_serves_the_rule_and_says_why(
    trained: TrainResult, core: RecommenderCore
) -> None:
    churn = trained.manifest["evaluation"]["churn"]
    assert churn["served"] == "recency rule" and "too few customers" in churn["reason"]
    profiles = core.model.profiles
    risk = np.asarray(profiles.churn_risk)
    buyers = np.asarray(profiles.orders) > 0
    assert np.isfinite(risk[buyers]).all() and np.isnan(risk[~buyers]).all()
    # The sample shop's churners stop coming: the long idle are the riskiest.
    idle = (profiles.meta["as_of_ms"] - np.asarray(profiles.last_ms)) / DAY
    assert risk[buyers & (idle >= 30)].min() > risk[buyers & (idle < 7)].max()


def test_churn_risk_in_the_profile_and_as_an_audience(core: RecommenderCore) -> None:
    profiles = core.model.profiles
    risk = np.asarray(profiles.churn_risk)
    scored = np.flatnonzero(np.isfinite(risk))
    riskiest = str(profiles.user_ids[scored[np.argmax(risk[scored])]])
    assert core.user_profile(riskiest)["churn_risk"] == pytest.approx(float(np.nanmax(risk)))
    never = str(profiles.user_ids[np.flatnonzero(np.isnan(risk))[0]])
    assert core.user_profile(never)["churn_risk"] is None
    threshold = float(np.quantile(risk[scored], 0.8))
    win_back = core.find_audience(min_churn_risk=threshold, k=100_000)
    expected = {str(u) for u in profiles.user_ids[scored[risk[scored] >= threshold]]}
    assert set(win_back.user_ids) == expected and "churn risk" in win_back.basis
    item = core.popular_items(1).items[0].item_id
    targeted = core.find_audience(item_id=item, min_churn_risk=threshold, k=50)
    assert set(targeted.user_ids) <= expected and len(targeted.user_ids) == 50
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidArgument, match="min_churn_risk"):
            core.find_audience(min_churn_risk=bad)
