"""A weighted blend of fitted models: often better than either, where their errors differ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recsvc.models.base import MODEL_TYPES, Recommender, check_user_items, load_model


class BlendRecommender(Recommender):
    """Sums members' scores, each standardised per user (zero mean, unit spread over items)
    so that models on different scales blend by the given weights.

    `members` are {"model_type", "params"} descriptions; `fit` fits each from scratch. Similar
    items come from the member with the largest weight (similarities do not blend as simply).
    """

    model_type: ClassVar[str] = "blend"
    array_names: ClassVar[tuple[str, ...]] = ()
    models: list[Recommender]

    def __init__(
        self, members: list[dict[str, Any]] | None = None, weights: list[float] | None = None
    ) -> None:
        self.members = members if members is not None else []
        self.weights = weights if weights is not None else []

    @classmethod
    def of_fitted(cls, models: list[Recommender], weights: list[float]) -> BlendRecommender:
        """A blend of models already fitted on the same matrix (no refit)."""
        blend = cls(
            [{"model_type": m.model_type, "params": m.get_params()} for m in models],
            [float(w) for w in weights],
        )
        blend._check()
        blend.models = list(models)
        return blend

    def _check(self) -> None:
        if len(self.members) < 2 or len(self.members) != len(self.weights):
            raise ValueError("a blend needs two or more members, one weight each")
        if any(m["model_type"] == self.model_type for m in self.members):
            raise ValueError("a blend cannot contain a blend")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("blend weights must be non-negative and not all zero")

    @property
    def n_items(self) -> int:
        return self.models[0].n_items

    def fit(self, user_items: sp.csr_matrix) -> Self:
        self._check()
        matrix = check_user_items(user_items)
        self.models = [
            MODEL_TYPES[m["model_type"]](**m["params"]).fit(matrix) for m in self.members
        ]
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._combine(lambda model: model.score(users))

    def _combine(self, scores_of: Callable[[Recommender], np.ndarray]) -> np.ndarray:
        total = None
        for weight, model in zip(self.weights, self.models, strict=True):
            part = standardise(scores_of(model)) * np.float32(weight)
            total = part if total is None else total + part
        assert total is not None
        return total

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return self._combine(lambda model: model.score_history(history))

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.models[int(np.argmax(self.weights))].similar_items(items, k)

    def save(self, directory: Path) -> None:
        super().save(directory)  # the description; a blend has no arrays of its own
        for i, model in enumerate(self.models):
            model.save(directory / f"member{i}")

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> Self:
        blend = super().load(directory, mmap)
        blend._check()
        blend.models = [
            load_model(directory / f"member{i}", mmap=mmap) for i in range(len(blend.members))
        ]
        return blend


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row shifted to mean 0 and scaled to standard deviation 1 (a flat row stays 0)."""
    scores = np.asarray(scores, dtype=np.float32)
    mean = scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(spread > 0, spread, 1.0)
