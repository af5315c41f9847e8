"""The ranking policy: the one place that decides what a list holds, for Recommend, batch
exports, audiences and the evaluation of what is served alike.

A list is built in three steps: the candidates and what is banned from them (exclusions,
purchases, seen items), the strategy (an experiment's variant first, then the lifecycle stage's,
which training chooses on data where the config says "auto": repurchase, the model blended with
repurchase, popular, trending, or the model: personal, session, hybrid or popular fallback), then
the selection (filters, boosts and the per-category cap, top k), exactly or through the
approximate index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from recsvc.config import ServingConfig, VariantConfig, history_decay
from recsvc.errors import NotFound
from recsvc.ids import sorted_positions
from recsvc.models.base import top_k
from recsvc.published import PublishedModel
from recsvc.serving.model import ServingModel
from recsvc.serving.values import (
    REASON_HYBRID,
    REASON_NEW,
    REASON_PERSONAL,
    REASON_POPULAR,
    REASON_REPURCHASE,
    REASON_SESSION,
    REASON_TRENDING,
    REASON_UNKNOWN,
    Filters,
    Recommendations,
    ScoredItem,
)

# When a per-category cap is on, the cap is filled from this many times k candidates.
CAP_CANDIDATES = 20
# Candidates fetched from the approximate index before filters and rules are applied: at
# least ANN_CANDIDATES, and ANN_PER_RESULT per item wanted or excluded; the search widens if
# filters leave fewer than k, up to ANN_MAX_CANDIDATES.
ANN_CANDIDATES = 40
ANN_PER_RESULT = 4
ANN_MAX_CANDIDATES = 20_000
# Boosts are in units of the spread of this many best scores (see top_spread).
BOOST_SPREAD_DEPTH = 40
# The session model follows an anonymous visitor's newest SESSION_DEPTH distinct items, each
# weighted SESSION_DECAY times the one after it (the newest weighs 1).
SESSION_DEPTH = 10
SESSION_DECAY = 0.5
# The "blend" strategy lifts what the user bought before by up to this many spreads of the
# model's best scores, in proportion to how strongly they bought it.
REPURCHASE_LIFT = 2.0

Picked = tuple[np.ndarray, np.ndarray]  # item indices, scores


class Ask(NamedTuple):
    """One list to build: who asks (`user` is their row in the model, None if it lacks them)
    and what they asked for."""

    serving: ServingModel
    user_id: str
    user: int | None
    k: int
    filters: Filters
    banned: list[np.ndarray]
    fresh: list[tuple[str, str, int]]
    context: np.ndarray
    attributes: dict[str, str]


class Pick(NamedTuple):
    """A chosen list and why: one reason for all, or one per item where they differ."""

    picked: Picked
    reason: str
    fallback: bool
    reasons: np.ndarray | dict[int, str] | None = None


class RankingPolicy:
    """What the serving config's rules, lifecycle strategies and experiments make of a model's
    scores. Holds no state but the config: one instance serves every request."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config

    def compute(
        self,
        serving: ServingModel,
        variant: VariantConfig | None,
        user_id: str,
        k: int,
        filters: Filters,
        exclude_purchased: bool,
        context_item_ids: tuple[str, ...] | list[str],
        fresh: list[tuple[str, str, int]],
        stage: str,
        user_attributes: dict[str, str],
    ) -> tuple[tuple[ScoredItem, ...], bool, str]:
        """(items, fallback, strategy) for a user in lifecycle `stage`, under `variant`."""
        model = serving.published
        user = model.user_index(user_id)
        ask = Ask(
            serving, user_id, user, k, filters,
            self._banned(model, user, filters, exclude_purchased),
            fresh, model.item_indices(list(context_item_ids)), user_attributes,
        )  # fmt: skip
        strategy = self.strategy(variant, stage, serving)
        pick = None
        if strategy in ("repurchase", "blend"):
            pick = self._repurchase(ask) if strategy == "repurchase" else self._blend(ask)
            if pick is None:
                strategy = "personal"  # nothing bought before: nothing to buy again
        if strategy in ("popular", "trending"):
            pick = self._non_personal(ask, trending=strategy == "trending")
        if pick is None:
            pick = self._from_model(ask)
        if strategy == "personal":
            strategy = pick.reason if pick.fallback or pick.reason == REASON_SESSION else strategy
        return _scored_items(model, pick), pick.fallback, strategy

    def strategy(self, variant: VariantConfig | None, stage: str, serving: ServingModel) -> str:
        """An experiment's variant decides first; then the strategy configured for the user's
        stage, where "auto" is the one training chose for it on data."""
        if variant is not None and variant.strategy != "model":
            return variant.strategy
        configured = self.config.lifecycle.strategy(stage)
        if configured == "auto":
            return serving.stage_strategies.get(stage, "personal")
        return configured

    def _banned(
        self, model: PublishedModel, user: int | None, filters: Filters, exclude_purchased: bool
    ) -> list[np.ndarray]:
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        if user is not None and (exclude_purchased or model.exclude_purchased):
            banned.append(model.purchased_by(user))
        if user is not None and model.exclude_seen:
            banned.append(model.seen_by(user))
        return banned

    def _repurchase(self, ask: Ask) -> Pick | None:
        bought = self._bought_before(ask.serving, ask.user, ask.fresh)
        if not bought[0].size:
            return None
        picked, reasons = self._pick_repurchase(ask.serving, bought, ask.k, ask.filters, ask.banned)
        return Pick(picked, REASON_PERSONAL, False, reasons)

    def _blend(self, ask: Ask) -> Pick | None:
        """The model's scores with what the user bought before lifted by how strongly they
        bought it (see REPURCHASE_LIFT); None for a user who bought nothing. Through the
        approximate index where the model has one: its candidates plus the bought items."""
        serving = ask.serving
        bought = self._bought_before(serving, ask.user, ask.fresh)
        if not bought[0].size:
            return None
        history = None
        if ask.user is None or ask.fresh or ask.context.size:
            history = self.history_row(serving, ask.user, ask.fresh, ask.context)
        picked = self._blend_approximate(ask, bought, history)
        if picked is None:
            model = serving.published.model
            scores = np.array(
                model.score(np.array([ask.user]))[0]
                if history is None
                else model.score_history(history)[0],
                dtype=np.float32,
            )
            _lift(scores, *bought)
            picked = self._select(serving, scores, None, ask.k, ask.filters, ask.banned)
        return Pick(picked, REASON_PERSONAL, False, _reasons(picked, bought[0], REASON_PERSONAL))

    def _blend_approximate(
        self, ask: Ask, bought: tuple[np.ndarray, np.ndarray], history: sp.csr_matrix | None
    ) -> Picked | None:
        serving = ask.serving
        if serving.ann is None or ask.context.size:
            return None
        model = serving.published.model
        query = (
            np.asarray(model.user_factors[ask.user], dtype=np.float32)  # type: ignore[attr-defined]
            if history is None
            else serving.fold_in(history)
        )
        if query is None:
            return None
        items, strength = bought

        def pick(found: np.ndarray, _: np.ndarray) -> Picked:
            candidates = np.union1d(found, items)
            # Exact scores of the few candidates: the factors' inner products, as the model's.
            scores = model.item_factors[candidates] @ query  # type: ignore[attr-defined]
            scores = np.asarray(scores, dtype=np.float32)
            _lift(scores, np.searchsorted(candidates, items), strength)
            return self._select(serving, scores, candidates, ask.k, ask.filters, ask.banned)

        return self._search_widening(serving, query, ask.k, ask.banned, pick)

    def _non_personal(self, ask: Ask, trending: bool) -> Pick:
        model = ask.serving.published
        source = model.trending if trending else model.fallback
        picked = self._pick_popular(ask.serving, trending, ask.k, ask.filters, ask.banned)
        return Pick(picked, _fallback_reason(source), True)

    def _from_model(self, ask: Ask) -> Pick:
        """The model's list: from fresh events and context items, the user's own row, the
        hybrid model's for a user known by attributes, else the popular fallback."""
        if ask.fresh or ask.context.size:
            return self._from_history(ask)
        if ask.user is not None:
            return self._personal(ask)
        vector = self._attribute_vector(ask.serving, ask.user_id, ask.attributes)
        if vector is not None:
            scores = ask.serving.published.coldstart.item_scores(vector)  # type: ignore[union-attr]
            picked = self._select(ask.serving, scores, None, ask.k, ask.filters, ask.banned)
            return Pick(picked, REASON_HYBRID, True)
        return self._non_personal(ask, trending=False)

    def _from_history(self, ask: Ask) -> Pick:
        serving, model = ask.serving, ask.serving.published
        if ask.user is None and self.follows_session(serving):
            pick = self._from_session(ask)
            if pick is not None:
                return pick
        history = self.history_row(serving, ask.user, ask.fresh, ask.context)
        banned = [*ask.banned, history.indices] if model.exclude_seen else ask.banned
        query = serving.fold_in(history)
        if query is not None and (ask.user is not None or not ask.context.size):
            picked = self._pick_approximate(serving, query, ask.k, ask.filters, banned)
            if picked is not None:
                return Pick(picked, REASON_PERSONAL, False)
        scores, reasons = self._score_history(serving, history, ask.user, ask.context)
        picked = self._select(serving, scores, None, ask.k, ask.filters, banned)
        return Pick(picked, REASON_PERSONAL, False, reasons)

    def follows_session(self, serving: ServingModel) -> bool:
        """Whether an anonymous visitor's clicks are followed by the session model (where the
        config says "auto": where training found it beat folding the clicks into the model)."""
        graph = serving.published.sessions
        if graph is None or not graph.n_edges:
            return False
        mode = self.config.session_scoring
        return mode == "session" or (mode == "auto" and serving.session_model)

    def _session_seeds(
        self, serving: ServingModel, fresh: list[tuple[str, str, int]], context: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The visitor's newest distinct items (fresh events, then the context items: what
        they look at now) and their recency weights."""
        model = serving.published
        clicked = model.item_indices([e[0] for e in fresh]) if fresh else context[:0]
        newest_first = np.concatenate([context[::-1], clicked[::-1]])
        _, first = np.unique(newest_first, return_index=True)
        seeds = newest_first[np.sort(first)][:SESSION_DEPTH]
        return seeds, SESSION_DECAY ** np.arange(seeds.size, dtype=np.float32)

    def _from_session(self, ask: Ask) -> Pick | None:
        """What visitors clicked after the items of this visit (the session model), filled
        with popular items where it knows too little; None without a known item."""
        serving, model = ask.serving, ask.serving.published
        seeds, weights = self._session_seeds(serving, ask.fresh, ask.context)
        if not seeds.size:
            return None
        spread = model.sessions.spread(seeds, weights)  # type: ignore[union-attr]
        banned = ask.banned
        if model.exclude_seen:  # every item of the visit was seen, not only the newest ten
            banned = [*banned, ask.context, model.item_indices([e[0] for e in ask.fresh])]
        picked = self._select(serving, spread.scores, spread.items, ask.k, ask.filters, banned)
        source = dict(zip(spread.items.tolist(), spread.sources.tolist(), strict=True))
        reasons = {
            int(i): f"viewed_after:{model.item_ids[source[int(i)]]}" for i in picked[0].tolist()
        }
        if picked[0].size < ask.k:
            more = self._pick_popular(
                serving, False, ask.k - picked[0].size, ask.filters, [*banned, picked[0]]
            )
            reasons.update({int(i): REASON_POPULAR for i in more[0].tolist()})
            picked = (
                np.concatenate([picked[0], more[0]]),
                np.concatenate([picked[1], _popular_below(serving, picked[1], more[0])]),
            )
        return Pick(picked, REASON_SESSION, False, reasons)

    def rank(
        self,
        serving: ServingModel,
        variant: VariantConfig | None,
        user_id: str,
        candidates: list[str],
        filters: Filters,
        exclude_purchased: bool,
        context_item_ids: tuple[str, ...] | list[str],
        fresh: list[tuple[str, str, int]],
        stage: str,
        user_attributes: dict[str, str],
    ) -> tuple[tuple[ScoredItem, ...], tuple[str, ...], tuple[str, ...], str]:
        """RankItems: (the known candidates best first, then the unknown ones in their given
        order; the unknown ids; the ids filters and exclusions leave out; the strategy). The
        scores are those Recommend would rank by for this user, with the same rules."""
        model = serving.published
        unique = list(dict.fromkeys(candidates))
        positions = sorted_positions(model.item_ids, np.array(unique, dtype=str))
        known = positions >= 0
        unknown = tuple(i for i, ok in zip(unique, known.tolist(), strict=True) if not ok)
        ids = positions[known]
        user = model.user_index(user_id)
        ask = Ask(
            serving, user_id, user, max(ids.size, 1), filters,
            self._banned(model, user, filters, exclude_purchased),
            fresh, model.item_indices(list(context_item_ids)), user_attributes,
        )  # fmt: skip
        strategy = self.strategy(variant, stage, serving)
        scores, reasons, strategy = self._candidate_scores(ask, strategy, ids)
        picked = self._select(serving, scores, ids, ids.size, filters, ask.banned)
        allowed = self._allowed(serving, filters, ids) & ~np.isin(ids, np.concatenate(ask.banned))
        # Over the per-category cap: after the list, best first, rather than dropped.
        capped = np.flatnonzero(allowed & ~np.isin(ids, picked[0]))
        capped = capped[np.argsort(-scores[capped], kind="stable")]
        order = np.concatenate([picked[0], ids[capped]])
        values = np.concatenate([picked[1], scores[capped]])
        per_item = (
            None
            if isinstance(reasons, str)
            else dict(zip(ids.tolist(), reasons.tolist(), strict=True))
        )
        pick = Pick((order, values), reasons if isinstance(reasons, str) else "", False, per_item)
        items = _scored_items(model, pick) + tuple(
            ScoredItem(i, 0.0, REASON_UNKNOWN) for i in unknown
        )
        left_out = tuple(model.item_ids[ids[~allowed]].tolist())
        return items, unknown, left_out, strategy

    def _candidate_scores(
        self, ask: Ask, strategy: str, ids: np.ndarray
    ) -> tuple[np.ndarray, str | np.ndarray, str]:
        """Scores of the items `ids` under `strategy`, as Recommend would rank them, with the
        reason (one, or one per item) and the strategy that served."""
        serving, model = ask.serving, ask.serving.published
        if strategy in ("repurchase", "blend"):
            bought = self._bought_before(serving, ask.user, ask.fresh)
            if not bought[0].size:
                strategy = "personal"
        if strategy in ("popular", "trending"):
            source = model.trending if strategy == "trending" else model.fallback
            return np.asarray(source.item_scores)[ids].astype(np.float32), strategy, strategy
        if strategy == "repurchase":
            items, strength = bought
            where = np.isin(ids, items)
            scores = np.empty(ids.size, dtype=np.float32)
            scores[where] = strength[_position_in(items, ids[where])]
            scores[~where] = _trending_below(serving, bought, ids[~where])
            reasons = np.where(where, REASON_REPURCHASE, REASON_TRENDING)
            return scores, reasons, "repurchase"
        reason, fallback = REASON_PERSONAL, False
        if ask.fresh or ask.context.size:
            session = self._session_scores(ask, ids) if strategy != "blend" else None
            if session is not None:
                return session[0], session[1], REASON_SESSION
            history = self.history_row(serving, ask.user, ask.fresh, ask.context)
            scores = model.model.score_history(history)[0]
        elif ask.user is not None:
            scores = model.model.score(np.array([ask.user]))[0]
        elif (vector := self._attribute_vector(serving, ask.user_id, ask.attributes)) is not None:
            scores = model.coldstart.item_scores(vector)  # type: ignore[union-attr]
            reason, fallback = REASON_HYBRID, True
        else:
            scores = np.asarray(model.fallback.item_scores)
            reason, fallback = _fallback_reason(model.fallback), True
        scores = np.array(scores, dtype=np.float32)
        if strategy == "blend":
            _lift(scores, *bought)
            where = np.isin(ids, bought[0])
            return scores[ids], np.where(where, REASON_REPURCHASE, REASON_PERSONAL), "blend"
        served = reason if fallback else strategy
        return scores[ids], reason, served

    def _session_scores(self, ask: Ask, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """RankItems' side of `_from_session`: the scores and reasons of items `ids` for an
        anonymous visit the session model follows (None where Recommend would not follow it
        either). Items the visit leads to score what the session model gives them and name
        the item they were viewed after; the rest come after them, most popular first, as
        Recommend fills its list."""
        serving, model = ask.serving, ask.serving.published
        if ask.user is not None or not self.follows_session(serving):
            return None
        seeds, weights = self._session_seeds(serving, ask.fresh, ask.context)
        if not seeds.size:
            return None
        spread = model.sessions.spread(seeds, weights)  # type: ignore[union-attr]
        led = np.isin(ids, spread.items)
        at = _position_in(spread.items, ids[led])
        scores = _popular_below(serving, spread.scores, ids)
        scores[led] = spread.scores[at]
        reasons = np.full(ids.size, REASON_POPULAR, dtype=object)
        reasons[led] = [f"viewed_after:{model.item_ids[s]}" for s in spread.sources[at].tolist()]
        return scores, reasons

    def bought_together(
        self,
        serving: ServingModel,
        item_ids: list[str],
        k: int,
        filters: Filters,
        user_id: str,
        exclude_purchased: bool,
    ) -> Recommendations:
        """Complements of the items (one, or a cart) from what is bought together, filled with
        items similar to them where basket history knows too few; `strategy` says which
        ("baskets", "similar_items", both joined by "+", or "popular" for a cart of items the
        model does not know)."""
        model = serving.published
        seeds = np.unique(model.item_indices(list(item_ids)))
        user = model.user_index(user_id) if user_id else None
        banned = [*self._banned(model, user, filters, exclude_purchased), seeds]
        if not seeds.size:
            picked = self._pick_popular(serving, False, k, filters, banned)
            pick = Pick(picked, _fallback_reason(model.fallback), True)
            items = _scored_items(model, pick)
            return Recommendations(items, model.version, True, strategy="popular")
        sources, reasons = [], {}
        chosen: Picked = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        graph = model.together
        if graph is not None and graph.n_edges:
            spread = graph.spread(seeds, np.ones(seeds.size, dtype=np.float32))
            chosen = self._select(serving, spread.scores, spread.items, k, filters, banned)
            source = dict(zip(spread.items.tolist(), spread.sources.tolist(), strict=True))
            reasons = {i: f"bought_with:{model.item_ids[source[i]]}" for i in chosen[0].tolist()}
            if chosen[0].size:
                sources.append("baskets")
        if chosen[0].size < k:
            wanted = min(serving.n_items, (k + sum(b.size for b in banned)) * CAP_CANDIDATES)
            ids, scores = model.model.similar_items(seeds, wanted)
            from_seed = np.repeat(seeds, ids.shape[1])
            ids, scores, from_seed = ids.ravel(), scores.ravel(), from_seed
            valid = ids >= 0
            ids, scores, from_seed = ids[valid], scores[valid], from_seed[valid]
            candidates, where = np.unique(ids, return_inverse=True)
            summed = np.bincount(where, weights=scores, minlength=candidates.size)
            strongest = np.lexsort((-scores, where))
            first = np.r_[True, where[strongest][1:] != where[strongest][:-1]]
            like = from_seed[strongest][first]
            more = self._select(
                serving, summed.astype(np.float32), candidates, k - chosen[0].size, filters,
                [*banned, chosen[0]], boost=False,
            )  # fmt: skip
            source = dict(zip(candidates.tolist(), like.tolist(), strict=True))
            reasons.update({i: f"similar_to:{model.item_ids[source[i]]}" for i in more[0].tolist()})
            if more[0].size:
                sources.append("similar_items")
            chosen = (np.concatenate([chosen[0], more[0]]), np.concatenate([chosen[1], more[1]]))
        pick = Pick(chosen, REASON_PERSONAL, False, reasons)
        return Recommendations(
            _scored_items(model, pick), model.version, strategy="+".join(sources) or "baskets"
        )

    def buy_again(
        self,
        serving: ServingModel,
        user_id: str,
        fresh: list[tuple[str, str, int]],
        k: int,
        filters: Filters,
    ) -> tuple[ScoredItem, ...]:
        """What the user bought before (training and fresh purchases), most bought first."""
        model = serving.published
        items, strength = self._bought_before(serving, model.user_index(user_id), fresh)
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        picked = self._select(serving, strength, items, k, filters, banned, boost=False)
        return _scored_items(model, Pick(picked, REASON_REPURCHASE, False))

    def newest(self, serving: ServingModel, k: int, filters: Filters) -> tuple[ScoredItem, ...]:
        """The items first seen most recently (new arrivals); the score is the first-seen day
        count back from the newest (0 = the newest item's day)."""
        model = serving.published
        first_seen = np.asarray(model.items.first_seen_ms, dtype=np.float64)
        newest = float(first_seen[serving.newest_order[0]]) if serving.n_items else 0.0
        days = ((first_seen - newest) / 86_400_000).astype(np.float32)
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        order = serving.newest_order
        picked = self._select_widening(
            serving, lambda take: (order[:take], days[order[:take]]),
            max(k * CAP_CANDIDATES, 256), k, filters, banned,
        )  # fmt: skip
        return _scored_items(model, Pick(picked, REASON_NEW, False))

    def _personal(self, ask: Ask) -> Pick:
        serving, model = ask.serving, ask.serving.published
        if serving.ann is not None:
            query = np.asarray(model.model.user_factors[ask.user], dtype=np.float32)
            picked = self._pick_approximate(serving, query, ask.k, ask.filters, ask.banned)
            if picked is not None:
                return Pick(picked, REASON_PERSONAL, False)
        scores = model.model.score(np.array([ask.user]))[0]
        return Pick(self._select(serving, scores, None, ask.k, ask.filters, ask.banned),
                    REASON_PERSONAL, False)  # fmt: skip

    def similar(
        self, serving: ServingModel, item_id: str, k: int, filters: Filters
    ) -> Recommendations:
        """Items like `item_id` (a catalogue item with no events yet, from its attributes)."""
        model = serving.published
        item = model.item_index(item_id)
        if item is None:
            return self._similar_to_new_item(serving, item_id, k, filters)
        wanted = min(serving.n_items, (k + len(filters.exclude_item_ids)) * CAP_CANDIDATES)
        ids, scores = model.model.similar_items(np.array([item]), wanted)
        valid = ids[0] >= 0
        banned = [model.item_indices(list(filters.exclude_item_ids)), np.array([item])]
        picked, picked_scores = self._select(
            serving, scores[0][valid], ids[0][valid], k, filters, banned, boost=False
        )
        items = [
            ScoredItem(str(model.item_ids[i]), float(s), f"similar_to:{item_id}")
            for i, s in zip(picked, picked_scores, strict=True)
        ]
        return Recommendations(items, model.version)

    def popular(
        self,
        serving: ServingModel,
        k: int,
        categories: tuple[str, ...] | list[str],
        trending: bool,
        filters: Filters,
    ) -> Recommendations:
        """The most popular (or, with `trending`, the hottest) items, optionally only those
        in `categories`."""
        model = serving.published
        source = model.trending if trending else model.fallback
        # `categories` and the filters' include list both restrict: keep what both allow.
        wanted = tuple(categories) or filters.include_categories
        if categories and filters.include_categories:
            wanted = tuple(c for c in categories if c in set(filters.include_categories))
            if not wanted:
                return Recommendations([], model.version)
        within = dataclasses.replace(filters, include_categories=wanted, exclude_item_ids=())
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        picked, picked_scores = self._pick_popular(serving, trending, k, within, banned)
        reason = _fallback_reason(source)
        items = [
            ScoredItem(str(model.item_ids[i]), float(s), reason)
            for i, s in zip(picked, picked_scores, strict=True)
        ]
        return Recommendations(items, model.version)

    def _bought_before(
        self, serving: ServingModel, user: int | None, fresh: list[tuple[str, str, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items the user bought (training and fresh purchases) and how strongly: the training
        confidence, plus one purchase weight per fresh purchase."""
        model = serving.published
        strength: dict[int, float] = {}
        if user is not None:
            bought = model.purchased_by(user)
            items, confidences = model.history_of(user)
            known = dict(zip(items.tolist(), confidences.tolist(), strict=True))
            strength = {int(i): known.get(int(i), 1.0) for i in bought.tolist()}
        purchases = [e[0] for e in fresh if e[1] == "purchase"]
        if purchases:
            weight = serving.signal_weights["purchase"]
            for position in sorted_positions(model.item_ids, np.array(purchases, dtype=str)):
                if position >= 0:
                    strength[int(position)] = strength.get(int(position), 0.0) + weight
        ids = np.fromiter(strength, dtype=np.int64, count=len(strength))
        return ids, np.fromiter(strength.values(), dtype=np.float32, count=len(strength))

    def _pick_repurchase(
        self,
        serving: ServingModel,
        bought: tuple[np.ndarray, np.ndarray],
        k: int,
        filters: Filters,
        banned: list[np.ndarray],
    ) -> tuple[tuple[np.ndarray, np.ndarray], dict[int, str]]:
        """What the user bought before, strongest first, then trending items, chosen together
        so that filters and the per-category cap apply to the whole list; with reasons."""
        items, strength = bought

        def candidates(take: int) -> tuple[np.ndarray, np.ndarray]:
            trending = serving.trending_order[:take]
            trending = trending[~np.isin(trending, items)]
            below = _trending_below(serving, bought, trending)
            return np.concatenate([items, trending]), np.concatenate([strength, below])

        start = max(k * CAP_CANDIDATES, 256) + items.size
        picked = self._select_widening(serving, candidates, start, k, filters, banned)
        return picked, _reasons(picked, items, REASON_TRENDING)

    def _attribute_vector(
        self, serving: ServingModel, user_id: str, attributes: dict[str, str]
    ) -> np.ndarray | None:
        """The hybrid model's vector for a user the model lacks, from the request's attributes
        or the users file's; None without a hybrid model or a known attribute."""
        model = serving.published
        if model.coldstart is None:
            return None
        if not attributes:
            row = model.profiles.index(user_id)
            if row is None or not model.profiles.attribute_names:
                return None
            values = model.profiles.attributes[row].tolist()
            attributes = dict(zip(model.profiles.attribute_names, values, strict=True))
        return model.coldstart.user_vector(attributes)

    def _similar_to_new_item(
        self, serving: ServingModel, item_id: str, k: int, filters: Filters
    ) -> Recommendations:
        """Items like a catalogue item that has no events yet, from its attributes."""
        model = serving.published
        coldstart = model.coldstart
        new = coldstart.new_item_index(item_id) if coldstart is not None else None
        if coldstart is None or new is None:
            raise NotFound(f"item {item_id!r} is not in model {model.version}")
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        scores = coldstart.similar_to_new_item(new)
        picked, picked_scores = self._select(serving, scores, None, k, filters, banned, boost=False)
        items = [
            ScoredItem(str(model.item_ids[i]), float(s), f"similar_attributes:{item_id}")
            for i, s in zip(picked, picked_scores, strict=True)
        ]
        return Recommendations(items, model.version, strategy=REASON_HYBRID)

    def history_row(
        self, serving: ServingModel, user: int | None, fresh: list, context: np.ndarray
    ) -> sp.csr_matrix:
        """The user's training row with fresh events and context items added, as the
        training matrix would have held them: context items are the newest moment, and with
        signals.history_half_life every older moment weighs less (`history_decay`)."""
        model = serving.published
        half_life = serving.history_half_life
        items: list[np.ndarray] = [context]
        raw: list[np.ndarray] = [
            np.full(context.size, serving.signal_weights["view"], dtype=np.float64)
        ]
        now = 1 if context.size else 0  # the moments newer than every fresh event
        fresh_ts = np.array([e[2] for e in fresh], dtype=np.int64)
        moments = np.unique(fresh_ts)
        if user is not None:
            known, confidences = model.history_of(user)
            items.append(np.asarray(known, dtype=np.int64))
            unscaled = _unscale(np.asarray(confidences, dtype=np.float64), serving.scaling)
            raw.append(unscaled * history_decay(np.array(now + moments.size), half_life))
        if fresh:
            # One vectorised lookup; items the model does not know (position -1) are skipped.
            positions = sorted_positions(model.item_ids, np.array([e[0] for e in fresh], dtype=str))
            weights = np.array([serving.signal_weights[e[1]] for e in fresh], dtype=np.float64)
            newer = now + moments.size - 1 - np.searchsorted(moments, fresh_ts)
            weights *= history_decay(newer, half_life)
            items.append(positions[positions >= 0])
            raw.append(weights[positions >= 0])
        # An item met more than once (history, fresh events, context) adds up, then is scaled.
        columns, where = np.unique(np.concatenate(items), return_inverse=True)
        summed = np.bincount(where, weights=np.concatenate(raw), minlength=columns.size)
        values = np.asarray(_scale(summed, serving.scaling), dtype=np.float32)
        return sp.csr_matrix(
            (values, columns, [0, columns.size]), shape=(1, serving.n_items), dtype=np.float32
        )

    def _score_history(
        self,
        serving: ServingModel,
        history: sp.csr_matrix,
        user: int | None,
        context: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores, and for an anonymous session the context item each item is most like."""
        model = serving.published
        scores = model.model.score_history(history)[0]
        if user is not None or not context.size or context.size > 20:
            return scores, None
        weight = np.float32(_scale(serving.signal_weights["view"], serving.scaling))
        each = sp.csr_matrix(
            (np.full(context.size, weight), context, np.arange(context.size + 1)),
            shape=(context.size, serving.n_items),
        )
        contributions = model.model.score_history(each)
        strongest = np.argmax(contributions, axis=0)
        ids = model.item_ids[context[strongest]]
        return scores, np.char.add("similar_to:", ids.astype(str))

    def _allowed(
        self, serving: ServingModel, filters: Filters, ids: np.ndarray | None
    ) -> np.ndarray:
        """Which of the items `ids` (all items when None) pass the filters and rules."""
        model = serving.published

        def at(values: np.ndarray) -> np.ndarray:
            return values if ids is None else values[ids]

        allowed = np.ones(serving.n_items if ids is None else ids.size, dtype=bool)
        if self.config.rules.drop_unavailable or filters.available_only:
            allowed &= ~at(serving.unavailable)
        if filters.include_categories:
            allowed &= np.isin(
                at(serving.category_codes), serving.codes(filters.include_categories)
            )
        if filters.exclude_categories:
            allowed &= ~np.isin(
                at(serving.category_codes), serving.codes(filters.exclude_categories)
            )
        if filters.min_price is not None:
            allowed &= at(model.items.price) >= filters.min_price
        if filters.max_price is not None:
            allowed &= at(model.items.price) <= filters.max_price
        return allowed

    def _select(
        self,
        serving: ServingModel,
        scores: np.ndarray,
        ids: np.ndarray | None,
        k: int,
        filters: Filters,
        banned: list[np.ndarray],
        boost: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k of the candidates `ids` (all items when None) with `scores`, after filters,
        the banned items, the rules' boosts and the per-category cap."""
        rules = self.config.rules
        allowed = self._allowed(serving, filters, ids)
        ban = np.concatenate(banned) if banned else np.empty(0, dtype=np.int64)
        if ban.size:
            if ids is None:
                allowed[ban] = False
            else:
                allowed &= ~np.isin(ids, ban)
        scores = np.where(allowed, scores, np.float32(-np.inf)).astype(np.float32, copy=False)
        if boost and (rules.boost_new or rules.boost_promoted):
            spread = top_spread(scores)
            new = serving.new if ids is None else serving.new[ids]
            promoted = serving.promoted if ids is None else serving.promoted[ids]
            bonus = rules.boost_new * new + rules.boost_promoted * promoted
            scores = scores + np.float32(spread) * bonus.astype(np.float32)
        cap = rules.max_per_category
        wanted = min(k * CAP_CANDIDATES, scores.size) if cap else k
        order, values = top_k(scores[None, :], wanted)
        order, values = order[0], values[0]
        keep = order >= 0
        order, values = order[keep], values[keep]
        chosen = order if ids is None else ids[order]
        if cap:
            positions: list[int] = []
            counts: dict[int, int] = {}
            for position, code in enumerate(serving.category_codes[chosen].tolist()):
                taken = counts.get(code, 0)
                if taken < cap:
                    counts[code] = taken + 1
                    positions.append(position)
                    if len(positions) == k:
                        break
            chosen, values = chosen[positions], values[positions]
        return chosen[:k], values[:k]

    def _pick_popular(
        self,
        serving: ServingModel,
        trending: bool,
        k: int,
        filters: Filters,
        banned: list[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """From the popularity order computed at load: no full scoring per request."""
        order = serving.trending_order if trending else serving.popular_order
        source = serving.published.trending if trending else serving.published.fallback
        item_scores = np.asarray(source.item_scores)
        start = max(k * CAP_CANDIDATES, 256) + sum(b.size for b in banned)
        return self._select_widening(
            serving,
            lambda take: (order[:take], item_scores[order[:take]]),
            start,
            k,
            filters,
            banned,
        )

    def _select_widening(
        self,
        serving: ServingModel,
        candidates: Callable[[int], tuple[np.ndarray, np.ndarray]],
        take: int,
        k: int,
        filters: Filters,
        banned: list[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k of the first `take` (ids, scores) of a fixed order, taking 8 times more while
        filters and rules leave fewer than k, up to the whole catalogue."""
        take = min(serving.n_items, take)
        while True:
            ids, scores = candidates(take)
            picked = self._select(serving, scores, ids, k, filters, banned, boost=False)
            if picked[0].size >= k or take >= serving.n_items:
                return picked
            take = min(serving.n_items, take * 8)

    def _pick_approximate(
        self,
        serving: ServingModel,
        query: np.ndarray,
        k: int,
        filters: Filters,
        banned: list[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top k from the approximate index; None when the filters leave too few candidates
        (the caller then scores exactly) or the model has no index."""
        if serving.ann is None:
            return None
        return self._search_widening(
            serving, query, k, banned,
            lambda ids, scores: self._select(serving, scores, ids, k, filters, banned),
        )  # fmt: skip

    def _search_widening(
        self,
        serving: ServingModel,
        query: np.ndarray,
        k: int,
        banned: list[np.ndarray],
        pick: Callable[[np.ndarray, np.ndarray], Picked],
    ) -> Picked | None:
        """What `pick` selects from the approximate index's candidates (ids, scores), searching
        8 times wider while it selects fewer than k (filters and caps thin them out), up to
        the catalogue or ANN_MAX_CANDIDATES; then None, and the caller scores exactly."""
        index = serving.ann
        assert index is not None
        wanted = _first_search(serving, k, banned)
        while True:
            ids, scores = index.search(query[None, :], wanted)
            valid = ids[0] >= 0
            picked = pick(ids[0][valid], scores[0][valid])
            if picked[0].size >= k:
                return picked
            if wanted >= min(serving.n_items, ANN_MAX_CANDIDATES):
                return None
            wanted = min(serving.n_items, ANN_MAX_CANDIDATES, wanted * 8)


def _scored_items(model: PublishedModel, pick: Pick) -> tuple[ScoredItem, ...]:
    picked_ids, picked_scores = pick.picked
    # Whole-array conversions: per-item numpy scalars were a sixth of a list's compute.
    pairs = zip(model.item_ids[picked_ids].tolist(), picked_scores.tolist(), strict=True)
    if pick.reasons is None:
        return tuple(ScoredItem(i, s, pick.reason) for i, s in pairs)
    why = [str(pick.reasons[i]) or pick.reason for i in picked_ids.tolist()]
    return tuple(ScoredItem(i, s, w) for (i, s), w in zip(pairs, why, strict=True))


def _position_in(items: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in `items` (unsorted, unique) of each of `wanted` (all present)."""
    order = np.argsort(items)
    return order[np.searchsorted(items, wanted, sorter=order)]


def _trending_below(
    serving: ServingModel, bought: tuple[np.ndarray, np.ndarray], ids: np.ndarray
) -> np.ndarray:
    """Scores of items `ids`, none of them bought, in a repurchase list: below every purchase,
    one point apart in trending order among the items not bought."""
    items, strength = bought
    places = serving.trending_rank[ids]
    ahead = np.searchsorted(np.sort(serving.trending_rank[items]), places)
    return (float(strength.min()) - 1.0 - (places - ahead)).astype(np.float32)


def _popular_below(serving: ServingModel, led_to: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Scores of items `ids` where a visit's list is filled with popular items: most popular
    highest, all under the weakest score of what the visit leads to (`led_to`; 1 if none)."""
    return serving.popular_share[ids] * np.float32(np.min(led_to, initial=1.0))


def _first_search(serving: ServingModel, k: int, banned: list[np.ndarray]) -> int:
    """Candidates the approximate index is first asked for (see ANN_CANDIDATES)."""
    excluded = sum(b.size for b in banned)
    return min(serving.n_items, max(ANN_CANDIDATES, ANN_PER_RESULT * (k + excluded)))


def _reasons(picked: Picked, bought: np.ndarray, otherwise: str) -> dict[int, str]:
    """Per picked item: repurchase where the user bought it before, else `otherwise`."""
    again = set(bought.tolist())
    return {int(i): REASON_REPURCHASE if int(i) in again else otherwise for i in picked[0].tolist()}


def _lift(scores: np.ndarray, positions: np.ndarray, strength: np.ndarray) -> None:
    """Lifts `scores` at `positions` by up to REPURCHASE_LIFT spreads of the best scores, in
    proportion to `strength` (the blend strategy's repurchase component)."""
    unit = REPURCHASE_LIFT * top_spread(scores) / float(strength.max())
    with np.errstate(over="ignore"):  # absurd signal weights: the lift saturates at infinity
        scores[positions] += (unit * strength).astype(np.float32)


def top_spread(scores: np.ndarray) -> float:
    """The standard deviation of the BOOST_SPREAD_DEPTH best finite scores: the unit of the
    rules' boosts. Taken over the same depth whatever the candidates (a whole catalogue scored
    exactly, or the approximate index's few dozen), so that a boost moves an item as far in a
    million-item catalogue served approximately as in a small one scored exactly."""
    finite = scores[np.isfinite(scores)]
    if finite.size > BOOST_SPREAD_DEPTH:
        finite = np.partition(finite, finite.size - BOOST_SPREAD_DEPTH)[-BOOST_SPREAD_DEPTH:]
    if finite.size < 2:
        return 1.0
    # Not np.std: its layers of Python cost more than the arithmetic on a few dozen values.
    deviation = finite - finite.sum() / finite.size
    return float(np.sqrt(deviation @ deviation / finite.size)) or 1.0


def _unscale(confidence: np.ndarray, scaling: str) -> np.ndarray:
    return np.expm1(confidence) if scaling in ("log", "bm25") else confidence


def _scale(raw: np.ndarray | float, scaling: str) -> np.ndarray | float:
    # bm25 needs corpus statistics; log1p is the closest per-pair stand-in.
    return np.log1p(raw) if scaling in ("log", "bm25") else raw


def _fallback_reason(model: object) -> str:
    return REASON_TRENDING if getattr(model, "model_type", "") == "trending" else REASON_POPULAR
