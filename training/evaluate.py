"""Offline evaluation: train on the past, score the future. Never a random split of time.

A holdout is the newest `share` of events (a global cut date). A log without usable timestamps
(all events at one instant, as in pair-only benchmarks) instead holds out that share of each
user's events, chosen with the seed. Metrics are computed three ways: over all items ("all",
where buying again counts, which matters in retail), over items the user had not bought before
("new"), and over items the user had not touched at all ("unseen").

Which of "all" and "unseen" judges a model depends on the log: where users come back to items
they already know (re-buying groceries, re-visiting a brand), recommending them is useful and
"all" is right; where they almost never do (a film is rated once), a model that repeats a
user's history wastes its slots, so history is filtered out in serving and "unseen" is right.
Between the two: users come back to what they viewed but never buy the same item twice
(durable goods): what they bought is filtered out in serving and "new" is right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import Config, SignalsConfig
from recsvc.ids import sorted_positions
from recsvc.models import Recommender
from recsvc.models.base import mask_rows, top_k
from recsvc.published import PublishedModel
from recsvc.training.interactions import Interactions, build_interactions

Scorer = Callable[[np.ndarray], np.ndarray]
K = 10
# What selects models, blends, tuned parameters and the gate's verdict.
SELECTION_METRIC = f"ndcg@{K}"
SELECTION_SE = f"ndcg_se@{K}"
# Below this share of holdout pairs that repeat a training pair, repeats are not worth a slot.
MIN_REPEAT_SHARE = 0.05
# Held-out purchases needed to judge whether purchases repeat (fewer say too little).
MIN_PURCHASES_JUDGED = 100
# Held-out purchases needed to judge models on purchases alone (see on_purchases). With fewer,
# the noise of judging on a few hundred users' purchases costs more than the other events'
# being the wrong target: the sample shop's 1,600 held-out purchases chose a tuned model whose
# neighbour lists run out, where its 10,000 held-out events did not.
MIN_PURCHASES_TARGET = 5000


@dataclass
class Holdout:
    train_events: pa.Table
    train: Interactions
    test: sp.csr_matrix  # 1 where a train user interacted with a train item in the holdout
    method: str  # "temporal" or "per_user"
    cut_ms: int | None
    test_events: pa.Table | None = None  # the held-out events themselves (session choice)
    test_purchased: sp.csr_matrix | None = None  # 1 where the holdout has a purchase of the pair
    target: str = "events"  # what `test` holds: every held-out event's pair, or "purchases"

    def describe(self) -> dict[str, object]:
        return {
            "method": self.method,
            "target": self.target,
            "cut_ms": self.cut_ms,
            "train_events": self.train_events.num_rows,
            "test_users": int(np.count_nonzero(np.diff(self.test.indptr))),
            "test_pairs": int(self.test.nnz),
            "repeat_share": round(self.repeat_share, 4),
            "purchase_repeat_share": None
            if self.purchase_repeat_share is None
            else round(self.purchase_repeat_share, 4),
            "variant": self.variant,
        }

    @property
    def repeat_share(self) -> float:
        """Share of holdout user-item pairs the user already had in the training part."""
        if self.test.nnz == 0:
            return 0.0
        return float(self.test.multiply(self.train.confidence > 0).nnz / self.test.nnz)

    @property
    def purchase_repeat_share(self) -> float | None:
        """Share of holdout purchases of an item the user had bought in the training part;
        None where the holdout has too few purchases to tell."""
        bought = self.test_purchased
        if bought is None or bought.nnz < MIN_PURCHASES_JUDGED:
            return None
        return float(bought.multiply(self.train.purchased).nnz / bought.nnz)

    @property
    def judged(self) -> sp.csr_matrix:
        """The holdout pairs the log's metric variant judges: all of them, or those the user
        had not touched ("unseen") or not bought ("new") in the training part."""
        if self.variant == "unseen":
            return without_known(self.test, self.train.confidence)
        if self.variant == "new":
            return without_known(self.test, self.train.purchased)
        return self.test

    @property
    def variant(self) -> str:
        """The metric variant that judges models on this log (see the module notes)."""
        if self.repeat_share < MIN_REPEAT_SHARE:
            return "unseen"
        bought_again = self.purchase_repeat_share
        return "new" if bought_again is not None and bought_again < MIN_REPEAT_SHARE else "all"


def holdout_split(
    events: pa.Table,
    signals: SignalsConfig,
    share: float,
    seed: int,
    user_last_n: int = 0,
    min_users: int = 0,
) -> Holdout | None:
    """The holdout for `events`, or None when there is too little data for an honest one.

    By default the newest `share` of events (one cut date for everyone). Where that leaves
    fewer than `min_users` users to judge (users who come in bursts and leave, as in film
    ratings), each user's newest `share` of events instead, if that judges more users. With
    `user_last_n`, each user's last N events. A user's only event always stays in training.
    """
    ts = events.column("timestamp_ms").to_numpy()
    if ts.size < 2 or not 0 < share < 1:
        return None
    if np.unique(ts).size == 1:
        before = np.random.default_rng(seed).random(ts.size) >= share
        return holdout_from_mask(events, signals, before, "per_user", None)
    if user_last_n > 0:
        return holdout_from_mask(
            events, signals, ~_last_events(events, n=user_last_n), "user_last", None
        )
    cut = int(np.quantile(ts, 1.0 - share))
    before = ts < cut
    if before.all() or not before.any():
        cut = int(ts.max())
        before = ts < cut
    holdout = holdout_from_mask(events, signals, before, "temporal", cut)
    judged = 0 if holdout is None else holdout.describe()["test_users"]
    if judged < min_users:
        per_user = holdout_from_mask(
            events, signals, ~_last_events(events, share=share), "user_last_share", None
        )
        if per_user is not None and per_user.describe()["test_users"] > judged:
            return per_user
    return holdout


def validation_holdout(events: pa.Table, config: Config) -> Holdout | None:
    """The holdout the training job carves with `config`'s [training] settings, judged on
    its purchases where it holds enough of them (`on_purchases`)."""
    t = config.training
    holdout = holdout_split(
        events,
        config.signals,
        t.validation_share,
        t.seed,
        t.holdout_user_last_n,
        t.min_holdout_users,
    )
    return None if holdout is None else on_purchases(holdout)


def on_purchases(holdout: Holdout) -> Holdout:
    """`holdout` judged on its purchases alone, what a shop sells, where it holds at least
    MIN_PURCHASES_TARGET of them and they are under half its pairs; else as it is. Views say
    what caught an eye, and where they are most of the log they would choose the model that
    predicts browsing; where purchases are most of it already, all events judge much as they
    would, on more evidence."""
    bought = holdout.test_purchased
    if bought is None or bought.nnz < MIN_PURCHASES_TARGET or 2 * bought.nnz >= holdout.test.nnz:
        return holdout
    return dataclasses.replace(holdout, test=sp.csr_matrix(bought), target="purchases")


def holdout_from_mask(
    events: pa.Table,
    signals: SignalsConfig,
    before: np.ndarray,
    method: str,
    cut_ms: int | None,
) -> Holdout | None:
    """Trains on the events where `before` holds, tests on the others (in the training
    part's index space, pairs only); None when either side is empty."""
    train_events = events.filter(pa.array(before))
    test_events = events.filter(pa.array(~before))
    if train_events.num_rows == 0 or test_events.num_rows == 0:
        return None
    train = build_interactions(train_events, signals)
    future = build_interactions(test_events, signals, train.user_ids, train.item_ids)
    test = future.confidence.copy()
    test.data[:] = 1.0
    test.eliminate_zeros()
    if test.nnz == 0:
        return None
    return Holdout(train_events, train, test, method, cut_ms, test_events, future.purchased)


def _last_events(events: pa.Table, n: int = 0, share: float = 0.0) -> np.ndarray:
    """Mask of each user's last `n` events (or newest `share` of them, rounded up) by time,
    keeping at least one event per user in training."""
    users = pc.dictionary_encode(events.column("user_id")).combine_chunks().indices.to_numpy()
    ts = events.column("timestamp_ms").to_numpy()
    order = np.lexsort((np.arange(ts.size), ts, users))
    sorted_users = users[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_users)) + 1, sorted_users.size]
    starts = np.r_[0, ends[:-1]]
    sizes = ends - starts
    wanted = np.full(sizes.size, n) if n else np.ceil(share * sizes).astype(np.int64)
    from_end = np.repeat(ends, sizes) - np.arange(sorted_users.size)  # 1 for a user's last
    keep_one = np.repeat(sizes, sizes) > from_end
    last = np.zeros(ts.size, dtype=bool)
    last[order] = (from_end <= np.repeat(wanted, sizes)) & keep_one
    return last


