"""Matrix-factorisation models: score = user factors . item factors."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recsvc.models.base import Recommender, check_user_items, top_k


class FactorRecommender(Recommender):
    """Scores with an inner product; similar items by cosine of item factors."""

    array_names: ClassVar[tuple[str, ...]] = ("user_factors", "item_factors")
    user_factors: np.ndarray
    item_factors: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_factors[users] @ self.item_factors.T, dtype=np.float32)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        items = np.asarray(items, dtype=np.int64)
        norms = np.linalg.norm(self.item_factors, axis=1)
        norms[norms == 0] = 1.0
        queries = self.item_factors[items] / norms[items, None]
        scores = np.asarray((queries @ self.item_factors.T) / norms[None, :], dtype=np.float32)
        scores[np.arange(items.size), items] = -np.inf
        return top_k(scores, k)


class ALSRecommender(FactorRecommender):
    """Implicit-feedback alternating least squares (Hu, Koren, Volinsky 2008) via `implicit`."""

    model_type: ClassVar[str] = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 8.0,
        iterations: int = 15,
        random_state: int = 42,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
        }

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares  # training-time dependency only

        matrix = check_user_items(user_items)
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be at least 1")
        # One thread: results must not depend on thread scheduling (repeatable runs).
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=1,
        )
        model.fit(matrix, show_progress=False)
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        return self
