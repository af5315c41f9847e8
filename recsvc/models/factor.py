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

    def _keep_factors(self, user_factors: np.ndarray, item_factors: np.ndarray) -> Self:
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_factors[users] @ self.item_factors.T, dtype=np.float32)

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """Item-to-item: the sum of each history item's cosine similarity (in factor space) to
        every item, weighted by the history's confidences. No user vector is needed, so it works
        for any model whose item factors carry the similarity."""
        history = sp.csr_matrix(history, dtype=np.float32)
        unit = self._unit_item_factors()
        profile = np.asarray(history @ unit)  # (rows, factors): a user's taste, summed
        return np.asarray(profile @ unit.T, dtype=np.float32)

    def user_affinity(self, items: np.ndarray, n_users: int) -> np.ndarray:
        # Mean of inner products = inner product with the mean item vector: one product.
        target = np.asarray(self.item_factors[np.asarray(items, dtype=np.int64)]).mean(axis=0)
        return np.asarray(self.user_factors[:n_users] @ target, dtype=np.float32)

    def _unit_item_factors(self) -> np.ndarray:
        norms = np.linalg.norm(self.item_factors, axis=1, keepdims=True)
        return np.asarray(self.item_factors / np.where(norms > 0, norms, 1.0), dtype=np.float32)

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

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares  # training-time dependency only

        matrix = check_user_items(user_items)
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be at least 1")
        # Every core: each user's (item's) solve is independent, so the result is bit-identical
        # to a single-threaded fit (checked by a test) and repeatable.
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=0,
        )
        model.fit(matrix, show_progress=False)
        return self._keep_factors(model.user_factors, model.item_factors)

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        items = np.asarray(self.item_factors, dtype=np.float32)
        return np.asarray(self.fold_in(history) @ items.T, dtype=np.float32)

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """User vectors for history rows, as implicit's ALS fits a user, item factors fixed:
        with confidence c_i = alpha r_i, x = (Y'Y + reg I + sum_i (c_i - 1) y_i y_i')^-1
        sum_i c_i y_i (an exact solve where training takes conjugate-gradient steps)."""
        history = sp.csr_matrix(history, dtype=np.float32)
        if not hasattr(self, "_gram"):  # Y'Y: computed once per loaded model, then reused
            items = np.asarray(self.item_factors, dtype=np.float64)
            self._gram = items.T @ items + self.regularization * np.eye(items.shape[1])
        users = np.zeros((history.shape[0], self._gram.shape[0]))
        for row in range(history.shape[0]):
            start, end = history.indptr[row], history.indptr[row + 1]
            if start == end:
                continue
            # Only the history's rows: converting every item's factors would copy the whole
            # (memory-mapped) matrix on each call, 0.1 s for a million items.
            factors = np.asarray(self.item_factors[history.indices[start:end]], dtype=np.float64)
            confidence = self.alpha * history.data[start:end].astype(np.float64)
            lhs = self._gram + (factors.T * (confidence - 1.0)) @ factors
            users[row] = np.linalg.solve(lhs, factors.T @ confidence)
        return users.astype(np.float32)


class BPRRecommender(FactorRecommender):
    """Bayesian personalised ranking (Rendle et al. 2009) via `implicit`; learns a ranking."""

    model_type: ClassVar[str] = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int = 42,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix = check_user_items(user_items)
        # One thread: hogwild SGD on several threads is not repeatable.
        model = BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=1,
        )
        model.fit(matrix, show_progress=False)
        # implicit appends a bias column to the item factors and a column of ones to the users.
        return self._keep_factors(model.user_factors, model.item_factors)


class LightFMRecommender(FactorRecommender):
    """LightFM (Kula 2015): a hybrid whose user and item vectors are sums of feature vectors.

    Without features it is a plain collaborative model. With features, a user or item is
    represented through its attributes, which is what lets new users and items with known
    attributes get sensible results. Scores are served as an inner product of augmented vectors
    [embedding, bias, 1] . [embedding, 1, bias], so serving needs no LightFM.
    """

    model_type: ClassVar[str] = "lightfm"

    def __init__(
        self,
        factors: int = 64,
        loss: str = "warp",
        learning_rate: float = 0.05,
        item_alpha: float = 1e-6,
        user_alpha: float = 1e-6,
        epochs: int = 30,
        random_state: int = 42,
    ) -> None:
        self.factors = factors
        self.loss = loss
        self.learning_rate = learning_rate
        self.item_alpha = item_alpha
        self.user_alpha = user_alpha
        self.epochs = epochs
        self.random_state = random_state

    def fit(
        self,
        user_items: sp.csr_matrix,
        user_features: sp.csr_matrix | None = None,
        item_features: sp.csr_matrix | None = None,
    ) -> Self:
        """`*_features` rows are users/items, columns features (identity columns included)."""
        model = fit_lightfm(
            check_user_items(user_items),
            user_features,
            item_features,
            factors=self.factors,
            loss=self.loss,
            learning_rate=self.learning_rate,
            item_alpha=self.item_alpha,
            user_alpha=self.user_alpha,
            epochs=self.epochs,
            seed=self.random_state,
        )
        user_bias, user_emb = model.get_user_representations(user_features)
        item_bias, item_emb = model.get_item_representations(item_features)
        ones_u, ones_i = np.ones((user_emb.shape[0], 1)), np.ones((item_emb.shape[0], 1))
        return self._keep_factors(
            np.hstack([user_emb, user_bias[:, None], ones_u]),
            np.hstack([item_emb, ones_i, item_bias[:, None]]),
        )


def fit_lightfm(
    user_items: sp.csr_matrix,
    user_features: sp.csr_matrix | None,
    item_features: sp.csr_matrix | None,
    *,
    factors: int,
    loss: str,
    learning_rate: float,
    item_alpha: float,
    user_alpha: float,
    epochs: int,
    seed: int,
) -> Any:
    """A fitted `lightfm.LightFM`, confidences as sample weights. One thread: LightFM's threads
    race (Hogwild), and a seed must repeat the run."""
    from lightfm import LightFM

    model = LightFM(
        no_components=factors,
        loss=loss,
        learning_rate=learning_rate,
        item_alpha=item_alpha,
        user_alpha=user_alpha,
        random_state=np.random.RandomState(seed),
    )
    interactions = user_items.tocoo()
    model.fit(
        interactions,
        user_features=user_features,
        item_features=item_features,
        sample_weight=interactions,
        epochs=epochs,
        num_threads=1,
    )
    return model
