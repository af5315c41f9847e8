"""Non-personalised popularity and trending: the fallbacks for users the model has never seen."""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recsvc.models.base import Recommender, check_user_items, top_k


class PopularityRecommender(Recommender):
    """Scores every item by the number of distinct users who interacted with it."""

    model_type: ClassVar[str] = "popularity"
    array_names: ClassVar[tuple[str, ...]] = ("item_scores",)
    item_scores: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.item_scores.shape[0])

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = check_user_items(user_items)
        self.item_scores = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.tile(np.asarray(self.item_scores, dtype=np.float32), (len(users), 1))

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return self.score(np.zeros(history.shape[0], dtype=np.int64))

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        items = np.asarray(items, dtype=np.int64)
        scores = self.score(items)
        scores[np.arange(items.size), items] = -np.inf
        return top_k(scores, k)


class TrendingRecommender(PopularityRecommender):
    """Scores every item by the sum of its matrix values.

    Fitted on time-decayed, unscaled event weights (Interactions.recent, half-life
    signals.trending_half_life_days), this is what sells now rather than what sold ever.
    """

    model_type: ClassVar[str] = "trending"

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = check_user_items(user_items)
        sums = np.bincount(matrix.indices, weights=matrix.data, minlength=matrix.shape[1])
        self.item_scores = sums.astype(np.float32)
        return self
