"""The training job: ingest and clean, build the matrix, evaluate, fit, publish."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsvc.config import Config
from recsvc.models import ALSRecommender, PopularityRecommender
from recsvc.modelstore import ModelStore
from recsvc.published import write_published
from training.evaluate import ranking_metrics, temporal_split
from training.ingest import Dataset, load_dataset
from training.interactions import Interactions, build_interactions
from training.progress import Progress


@dataclass(frozen=True)
class TrainInputs:
    events: Path
    items: Path | None = None
    users: Path | None = None


@dataclass
class TrainResult:
    version: str
    model_dir: Path
    manifest: dict[str, Any]


def fingerprint(inputs: TrainInputs, config: Config) -> str:
    """sha256 of the input files' bytes and the configuration: same data, same fingerprint."""
    digest = hashlib.sha256()
    for path in (inputs.events, inputs.items, inputs.users):
        digest.update(b"\0file\0")
        if path is not None:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    return digest.hexdigest()


def make_model(config: Config) -> ALSRecommender:
    als = config.model.als
    return ALSRecommender(
        factors=als.factors,
        regularization=als.regularization,
        alpha=als.alpha,
        iterations=als.iterations,
        random_state=config.training.seed,
    )


def item_categories(interactions: Interactions, dataset: Dataset) -> np.ndarray:
    categories = np.full(interactions.item_ids.size, "", dtype=object)
    if dataset.items is not None:
        catalogue = dict(
            zip(
                dataset.items.column("item_id").to_pylist(),
                dataset.items.column("category").to_pylist(),
                strict=True,
            )
        )
        categories[:] = [catalogue.get(i, "") for i in interactions.item_ids.tolist()]
    return categories.astype(str)


def train(
    inputs: TrainInputs,
    model_dir: Path,
    config: Config,
    rejects_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Runs the whole job and publishes a new current version. Raises BadInput on bad data."""
    progress = progress or Progress("train")
    store = ModelStore(model_dir)
    rejects_dir = rejects_dir or model_dir / "rejects"

    with progress.stage("ingest") as tally:
        dataset = load_dataset(
            inputs.events, config.data, inputs.items, inputs.users, rejects_dir=rejects_dir
        )
        tally.count = sum(r.rows_read for r in dataset.reports)
    for report in dataset.reports:
        progress.say(report.summary())
    if dataset.events.num_rows == 0:
        from recsvc.errors import BadInput

        raise BadInput(f"events file {inputs.events} has no usable rows")

    with progress.stage("interaction matrix") as tally:
        interactions = build_interactions(dataset.events, config.signals)
        tally.count, tally.unit = interactions.confidence.nnz, "user-item pairs"
    progress.say(f"{interactions.shape[0]:,} users x {interactions.shape[1]:,} items")

    metrics = evaluate_holdout(dataset.events, config, progress)

    with progress.stage("fit als") as tally:
        model = make_model(config).fit(interactions.confidence)
        tally.count, tally.unit = interactions.shape[0], "users"
    fallback = PopularityRecommender().fit(interactions.confidence)

    manifest = {
        "model_type": model.model_type,
        "params": model.get_params(),
        "data_fingerprint": fingerprint(inputs, config),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_users": int(interactions.shape[0]),
        "n_items": int(interactions.shape[1]),
        "n_interactions": int(interactions.confidence.nnz),
        "metrics": metrics,
        "ingest": [r.as_dict() for r in dataset.reports],
        "config": dataclasses.asdict(config),
    }
    with progress.stage("publish"):
        version = store.publish(
            lambda staging: write_published(
                staging,
                model=model,
                fallback=fallback,
                user_ids=interactions.user_ids,
                item_ids=interactions.item_ids,
                item_categories=item_categories(interactions, dataset),
                purchased=interactions.purchased,
                manifest=manifest,
            ),
            suffix=manifest["data_fingerprint"][:8],
        )
    progress.say(
        f"published {version} to {model_dir} "
        f"({manifest['n_users']:,} users, {manifest['n_items']:,} items, "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.get("als", {}).items())
        + ")"
    )
    return TrainResult(version, model_dir, manifest)


def evaluate_holdout(
    events: pa.Table, config: Config, progress: Progress
) -> dict[str, dict[str, float]]:
    """Metrics of the configured model and of popularity on the last 15% of time."""
    with progress.stage("evaluate (temporal holdout)") as tally:
        split = temporal_split(events, config.signals)
        if split is None:
            progress.say("too little data for a temporal holdout; metrics left empty")
            return {}
        tally.count, tally.unit = int(np.count_nonzero(np.diff(split.test.indptr))), "users"
        metrics = {
            "als": ranking_metrics(make_model(config).fit(split.train.confidence), split.test),
            "popularity": ranking_metrics(
                PopularityRecommender().fit(split.train.confidence), split.test
            ),
        }
    return metrics
