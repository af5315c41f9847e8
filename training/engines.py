"""Training engines: where the events are read, and which class fits each model type. The one
place that looks at `training.engine` is `engine_for`; the job asks its engine, never the name.

The local engine reads CSV or Parquet files on this machine with the data contract's checks.
The Spark engine (training/spark.py) reads Parquet from a cluster file system with the same
checks and fits ALS with MLlib; everything after that is the same job.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Protocol

from recsvc.config import Config
from recsvc.models import LightFMRecommender, Recommender, TrendingRecommender
from recsvc.models.base import model_class
from recsvc.training.features import item_features, user_features
from recsvc.training.ingest import Dataset, load_job_inputs
from recsvc.training.inputs import TrainInputs
from recsvc.training.interactions import Interactions


class Engine(Protocol):
    def prepare(self, config: Config) -> Config:
        """The run's config for this engine; BadInput where the engine cannot run it."""
        ...

    def events_location(self, value: str) -> Path | str:
        """The events argument as this engine reads it (a local path, or a URL as written)."""
        ...

    def read(self, inputs: TrainInputs, config: Config, rejects_dir: Path) -> Dataset:
        """Events, catalogue and users, validated; rejected rows go to `rejects_dir`."""
        ...

    def model_class(self, name: str) -> type[Recommender]:
        """The class that fits model type `name` on this engine."""
        ...


class LocalEngine:
    def prepare(self, config: Config) -> Config:
        return config

    def events_location(self, value: str) -> Path | str:
        return Path(value)

    def read(self, inputs: TrainInputs, config: Config, rejects_dir: Path) -> Dataset:
        events = Path(inputs.events) if inputs.events is not None else None
        return load_job_inputs(events, inputs.items, inputs.users, config, rejects_dir)

    def model_class(self, name: str) -> type[Recommender]:
        return model_class(name)


def engine_for(config: Config) -> Engine:
    if config.training.engine == "spark":
        from recsvc.training.spark import SparkEngine  # pyspark only when asked for

        return SparkEngine()
    return LocalEngine()


def make_model(name: str, config: Config) -> Recommender:
    """An unfitted model of type `name`: the engine's class for it, built from the config's
    section of the same name (its fields are the constructor's parameters) and the run's seed."""
    model_class = engine_for(config).model_class(name)
    section = getattr(config.model, name, None)
    params = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else {}
    if "random_state" in inspect.signature(model_class).parameters:
        params["random_state"] = config.training.seed
    return model_class(**params)


def fit_model(model: Recommender, interactions: Interactions, dataset: Dataset) -> Recommender:
    """Fits from scratch; the hybrid model also gets user and item features, and trending
    learns from time-decayed weights."""
    if isinstance(model, TrendingRecommender):
        return model.fit(interactions.recent)
    if isinstance(model, LightFMRecommender):
        return model.fit(
            interactions.confidence,
            user_features(interactions.user_ids, dataset.modelled_users),
            item_features(interactions.item_ids, dataset.items),
        )
    return model.fit(interactions.confidence)
