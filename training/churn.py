"""Churn risk: which customers with a purchase history will not buy again within
`marketing.churn_horizon_days`, fitted by every training run.

Features per customer, as of a moment: days since their last purchase and last event, orders,
spend, average order value, tenure, their activity and orders in the last horizon against the
horizon before (the trend), distinct items bought and viewed (breadth), and the share of their
events that are purchases. The model is scikit-learn's histogram gradient boosting: a
well-kept, deterministic (seeded) learner for a few thousand rows of tabular features, with no
native dependency beyond scikit-learn itself.

Honest evaluation with a time cut: features as of two horizons before the log's end, labels from
the horizon after that, for fitting; features as of one horizon before the end, labels from the
last horizon, for scoring. The same cut scores the recency rule behind the `at_risk` stage (days
since the last event). Where the model does not beat the rule's ROC AUC, the rule is served
(as a score in 0..1 of the same order) and the manifest says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import Config
from recsvc.ids import sorted_positions

DAY_MS = 86_400_000
FEATURES = (
    "days_since_purchase",
    "days_since_event",
    "orders",
    "monetary",
    "average_order_value",
    "tenure_days",
    "events_last_horizon",
    "events_horizon_before",
    "orders_last_horizon",
    "orders_horizon_before",
    "distinct_items_bought",
    "distinct_items_seen",
    "purchase_share",
)
# Each class needs this many customers in the fitting cut for a model to be fitted at all.
MIN_PER_CLASS = 30
DECILE = 0.1


def features(events: pa.Table, as_of_ms: int, horizon_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, feature rows) of the customers with a purchase at or before `as_of_ms`,
    from the events up to then."""
    stamps = events.column("timestamp_ms").to_numpy()
    seen = events.filter(pa.array(stamps <= as_of_ms))
    users_all = seen.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    bought = pc.equal(seen.column("event"), "purchase").to_numpy(zero_copy_only=False)
    buyers = np.unique(users_all[bought])
    if not buyers.size:
        return buyers, np.empty((0, len(FEATURES)))
    user = sorted_positions(buyers, users_all)
    keep = user >= 0
    user, bought = user[keep], bought[keep]
    stamp = seen.column("timestamp_ms").to_numpy()[keep]
    item = seen.column("item_id").to_numpy(zero_copy_only=False).astype(str)[keep]
    price = np.nan_to_num(seen.column("price").to_numpy(zero_copy_only=False)[keep].astype(float))
    quantity = seen.column("quantity").to_numpy()[keep].astype(float)
    n = buyers.size

    def latest(mask: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        np.maximum.at(out, user[mask], stamp[mask])
        return out

    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, user, stamp)
    orders_of = np.unique(np.column_stack([user[bought], stamp[bought]]), axis=0)
    order_user, order_stamp = orders_of[:, 0], orders_of[:, 1]
    orders = np.bincount(order_user, minlength=n).astype(float)
    monetary = np.bincount(user[bought], weights=(price * quantity)[bought], minlength=n)
    last_h = stamp > as_of_ms - horizon_ms
    before_h = (stamp > as_of_ms - 2 * horizon_ms) & ~last_h
    order_last = order_stamp > as_of_ms - horizon_ms
    order_before = (order_stamp > as_of_ms - 2 * horizon_ms) & ~order_last
    events_n = np.bincount(user, minlength=n).astype(float)

    _, item_code = np.unique(item, return_inverse=True)
    n_items = int(item_code.max()) + 1 if item_code.size else 1

    def distinct(mask: np.ndarray) -> np.ndarray:
        pairs = np.unique(user[mask].astype(np.int64) * n_items + item_code[mask])
        return np.bincount(pairs // n_items, minlength=n).astype(float)

    rows = np.column_stack(
        [
            (as_of_ms - latest(bought)) / DAY_MS,
            (as_of_ms - latest(np.ones_like(bought))) / DAY_MS,
            orders,
            monetary,
            monetary / np.maximum(orders, 1),
            (as_of_ms - first) / DAY_MS,
            np.bincount(user[last_h], minlength=n),
            np.bincount(user[before_h], minlength=n),
            np.bincount(order_user[order_last], minlength=n),
            np.bincount(order_user[order_before], minlength=n),
            distinct(bought),
            distinct(np.ones_like(bought)),
            np.bincount(user[bought], minlength=n) / np.maximum(events_n, 1),
        ]
    )
    return buyers, rows.astype(np.float64)


def did_not_buy(events: pa.Table, users: np.ndarray, after_ms: int, until_ms: int) -> np.ndarray:
    """1 for each of `users` with no purchase in (after_ms, until_ms], else 0."""
    stamps = events.column("timestamp_ms").to_numpy()
    bought = pc.equal(events.column("event"), "purchase").to_numpy(zero_copy_only=False)
    window = bought & (stamps > after_ms) & (stamps <= until_ms)
    buyers = events.column("user_id").to_numpy(zero_copy_only=False).astype(str)[window]
    return (~np.isin(users, buyers)).astype(np.int8)


def _scores(y: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    riskiest = np.argsort(-risk, kind="stable")[: max(1, round(DECILE * risk.size))]
    return {
        "roc_auc": round(float(roc_auc_score(y, risk)), 4),
        "precision_riskiest_decile": round(float(y[riskiest].mean()), 4),
    }


def _classifier(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
        early_stopping=False, random_state=seed,
    )  # fmt: skip


def rule_risk(rows: np.ndarray, at_risk_days: float) -> np.ndarray:
    """The recency rule as a risk in 0..1: a half at the `at_risk` threshold, rising with idle
    days."""
    idle = rows[:, FEATURES.index("days_since_event")]
    return idle / (idle + at_risk_days)


def fit_churn(events: pa.Table, config: Config) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(user ids, churn risk, the evidence for the manifest) as of the log's end."""
    horizon = int(config.marketing.churn_horizon_days * DAY_MS)
    end = int(events.column("timestamp_ms").to_numpy().max()) if events.num_rows else 0
    at_risk_days = config.profiles.at_risk_days
    users, now_rows = features(events, end, horizon)
    evidence: dict[str, Any] = {"horizon_days": config.marketing.churn_horizon_days}
    fit_users, fit_rows = features(events, end - 2 * horizon, horizon)
    fit_y = did_not_buy(events, fit_users, end - 2 * horizon, end - horizon)
    test_users, test_rows = features(events, end - horizon, horizon)
    test_y = did_not_buy(events, test_users, end - horizon, end)
    usable = (
        min(int(fit_y.sum()), int((1 - fit_y).sum())) >= MIN_PER_CLASS
        and 0 < int(test_y.sum()) < test_y.size
    )
    if not usable:
        reason = "too few customers on either side of the time cut to fit and judge a model"
        evidence |= {"served": "recency rule", "reason": reason}
        return users, rule_risk(now_rows, at_risk_days), evidence
    model = _classifier(config.training.seed).fit(fit_rows, fit_y)
    judged_model = _scores(test_y, model.predict_proba(test_rows)[:, 1])
    judged_rule = _scores(test_y, rule_risk(test_rows, at_risk_days))
    evidence |= {
        "fit_customers": int(fit_y.size),
        "test_customers": int(test_y.size),
        "test_churn_share": round(float(test_y.mean()), 4),
        "model": judged_model,
        "recency_rule": judged_rule,
    }
    if judged_model["roc_auc"] <= judged_rule["roc_auc"]:
        reason = "the model did not beat the rule's ROC AUC on the time cut"
        evidence |= {"served": "recency rule", "reason": reason}
        return users, rule_risk(now_rows, at_risk_days), evidence
    # Refitted on the newest labelled cut, then applied as of the end.
    final = _classifier(config.training.seed).fit(test_rows, test_y)
    evidence |= {
        "served": "model",
        "reason": "higher ROC AUC than the recency rule on the time cut",
    }
    return users, final.predict_proba(now_rows)[:, 1], evidence
