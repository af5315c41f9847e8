"""The model the server serves: a published version plus what serving derives from it once, at
load, off the request path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsvc.ann import ItemIndex
from recsvc.config import EVENT_NAMES, ServingConfig
from recsvc.ids import sorted_positions
from recsvc.models import ALSRecommender
from recsvc.published import PublishedModel


@dataclass
class ServingModel:
    """A published model plus what serving derives from it once, at load, off the request path."""

    published: PublishedModel
    category_codes: np.ndarray  # int32 code of each item's category
    category_vocabulary: dict[str, int]
    unavailable: np.ndarray  # bool per item
    new: np.ndarray  # bool per item: first seen within rules.new_item_days of the data end
    promoted: np.ndarray  # bool per item
    signal_weights: dict[str, float]
    scaling: str
    history_half_life: float  # signals.history_half_life of the training run (0: off)
    popular_order: np.ndarray  # item indices, most popular first
    popular_share: np.ndarray  # per item, its popularity over (the most popular's + 1): [0, 1)
    trending_order: np.ndarray
    trending_rank: np.ndarray  # per item, its place in trending_order
    profile_rows: np.ndarray  # per model user, their row in the profiles (-1 none)
    # What training chose to serve each lifecycle stage (config strategy "auto").
    stage_strategies: dict[str, str]
    # Whether training found the session model beat folding a visit into the model.
    session_model: bool
    newest_order: np.ndarray  # item indices, most recently first seen first

    @classmethod
    def prepare(cls, published: PublishedModel, config: ServingConfig) -> ServingModel:
        items = published.items
        vocabulary, codes = np.unique(items.categories, return_inverse=True)
        data_end = int(published.manifest.get("data_end_ms", 0))
        new_after = data_end - config.rules.new_item_days * 86_400_000
        tag = config.rules.promoted_tag
        promoted = (
            np.array([tag in t.split("|") for t in items.tags.tolist()], dtype=bool)
            if tag
            else np.zeros(items.size, dtype=bool)
        )
        signals = published.manifest.get("config", {}).get("signals", {})
        popular = np.asarray(published.fallback.item_scores, dtype=np.float32)
        trending_order = np.argsort(-np.asarray(published.trending.item_scores), kind="stable")
        trending_rank = np.empty_like(trending_order)
        trending_rank[trending_order] = np.arange(trending_order.size)
        return cls(
            published=published,
            category_codes=codes.astype(np.int32),
            category_vocabulary={str(c): i for i, c in enumerate(vocabulary.tolist())},
            unavailable=~np.asarray(items.available, dtype=bool),
            new=np.asarray(items.first_seen_ms) >= new_after,
            promoted=promoted,
            signal_weights={e: float(signals.get(e, 1.0)) for e in EVENT_NAMES},
            scaling=str(signals.get("scaling", "log")),
            history_half_life=float(signals.get("history_half_life", 0.0)),
            popular_order=np.argsort(-popular, kind="stable"),
            popular_share=popular / (float(popular.max(initial=0.0)) + 1.0),
            trending_order=trending_order,
            trending_rank=trending_rank,
            profile_rows=sorted_positions(published.profiles.user_ids, published.user_ids),
            stage_strategies=dict(published.manifest.get("serving", {}).get("lifecycle", {})),
            session_model=bool(published.manifest.get("serving", {}).get("session_model", False)),
            newest_order=np.argsort(-np.asarray(items.first_seen_ms), kind="stable"),
        )

    @property
    def version(self) -> str:
        return self.published.version

    @property
    def n_items(self) -> int:
        return int(self.published.item_ids.size)

    def price_of(self, fresh: list[tuple[str, str, int]]) -> dict[str, float]:
        """Catalogue prices of the items in fresh events (for the monetary value of a fresh
        purchase); unknown items and prices are left out."""
        model = self.published
        positions = sorted_positions(model.item_ids, np.array([e[0] for e in fresh], dtype=str))
        prices = {}
        for (item_id, _, _), position in zip(fresh, positions.tolist(), strict=True):
            if position >= 0 and np.isfinite(price := float(model.items.price[position])):
                prices[item_id] = price
        return prices

    def codes(self, categories: tuple[str, ...]) -> list[int]:
        return [self.category_vocabulary[c] for c in categories if c in self.category_vocabulary]

    @property
    def ann(self) -> ItemIndex | None:
        return self.published.ann

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray | None:
        """A query vector for the approximate index from a history row (ALS only, whose
        fold-in is an exact user vector); None otherwise."""
        model = self.published.model
        if self.ann is None or not isinstance(model, ALSRecommender):
            return None
        return model.fold_in(history)[0]


def trained_at_ms(model: PublishedModel) -> int:
    """When the training run that made `model` read its inputs (0 if not recorded)."""
    return int(model.manifest.get("started_at_ms", 0))
