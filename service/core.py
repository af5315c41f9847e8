"""The recommendation core, independent of gRPC: validates requests, scores, falls back.

It holds the current PublishedModel behind one reference; swapping the reference is atomic,
so a request runs from start to end on the model it started with, even during a reload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsvc.errors import InvalidArgument, NotFound, Unavailable
from recsvc.published import PublishedModel

MAX_K = 1000
REASON_PERSONAL = "personal"
REASON_POPULAR = "popular"
REASON_TRENDING = "trending"


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Recommendations:
    items: list[ScoredItem]
    model_version: str
    fallback: bool = False


class RecommenderCore:
    def __init__(self) -> None:
        self._model: PublishedModel | None = None

    @property
    def model(self) -> PublishedModel:
        model = self._model
        if model is None:
            raise Unavailable("no model is loaded yet")
        return model

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model is not None else None

    def swap(self, model: PublishedModel) -> None:
        self._model = model

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_item_ids: list[str] | tuple[str, ...] = (),
        exclude_purchased: bool = False,
    ) -> Recommendations:
        _require_id(user_id, "user_id")
        _require_k(k)
        model = self.model
        excluded = model.item_indices(list(exclude_item_ids))
        user = model.user_index(user_id)
        if user is not None and exclude_purchased:
            excluded = np.union1d(excluded, model.purchased_by(user))
        if user is not None and model.exclude_seen:
            excluded = np.union1d(excluded, model.seen_by(user))
        exclude = _one_row(excluded, model.item_ids.size)
        if user is None:
            ids, scores = model.fallback.recommend(np.zeros(1, np.int64), k, exclude)
            reason, fallback = _fallback_reason(model.fallback), True
        else:
            ids, scores = model.model.recommend(np.array([user]), k, exclude)
            reason, fallback = REASON_PERSONAL, False
        return Recommendations(_scored(model, ids[0], scores[0], reason), model.version, fallback)

    def popular_items(
        self, k: int, categories: list[str] | tuple[str, ...] = (), trending: bool = False
    ) -> Recommendations:
        """The most popular (or, with `trending`, the hottest) items, optionally only those
        in `categories`."""
        _require_k(k)
        model = self.model
        source = model.trending if trending else model.fallback
        exclude = None
        if categories:
            outside = np.flatnonzero(~np.isin(model.items.categories, list(categories)))
            exclude = _one_row(outside, model.item_ids.size)
        ids, scores = source.recommend(np.zeros(1, np.int64), k, exclude)
        return Recommendations(
            _scored(model, ids[0], scores[0], _fallback_reason(source)), model.version
        )

    def similar_items(self, item_id: str, k: int) -> Recommendations:
        _require_id(item_id, "item_id")
        _require_k(k)
        model = self.model
        item = model.item_index(item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} is not in model {model.version}")
        ids, scores = model.model.similar_items(np.array([item]), k)
        return Recommendations(
            _scored(model, ids[0], scores[0], f"similar_to:{item_id}"), model.version
        )


def _fallback_reason(model: object) -> str:
    return REASON_TRENDING if getattr(model, "model_type", "") == "trending" else REASON_POPULAR


def _require_id(value: str, name: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} must not be empty")


def _require_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")


def _one_row(indices: np.ndarray, n_items: int) -> sp.csr_matrix:
    indices = np.unique(indices)
    return sp.csr_matrix(
        (np.ones(indices.size, np.float32), indices, [0, indices.size]), shape=(1, n_items)
    )


def _scored(
    model: PublishedModel, ids: np.ndarray, scores: np.ndarray, reason: str
) -> list[ScoredItem]:
    keep = ids >= 0
    return [
        ScoredItem(str(model.item_ids[i]), float(s), reason)
        for i, s in zip(ids[keep], scores[keep], strict=True)
    ]
