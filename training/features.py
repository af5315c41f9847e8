"""Side features for the hybrid model: one-hot attributes plus an identity column per row.

Rows are normalised to sum to 1 (as LightFM's own Dataset does), so a user or item with many
attributes is not scored on a larger scale than one with few.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

PRICE_BANDS = 5


def _one_hot(
    ids: np.ndarray, table: pa.Table | None, key: str, columns: dict[str, list[str]]
) -> tuple[sp.csr_matrix, list[str]]:
    """Identity block plus one column per (attribute, value) seen in `columns`; the names of
    those attribute columns, in order."""
    n = ids.size
    rows, cols = list(range(n)), list(range(n))
    vocabulary: dict[str, int] = {}
    if table is not None and columns:
        position = {v: i for i, v in enumerate(ids.tolist())}
        keys = table.column(key).to_pylist()
        for values in columns.values():
            for row_key, value in zip(keys, values, strict=True):
                row = position.get(row_key)
                if row is None or not value:
                    continue
                rows.append(row)
                cols.append(n + vocabulary.setdefault(value, len(vocabulary)))
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n + len(vocabulary))
    )
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / totals) @ matrix, dtype=np.float32), list(vocabulary)


def user_features(user_ids: np.ndarray, users: pa.Table | None) -> sp.csr_matrix:
    return user_feature_table(user_ids, users)[0]


def item_features(item_ids: np.ndarray, items: pa.Table | None) -> sp.csr_matrix:
    return item_feature_table(item_ids, items)[0]


def user_feature_table(
    user_ids: np.ndarray, users: pa.Table | None
) -> tuple[sp.csr_matrix, list[str]]:
    columns = {}
    if users is not None:
        for name in users.column_names:
            if name != "user_id":
                columns[name] = [f"{name}={v}" if v else "" for v in users.column(name).to_pylist()]
    return _one_hot(user_ids, users, "user_id", columns)


def item_feature_table(
    item_ids: np.ndarray, items: pa.Table | None
) -> tuple[sp.csr_matrix, list[str]]:
    columns: dict[str, list[str]] = {}
    if items is not None:
        columns["category"] = [f"category={v}" for v in items.column("category").to_pylist()]
        columns["brand"] = [f"brand={v}" if v else "" for v in items.column("brand").to_pylist()]
        price = items.column("price").to_numpy(zero_copy_only=False).astype(float)
        known = ~np.isnan(price)
        if known.any():
            edges = np.quantile(price[known], np.linspace(0, 1, PRICE_BANDS + 1)[1:-1])
            band = np.searchsorted(edges, np.nan_to_num(price))
            columns["price"] = [
                f"price_band={b}" if ok else "" for b, ok in zip(band, known, strict=True)
            ]
        # Tags are several per item: one column of the first tag keeps this simple and stable.
        columns["tag"] = [
            f"tag={t.split('|')[0]}" if t else "" for t in items.column("tags").to_pylist()
        ]
    return _one_hot(item_ids, items, "item_id", columns)
