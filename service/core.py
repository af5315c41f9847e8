"""The recommendation core, independent of gRPC: validates requests, scores, filters, applies
business rules and experiments, and keeps users' fresh events for real-time results.

It holds the current model behind one reference; swapping the reference is atomic, so a request
runs from start to end on the model it started with, even during a reload.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from recsvc.ann import ItemIndex
from recsvc.config import EVENT_NAMES, ServingConfig, VariantConfig
from recsvc.errors import InvalidArgument, NotFound, Unavailable
from recsvc.eventstore import EventStore, StoredEvent
from recsvc.experiments import assign_variant
from recsvc.ids import sorted_positions
from recsvc.models import ALSRecommender
from recsvc.models.base import top_k
from recsvc.published import PublishedModel
from service import marketing

REASON_PERSONAL = "personal"
REASON_POPULAR = "popular"
REASON_TRENDING = "trending"
REASON_HYBRID = "hybrid"
REASON_REPURCHASE = "repurchase"
# Users whose fresh events are kept in memory; the least recently active are dropped first.
REALTIME_USERS = 200_000
# Events may be stamped a little in the future (client clocks); more is a client mistake.
MAX_FUTURE_MS = 24 * 3_600_000
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
# In the list cache's key in place of the user id: users unknown to the model and the profiles.
ANONYMOUS = object()
# The id a forgotten user is looked up by in a model trained before the deletion: no user has
# it (ids are never empty), so they are served exactly as a visitor never seen.
STRANGER = ""


@dataclass(frozen=True)
class Filters:
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()
    available_only: bool = False
    min_price: float | None = None
    max_price: float | None = None


NO_FILTERS = Filters()


class ScoredItem(NamedTuple):
    """A tuple of atoms, which the garbage collector stops tracking: tens of thousands of cached
    lists then add nothing to each full collection's pause."""

    item_id: str
    score: float
    reason: str


class Recommendations(NamedTuple):
    # Recommend returns the cached tuple itself, the same object while the list is reused.
    items: Sequence[ScoredItem]
    model_version: str
    fallback: bool = False
    variant: str = ""  # "experiment/variant", empty when no experiment runs
    recommendation_id: str = ""
    strategy: str = ""  # personal, hybrid, repurchase, trending, popular or fallback
    lifecycle_stage: str = ""


class ListEntry(NamedTuple):
    """A cached Recommend list and the lifecycle stage it was chosen for, which holds while
    the profile clock stays in [since_ms, until_ms)."""

    items: tuple[ScoredItem, ...]
    fallback: bool
    strategy: str
    stage: str
    since_ms: int
    until_ms: int


@dataclass(frozen=True)
class EventInput:
    user_id: str
    item_id: str
    event: str
    timestamp_ms: int = 0  # 0: now
    quantity: float = 1.0
    price: float | None = None
    recommendation_id: str = ""


