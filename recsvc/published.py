"""The published model format, written by training and read by the server.

    manifest.json           schema version, model type and parameters, data fingerprint,
                            creation time, metrics, ingest summaries (written last)
    model/                  the personalised model (recsvc.models format: .npy + model.json)
    fallback/               the non-personalised model (popularity or trending, whichever
                            did better on the holdout) served to unknown users
    trending/               time-decayed popularity, for "what is hot" lists
    user_ids.npy            sorted ids: row i of the model is user_ids[i]
    item_ids.npy            sorted ids: column j of the model is item_ids[j]
    item_categories.npy     category of each item ("" where the catalogue did not say)
    purchased_indptr.npy    CSR rows: the items each user has bought
    purchased_indices.npy
    seen_indptr.npy         CSR rows: the items each user has touched in any way; filtered
    seen_indices.npy        out of recommendations where the manifest's serving.exclude_seen

Every array is a plain .npy file loaded with allow_pickle=False and memory-mapped by default,
so that several server processes share one copy of the model in the page cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.models import Recommender, load_model

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


def write_published(
    directory: Path,
    *,
    model: Recommender,
    fallback: Recommender,
    trending: Recommender,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    item_categories: np.ndarray,
    purchased: sp.csr_matrix,
    seen: sp.csr_matrix,
    manifest: dict[str, Any],
) -> None:
    model.save(directory / "model")
    fallback.save(directory / "fallback")
    trending.save(directory / "trending")
    arrays = {
        "user_ids": np.asarray(user_ids, dtype=str),
        "item_ids": np.asarray(item_ids, dtype=str),
        "item_categories": np.asarray(item_categories, dtype=str),
        "purchased_indptr": purchased.indptr.astype(np.int64),
        "purchased_indices": purchased.indices.astype(np.int32),
        "seen_indptr": seen.indptr.astype(np.int64),
        "seen_indices": seen.indices.astype(np.int32),
    }
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
    full_manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    (directory / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2) + "\n")


@dataclass
class PublishedModel:
    version: str
    manifest: dict[str, Any]
    model: Recommender
    fallback: Recommender
    trending: Recommender
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_categories: np.ndarray
    purchased_indptr: np.ndarray
    purchased_indices: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> PublishedModel:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{directory}: model schema {manifest.get('schema_version')} is not "
                f"{SCHEMA_VERSION}"
            )
        mode = "r" if mmap else None

        def array(name: str) -> np.ndarray:
            return np.load(directory / f"{name}.npy", mmap_mode=mode, allow_pickle=False)

        loaded = cls(
            version=directory.name,
            manifest=manifest,
            model=load_model(directory / "model", mmap=mmap),
            fallback=load_model(directory / "fallback", mmap=mmap),
            trending=load_model(directory / "trending", mmap=mmap),
            user_ids=array("user_ids"),
            item_ids=array("item_ids"),
            item_categories=array("item_categories"),
            purchased_indptr=array("purchased_indptr"),
            purchased_indices=array("purchased_indices"),
            seen_indptr=array("seen_indptr"),
            seen_indices=array("seen_indices"),
        )
        loaded.check()
        return loaded

    def check(self) -> None:
        """Refuses a model whose parts disagree, before it can serve a single request."""
        n_users, n_items = self.user_ids.size, self.item_ids.size
        if {self.model.n_items, self.fallback.n_items, self.trending.n_items} != {n_items}:
            raise ValueError(f"model {self.version}: item count differs between parts")
        if (
            self.item_categories.size != n_items
            or self.purchased_indptr.size != n_users + 1
            or self.seen_indptr.size != n_users + 1
        ):
            raise ValueError(f"model {self.version}: id maps and arrays disagree in size")
        if n_items and not np.all(self.item_ids[1:] > self.item_ids[:-1]):
            raise ValueError(f"model {self.version}: item ids are not sorted and unique")
        if n_users and not np.all(self.user_ids[1:] > self.user_ids[:-1]):
            raise ValueError(f"model {self.version}: user ids are not sorted and unique")

    def user_index(self, user_id: str) -> int | None:
        return _lookup(self.user_ids, user_id)

    def item_index(self, item_id: str) -> int | None:
        return _lookup(self.item_ids, item_id)

    def item_indices(self, item_ids: list[str]) -> np.ndarray:
        """Indices of the known ids among `item_ids`; unknown ones are skipped."""
        if not item_ids:
            return np.empty(0, dtype=np.int64)
        pos = sorted_positions(self.item_ids, np.asarray(item_ids, dtype=str))
        return pos[pos >= 0]

    @property
    def exclude_seen(self) -> bool:
        """True where training found that users rarely return to items they know."""
        return bool(self.manifest.get("serving", {}).get("exclude_seen", False))

    def purchased_by(self, user: int) -> np.ndarray:
        return np.asarray(
            self.purchased_indices[self.purchased_indptr[user] : self.purchased_indptr[user + 1]]
        )

    def seen_by(self, user: int) -> np.ndarray:
        return np.asarray(self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]])


def sorted_positions(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each of `wanted` in the sorted, unique `sorted_ids`; -1 where absent."""
    if sorted_ids.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == wanted, pos, -1).astype(np.int64)


def _lookup(sorted_ids: np.ndarray, key: str) -> int | None:
    """Binary search in a sorted id array: no per-process dict, works on memory-mapped ids."""
    pos = int(np.searchsorted(sorted_ids, key))
    if pos < sorted_ids.size and sorted_ids[pos] == key:
        return pos
    return None
