"""Item-to-item graphs mined from the log by training and followed by the server: what is bought
together (from baskets) and what follows what within a visit (the session model).

Each is a CSR table: per item, its strongest neighbours with weights, strongest first, saved as
.npy (indptr.npy, indices.npy, weights.npy) and loaded without pickle, memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp


class Spread(NamedTuple):
    """Where a set of seed items leads: candidate items, their summed weights, and for each the
    seed that contributed most (the reason a frontend shows)."""

    items: np.ndarray
    scores: np.ndarray
    sources: np.ndarray


class ItemGraph:
    """Weighted item -> item edges, the strongest `neighbours` per item."""

    def __init__(
        self, indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, n_items: int
    ) -> None:
        self.indptr = indptr
        self.indices = indices
        self.weights = weights
        self.n_items = n_items

    @classmethod
    def empty(cls, n_items: int) -> ItemGraph:
        return cls(
            np.zeros(n_items + 1, dtype=np.int64),
            np.empty(0, dtype=np.int32),
            np.empty(0, dtype=np.float32),
            n_items,
        )

    @classmethod
    def from_matrix(cls, matrix: sp.csr_matrix, neighbours: int) -> ItemGraph:
        """Keeps each row's `neighbours` largest positive entries, largest first."""
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.eliminate_zeros()
        matrix.data[matrix.data < 0] = 0
        matrix.eliminate_zeros()
        n_items = matrix.shape[0]
        rows = np.repeat(np.arange(n_items), np.diff(matrix.indptr))
        # Per row, largest first (ties: lower index first), then the first `neighbours`.
        order = np.lexsort((matrix.indices, -matrix.data, rows))
        rank = np.arange(order.size) - matrix.indptr[rows[order]]
        kept = order[rank < neighbours]
        counts = np.bincount(rows[kept], minlength=n_items)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            indptr,
            matrix.indices[kept].astype(np.int32),
            matrix.data[kept].astype(np.float32),
            n_items,
        )

    @property
    def n_edges(self) -> int:
        return int(self.indices.size)

    def neighbours(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.indptr[item], self.indptr[item + 1]
        return np.asarray(self.indices[start:end]), np.asarray(self.weights[start:end])

    def spread(self, seeds: np.ndarray, seed_weights: np.ndarray) -> Spread:
        """Sums each seed's neighbours' weights times the seed's weight; the seeds themselves
        are candidates only through other seeds' edges."""
        parts = [self.neighbours(int(s)) for s in seeds.tolist()]
        if not parts or not any(p[0].size for p in parts):
            empty = np.empty(0, dtype=np.int64)
            return Spread(empty, np.empty(0, dtype=np.float32), empty)
        items = np.concatenate([p[0] for p in parts]).astype(np.int64)
        contributions = np.concatenate(
            [p[1] * np.float32(w) for p, w in zip(parts, seed_weights.tolist(), strict=True)]
        )
        from_seed = np.repeat(seeds, [p[0].size for p in parts])
        candidates, where = np.unique(items, return_inverse=True)
        scores = np.bincount(where, weights=contributions, minlength=candidates.size)
        # The strongest contribution per candidate: sort by (candidate, -contribution).
        order = np.lexsort((-contributions, where))
        first = np.r_[True, where[order][1:] != where[order][:-1]]
        sources = from_seed[order][first]
        return Spread(candidates, scores.astype(np.float32), sources)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "indptr.npy", self.indptr.astype(np.int64), allow_pickle=False)
        np.save(directory / "indices.npy", self.indices.astype(np.int32), allow_pickle=False)
        np.save(directory / "weights.npy", self.weights.astype(np.float32), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, n_items: int, mmap: bool = True) -> ItemGraph:
        """The graph saved in `directory`; an empty one where a model predates it."""
        if not directory.is_dir():
            return cls.empty(n_items)
        mode = "r" if mmap else None

        def array(name: str) -> np.ndarray:
            return np.asarray(np.load(directory / name, mmap_mode=mode, allow_pickle=False))

        graph = cls(array("indptr.npy"), array("indices.npy"), array("weights.npy"), n_items)
        if graph.indptr.size != n_items + 1 or graph.indices.size != graph.weights.size:
            raise ValueError(f"{directory}: item graph does not match {n_items} items")
        return graph