@dataclass
class ServingModel:
    """A published model plus what serving derives from it once, at load, off the request path."""

    published: PublishedModel
    category_codes: np.ndarray  # int32 code of each item's category
    category_vocabulary: dict[str, int]
    unavailable: np.ndarray  # bool per item
    new: np.ndarray  # bool per item: first seen within rules.new_item_days of the data end
    promoted: np.ndarray  # bool per item
    signal_weights: dict[str, float]
    scaling: str
    popular_order: np.ndarray  # item indices, most popular first
    trending_order: np.ndarray
    profile_rows: np.ndarray  # per model user, their row in the profiles (-1 none)

    @classmethod
    def prepare(cls, published: PublishedModel, config: ServingConfig) -> ServingModel:
        items = published.items
        vocabulary, codes = np.unique(items.categories, return_inverse=True)
        data_end = int(published.manifest.get("data_end_ms", 0))
        new_after = data_end - config.rules.new_item_days * 86_400_000
        tag = config.rules.promoted_tag
        promoted = (
            np.array([tag in t.split("|") for t in items.tags.tolist()], dtype=bool)
            if tag
            else np.zeros(items.size, dtype=bool)
        )
        signals = published.manifest.get("config", {}).get("signals", {})
        return cls(
            published=published,
            category_codes=codes.astype(np.int32),
            category_vocabulary={str(c): i for i, c in enumerate(vocabulary.tolist())},
            unavailable=~np.asarray(items.available, dtype=bool),
            new=np.asarray(items.first_seen_ms) >= new_after,
            promoted=promoted,
            signal_weights={e: float(signals.get(e, 1.0)) for e in EVENT_NAMES},
            scaling=str(signals.get("scaling", "log")),
            popular_order=np.argsort(-np.asarray(published.fallback.item_scores), kind="stable"),
            trending_order=np.argsort(-np.asarray(published.trending.item_scores), kind="stable"),
            profile_rows=sorted_positions(published.profiles.user_ids, published.user_ids),
        )

    @property
    def version(self) -> str:
        return self.published.version

    @property
    def n_items(self) -> int:
        return int(self.published.item_ids.size)

    def price_of(self, fresh: list[tuple[str, str, int]]) -> dict[str, float]:
        """Catalogue prices of the items in fresh events (for the monetary value of a fresh
        purchase); unknown items and prices are left out."""
        model = self.published
        positions = sorted_positions(model.item_ids, np.array([e[0] for e in fresh], dtype=str))
        prices = {}
        for (item_id, _, _), position in zip(fresh, positions.tolist(), strict=True):
            if position >= 0 and np.isfinite(price := float(model.items.price[position])):
                prices[item_id] = price
        return prices

    def codes(self, categories: tuple[str, ...]) -> list[int]:
        return [self.category_vocabulary[c] for c in categories if c in self.category_vocabulary]

    @property
    def ann(self) -> ItemIndex | None:
        return self.published.ann

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray | None:
        """A query vector for the approximate index from a history row (ALS only, whose
        fold-in is an exact user vector); None otherwise."""
        model = self.published.model
        if self.ann is None or not isinstance(model, ALSRecommender):
            return None
        return model.fold_in(history)[0]


@dataclass
class _Fresh:
    """One user's events since the model was trained, newest last."""

    events: deque[tuple[str, str, int]] = field(default_factory=deque)  # item, event, time


class RealtimeHistory:
    """Recent events per user, bounded per user and in the number of users."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._users: OrderedDict[str, _Fresh] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, user_id: str, item_id: str, event: str, timestamp_ms: int) -> None:
        with self._lock:
            fresh = self._users.pop(user_id, None) or _Fresh(deque(maxlen=self.per_user))
            fresh.events.append((item_id, event, timestamp_ms))
            self._users[user_id] = fresh
            while len(self._users) > REALTIME_USERS:
                self._users.popitem(last=False)

    def of(self, user_id: str) -> list[tuple[str, str, int]]:
        with self._lock:
            fresh = self._users.get(user_id)
            return list(fresh.events) if fresh else []

    def users_who(self, item_ids: set[str], event: str) -> set[str]:
        """Users with a fresh `event` on any of `item_ids` (audiences leave buyers out)."""
        with self._lock:
            return {
                user_id
                for user_id, fresh in self._users.items()
                if any(e[1] == event and e[0] in item_ids for e in fresh.events)
            }

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)

    def forget_before(self, user_id: str, timestamp_ms: int) -> None:
        """Drops the user's events stamped at or before `timestamp_ms` (a privacy deletion)."""
        with self._lock:
            fresh = self._users.get(user_id)
            if fresh is None:
                return
            kept = [e for e in fresh.events if e[2] > timestamp_ms]
            if kept:
                fresh.events = deque(kept, maxlen=self.per_user)
            else:
                del self._users[user_id]

    def drop_before(self, timestamp_ms: int) -> None:
        """Drops events a newly loaded model was trained on."""
        with self._lock:
            for user_id in list(self._users):
                kept = [e for e in self._users[user_id].events if e[2] > timestamp_ms]
                if kept:
                    self._users[user_id].events = deque(kept, maxlen=self.per_user)
                else:
                    del self._users[user_id]


