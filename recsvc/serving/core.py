"""The recommendation core, independent of gRPC: it holds the model versions (the current one,
and any an experiment pins), each user's real-time state (fresh events, deletions, the list
cache) and the impressions experiments count, and answers every call through the request checks
(recsvc/serving/validation.py) and the one ranking policy (recsvc/serving/policy.py).

It holds the current model behind one reference; swapping the reference is atomic, so a request
runs from start to end on the model it started with, even during a reload.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from recsvc.campaigns import Campaign, CampaignSpec
from recsvc.config import EVENT_NAMES, ServingConfig, VariantConfig
from recsvc.errors import InvalidArgument, NotFound, StoreUnavailable, Unavailable
from recsvc.events import EventStore, StoredEvent, open_models_store
from recsvc.experiments import assign_variant
from recsvc.ids import id_problem
from recsvc.modelstore import ModelStore
from recsvc.profiles import STAGES
from recsvc.published import PublishedModel
from recsvc.serving import marketing
from recsvc.serving.campaigns import campaign_report, plan_campaign, treatment_table
from recsvc.serving.model import ServingModel, trained_at_ms
from recsvc.serving.page import Visitor, build_rows, top_categories
from recsvc.serving.policy import RankingPolicy
from recsvc.serving.state import LruCache, RealtimeHistory
from recsvc.serving.validation import RequestChecks
from recsvc.serving.values import (
    NO_FILTERS,
    EventInput,
    Filters,
    ListEntry,
    Page,
    RankedItems,
    Recommendations,
)
from recsvc.serving.writer import EventWriter, OutageLog

T = TypeVar("T")
# Events may be stamped a little in the future (client clocks); more is a client mistake.
MAX_FUTURE_MS = 24 * 3_600_000
# In the list cache's key in place of the user id: users unknown to the model and the profiles.
ANONYMOUS = object()
# The id a forgotten user is looked up by in a model trained before the deletion: no user has
# it (ids are never empty), so they are served exactly as a visitor never seen.
STRANGER = ""


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
        self.checks = RequestChecks(self.config.limits)
        self.policy = RankingPolicy(self.config)
        self.realtime = RealtimeHistory(
            self.config.realtime_events_per_user, self.config.realtime_users
        )
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
        self.outages = OutageLog()
        self._writer = (
            EventWriter(event_store, self._take_in_own, self.sync, self.outages)
            if event_store is not None
            else None
        )
        if event_store is not None:
            try:
                self.sync()
            except StoreUnavailable as error:  # recommendations go on; sync catches up later
                self.outages.failed(error, "starting")
        self._impressions: list[tuple[str, str, str, int, int]] = []
        self._impressions_lock = threading.Lock()

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
        self.checks.check_id(user_id, "user_id")
        self.checks.check_k(k)
        if filters is not NO_FILTERS and filters != NO_FILTERS:
            self.checks.check_filters(filters)
        if context_item_ids:
            self.checks.check_list(context_item_ids, "context_item_ids")
        attributes = tuple(sorted(user_attributes.items())) if user_attributes else ()
        if attributes:
            self.checks.check_attributes(attributes)
        variant_name, variant, serving = self._variant(user_id)
        forgotten_ms = self._forgotten.get(user_id)
        # A user forgotten since this model was trained is a stranger to it: their history,
        # profile and users-file attributes inside it are never used again.
        known_as = STRANGER if self.forgotten_since_training(user_id, serving) else user_id
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
        recommendation_id = self._new_recommendation_id(
            user_id, variant_name, len(entry.items), count_impression
        )
        return Recommendations(
            entry.items,
            serving.version,
            entry.fallback,
            variant_name,
            recommendation_id,
            entry.strategy,
            entry.stage,
        )

    def _variant(self, user_id: str) -> tuple[str, VariantConfig | None, ServingModel]:
        """The user's experiment variant ("experiment/variant", its config) and the model it
        serves: a pinned version, else the current one."""
        serving = self.serving
        if not self.config.experiments:
            return "", None, serving
        experiment = self.config.experiments[0]
        variant = assign_variant(experiment, user_id)
        if variant.model_version:
            pinned = self._pinned.get(variant.model_version)
            if pinned is None:
                # Its version is not loaded (yet, or it failed): serving the current model
                # under this variant's name would count the wrong arm's impressions.
                return "", None, serving
            serving = pinned
        return f"{experiment.name}/{variant.name}", variant, serving

    def _visitor(
        self,
        user_id: str,
        context_item_ids: tuple[str, ...] | list[str],
        user_attributes: dict[str, str] | None,
    ) -> tuple[str, VariantConfig | None, ServingModel, Visitor]:
        """Checks a visitor's request fields and resolves them as Recommend does: variant,
        model, the id the model knows them by, fresh events, lifecycle stage."""
        self.checks.check_id(user_id, "user_id")
        if context_item_ids:
            self.checks.check_list(context_item_ids, "context_item_ids")
        attributes = tuple(sorted(user_attributes.items())) if user_attributes else ()
        if attributes:
            self.checks.check_attributes(attributes)
        variant_name, variant, serving = self._variant(user_id)
        known_as = STRANGER if self.forgotten_since_training(user_id, serving) else user_id
        fresh = self.realtime.of(user_id)
        stage = marketing.user_stage(serving, known_as, fresh, self.now_ms(serving)).stage
        visitor = Visitor(known_as, stage, fresh, tuple(context_item_ids), dict(attributes),
                          variant)  # fmt: skip
        return variant_name, variant, serving, visitor

    def _new_recommendation_id(self, user_id: str, variant_name: str, n: int, count: bool) -> str:
        recommendation_id = f"{self._id_prefix}{next(self._ids):016x}"
        if variant_name and count and self.event_store is not None:
            self._note_impression(recommendation_id, user_id, variant_name, n)
        return recommendation_id

    def rank_items(
        self,
        user_id: str,
        item_ids: list[str] | tuple[str, ...],
        filters: Filters = NO_FILTERS,
        exclude_purchased: bool = False,
        context_item_ids: tuple[str, ...] | list[str] = (),
        user_attributes: dict[str, str] | None = None,
        count_impression: bool = True,
    ) -> RankedItems:
        """Re-orders the frontend's candidates for the user by what Recommend would rank them
        by; unknown ids go last in their given order, never an error."""
        if not item_ids:
            raise InvalidArgument("item_ids must not be empty")
        if len(item_ids) > self.config.limits.max_k:
            raise InvalidArgument(
                f"at most {self.config.limits.max_k} item_ids, got {len(item_ids)}"
            )
        self.checks.check_list(item_ids, "item_ids")
        if filters is not NO_FILTERS:
            self.checks.check_filters(filters)
        variant_name, _, serving, visitor = self._visitor(
            user_id, context_item_ids, user_attributes
        )
        key = self._visitor_key(
            "rank", serving, user_id, visitor, variant_name, tuple(item_ids), filters,
            exclude_purchased,
        )  # fmt: skip
        items, unknown, left_out, strategy = self._cached(
            key,
            lambda: self.policy.rank(
                serving, visitor.variant, visitor.user_id, list(item_ids), filters,
                exclude_purchased, visitor.context, visitor.fresh, visitor.stage,
                visitor.attributes,
            ),
        )  # fmt: skip
        recommendation_id = self._new_recommendation_id(
            user_id, variant_name, len(items), count_impression
        )
        return RankedItems(items, unknown, left_out, serving.version, variant_name,
                           recommendation_id, strategy, visitor.stage)  # fmt: skip

    def bought_together(
        self,
        item_ids: list[str] | tuple[str, ...],
        k: int,
        filters: Filters = NO_FILTERS,
        user_id: str = "",
        exclude_purchased: bool = False,
    ) -> Recommendations:
        """What is bought with an item or a whole cart (`item_ids`); an empty cart, or one the
        model does not know, gets popular items."""
        self.checks.check_k(k)
        self.checks.check_list(item_ids, "item_ids")
        if filters is not NO_FILTERS:
            self.checks.check_filters(filters)
        if user_id:
            self.checks.check_id(user_id, "user_id")
        serving = self.serving
        known_as = STRANGER if user_id and self.forgotten_since_training(user_id) else user_id
        # The same for every visitor but where their purchases are excluded.
        key = ("together", serving.version, tuple(item_ids), k, filters,
               known_as if exclude_purchased else "", exclude_purchased)  # fmt: skip
        return self._cached(
            key,
            lambda: self.policy.bought_together(
                serving, list(item_ids), k, filters, known_as, exclude_purchased
            ),
        )

    def recommend_page(
        self,
        user_id: str,
        filters: Filters = NO_FILTERS,
        exclude_purchased: bool = False,
        context_item_ids: tuple[str, ...] | list[str] = (),
        user_attributes: dict[str, str] | None = None,
        count_impression: bool = True,
    ) -> Page:
        """The rows `[serving.page]` names for the visitor's lifecycle stage, no item twice."""
        if filters is not NO_FILTERS:
            self.checks.check_filters(filters)
        variant_name, _, serving, visitor = self._visitor(
            user_id, context_item_ids, user_attributes
        )
        key = self._visitor_key(
            "page", serving, user_id, visitor, variant_name, filters, exclude_purchased
        )
        rows = self._cached(
            key,
            lambda: build_rows(
                self.policy, serving, visitor, self.config.page.rows_for(visitor.stage),
                filters, exclude_purchased,
            ),
        )  # fmt: skip
        n_items = sum(len(r.items) for r in rows)
        recommendation_id = self._new_recommendation_id(
            user_id, variant_name, n_items, count_impression
        )
        return Page(rows, serving.version, variant_name, recommendation_id, visitor.stage)

    def recommend_categories(
        self,
        user_id: str,
        k: int,
        kind: str = "category",
        context_item_ids: tuple[str, ...] | list[str] = (),
        user_attributes: dict[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        """The visitor's top categories (or brands, `kind` "brand") with shares summing to 1."""
        self.checks.check_k(k)
        if kind not in ("category", "brand"):
            raise InvalidArgument(f"kind must be category or brand, got {kind!r}")
        variant_name, _, serving, visitor = self._visitor(
            user_id, context_item_ids, user_attributes
        )
        key = self._visitor_key("categories", serving, user_id, visitor, variant_name, k, kind)
        return self._cached(
            key, lambda: top_categories(self.policy, serving, visitor, kind, k, NO_FILTERS)
        )

    def _visitor_key(
        self, call: str, serving: ServingModel, user_id: str, visitor: Visitor, *request: object
    ) -> tuple[object, ...]:
        """A cache key for one of the visitor's answers, by Recommend's rule: everything it
        depends on, the user's fresh events, deletion and stage included."""
        fresh = visitor.fresh
        return (
            call, serving.version, user_id, request, visitor.context,
            tuple(sorted(visitor.attributes.items())), visitor.stage, len(fresh),
            fresh[-1] if fresh else None, self._forgotten.get(user_id),
        )  # fmt: skip

    def _cached(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """The answer kept under `key` in the list cache, else `compute`'s, kept."""
        found = self._lists.get(key)
        if found is None:
            found = compute()
            self._lists.put(key, found)
        return found

    def recently_viewed(self, user_id: str, k: int) -> list[tuple[str, int]]:
        """The items the user viewed (or carted) since the model was trained, newest first,
        each once, with when (epoch ms)."""
        self.checks.check_id(user_id, "user_id")
        self.checks.check_k(k)
        seen: dict[str, int] = {}
        for item_id, _, stamp in reversed(self.realtime.of(user_id)):
            if item_id not in seen:
                seen[item_id] = stamp
                if len(seen) == k:
                    break
        return list(seen.items())

    def merge_users(self, user_id: str, into: str, reason: str = "") -> int:
        return self.wait_for_store(self.submit_merge(user_id, into, reason))

    def submit_merge(self, user_id: str, into: str, reason: str = "") -> Future[int]:
        """Attaches an anonymous id's events to the customer `into` who logged in: they are
        stored under `into` (a future of how many), and `user_id` is forgotten, so that a
        deletion of the customer deletes them too."""
        self.checks.check_id(user_id, "anonymous_id")
        self.checks.check_id(into, "user_id")
        if user_id == into:
            raise InvalidArgument("anonymous_id and user_id are the same")
        if self._writer is None:
            moved = self.realtime.of(user_id)
            for item_id, event, stamp in moved:
                self.realtime.add(into, item_id, event, stamp)
            self._forgotten[user_id] = int(time.time() * 1000)
            self.realtime.forget(user_id)
            return _done(len(moved))
        return self._writer.merge(user_id, into, reason)

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
        items, fallback, strategy = self.policy.compute(
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

    def similar_items(self, item_id: str, k: int, filters: Filters = NO_FILTERS) -> Recommendations:
        self.checks.check_id(item_id, "item_id")
        self.checks.check_k(k)
        self.checks.check_filters(filters)
        return self.policy.similar(self.serving, item_id, k, filters)

    def popular_items(
        self,
        k: int,
        categories: tuple[str, ...] | list[str] = (),
        trending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Recommendations:
        """The most popular (or, with `trending`, the hottest) items, optionally only those
        in `categories`."""
        self.checks.check_k(k)
        self.checks.check_filters(filters)
        self.checks.check_list(categories, "categories")
        return self.policy.popular(self.serving, k, categories, trending, filters)

    def record_events(self, events: list[EventInput]) -> int:
        """Validates the whole batch first: one bad event refuses the batch, nothing stored.
        Returns once the events are durable; StoreUnavailable past the store's timeout."""
        return self.wait_for_store(self.submit_events(events))

    def submit_events(self, events: list[EventInput]) -> Future[int]:
        """As record_events, without waiting: InvalidArgument at once for a bad batch, else
        a future that resolves when the batch is stored with other callers' (group commit)."""
        stored = self.check_events(events)
        if self._writer is None:
            for e in stored:
                self.realtime.add(e.user_id, e.item_id, e.event, e.timestamp_ms)
                self._newest_event_ms = max(self._newest_event_ms, e.timestamp_ms)
            return _done(len(stored))
        # The store is the one path into real-time state, for every worker: the writer syncs
        # before it answers.
        return self._writer.append(stored)

    def wait_for_store(self, future: Future[int]) -> int:
        """The result of a write; StoreUnavailable if it takes longer than the store timeout
        (the write is then withdrawn if it has not started)."""
        try:
            return future.result(self.config.event_store_timeout_s)
        except FutureTimeout:
            future.cancel()
            raise self.store_timed_out() from None

    def store_timed_out(self) -> StoreUnavailable:
        """The error for a write the store did not finish in time; the outage is logged."""
        error = StoreUnavailable(
            f"the event store did not answer within {self.config.event_store_timeout_s:g} s"
        )
        self.outages.failed(error, "waiting for a write")
        return error

    def close(self) -> None:
        """Stores what callers have queued, then stops the writer."""
        if self._writer is not None:
            self._writer.close()

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
        latest = now + MAX_FUTURE_MS
        max_id = limits.max_id_length
        experiment = self.config.experiments[0] if self.config.experiments else None
        stored = []
        # Runs for every event of every call: messages are only formatted for a bad one.
        for n, event in enumerate(events):
            user_id, item_id, name, stamp, quantity, price, recommendation_id = event
            problem = id_problem(user_id, max_id)
            if problem is not None:
                raise InvalidArgument(f"events[{n}].user_id {problem}")
            problem = id_problem(item_id, max_id)
            if problem is not None:
                raise InvalidArgument(f"events[{n}].item_id {problem}")
            if name not in EVENT_NAMES:
                raise InvalidArgument(
                    f"events[{n}].event must be one of {', '.join(EVENT_NAMES)}, got {name!r}"
                )
            stamp = stamp or now
            if stamp < 0 or stamp > latest:
                raise InvalidArgument(
                    f"events[{n}].timestamp_ms {stamp} is outside the allowed range"
                )
            quantity = float(quantity)
            if not (quantity > 0 and quantity.is_integer()):
                raise InvalidArgument(f"events[{n}].quantity must be a positive whole number")
            if price is not None and not (price >= 0 and math.isfinite(price)):
                raise InvalidArgument(f"events[{n}].price must be a number >= 0")
            if recommendation_id and (problem := id_problem(recommendation_id, max_id)):
                raise InvalidArgument(f"events[{n}].recommendation_id {problem}")
            variant = ""
            if experiment is not None:
                variant = f"{experiment.name}/{assign_variant(experiment, user_id).name}"
            stored.append(
                StoredEvent(
                    user_id, item_id, name, stamp, quantity, price, variant, recommendation_id
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
            if events:
                self._add_fresh(row[1:] for row in events)
                self._last_event_id = events[-1][0]

    def _take_in_own(self, events: list[StoredEvent], last_id: int) -> None:
        """Takes in events this process just stored (ids last_id - len + 1 .. last_id) without
        reading them back, when nothing else was stored since the last sync; else syncs."""
        with self._sync_lock:
            if self._last_event_id == last_id - len(events):
                self._add_fresh((e.user_id, e.item_id, e.event, e.timestamp_ms) for e in events)
                self._last_event_id = last_id
                return
        self.sync()

    def _add_fresh(self, events: Iterable[tuple[str, str, str, int]]) -> None:
        """Stored events into real-time state: those after the model's data end (the model
        holds the rest). Callers hold the sync lock."""
        model = self._model
        trained_until = (
            int(model.published.manifest.get("data_end_ms", 0)) if model is not None else 0
        )
        newest = self._newest_event_ms
        for user_id, item_id, event, stamp in events:
            newest = max(newest, stamp)
            if stamp > trained_until:
                self.realtime.add(user_id, item_id, event, stamp)
        self._newest_event_ms = newest

    def forget_user(self, user_id: str, reason: str = "") -> int:
        """Deletes stored events, drops real-time state and stops personalising at once."""
        return self.wait_for_store(self.submit_forget(user_id, reason))

    def submit_forget(self, user_id: str, reason: str = "") -> Future[int]:
        """As forget_user, without waiting: the deletion is stored after every event queued
        before it, and its future resolves (acknowledged) only once it is durable."""
        self.checks.check_id(user_id, "user_id")
        if self._writer is None:
            self._forgotten[user_id] = int(time.time() * 1000)
            self.realtime.forget(user_id)
            return _done(0)
        return self._writer.forget(user_id, reason)

    def forgotten_since_training(self, user_id: str, serving: ServingModel | None = None) -> bool:
        """Whether the user was deleted after `serving` (the current model) read its inputs:
        what that model holds of them must no longer be used."""
        forgotten_ms = self._forgotten.get(user_id)
        return forgotten_ms is not None and forgotten_ms >= trained_at_ms(
            (serving or self.serving).published
        )

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

    def now_ms(self, serving: ServingModel | None = None) -> int:
        """The clock of recency and lifecycle stages (serving.profile_clock)."""
        if self.config.profile_clock == "wall":
            return int(time.time() * 1000)
        model = (serving or self.serving).published
        return max(int(model.manifest.get("data_end_ms", 0)), self._newest_event_ms)

    def user_profile(self, user_id: str) -> dict[str, Any]:
        self.checks.check_id(user_id, "user_id")
        serving = self.serving
        fresh = [] if user_id in self._forgotten else self.realtime.of(user_id)
        if self.forgotten_since_training(user_id, serving):
            raise NotFound(f"user {user_id!r} was forgotten")
        return marketing.user_profile(serving, user_id, fresh, self.now_ms(serving))

    def list_segments(self, kind: str = "") -> list[dict[str, Any]]:
        return marketing.list_segments(self.serving, kind)

    def get_segment(self, segment_id: str) -> dict[str, Any]:
        self.checks.check_id(segment_id, "segment_id")
        return marketing.get_segment(self.serving, segment_id)

    def find_audience(
        self,
        *,
        item_id: str = "",
        category: str = "",
        segment_id: str = "",
        k: int = 100,
        exclude_buyers: bool = False,
        min_churn_risk: float | None = None,
    ) -> marketing.Audience:
        limit = self.config.limits.max_audience
        if not 1 <= k <= limit:
            raise InvalidArgument(f"k must be between 1 and {limit}, got {k}")
        return self.rank_audience(
            item_id=item_id,
            category=category,
            segment_id=segment_id,
            k=k,
            exclude_buyers=exclude_buyers,
            min_churn_risk=min_churn_risk,
        )

    def rank_audience(
        self,
        *,
        item_id: str = "",
        category: str = "",
        segment_id: str = "",
        k: int,
        exclude_buyers: bool = False,
        min_churn_risk: float | None = None,
    ) -> marketing.Audience:
        """FindAudience without its size limit, for campaigns (which may reach everyone)."""
        if min_churn_risk is not None and not 0.0 <= min_churn_risk <= 1.0:
            raise InvalidArgument(f"min_churn_risk must be within 0..1, got {min_churn_risk}")
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
            min_churn_risk=min_churn_risk,
        )

    def create_campaign(self, spec: CampaignSpec) -> Campaign:
        """Plans the campaign and stores it; nothing is stored when planning refuses."""
        store = self._campaign_store()
        campaign = self.plan_campaign(spec)
        store.add_campaign(campaign.name, campaign.to_json())
        return campaign

    def plan_campaign(self, spec: CampaignSpec) -> Campaign:
        """The campaign `spec` asks for, as it would be created now, without storing it (a
        preview: its split's salt is a fresh one unless the spec gives one)."""
        settings = self.config.campaigns
        spec.check(STAGES, [c.name for c in settings.channels], self.config.limits.max_k)
        serving = self.serving
        audience = self.rank_audience(
            item_id=spec.item_id,
            category=spec.category,
            segment_id=spec.segment_id,
            k=max(1, serving.published.profiles.size),
            min_churn_risk=spec.min_churn_risk,
        )
        clock = self.now_ms(serving)

        def stage_of(user_id: str) -> str:
            return marketing.user_stage(serving, user_id, self.realtime.of(user_id), clock).stage

        def own_recommendations(user_id: str, k: int) -> list[str]:
            listed = self.recommend(user_id, k, exclude_purchased=True, count_impression=False)
            return [item.item_id for item in listed.items]

        return plan_campaign(
            spec,
            audience,
            serving.published.profiles,
            settings,
            self.campaigns(),
            int(time.time() * 1000),
            stage_of,
            own_recommendations,
        )

    def campaigns(self) -> list[Campaign]:
        """Every stored campaign, oldest first."""
        stored = self._campaign_store().campaigns()
        found = [Campaign.from_json(spec) for spec in stored.values()]
        return sorted(found, key=lambda c: (c.created_ms, c.name))

    def campaign(self, name: str) -> Campaign:
        self.checks.check_id(name, "name")
        spec = self._campaign_store().campaigns().get(name)
        if spec is None:
            raise NotFound(f"no campaign named {name!r}")
        return Campaign.from_json(spec)

    def campaign_with_report(self, name: str) -> tuple[Campaign, dict[str, Any]]:
        """The campaign, and conversion and revenue per arm and their uplift from the events
        stored so far."""
        campaign = self.campaign(name)
        events = self._campaign_store().read_events()
        return campaign, campaign_report(self.serving.published, campaign, events)

    def campaign_treatment(self, name: str) -> pa.Table:
        """The treatment list to send, without anyone forgotten since the campaign was made."""
        campaign = self.campaign(name)
        forgotten = set(self._campaign_store().forgotten_users())
        return treatment_table(campaign, forgotten)

    def _campaign_store(self) -> EventStore:
        if self.event_store is None:
            raise Unavailable("campaigns live in the event store, and none is configured")
        return self.event_store

    def take_impressions(self) -> list[tuple[str, str, str, int, int]]:
        with self._impressions_lock:
            taken, self._impressions = self._impressions, []
        return taken

    def keep_impressions(self, taken: list[tuple[str, str, str, int, int]]) -> None:
        """Puts back impressions the store could not take, to be written with the next ones."""
        with self._impressions_lock:
            self._impressions = taken + self._impressions

    def _note_impression(self, recommendation_id: str, user_id: str, variant: str, n: int) -> None:
        """Impressions serve the experiment report only: Recommend notes them for variants."""
        with self._impressions_lock:
            self._impressions.append(
                (recommendation_id, user_id, variant, int(time.time() * 1000), n)
            )


def open_published_core(
    model_dir: Path, config: ServingConfig, event_store: str = "", existing: bool = False
) -> RecommenderCore:
    """A core on the current published version and the event store of the servers that serve
    `model_dir` (found as `recsvc serve` finds it; with `existing`, only one already there), for
    work outside the server that must answer as it does. Close it with `close_published_core`."""
    model = PublishedModel.load(ModelStore(model_dir).current_path())
    store = open_models_store(model_dir, event_store or config.event_store, existing=existing)
    core = RecommenderCore(config, store)
    core.swap(model)
    return core


def close_published_core(core: RecommenderCore) -> None:
    core.close()
    if core.event_store is not None:
        core.event_store.close()


@contextmanager
def published_core(
    model_dir: Path, config: ServingConfig, event_store: str = "", existing: bool = False
) -> Iterator[RecommenderCore]:
    """`open_published_core` for the length of a block."""
    core = open_published_core(model_dir, config, event_store, existing)
    try:
        yield core
    finally:
        close_published_core(core)


def _done(result: int) -> Future[int]:
    future: Future[int] = Future()
    future.set_result(result)
    return future
