"""The published model format, written by training and read by the server.

    manifest.json           schema version, model type and parameters, data fingerprint,
                            creation time, metrics, ingest summaries (written last)
    model/                  the personalised model (recsvc.models format: .npy + model.json)
    fallback/               the non-personalised model (popularity or trending, whichever
                            did better on the holdout) served to unknown users
    trending/               time-decayed popularity, for "what is hot" lists
    user_ids.npy            sorted ids: row i of the model is user_ids[i]
    item_ids.npy            sorted ids: column j of the model is item_ids[j]
    item_categories.npy     per item, from the catalogue: category ("" if unknown), availability,
    item_available.npy      price (NaN if unknown), tags ("|"-separated), and the time of the
    item_price.npy          item's first event (for "new item" rules)
    item_tags.npy
    item_first_seen_ms.npy
    purchased_indptr.npy    CSR rows: the items each user has bought (filtered out where the
                            manifest's serving.exclude_purchased)
    purchased_indices.npy
    history_indptr.npy      CSR rows: each user's confidence for every item they touched (the
    history_indices.npy     training matrix), for real-time scoring with fresh events and for
    history_data.npy        filtering history out where the manifest's serving.exclude_seen
    ann.faiss               for catalogues past model.ann_min_items and factor models: an HNSW
                            index of the item factors (faiss format, memory-mapped)
    profiles/               customer profiles, one row per user (recsvc.profiles)
    segments.json           RFM segments and behavioural clusters, described
    item_brands.npy         per item, its brand ("" if unknown)
    together/               bought-together complements (recsvc.itemgraph), mined from baskets
    sessions/               the session model: which item follows which within a visit
    coldstart/              the hybrid model for attribute-only users and new items, when a
                            users or items file was given (recsvc.coldstart)

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

from recsvc.ann import ItemIndex
from recsvc.coldstart import ColdStart
from recsvc.ids import lookup_sorted, sorted_positions
from recsvc.itemgraph import ItemGraph
from recsvc.models import Recommender, load_model
from recsvc.profiles import UserProfiles

SCHEMA_VERSION = 3  # 2: trending, histories, item attributes; 3: profiles, segments, cold start
MANIFEST_FILE = "manifest.json"
SEGMENTS_FILE = "segments.json"


def write_published(
    directory: Path,
    *,
    model: Recommender,
    fallback: Recommender,
    trending: Recommender,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    items: ItemAttributes,
    purchased: sp.csr_matrix,
    history: sp.csr_matrix,
    manifest: dict[str, Any],
    profiles: UserProfiles,
    segments: list[dict[str, Any]],
    ann: ItemIndex | None = None,
    coldstart: ColdStart | None = None,
    together: ItemGraph | None = None,
    sessions: ItemGraph | None = None,
) -> None:
    model.save(directory / "model")
    for name, graph in (("together", together), ("sessions", sessions)):
        if graph is not None:
            graph.save(directory / name)
    profiles.save(directory / "profiles")
    (directory / SEGMENTS_FILE).write_text(json.dumps(segments, indent=2) + "\n")
    if coldstart is not None:
        coldstart.save(directory / "coldstart")
    fallback.save(directory / "fallback")
    if ann is not None:
        ann.save(directory)
    trending.save(directory / "trending")
    arrays = {
        "user_ids": np.asarray(user_ids, dtype=str),
        "item_ids": np.asarray(item_ids, dtype=str),
        "item_categories": np.asarray(items.categories, dtype=str),
        "item_available": np.asarray(items.available, dtype=bool),
        "item_price": np.asarray(items.price, dtype=np.float32),
        "item_tags": np.asarray(items.tags, dtype=str),
        "item_first_seen_ms": np.asarray(items.first_seen_ms, dtype=np.int64),
        "item_brands": np.asarray(
            items.brands if items.brands is not None else np.full(items.size, ""), dtype=str
        ),
        "purchased_indptr": purchased.indptr.astype(np.int64),
        "purchased_indices": purchased.indices.astype(np.int32),
        "history_indptr": history.indptr.astype(np.int64),
        "history_indices": history.indices.astype(np.int32),
        "history_data": history.data.astype(np.float32),
    }
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
    full_manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    (directory / MANIFEST_FILE).write_text(json.dumps(full_manifest, indent=2) + "\n")


@dataclass
class ItemAttributes:
    """Catalogue facts the serving rules and filters need, one entry per item column."""

    categories: np.ndarray
    available: np.ndarray
    price: np.ndarray
    tags: np.ndarray
    first_seen_ms: np.ndarray
    brands: np.ndarray | None = None  # "" if unknown; None in models that predate brands

    @property
    def size(self) -> int:
        return int(self.categories.size)


@dataclass
class PublishedModel:
    version: str
    manifest: dict[str, Any]
    model: Recommender
    fallback: Recommender
    trending: Recommender
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: ItemAttributes
    purchased_indptr: np.ndarray
    purchased_indices: np.ndarray
    history_indptr: np.ndarray
    history_indices: np.ndarray
    history_data: np.ndarray
    profiles: UserProfiles
    segments: list[dict[str, Any]]
    ann: ItemIndex | None = None
    coldstart: ColdStart | None = None
    # Empty where a model predates them (the server then falls back to similar items).
    together: ItemGraph | None = None
    sessions: ItemGraph | None = None

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
            # A plain ndarray view of the mapping: still shared, without np.memmap's slow
            # per-index Python overhead.
            return np.asarray(
                np.load(directory / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
            )

        n_items = array("item_ids").size
        loaded = cls(
            version=directory.name,
            manifest=manifest,
            model=load_model(directory / "model", mmap=mmap),
            fallback=load_model(directory / "fallback", mmap=mmap),
            trending=load_model(directory / "trending", mmap=mmap),
            user_ids=array("user_ids"),
            item_ids=array("item_ids"),
            items=ItemAttributes(
                categories=array("item_categories"),
                available=array("item_available"),
                price=array("item_price"),
                tags=array("item_tags"),
                first_seen_ms=array("item_first_seen_ms"),
                brands=array("item_brands") if (directory / "item_brands.npy").is_file() else None,
            ),
            purchased_indptr=array("purchased_indptr"),
            purchased_indices=array("purchased_indices"),
            history_indptr=array("history_indptr"),
            history_indices=array("history_indices"),
            history_data=array("history_data"),
            profiles=UserProfiles.load(directory / "profiles", mmap=mmap),
            segments=json.loads((directory / SEGMENTS_FILE).read_text()),
            coldstart=ColdStart.load(directory / "coldstart", mmap=mmap)
            if (directory / "coldstart").is_dir()
            else None,
            ann=ItemIndex.load(directory, int(manifest["ann"]["ef_search"]), mmap=mmap)
            if manifest.get("ann")
            else None,
            together=ItemGraph.load(directory / "together", n_items, mmap),
            sessions=ItemGraph.load(directory / "sessions", n_items, mmap),
        )
        loaded.check()
        return loaded

    def check(self) -> None:
        """Refuses a model whose parts disagree, before it can serve a single request."""
        n_users, n_items = self.user_ids.size, self.item_ids.size
        if {self.model.n_items, self.fallback.n_items, self.trending.n_items} != {n_items}:
            raise ValueError(f"model {self.version}: item count differs between parts")
        if (
            {
                self.items.categories.size,
                self.items.available.size,
                self.items.price.size,
                self.items.tags.size,
                self.items.first_seen_ms.size,
            }
            != {n_items}
            or self.purchased_indptr.size != n_users + 1
            or self.history_indptr.size != n_users + 1
        ):
            raise ValueError(f"model {self.version}: id maps and arrays disagree in size")
        if n_items and not np.all(self.item_ids[1:] > self.item_ids[:-1]):
            raise ValueError(f"model {self.version}: item ids are not sorted and unique")
        if n_users and not np.all(self.user_ids[1:] > self.user_ids[:-1]):
            raise ValueError(f"model {self.version}: user ids are not sorted and unique")

    def user_index(self, user_id: str) -> int | None:
        return lookup_sorted(self.user_ids, user_id)

    def item_index(self, item_id: str) -> int | None:
        return lookup_sorted(self.item_ids, item_id)

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

    @property
    def exclude_purchased(self) -> bool:
        """True where training found that users never buy the same item twice."""
        return bool(self.manifest.get("serving", {}).get("exclude_purchased", False))

    def purchased_by(self, user: int) -> np.ndarray:
        return np.asarray(
            self.purchased_indices[self.purchased_indptr[user] : self.purchased_indptr[user + 1]]
        )

    def seen_by(self, user: int) -> np.ndarray:
        """Items the user touched before the model was trained."""
        start, end = self.history_indptr[user], self.history_indptr[user + 1]
        return np.asarray(self.history_indices[start:end])

    def history_of(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, confidences) of the user's training row."""
        start, end = self.history_indptr[user], self.history_indptr[user + 1]
        return np.asarray(self.history_indices[start:end]), np.asarray(self.history_data[start:end])