class LruCache:
    """Least-recently-used values. Recommend keeps lists in one, keyed by everything a list
    depends on (model version, user, request fields, the user's fresh events and deletion), so
    a hit is always what scoring would return; popular users under a skewed load are served
    without scoring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[object, ...]) -> Any:
        if not self.size:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[object, ...], value: Any) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[key] = value
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RecommenderCore:
    def __init__(
        self,
        config: ServingConfig | None = None,
        event_store: EventStore | None = None,
    ) -> None:
        self.config = config or ServingConfig()
        self.event_store = event_store
        self._model: ServingModel | None = None
        self._pinned: dict[str, ServingModel] = {}
        self.realtime = RealtimeHistory(self.config.realtime_events_per_user)
        self._lists = LruCache(self.config.cache_size)
        # Recommendation ids: unique across processes by a random prefix, cheap by a counter.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        # user -> when forgotten (ms); a model trained before that must not personalise them.
        self._forgotten: dict[str, int] = {}
        self._last_event_id = 0
        self._last_forgotten_ms = 0
        self._newest_event_ms = 0  # the profile clock, with profile_clock = "events"
        self._sync_lock = threading.Lock()
        if event_store is not None:
            self.sync()
        self._impressions: list[tuple[str, str, str, int, int]] = []
        self._impressions_lock = threading.Lock()

    # -- models -------------------------------------------------------------------------

    @property
    def serving(self) -> ServingModel:
        model = self._model
        if model is None:
            raise Unavailable("no model is loaded yet")
        return model

    @property
    def model(self) -> PublishedModel:
        return self.serving.published

    @property
    def version(self) -> str | None:
        model = self._model
        return model.version if model is not None else None

    def prepare(self, published: PublishedModel) -> ServingModel:
        """Derives serving state and checks the model answers; raises if it cannot serve."""
        serving = ServingModel.prepare(published, self.config)
        probe = np.zeros(1, dtype=np.int64)
        published.fallback.recommend(probe, 1)
        if published.user_ids.size:
            published.model.recommend(probe, 1)
        return serving

    def swap(self, model: PublishedModel | ServingModel) -> None:
        serving = model if isinstance(model, ServingModel) else self.prepare(model)
        self._model = serving
        self._lists.clear()
        self.realtime.drop_before(int(serving.published.manifest.get("data_end_ms", 0)))

    def pin(self, serving: ServingModel) -> None:
        """Keeps a version that an experiment variant asks for."""
        self._pinned[serving.version] = serving

    def pinned_loaded(self) -> set[str]:
        return set(self._pinned)

    def pinned_versions(self) -> set[str]:
        return {
            v.model_version
            for e in self.config.experiments[:1]
            for v in e.variants
            if v.model_version
        }

    # -- requests -------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        k: int,
        filters: Filters = NO_FILTERS,
        exclude_purchased: bool = False,
        context_item_ids: tuple[str, ...] | list[str] = (),
        user_attributes: dict[str, str] | None = None,
        count_impression: bool = True,
    ) -> Recommendations:
        """`count_impression` False: the list is not an experiment impression (load tests)."""
        self._check_id(user_id, "user_id")
        self._check_k(k)
        if filters is not NO_FILTERS and filters != NO_FILTERS:
            self._check_filters(filters)
        if context_item_ids:
            self._check_list(context_item_ids, "context_item_ids")
        attributes = tuple(sorted(user_attributes.items())) if user_attributes else ()
        if attributes:
            self._check_attributes(attributes)
        serving = self.serving
        variant_name, variant = "", None
        if self.config.experiments:
            experiment = self.config.experiments[0]
            variant = assign_variant(experiment, user_id)
            variant_name = f"{experiment.name}/{variant.name}"
            if variant.model_version:
                pinned = self._pinned.get(variant.model_version)
                if pinned is None:
                    # Its version is not loaded (yet, or it failed): serving the current model
                    # under this variant's name would count the wrong arm's impressions.
                    variant_name, variant = "", None
                else:
                    serving = pinned
        forgotten_ms = self._forgotten.get(user_id)
        # A user forgotten since this model was trained is a stranger to it: their history,
        # profile and users-file attributes inside it are never used again.
        known_as = (
            user_id
            if forgotten_ms is None or forgotten_ms < _trained_at_ms(serving.published)
            else STRANGER
        )
        fresh = self.realtime.of(user_id)
        now_ms = self.now_ms(serving)
        request = (variant_name, k, filters, exclude_purchased, tuple(context_item_ids), attributes)
        # Everything the list depends on, the user's fresh events and deletion included, but
        # the lifecycle stage: the entry holds it, with the span of the profile clock over
        # which it holds.
        last = fresh[-1] if fresh else None
        key = (serving.version, user_id, request, len(fresh), last, forgotten_ms)
        entry = self._lists.get(key)
        if entry is None or not entry.since_ms <= now_ms < entry.until_ms:
            entry = self._list_entry(serving, variant, known_as, request, fresh, now_ms, key)
        recommendation_id = f"{self._id_prefix}{next(self._ids):016x}"
        if variant_name and count_impression and self.event_store is not None:
            self._note_impression(recommendation_id, user_id, variant_name, len(entry.items))
        return Recommendations(
            entry.items,
            serving.version,
            entry.fallback,
            variant_name,
            recommendation_id,
            entry.strategy,
            entry.stage,
        )

    def _list_entry(
        self,
        serving: ServingModel,
        variant: VariantConfig | None,
        known_as: str,
        request: tuple[Any, ...],
        fresh: list[tuple[str, str, int]],
        now_ms: int,
        key: tuple[object, ...],
    ) -> ListEntry:
        """Computes the user's stage and list, and caches them. `known_as` is the id the model
        and profiles know the user by (STRANGER for a forgotten user). Users unknown to both,
        asking with nothing of their own, share one entry per stage: each new id would
        otherwise compute the same list and push a known user's out of the cache."""
        staged = marketing.user_stage(serving, known_as, fresh, now_ms)
        _, k, filters, exclude_purchased, context_item_ids, attributes = request
        anonymous = (
            not fresh
            and not (context_item_ids or attributes)
            and staged.profile_row is None
            and serving.published.user_index(known_as) is None
        )
        if anonymous:
            key = (serving.version, ANONYMOUS, request, staged.stage)
            shared = self._lists.get(key)
            if shared is not None:
                return shared
        items, fallback, strategy = self._compute_list(
            serving,
            variant,
            known_as,
            k,
            filters,
            exclude_purchased,
            context_item_ids,
            fresh,
            staged.stage,
            dict(attributes),
        )
        entry = ListEntry(items, fallback, strategy, staged.stage, staged.since_ms, staged.until_ms)
        self._lists.put(key, entry)
        return entry

    def _compute_list(
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
        model = serving.published
        user = model.user_index(user_id)
        context = model.item_indices(list(context_item_ids))
        banned = [model.item_indices(list(filters.exclude_item_ids))]
        if user is not None and exclude_purchased:
            banned.append(model.purchased_by(user))
        if user is not None and model.exclude_seen:
            banned.append(model.seen_by(user))

        reasons: np.ndarray | dict[int, str] | None = None  # per item, where they differ
        picked: tuple[np.ndarray, np.ndarray] | None = None
        # An experiment's variant decides first; then the strategy of the user's stage.
        strategy = variant.strategy if variant and variant.strategy != "model" else ""
        strategy = strategy or self.config.lifecycle.strategy(stage)
        reason, fallback = REASON_PERSONAL, False
        bought = self._bought_before(serving, user, fresh) if strategy == "repurchase" else None
        if bought is not None and not bought[0].size:
            strategy, bought = "personal", None  # nothing bought before: nothing to buy again
        if bought is not None:
            picked, reasons = self._pick_repurchase(serving, bought, k, filters, banned)
        elif strategy in ("popular", "trending"):
            source = model.trending if strategy == "trending" else model.fallback
            reason, fallback = _fallback_reason(source), True
            picked = self._pick_popular(serving, strategy == "trending", k, filters, banned)
        elif fresh or context.size:
            history = self._history_row(serving, user, fresh, context)
            if model.exclude_seen:
                banned.append(history.indices)
            query = serving.fold_in(history)
            if query is not None and (user is not None or not context.size):
                picked = self._pick_approximate(serving, query, k, filters, banned)
            if picked is None:
                scores, reasons = self._score_history(serving, history, user, context)
                picked = self._select(serving, scores, None, k, filters, banned)
        elif user is not None:
            if serving.ann is not None:
                query = np.asarray(model.model.user_factors[user], dtype=np.float32)
                picked = self._pick_approximate(serving, query, k, filters, banned)
            if picked is None:
                scores = model.model.score(np.array([user]))[0]
                picked = self._select(serving, scores, None, k, filters, banned)
        elif (vector := self._attribute_vector(serving, user_id, user_attributes)) is not None:
            reason, fallback = REASON_HYBRID, True
            scores = model.coldstart.item_scores(vector)  # type: ignore[union-attr]
            picked = self._select(serving, scores, None, k, filters, banned)
        else:
            reason, fallback = _fallback_reason(model.fallback), True
            picked = self._pick_popular(serving, False, k, filters, banned)
        if strategy == "personal":
            strategy = reason if fallback else REASON_PERSONAL
        picked_ids, picked_scores = picked
        # Whole-array conversions: per-item numpy scalars were a sixth of a list's compute.
        pairs = zip(model.item_ids[picked_ids].tolist(), picked_scores.tolist(), strict=True)
        if reasons is None:
            items = tuple(ScoredItem(i, s, reason) for i, s in pairs)
        else:
            why = [str(reasons[i]) or reason for i in picked_ids.tolist()]
            items = tuple(ScoredItem(i, s, w) for (i, s), w in zip(pairs, why, strict=True))
        return items, fallback, strategy

    def similar_items(self, item_id: str, k: int, filters: Filters = Filters()) -> Recommendations:
        self._check_id(item_id, "item_id")
        self._check_k(k)
        self._check_filters(filters)
        serving = self.serving
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

    def popular_items(
        self,
        k: int,
        categories: tuple[str, ...] | list[str] = (),
        trending: bool = False,
        filters: Filters = Filters(),
    ) -> Recommendations:
        """The most popular (or, with `trending`, the hottest) items, optionally only those
        in `categories`."""
        self._check_k(k)
        self._check_filters(filters)
        self._check_list(categories, "categories")
        serving = self.serving
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

    def record_events(self, events: list[EventInput]) -> int:
        """Validates the whole batch first: one bad event refuses the batch, nothing stored."""
        stored = self.check_events(events)
        if self.event_store is None:
            for e in stored:
                self.realtime.add(e.user_id, e.item_id, e.event, e.timestamp_ms)
                self._newest_event_ms = max(self._newest_event_ms, e.timestamp_ms)
        else:
            self.event_store.append(stored)
            self.sync()  # the store is the one path into real-time state, for every worker
        return len(stored)

    def check_events(self, events: list[EventInput]) -> list[StoredEvent]:
        """The batch as it would be stored; InvalidArgument for the first bad event. Load-test
        traffic stops here: checked like real events, stored nowhere."""
        limits = self.config.limits
        if not events:
            raise InvalidArgument("events must not be empty")
        if len(events) > limits.max_events_per_call:
            raise InvalidArgument(
                f"at most {limits.max_events_per_call} events per call, got {len(events)}"
            )
        now = int(time.time() * 1000)
        stored = []
        for n, event in enumerate(events):
            where = f"events[{n}]"
            self._check_id(event.user_id, f"{where}.user_id")
            self._check_id(event.item_id, f"{where}.item_id")
            if event.event not in EVENT_NAMES:
                raise InvalidArgument(
                    f"{where}.event must be one of {', '.join(EVENT_NAMES)}, got {event.event!r}"
                )
            stamp = event.timestamp_ms or now
            if stamp < 0 or stamp > now + MAX_FUTURE_MS:
                raise InvalidArgument(f"{where}.timestamp_ms {stamp} is outside the allowed range")
            if not (event.quantity > 0 and float(event.quantity).is_integer()):
                raise InvalidArgument(f"{where}.quantity must be a positive whole number")
            if event.price is not None and not (event.price >= 0 and np.isfinite(event.price)):
                raise InvalidArgument(f"{where}.price must be a number >= 0")
            if len(event.recommendation_id) > limits.max_id_length:
                raise InvalidArgument(f"{where}.recommendation_id is too long")
            variant = ""
            if self.config.experiments:
                experiment = self.config.experiments[0]
                variant = f"{experiment.name}/{assign_variant(experiment, event.user_id).name}"
            stored.append(
                StoredEvent(
                    event.user_id,
                    event.item_id,
                    event.event,
                    stamp,
                    float(event.quantity),
                    event.price,
                    variant,
                    event.recommendation_id,
                )
            )
        return stored

    def sync(self) -> None:
        """Takes in events and deletions that any server process stored since the last sync."""
        if self.event_store is None:
            return
        with self._sync_lock:
            events, forgotten = self.event_store.changes_after(
                self._last_event_id, self._last_forgotten_ms
            )
            for user_id, when in forgotten.items():
                if self._forgotten.get(user_id) != when:
                    self._forgotten[user_id] = when
                    self.realtime.forget_before(user_id, when)
                self._last_forgotten_ms = max(self._last_forgotten_ms, when)
            model = self._model
            trained_until = (
                int(model.published.manifest.get("data_end_ms", 0)) if model is not None else 0
            )
            for event_id, user_id, item_id, event, stamp in events:
                self._last_event_id = event_id
                self._newest_event_ms = max(self._newest_event_ms, stamp)
                if stamp > trained_until:
                    self.realtime.add(user_id, item_id, event, stamp)

    def forget_user(self, user_id: str, reason: str = "") -> int:
        """Deletes stored events, drops real-time state and stops personalising at once."""
        self._check_id(user_id, "user_id")
        if self.event_store is None:
            self._forgotten[user_id] = int(time.time() * 1000)
            self.realtime.forget(user_id)
            return 0
        deleted = self.event_store.forget(user_id, reason)
        self.sync()
        return deleted

    def model_info(self) -> dict[str, Any]:
        model = self.model
        manifest = model.manifest
        variant = manifest.get("evaluation", {}).get("variant", "all")
        metrics = manifest.get("metrics", {}).get(variant, {})
        return {
            "version": model.version,
            "model_type": manifest.get("model_type", ""),
            "created_at": manifest.get("created_at", ""),
            "n_users": int(manifest.get("n_users", 0)),
            "n_items": int(manifest.get("n_items", 0)),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "metric_variant": variant,
        }

    # -- precision marketing ------------------------------------------------------------

    def now_ms(self, serving: ServingModel | None = None) -> int:
        """The clock of recency and lifecycle stages (serving.profile_clock)."""
        if self.config.profile_clock == "wall":
            return int(time.time() * 1000)
        model = (serving or self.serving).published
        return max(int(model.manifest.get("data_end_ms", 0)), self._newest_event_ms)

    def user_profile(self, user_id: str) -> dict[str, Any]:
        self._check_id(user_id, "user_id")
        serving = self.serving
        fresh = [] if user_id in self._forgotten else self.realtime.of(user_id)
        if user_id in self._forgotten and self._forgotten[user_id] >= _trained_at_ms(
            serving.published
        ):
            raise NotFound(f"user {user_id!r} was forgotten")
        return marketing.user_profile(serving, user_id, fresh, self.now_ms(serving))

    def list_segments(self, kind: str = "") -> list[dict[str, Any]]:
        return marketing.list_segments(self.serving, kind)

    def get_segment(self, segment_id: str) -> dict[str, Any]:
        self._check_id(segment_id, "segment_id")
        return marketing.get_segment(self.serving, segment_id)

    def find_audience(
        self,
        *,
        item_id: str = "",
        category: str = "",
        segment_id: str = "",
        k: int = 100,
        exclude_buyers: bool = False,
    ) -> marketing.Audience:
        limit = self.config.limits.max_audience
        if not 1 <= k <= limit:
            raise InvalidArgument(f"k must be between 1 and {limit}, got {k}")
        for value, name in (
            (item_id, "item_id"),
            (category, "category"),
            (segment_id, "segment_id"),
        ):
            if len(value) > self.config.limits.max_id_length:
                raise InvalidArgument(f"{name} is longer than {self.config.limits.max_id_length}")
        serving = self.serving
        return marketing.find_audience(
            serving,
            item_id=item_id,
            category=category,
            segment_id=segment_id,
            k=k,
            exclude_buyers=exclude_buyers,
            left_out=set(self._forgotten),
            fresh_buyers=lambda items: self.realtime.users_who(items, "purchase"),
            now_ms=self.now_ms(serving),
            propensity_weight=self.config.audience_propensity_weight,
        )

    def take_impressions(self) -> list[tuple[str, str, str, int, int]]:
        with self._impressions_lock:
            taken, self._impressions = self._impressions, []
        return taken

    # -- internals -----------------------------------------------------------------------

    def _note_impression(self, recommendation_id: str, user_id: str, variant: str, n: int) -> None:
        """Impressions serve the experiment report only: Recommend notes them for variants."""
        with self._impressions_lock:
            self._impressions.append(
                (recommendation_id, user_id, variant, int(time.time() * 1000), n)
            )

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
        floor = float(strength.min()) - 1.0

        def candidates(take: int) -> tuple[np.ndarray, np.ndarray]:
            trending = serving.trending_order[:take]
            trending = trending[~np.isin(trending, items)]
            # Trending items rank below every repurchase, in trending order.
            below = floor - np.arange(trending.size, dtype=np.float32)
            return np.concatenate([items, trending]), np.concatenate([strength, below])

        start = max(k * CAP_CANDIDATES, 256) + items.size
        picked = self._select_widening(serving, candidates, start, k, filters, banned)
        again = set(items.tolist())
        reasons = {
            int(i): REASON_REPURCHASE if int(i) in again else REASON_TRENDING
            for i in picked[0].tolist()
        }
        return picked, reasons

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

    def _history_row(
        self, serving: ServingModel, user: int | None, fresh: list, context: np.ndarray
    ) -> sp.csr_matrix:
        """The user's training row with fresh events and context items added, as the
        training matrix would have held them."""
        model = serving.published
        raw: dict[int, float] = {}
        if user is not None:
            items, confidences = model.history_of(user)
            for item, confidence in zip(items.tolist(), confidences.tolist(), strict=True):
                raw[item] = _unscale(confidence, serving.scaling)
        # One vectorised lookup; items the model does not know (position -1) are skipped.
        positions = sorted_positions(model.item_ids, np.array([e[0] for e in fresh], dtype=str))
        for item, (_, event, _) in zip(positions.tolist(), fresh, strict=True):
            if item >= 0:
                raw[item] = raw.get(item, 0.0) + serving.signal_weights[event]
        for item in context.tolist():
            raw[item] = raw.get(item, 0.0) + serving.signal_weights["view"]
        columns = np.fromiter(raw, dtype=np.int64, count=len(raw))
        values = np.array([_scale(v, serving.scaling) for v in raw.values()], dtype=np.float32)
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
        index = serving.ann
        if index is None:
            return None
        excluded = sum(b.size for b in banned)
        wanted = min(serving.n_items, max(ANN_CANDIDATES, ANN_PER_RESULT * (k + excluded)))
        while True:  # widen the search before giving up on it: filters and caps thin it out
            ids, scores = index.search(query[None, :], wanted)
            valid = ids[0] >= 0
            picked = self._select(serving, scores[0][valid], ids[0][valid], k, filters, banned)
            if picked[0].size >= k:
                return picked
            if wanted >= min(serving.n_items, ANN_MAX_CANDIDATES):
                return None
            wanted = min(serving.n_items, ANN_MAX_CANDIDATES, wanted * 8)

    def _check_id(self, value: str, name: str) -> None:
        if not value:
            raise InvalidArgument(f"{name} must not be empty")
        if len(value) > self.config.limits.max_id_length:
            raise InvalidArgument(
                f"{name} is longer than {self.config.limits.max_id_length} characters"
            )

    def _check_attributes(self, attributes: tuple[tuple[str, str], ...]) -> None:
        limit = self.config.limits.max_id_length
        if len(attributes) > self.config.limits.max_list_size:
            raise InvalidArgument("too many user_attributes")
        for name, value in attributes:
            if not name or len(name) > limit or len(value) > limit:
                raise InvalidArgument(
                    f"user_attributes: names must be non-empty and names and values at most "
                    f"{limit} characters ({name[:40]!r})"
                )

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.config.limits.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.config.limits.max_k}, got {k}")

    def _check_list(self, values: tuple[str, ...] | list[str], name: str) -> None:
        if len(values) > self.config.limits.max_list_size:
            raise InvalidArgument(
                f"{name} has {len(values)} entries; at most {self.config.limits.max_list_size}"
            )
        for value in values:
            if len(value) > self.config.limits.max_id_length:
                raise InvalidArgument(f"an entry of {name} is too long")

    def _check_filters(self, filters: Filters) -> None:
        for name in ("include_categories", "exclude_categories", "exclude_item_ids"):
            self._check_list(getattr(filters, name), name)
        for name in ("min_price", "max_price"):
            value = getattr(filters, name)
            if value is not None and not np.isfinite(value):
                raise InvalidArgument(f"{name} must be a finite number")
        if (
            filters.min_price is not None
            and filters.max_price is not None
            and filters.min_price > filters.max_price
        ):
            raise InvalidArgument("min_price is above max_price")


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


def _trained_at_ms(model: PublishedModel) -> int:
    """When the training run that made `model` read its inputs (0 if not recorded)."""
    return int(model.manifest.get("started_at_ms", 0))


def _unscale(confidence: float, scaling: str) -> float:
    return float(np.expm1(confidence)) if scaling in ("log", "bm25") else confidence


def _scale(raw: float, scaling: str) -> float:
    # bm25 needs corpus statistics; log1p is the closest per-pair stand-in.
    return float(np.log1p(raw)) if scaling in ("log", "bm25") else raw


def _fallback_reason(model: object) -> str:
    return REASON_TRENDING if getattr(model, "model_type", "") == "trending" else REASON_POPULAR
