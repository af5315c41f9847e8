"""One small interface for every model, after implicit's RecommenderBase.

Models work on internal indices (rows and columns of the user-item matrix) and answer in
batches: `recommend` and `similar_items` return (ids, scores) arrays of shape (n, k). Where
fewer than k items qualify, the tail holds id -1 and score -inf. `__init__` only stores
parameters; `fit` validates, starts from scratch and returns self. Models save as .npy arrays
plus a JSON description, and load without pickle (optionally memory-mapped, so server worker
processes share one copy).
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from recsvc.errors import BadInput

DESCRIPTION_FILE = "model.json"
AFFINITY_BLOCK = 1024  # users scored at once by the generic user_affinity
# model_type -> class, filled as each model class is defined (recsvc.models imports them all).
MODEL_TYPES: dict[str, type[Recommender]] = {}


def model_class(name: str) -> type[Recommender]:
    """The registered class of model type `name`; BadInput for a type nobody registered."""
    if name not in MODEL_TYPES:
        raise BadInput(f"unknown model type {name!r}")
    return MODEL_TYPES[name]


def load_model(directory: Path, mmap: bool = True) -> Recommender:
    """Loads a saved model of any registered type."""
    model_type = json.loads((directory / DESCRIPTION_FILE).read_text())["model_type"]
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{directory}: unknown model type {model_type!r}")
    return MODEL_TYPES[model_type].load(directory, mmap=mmap)


class Recommender(ABC):
    model_type: ClassVar[str]
    array_names: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every concrete model registers itself under its model_type (see MODEL_TYPES).
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:
            MODEL_TYPES[cls.model_type] = cls

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from same-named attributes (as scikit-learn)."""
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        parameters = inspect.signature(type(self).__init__).parameters.values()
        return {
            p.name: getattr(self, p.name)
            for p in parameters
            if p.kind in named and p.name != "self"
        }

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Self:
        """Learns from a users x items confidence matrix, discarding any earlier fit."""

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense scores of shape (len(users), n_items)."""

    @abstractmethod
    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """Dense scores for users given only by their interactions (rows over the items, as in
        the fit matrix): users the model was not fitted on, or known users with events newer
        than the fit. Nothing is refitted; shape (history rows, n_items)."""

    @abstractmethod
    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items most similar to each item in `items`, the item itself left out."""

    @property
    @abstractmethod
    def n_items(self) -> int: ...

    def recommend(
        self,
        users: np.ndarray,
        k: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per user; `exclude` row i lists items never to return to users[i]."""
        scores = self.score(np.asarray(users, dtype=np.int64))
        if exclude is not None:
            mask_rows(scores, exclude)
        return top_k(scores, k)

    def user_affinity(self, items: np.ndarray, n_users: int) -> np.ndarray:
        """Each fitted user's mean score over `items`: who is most likely to want them.
        Scores users in blocks; models that can do it in one product override this."""
        items = np.asarray(items, dtype=np.int64)
        affinity = np.empty(n_users, dtype=np.float32)
        for start in range(0, n_users, AFFINITY_BLOCK):
            users = np.arange(start, min(n_users, start + AFFINITY_BLOCK))
            affinity[users] = self.score(users)[:, items].mean(axis=1)
        return affinity

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in self.array_names:
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)
        description = {"model_type": self.model_type, "params": self.get_params()}
        (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> Self:
        description = json.loads((directory / DESCRIPTION_FILE).read_text())
        if description["model_type"] != cls.model_type:
            raise ValueError(
                f"{directory} holds a {description['model_type']} model, not {cls.model_type}"
            )
        model = cls(**description["params"])
        for name in cls.array_names:
            array = np.asarray(  # an ndarray view of the mapping (see PublishedModel.load)
                np.load(
                    directory / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False
                )
            )
            setattr(model, name, array)
        return model


def mask_rows(scores: np.ndarray, exclude: sp.csr_matrix) -> None:
    """Sets scores[i, j] to -inf for every stored (i, j) of `exclude`."""
    exclude = sp.csr_matrix(exclude)
    rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
    scores[rows, exclude.indices] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores per row, best first; -inf scores become -1."""
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k <= 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), scores.dtype)
    if n_rows == 1:  # serving's case; the same steps on a 1-D row skip the index broadcasting
        row = scores[0]
        part = np.argpartition(-row, k - 1)[:k] if k < n_cols else np.arange(n_cols)
        part_scores = row[part]
        order = np.argsort(-part_scores, kind="stable")
        ids, values = part[order].astype(np.int64), part_scores[order]
        ids[~np.isfinite(values)] = -1
        return ids[None, :], values[None, :]
    if k < n_cols:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    values = np.take_along_axis(part_scores, order, axis=1)
    ids[~np.isfinite(values)] = -1
    return ids, values


def csr_rows(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, rows: np.ndarray, n_cols: int
) -> sp.csr_matrix:
    """Rows of a CSR matrix kept as three (possibly memory-mapped) arrays.

    Gathers only the requested rows: building the whole matrix first would cost time in
    proportion to all its entries on every call.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(indptr[rows], dtype=np.int64)
    lengths = np.asarray(indptr[rows + 1], dtype=np.int64) - starts
    new_indptr = np.concatenate([[0], np.cumsum(lengths)])
    take = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1])
    return sp.csr_matrix(
        (np.asarray(data[take]), np.asarray(indices[take]), new_indptr),
        shape=(rows.size, n_cols),
    )


def check_user_items(user_items: sp.spmatrix) -> sp.csr_matrix:
    """The fit input as float32 CSR, refusing shapes and values no model can learn from."""
    if not sp.issparse(user_items):
        raise TypeError("user_items must be a scipy sparse matrix (users x items)")
    matrix = sp.csr_matrix(user_items, dtype=np.float32)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0 or matrix.nnz == 0:
        raise ValueError("user_items is empty: no interactions to learn from")
    if not np.all(np.isfinite(matrix.data)) or (matrix.data < 0).any():
        raise ValueError("user_items must hold finite, non-negative confidences")
    return matrix
