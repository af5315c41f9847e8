"""Offline evaluation on a temporal holdout: train on the past, score the future. Never random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import SignalsConfig
from recsvc.models import Recommender
from training.interactions import Interactions, build_interactions


@dataclass
class TemporalSplit:
    train: Interactions
    test: sp.csr_matrix  # users x items in the train index space: 1 where the user came back
    cut_ms: int


def temporal_split(
    events: pa.Table, signals: SignalsConfig, test_share: float = 0.15
) -> TemporalSplit | None:
    """Cuts at the time before which (1 - test_share) of events happened.

    Returns None when either side would be empty (too little data to evaluate honestly).
    """
    ts = events.column("timestamp_ms").to_numpy()
    if ts.size < 2:
        return None
    cut = int(np.quantile(ts, 1.0 - test_share))
    before = pc.less(events.column("timestamp_ms"), cut)
    train_events, test_events = events.filter(before), events.filter(pc.invert(before))
    if train_events.num_rows == 0 or test_events.num_rows == 0:
        return None
    train = build_interactions(train_events, signals)
    future = build_interactions(test_events, signals, train.user_ids, train.item_ids)
    test = future.confidence.copy()
    test.data[:] = 1.0
    test.eliminate_zeros()
    if test.nnz == 0:
        return None
    return TemporalSplit(train, test, cut)


def ranking_metrics(
    model: Recommender, test: sp.csr_matrix, k: int = 10, batch: int = 1024
) -> dict[str, float]:
    """precision, recall, NDCG and hit rate at k over users with any held-out item."""
    users = np.flatnonzero(np.diff(test.indptr))
    if users.size == 0:
        return {}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    totals = np.zeros(4)
    for start in range(0, users.size, batch):
        chunk = users[start : start + batch]
        ids, _ = model.recommend(chunk, k)
        truth = test[chunk]
        hits = np.zeros(ids.shape, dtype=bool)
        for row in range(chunk.size):
            relevant = truth.indices[truth.indptr[row] : truth.indptr[row + 1]]
            hits[row] = np.isin(ids[row], relevant) & (ids[row] >= 0)
        n_relevant = np.diff(truth.indptr)
        ideal = np.array([discounts[: min(n, k)].sum() for n in n_relevant])
        totals += [
            (hits.sum(1) / k).sum(),
            (hits.sum(1) / n_relevant).sum(),
            ((hits * discounts[: hits.shape[1]]).sum(1) / ideal).sum(),
            hits.any(1).sum(),
        ]
    names = (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}")
    return {name: round(float(v / users.size), 6) for name, v in zip(names, totals, strict=True)}
