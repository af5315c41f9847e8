"""Approximate top-k by inner product over item vectors (faiss HNSW), for large catalogues.

Exact scoring costs a dot product with every item per request; past `model.ann_min_items`
items, training also publishes an HNSW graph of the item factors. The search breadth (efSearch)
is chosen at build time as the smallest that reaches the target recall@10 against exact scoring
on a sample of users, and that recall is recorded in the manifest. The index file is faiss's own
binary format (no pickle) and is memory-mapped, so server workers share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE = "ann.faiss"
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ItemIndex:
    index: object  # faiss.IndexHNSWFlat
    ef_search: int

    @classmethod
    def build(
        cls, item_vectors: np.ndarray, neighbours: int = 32, ef_construction: int = 100
    ) -> ItemIndex:
        import faiss

        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        index = faiss.IndexHNSWFlat(vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(vectors)
        return cls(index, EF_SEARCH_STEPS[0])

    def save(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(directory / INDEX_FILE))

    @classmethod
    def load(cls, directory: Path, ef_search: int, mmap: bool = True) -> ItemIndex:
        import faiss

        # MMAP_IFC maps the graph and the vectors in place (plain MMAP copies the HNSW graph
        # into each process's own memory).
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
        index = faiss.read_index(str(directory / INDEX_FILE), flags)
        return cls(index, ef_search)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), best first; -1 ids where fewer than k were found."""
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)
        scores, ids = self.index.search(
            np.ascontiguousarray(queries, dtype=np.float32), k, params=params
        )
        return ids.astype(np.int64), scores

    def tune(
        self, user_vectors: np.ndarray, item_vectors: np.ndarray, target: float, k: int = 10
    ) -> float:
        """Sets the smallest efSearch whose recall@k on `user_vectors` reaches `target`;
        returns that recall (the best one seen if no step reaches it)."""
        exact = np.concatenate(
            [
                np.argpartition(-(chunk @ item_vectors.T), k - 1, axis=1)[:, :k]
                for chunk in np.array_split(user_vectors, max(1, len(user_vectors) // 50))
            ]
        )
        best = (0.0, EF_SEARCH_STEPS[-1])
        for ef in EF_SEARCH_STEPS:
            self.ef_search = ef
            found, _ = self.search(user_vectors, k)
            recall = float(
                np.mean([np.isin(f, e).sum() / k for f, e in zip(found, exact, strict=True)])
            )
            if recall > best[0]:
                best = (recall, ef)
            if recall >= target:
                return recall
        self.ef_search = best[1]
        return best[0]