def model_scorer(model: Recommender) -> Scorer:
    return model.score


def published_scorer(
    published: PublishedModel, user_ids: np.ndarray, item_ids: np.ndarray
) -> Scorer:
    """Scores in another id space: a published model judged on a new run's holdout."""
    return mapped_scorer(
        published.model, published.fallback, published.user_ids, published.item_ids,
        user_ids, item_ids,
    )  # fmt: skip


def mapped_scorer(
    model: Recommender,
    fallback: Recommender,
    model_user_ids: np.ndarray,
    model_item_ids: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> Scorer:
    """A model fitted in its own id space (`model_user_ids`, `model_item_ids`, sorted) scoring
    in another one: users it lacks get `fallback`'s scores, items it lacks are never ranked."""
    user_pos = sorted_positions(model_user_ids, user_ids)
    item_pos = sorted_positions(model_item_ids, item_ids)
    known_items = item_pos >= 0

    def score(users: np.ndarray) -> np.ndarray:
        out = np.full((users.size, item_ids.size), -np.inf, dtype=np.float32)
        mapped = user_pos[users]
        known = mapped >= 0
        if known.any():
            scores = model.score(mapped[known])
            out[np.ix_(known, known_items)] = scores[:, item_pos[known_items]]
        if (~known).any():
            scores = fallback.score(np.zeros(1, np.int64))
            out[np.ix_(~known, known_items)] = scores[:, item_pos[known_items]]
        return out

    return score


def ranking_metrics(
    score: Scorer, holdout: Holdout, k: int = K, batch: int = 512
) -> dict[str, dict[str, float]]:
    """{"all", "new", "unseen"}: precision, recall, NDCG, MAP, hit rate, coverage, popularity.

    Each batch of users is scored once; the three variants differ only in what is masked.
    """
    train = holdout.train
    seen_by = np.diff(sp.csc_matrix(train.confidence).indptr)
    popularity = seen_by / max(train.shape[0], 1)  # share of users who touched each item
    variants = {
        "all": _Variant(holdout.test, None, popularity, k),
        "new": _Variant(holdout.test, train.purchased, popularity, k),
        "unseen": _Variant(holdout.test, train.confidence, popularity, k),
    }
    users = np.flatnonzero(np.diff(holdout.test.indptr))
    for start in range(0, users.size, batch):
        chunk = users[start : start + batch]
        scores = np.asarray(score(chunk), dtype=np.float32)
        for variant in variants.values():
            variant.add(chunk, scores)
    return {name: variant.result() for name, variant in variants.items()}


def without_known(test: sp.csr_matrix, known: sp.csr_matrix) -> sp.csr_matrix:
    """`test` less the pairs `known` holds."""
    left = (test - test.multiply(known > 0)).tocsr()
    left.eliminate_zeros()
    return left


def list_ndcg(ranked: np.ndarray, relevant: np.ndarray, k: int = K) -> float:
    """NDCG@k of one served list (item indices, best first) against the relevant items: the
    same definition as ranking_metrics', for lists that come from the ranking policy."""
    if not relevant.size:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits = np.isin(ranked[:k], relevant)
    return float((hits * discounts[: hits.size]).sum() / discounts[: min(relevant.size, k)].sum())


class _Variant:
    """Running sums of the metrics for one way of masking the user's history."""

    NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")

    def __init__(
        self,
        test: sp.csr_matrix,
        exclude: sp.csr_matrix | None,
        popularity: np.ndarray,
        k: int,
    ) -> None:
        if exclude is not None:
            test = without_known(test, exclude)
        self.test, self.exclude, self.popularity, self.k = test, exclude, popularity, k
        self.has_truth = np.diff(test.indptr) > 0
        self.discounts = 1.0 / np.log2(np.arange(2, k + 2))
        self.sums = np.zeros(len(self.NAMES))
        self.ndcg_squares = 0.0  # for the standard error of the mean NDCG
        self.users = 0
        self.recommended = np.zeros(test.shape[1], dtype=bool)
        self.popularity_sum, self.popularity_n = 0.0, 0

    def add(self, chunk: np.ndarray, scores: np.ndarray) -> None:
        """Adds the users of `chunk` (rows of `scores`) that have something to find."""
        keep = self.has_truth[chunk]
        if not keep.any():
            return
        chunk, scores = chunk[keep], scores[keep]  # a copy: masking must not leak across variants
        if self.exclude is not None:
            mask_rows(scores, self.exclude[chunk])
        k = self.k
        ids, _ = top_k(scores, k)
        valid = ids >= 0
        truth = self.test[chunk]
        hits = np.zeros(ids.shape, dtype=bool)
        for row in range(chunk.size):
            relevant = truth.indices[truth.indptr[row] : truth.indptr[row + 1]]
            hits[row] = np.isin(ids[row], relevant) & valid[row]
        n_rel = np.diff(truth.indptr)
        width = hits.shape[1]
        ideal = np.array([self.discounts[: min(n, k)].sum() for n in n_rel])
        precision_at = np.cumsum(hits, axis=1) / np.arange(1, width + 1)
        ndcg = (hits * self.discounts[:width]).sum(1) / ideal
        self.ndcg_squares += float((ndcg**2).sum())
        self.sums += [
            (hits.sum(1) / k).sum(),
            (hits.sum(1) / n_rel).sum(),
            ndcg.sum(),
            ((precision_at * hits).sum(1) / np.minimum(n_rel, k)).sum(),
            hits.any(1).sum(),
        ]
        self.users += chunk.size
        self.recommended[ids[valid]] = True
        self.popularity_sum += float(self.popularity[ids[valid]].sum())
        self.popularity_n += int(valid.sum())

    def result(self) -> dict[str, float]:
        if self.users == 0:
            return {}
        k = self.k
        result = {
            f"{name}@{k}": round(float(v / self.users), 6)
            for name, v in zip(self.NAMES, self.sums, strict=True)
        }
        mean_ndcg = self.sums[self.NAMES.index("ndcg")] / self.users
        variance = max(self.ndcg_squares / self.users - mean_ndcg**2, 0.0)
        result[f"ndcg_se@{k}"] = round(float(np.sqrt(variance / self.users)), 6)
        result[f"coverage@{k}"] = round(float(self.recommended.mean()), 6)
        result[f"popularity@{k}"] = round(self.popularity_sum / max(self.popularity_n, 1), 6)
        result["users"] = int(self.users)
        return result
