"""The hybrid cold-start model: users known only by attributes, items with no events yet.

Training fits LightFM with user attributes and item category, brand, price band and tag, and
keeps what serving needs as plain arrays: a vector per user attribute value, the learned vector
and bias of every item the model serves, every known user's vector (for audiences), and vectors
for catalogue items that have no events yet, built from their attributes alone. A cold user's
vector is the sum of their attribute vectors, weighted as training weighted them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsvc.ids import lookup_sorted

_ARRAYS = (
    "user_attribute_names",
    "user_attribute_vectors",
    "item_vectors",
    "item_biases",
    "user_vectors",
    "new_item_ids",
    "new_item_vectors",
    "new_item_biases",
)
META_FILE = "coldstart.json"


@dataclass
class ColdStart:
    arrays: dict[str, np.ndarray]
    meta: dict

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(directory / f"{name}.npy", np.asarray(self.arrays[name]), allow_pickle=False)
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> ColdStart:
        mode = "r" if mmap else None
        arrays = {
            name: np.asarray(np.load(directory / f"{name}.npy", mmap_mode=mode, allow_pickle=False))
            for name in _ARRAYS
        }
        return cls(arrays, json.loads((directory / META_FILE).read_text()))

    def user_vector(self, attributes: dict[str, str]) -> np.ndarray | None:
        """The vector of a user given only attributes; None when none of them is known."""
        names = self.user_attribute_names
        rows = [
            row
            for name, value in attributes.items()
            if value and (row := lookup_sorted(names, f"{name}={value}")) is not None
        ]
        if not rows:
            return None
        # Training rows sum to one over the identity column and the attributes.
        return np.asarray(self.user_attribute_vectors[rows]).sum(axis=0) / (len(rows) + 1)

    def item_scores(self, user_vector: np.ndarray) -> np.ndarray:
        return np.asarray(self.item_vectors @ user_vector + self.item_biases, dtype=np.float32)

    def new_item_index(self, item_id: str) -> int | None:
        return lookup_sorted(self.new_item_ids, item_id)

    def similar_to_new_item(self, new_item: int) -> np.ndarray:
        """Cosine similarity of every served item to a new item's attribute vector."""
        vector = np.asarray(self.new_item_vectors[new_item])
        norms = np.linalg.norm(self.item_vectors, axis=1) * max(np.linalg.norm(vector), 1e-12)
        return np.asarray(self.item_vectors @ vector / np.maximum(norms, 1e-12), np.float32)

    def user_affinity_to_new_item(self, new_item: int) -> np.ndarray:
        """Every known user's predicted score for a new item."""
        vector = np.asarray(self.new_item_vectors[new_item])
        return np.asarray(self.user_vectors @ vector + self.new_item_biases[new_item], np.float32)
