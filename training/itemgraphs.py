"""Mines the item graphs the server follows (recsvc/itemgraph.py) from clean events:

- bought together: items in the same basket (a user's purchases at one moment, or within
  `model.together.window_minutes` of the previous one), kept where they share at least
  `min_support` baskets with a lift of at least `min_lift`, weighted by confidence
  P(other | item), the association-rule measure that ranks what a shopper adds next;
- sessions: sequential rules (Ludewig & Jannach, "Evaluation of session-based recommendation
  algorithms", 2018): within a visit (events no more than `gap_minutes` apart), each item
  points to the items clicked up to `steps` clicks after it with weight 1/distance, and back
  to those before it with `backward_weight` of that (co-occurrence, for short logs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import SessionsConfig, TogetherConfig
from recsvc.ids import sorted_positions
from recsvc.itemgraph import ItemGraph

MS_PER_MINUTE = 60_000


def _ordered(events: pa.Table, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user codes, timestamps, item positions) of the events whose item is in `item_ids`,
    ordered by user then time."""
    users = pc.dictionary_encode(events.column("user_id")).combine_chunks().indices.to_numpy()
    stamps = events.column("timestamp_ms").to_numpy()
    items = sorted_positions(item_ids, events.column("item_id").to_numpy().astype(str))
    known = items >= 0
    users, stamps, items = users[known], stamps[known], items[known]
    order = np.lexsort((stamps, users))
    return users[order], stamps[order], items[order]


def _starts(users: np.ndarray, stamps: np.ndarray, gap_ms: float) -> np.ndarray:
    """True where a new group (basket or session) starts: a new user, or more than `gap_ms`
    after the user's previous event."""
    if not users.size:
        return np.zeros(0, dtype=bool)
    return np.r_[True, (users[1:] != users[:-1]) | (np.diff(stamps) > gap_ms)]


def mine_bought_together(
    events: pa.Table, item_ids: np.ndarray, config: TogetherConfig
) -> tuple[ItemGraph, dict[str, Any]]:
    """The bought-together graph over `item_ids` and a summary for the manifest."""
    n_items = item_ids.size
    purchases = events.filter(pc.equal(events.column("event"), "purchase"))
    users, stamps, items = _ordered(purchases, item_ids)
    basket = np.cumsum(_starts(users, stamps, config.window_minutes * MS_PER_MINUTE)) - 1
    n_baskets = int(basket[-1]) + 1 if basket.size else 0
    matrix = sp.csr_matrix(
        (np.ones(items.size, dtype=np.float32), (basket, items)), shape=(n_baskets, n_items)
    )
    matrix.data[:] = 1.0  # an item bought twice in one basket counts once
    sizes = np.diff(matrix.indptr)
    usable = (sizes >= 2) & (sizes <= config.max_basket_items)
    matrix = matrix[usable]
    count = np.asarray(matrix.sum(axis=0)).ravel()
    together = (matrix.T @ matrix).tocsr()
    together.setdiag(0)
    together.eliminate_zeros()
    together = together.tocoo()
    support = together.data
    n = max(int(usable.sum()), 1)
    lift = support * n / (count[together.row] * count[together.col])
    keep = (support >= config.min_support) & (lift >= config.min_lift)
    confidence = support[keep] / count[together.row[keep]]
    graph = ItemGraph.from_matrix(
        sp.csr_matrix(
            (confidence, (together.row[keep], together.col[keep])), shape=(n_items, n_items)
        ),
        config.neighbours,
    )
    summary = {
        "baskets": int(usable.sum()),
        "items_with_complements": int(np.count_nonzero(np.diff(graph.indptr))),
        "edges": graph.n_edges,
    }
    return graph, summary


def visits(
    events: pa.Table, item_ids: np.ndarray, config: SessionsConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(item positions, visit numbers) of the events on `item_ids`, visit by visit in time
    order; a repeated click on the same item is one step of the visit."""
    users, stamps, items = _ordered(events, item_ids)
    session = np.cumsum(_starts(users, stamps, config.gap_minutes * MS_PER_MINUTE))
    repeat = np.r_[False, (items[1:] == items[:-1]) & (session[1:] == session[:-1])]
    return items[~repeat], session[~repeat]


def mine_sessions(
    events: pa.Table, item_ids: np.ndarray, config: SessionsConfig
) -> tuple[ItemGraph, dict[str, Any]]:
    """The session graph over `item_ids` and a summary for the manifest."""
    n_items = item_ids.size
    items, session = visits(events, item_ids, config)
    rows, columns, weights = [], [], []
    for distance in range(1, config.steps + 1):
        same = session[distance:] == session[:-distance]
        before, after = items[:-distance][same], items[distance:][same]
        rows += [before, after]
        columns += [after, before]
        weights += [
            np.full(before.size, 1.0 / distance, dtype=np.float32),
            np.full(before.size, config.backward_weight / distance, dtype=np.float32),
        ]
    if rows:
        matrix = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))),
            shape=(n_items, n_items),
        )
        matrix.setdiag(0)
    else:
        matrix = sp.csr_matrix((n_items, n_items), dtype=np.float32)
    graph = ItemGraph.from_matrix(matrix, config.neighbours)
    sessions = np.unique(session)
    summary = {
        "sessions": int(sessions.size),
        "clicks_per_session": round(items.size / max(sessions.size, 1), 2),
        "edges": graph.n_edges,
    }
    return graph, summary
