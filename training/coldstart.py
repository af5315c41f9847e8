"""Fits the hybrid cold-start model (LightFM with user and item attributes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsvc.coldstart import ColdStart
from recsvc.config import Config
from recsvc.models.factor import fit_lightfm
from recsvc.training.features import item_feature_table, user_feature_table


def fit_coldstart(
    confidence: sp.csr_matrix,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    users: pa.Table | None,
    items: pa.Table | None,
    config: Config,
) -> ColdStart:
    """LightFM on the training matrix with attribute features, seeded by training.seed.

    Catalogue items without events get vectors from their attributes alone (they have no
    learned identity vector), through the same feature vocabulary and price bands."""
    catalogue = (
        items.column("item_id").to_numpy(zero_copy_only=False).astype(str)
        if items is not None
        else np.empty(0, dtype=str)
    )
    new_ids = np.setdiff1d(catalogue, item_ids)
    n_items, n_new = item_ids.size, new_ids.size
    all_items = np.concatenate([item_ids, new_ids])
    item_table, _ = item_feature_table(all_items, items)
    item_table = item_table.tocsc()
    # Served items: their identity columns plus the attributes; new items: attributes only.
    attributes_block = item_table[:, n_items + n_new :]
    train_items = sp.hstack([item_table[:n_items, :n_items], attributes_block[:n_items]]).tocsr()
    new_items = attributes_block[n_items:].tocsr()
    user_table, user_names = user_feature_table(user_ids, users)

    settings = config.model.lightfm
    model = fit_lightfm(
        confidence,
        user_table,
        train_items,
        factors=settings.factors,
        loss=settings.loss,
        learning_rate=settings.learning_rate,
        item_alpha=0.0,  # LightFM's own defaults: no L2 penalty on the feature vectors
        user_alpha=0.0,
        epochs=config.profiles.coldstart_epochs,
        seed=config.training.seed,
    )
    item_biases, item_vectors = model.get_item_representations(train_items)
    _, user_vectors = model.get_user_representations(user_table)
    attribute_rows = np.arange(user_ids.size, user_ids.size + len(user_names))
    order = np.argsort(np.asarray(user_names, dtype=str)) if user_names else np.empty(0, int)
    item_attribute_embeddings = model.item_embeddings[n_items:]
    item_attribute_biases = model.item_biases[n_items:]
    arrays = {
        "user_attribute_names": np.asarray(user_names, dtype=str)[order]
        if user_names
        else np.empty(0, dtype=str),
        "user_attribute_vectors": np.asarray(
            model.user_embeddings[attribute_rows[order]], dtype=np.float32
        ).reshape(len(user_names), settings.factors),
        "item_vectors": item_vectors.astype(np.float32),
        "item_biases": item_biases.astype(np.float32),
        "user_vectors": user_vectors.astype(np.float32),
        "new_item_ids": new_ids.astype(str),
        "new_item_vectors": np.asarray(
            new_items @ item_attribute_embeddings, dtype=np.float32
        ).reshape(n_new, settings.factors),
        "new_item_biases": np.asarray(new_items @ item_attribute_biases, dtype=np.float32).reshape(
            n_new
        ),
    }
    meta = {
        "loss": settings.loss,
        "factors": settings.factors,
        "epochs": config.profiles.coldstart_epochs,
        "user_attributes": len(user_names),
        "new_items": int(n_new),
    }
    return ColdStart(arrays, meta)
