"""The model zoo, shared by training (fit) and serving (recommend)."""

from __future__ import annotations

import json
from pathlib import Path

from recsvc.models.base import DESCRIPTION_FILE, Recommender
from recsvc.models.blend import BlendRecommender
from recsvc.models.factor import (
    ALSRecommender,
    BPRRecommender,
    FactorRecommender,
    LightFMRecommender,
)
from recsvc.models.neighbours import EASERecommender, ItemKNNRecommender
from recsvc.models.popularity import PopularityRecommender, TrendingRecommender

MODEL_TYPES: dict[str, type[Recommender]] = {
    cls.model_type: cls
    for cls in (
        ALSRecommender,
        BPRRecommender,
        ItemKNNRecommender,
        EASERecommender,
        LightFMRecommender,
        PopularityRecommender,
        TrendingRecommender,
        BlendRecommender,
    )
}


def load_model(directory: Path, mmap: bool = True) -> Recommender:
    """Loads a saved model of any registered type."""
    model_type = json.loads((directory / DESCRIPTION_FILE).read_text())["model_type"]
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{directory}: unknown model type {model_type!r}")
    return MODEL_TYPES[model_type].load(directory, mmap=mmap)


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
    "Recommender",
    "TrendingRecommender",
    "load_model",
]
