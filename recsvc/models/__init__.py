"""The model zoo, shared by training (fit) and serving (recommend)."""

from __future__ import annotations

from recsvc.models.base import MODEL_TYPES, Recommender, load_model
from recsvc.models.blend import BlendRecommender
from recsvc.models.factor import (
    ALSRecommender,
    BPRRecommender,
    FactorRecommender,
    LightFMRecommender,
)
from recsvc.models.neighbours import EASERecommender, ItemKNNRecommender, RP3BetaRecommender
from recsvc.models.popularity import PopularityRecommender, TrendingRecommender

__all__ = [
    "MODEL_TYPES",
    "ALSRecommender",
    "BPRRecommender",
    "BlendRecommender",
    "EASERecommender",
    "FactorRecommender",
    "ItemKNNRecommender",
    "LightFMRecommender",
    "PopularityRecommender",
    "RP3BetaRecommender",
    "Recommender",
    "TrendingRecommender",
    "load_model",
]
