"""Turns clean events into the users x items confidence matrix the models learn from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import EVENT_NAMES, SignalsConfig, history_decay
from recsvc.ids import sorted_positions


@dataclass
class Interactions:
    user_ids: np.ndarray  # sorted unicode; row i of the matrices is user_ids[i]
    item_ids: np.ndarray  # sorted unicode; column j is item_ids[j]
    confidence: sp.csr_matrix  # float32, weighted and scaled event strength
    purchased: sp.csr_matrix  # 1 where the user bought the item
    recent: sp.csr_matrix  # unscaled event weights halved every trending_half_life_days

    @property
    def shape(self) -> tuple[int, int]:
        return self.confidence.shape


def encode_sorted(
    column: pa.ChunkedArray, vocabulary: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted vocabulary). With a vocabulary given, unknown values get code -1."""
    if vocabulary is None:
        encoded = pc.dictionary_encode(column).combine_chunks()
        values = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(values, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[encoded.indices.to_numpy()], values[order]
    return sorted_positions(vocabulary, column.to_numpy().astype(str)), vocabulary


MS_PER_DAY = 86_400_000


def event_weights(
    events: pa.Table, signals: SignalsConfig, half_life_days: float | None = None
) -> np.ndarray:
    """Per-event weight by type, halved every half-life (default `signals.half_life_days`)
    back from the newest event."""
    half_life = signals.half_life_days if half_life_days is None else half_life_days
    weights = np.zeros(events.num_rows, dtype=np.float64)
    names = events.column("event").to_numpy(zero_copy_only=False)
    for name in EVENT_NAMES:
        weights[names == name] = signals.weight(name)
    if half_life > 0 and events.num_rows:
        ts = events.column("timestamp_ms").to_numpy().astype(np.float64)
        age_days = (ts.max() - ts) / MS_PER_DAY
        weights *= np.exp2(-age_days / half_life)
    return weights.astype(np.float32)


def newer_moments(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Per event, how many later distinct timestamps the same user has: 0 for their newest
    moment (a basket bought at once is one moment)."""
    order = np.lexsort((-timestamps, users))  # by user, newest first
    sorted_users, sorted_ts = users[order], timestamps[order]
    first_of_user = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    new_moment = first_of_user | np.r_[True, sorted_ts[1:] != sorted_ts[:-1]]
    moment = np.cumsum(new_moment) - 1
    user_start = np.maximum.accumulate(np.where(first_of_user, moment, 0))
    newer = np.empty(users.size, dtype=np.int64)
    newer[order] = moment - user_start
    return newer


def build_interactions(
    events: pa.Table,
    signals: SignalsConfig,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> Interactions:
    """Sums event weights per (user, item) and scales them; rows and columns in sorted id order.
    With `signals.history_half_life`, each user's older events weigh less (`history_decay`).

    Passing `user_ids`/`item_ids` fixes the index space (events outside it are left out), so
    that a holdout can be expressed in the training matrix's coordinates.
    """
    users, user_vocab = encode_sorted(events.column("user_id"), user_ids)
    items, item_vocab = encode_sorted(events.column("item_id"), item_ids)
    weights = event_weights(events, signals)
    if signals.history_half_life > 0:
        newer = newer_moments(users, events.column("timestamp_ms").to_numpy())
        weights *= history_decay(newer, signals.history_half_life).astype(np.float32)
    known = (users >= 0) & (items >= 0)
    shape = (user_vocab.size, item_vocab.size)
    confidence = sp.csr_matrix(
        (weights[known], (users[known], items[known])), shape=shape, dtype=np.float32
    )
    confidence.sum_duplicates()
    if signals.scaling == "log":
        confidence.data = np.log1p(confidence.data)
    elif signals.scaling == "bm25" and confidence.nnz:
        from implicit.nearest_neighbours import bm25_weight

        confidence = sp.csr_matrix(bm25_weight(confidence, K1=1.2, B=0.75), dtype=np.float32)
    confidence.eliminate_zeros()
    bought = known & (events.column("event").to_numpy(zero_copy_only=False) == "purchase")
    purchased = sp.csr_matrix(
        (np.ones(int(bought.sum()), np.float32), (users[bought], items[bought])), shape=shape
    )
    purchased.sum_duplicates()
    purchased.data[:] = 1.0
    trend = event_weights(events, signals, signals.trending_half_life_days)
    recent = sp.csr_matrix(
        (trend[known], (users[known], items[known])), shape=shape, dtype=np.float32
    )
    recent.sum_duplicates()
    return Interactions(user_vocab, item_vocab, confidence, purchased, recent)
