"""The transport-independent core: validation, fallbacks, filters, rules, real-time events,
privacy deletion and experiments, without any socket."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import events_table

from recsvc.config import (
    EVENT_NAMES,
    ExperimentConfig,
    LimitsConfig,
    RulesConfig,
    ServingConfig,
    SignalsConfig,
    VariantConfig,
)
from recsvc.errors import InvalidArgument, NotFound, Unavailable
from recsvc.events import open_event_store
from recsvc.experiments import assign_variant
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.serving.values import EventInput, Filters
from recsvc.training.interactions import build_interactions
from recsvc.training.pipeline import TrainResult

WIDE = ServingConfig(limits=LimitsConfig(max_k=5000))


@pytest.fixture(scope="module")
def published(trained: TrainResult) -> PublishedModel:
    return PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))


@pytest.fixture(scope="module")
def core(published: PublishedModel) -> RecommenderCore:
    core = RecommenderCore(WIDE)
    core.swap(published)
    return core


def fresh_core(published: PublishedModel, config: ServingConfig = WIDE, store=None):
    core = RecommenderCore(config, store)
    core.swap(published)
    return core


def a_buyer(core: RecommenderCore) -> str:
    model = core.model
    counts = np.diff(model.purchased_indptr)
    return str(model.user_ids[int(np.argmax(counts))])


def category_of(core: RecommenderCore, item_id: str) -> str:
    model = core.model
    return str(model.items.categories[model.item_index(item_id)])


def test_known_user_gets_personal_items(core: RecommenderCore) -> None:
    result = core.recommend("u0001", 10)
    assert not result.fallback
    assert len(result.items) == 10
    assert {i.reason for i in result.items} == {"personal"}
    assert result.model_version == core.version
    assert result.recommendation_id and result.variant == ""


def test_unknown_user_gets_popular_items_never_an_error(core: RecommenderCore) -> None:
    result = core.recommend("someone-we-never-saw", 5)
    assert result.fallback
    assert {i.reason for i in result.items} <= {"popular", "trending"}
    scores = [i.score for i in result.items]
    assert scores == sorted(scores, reverse=True)


def test_users_nobody_knows_share_one_cached_list_until_they_bring_something(
    published: PublishedModel,
) -> None:
    core = fresh_core(published)
    first = core.recommend("visitor-1", 10)
    second = core.recommend("visitor-2", 10)
    assert second.items is first.items and core._lists.hits == 1
    assert second.fallback and second.recommendation_id != first.recommendation_id
    # Context items, or an event of their own, give a visitor a list of their own.
    viewed = first.items[-1].item_id
    looking = core.recommend("visitor-3", 10, context_item_ids=(viewed,))
    # From the session model or the fold-in, whichever training chose: both name the item.
    assert looking.items[0].reason.endswith(f":{viewed}")
    core.record_events([EventInput("visitor-4", viewed, "cart")])
    assert core.recommend("visitor-4", 10).items != first.items
    assert not core.recommend("u0001", 10).fallback  # a user the model knows: never shared
    assert core._lists.hits == 1


def test_excluded_and_purchased_items_are_left_out(core: RecommenderCore) -> None:
    user = a_buyer(core)
    first = core.recommend(user, 5)
    excluded = (first.items[0].item_id, "not-an-item")
    second = core.recommend(user, 5, Filters(exclude_item_ids=excluded))
    assert excluded[0] not in {i.item_id for i in second.items}
    model = core.model
    bought = {str(model.item_ids[i]) for i in model.purchased_by(model.user_index(user))}
    assert bought
    everything = core.recommend(user, 5000)
    assert bought & {i.item_id for i in everything.items}, "the model does rank bought items"
    filtered = core.recommend(user, 5000, exclude_purchased=True)
    assert not bought & {i.item_id for i in filtered.items}
    available = int(model.items.available.sum())
    assert len(filtered.items) == available - len(bought & set(_available_ids(core)))


def _available_ids(core: RecommenderCore) -> list[str]:
    model = core.model
    return [str(i) for i in model.item_ids[np.asarray(model.items.available, dtype=bool)]]


def test_category_and_price_filters(core: RecommenderCore) -> None:
    top = core.recommend("u0001", 20)
    wanted = category_of(core, top.items[0].item_id)
    inside = core.recommend("u0001", 10, Filters(include_categories=(wanted,)))
    assert inside.items and {category_of(core, i.item_id) for i in inside.items} == {wanted}
    outside = core.recommend("u0001", 10, Filters(exclude_categories=(wanted,)))
    assert wanted not in {category_of(core, i.item_id) for i in outside.items}
    prices = core.model.items.price
    cheap = core.recommend("u0001", 30, Filters(min_price=5.0, max_price=20.0))
    for item in cheap.items:
        assert 5.0 <= prices[core.model.item_index(item.item_id)] <= 20.0
    with pytest.raises(InvalidArgument, match="min_price is above max_price"):
        core.recommend("u0001", 5, Filters(min_price=9.0, max_price=1.0))


def test_unavailable_items_are_never_served(core: RecommenderCore) -> None:
    unavailable = set(core.model.item_ids[~np.asarray(core.model.items.available)].tolist())
    assert unavailable, "the sample shop marks some items unavailable"
    for user in ("u0001", "u0002", "nobody"):
        assert not unavailable & {i.item_id for i in core.recommend(user, 200).items}
    assert not unavailable & {i.item_id for i in core.popular_items(200).items}


def test_per_category_cap_spreads_the_list(published: PublishedModel) -> None:
    capped = fresh_core(published, dataclasses.replace(WIDE, rules=RulesConfig(max_per_category=2)))
    result = capped.recommend("u0001", 10)
    counts = Counter(category_of(capped, i.item_id) for i in result.items)
    assert len(result.items) == 10 and max(counts.values()) <= 2


def test_promoted_items_are_boosted(published: PublishedModel) -> None:
    model = published
    plain = fresh_core(published)
    promoted_tag = "bestseller"  # the sample shop tags some items
    promoted = {
        str(i)
        for i, tags in zip(model.item_ids, model.items.tags, strict=True)
        if promoted_tag in str(tags).split("|")
    }
    assert promoted
    rules = RulesConfig(promoted_tag=promoted_tag, boost_promoted=3.0)
    boosted = fresh_core(published, dataclasses.replace(WIDE, rules=rules))
    share = [
        np.mean([i.item_id in promoted for i in c.recommend("u0003", 10).items])
        for c in (plain, boosted)
    ]
    assert share[1] > share[0]


def test_context_items_drive_recommendations_for_anonymous_visitors(core: RecommenderCore) -> None:
    anchor = core.recommend("u0001", 1).items[0].item_id
    category = category_of(core, anchor)
    result = core.recommend("anonymous-session-1", 10, context_item_ids=(anchor, "unknown-item"))
    assert not result.fallback
    # The session model ("viewed_after:") or the fold-in ("similar_to:"), whichever training
    # chose: each names the one known context item.
    assert {i.reason.split(":")[1] for i in result.items} == {anchor}
    same = np.mean([category_of(core, i.item_id) == category for i in result.items])
    assert same >= 0.5, same


def test_fresh_events_change_the_next_recommendation(published: PublishedModel, tmp_path: Path):
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, store=store)
    user = "visitor-with-no-history"
    before = core.recommend(user, 10)
    assert before.fallback
    viewed = core.popular_items(50).items[-1].item_id
    category = category_of(core, viewed)
    recorded = core.record_events(
        [EventInput(user, viewed, "view"), EventInput(user, viewed, "cart")]
    )
    assert recorded == 2
    after = core.recommend(user, 10)
    assert not after.fallback and after.items != before.items
    assert np.mean([category_of(core, i.item_id) == category for i in after.items]) >= 0.5
    stored = store.read_events()
    assert stored.num_rows == 2 and set(stored.column("user_id").to_pylist()) == {user}


def test_a_bad_event_refuses_the_whole_batch(published: PublishedModel, tmp_path: Path):
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, store=store)
    good = EventInput("u1", "i0001", "view")
    for bad, message in [
        (EventInput("u1", "i0001", "click"), r"events\[1\]\.event must be one of"),
        (EventInput("", "i0001", "view"), r"events\[1\]\.user_id must not be empty"),
        (EventInput("u1", "i0001", "view", quantity=0.5), "quantity"),
        (EventInput("u1", "i0001", "view", price=-1.0), "price"),
        (EventInput("u1", "i0001", "view", timestamp_ms=10**15), "timestamp_ms"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            core.record_events([good, bad])
    with pytest.raises(InvalidArgument, match="must not be empty"):
        core.record_events([])
    assert store.read_events().num_rows == 0


def test_forget_user_removes_events_and_personalisation(
    published: PublishedModel, tmp_path: Path
) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, store=store)
    user = "u0001"
    core.record_events(
        [EventInput(user, "i0001", "purchase"), EventInput("u0002", "i0002", "view")]
    )
    assert not core.recommend(user, 5).fallback
    assert core.forget_user(user, "ticket 42") == 1
    after = core.recommend(user, 5)
    assert after.fallback, "a forgotten user is no longer personalised by the old model"
    assert store.read_events().column("user_id").to_pylist() == ["u0002"]
    assert user in store.forgotten_users()
    audit = (tmp_path / "events.db.audit.log").read_text()
    assert '"user_id": "u0001"' in audit and "ticket 42" in audit


def test_similar_items(core: RecommenderCore) -> None:
    item = str(core.model.item_ids[0])
    result = core.similar_items(item, 5)
    assert len(result.items) == 5
    assert item not in {i.item_id for i in result.items}
    assert {i.reason for i in result.items} == {f"similar_to:{item}"}
    category = category_of(core, result.items[0].item_id)
    within = core.similar_items(item, 5, Filters(include_categories=(category,)))
    assert {category_of(core, i.item_id) for i in within.items} == {category}
    with pytest.raises(NotFound):
        core.similar_items("no-such-item", 5)


@pytest.mark.parametrize("k", [0, -1, 501])
def test_k_outside_range_is_invalid(published: PublishedModel, k: int) -> None:
    core = fresh_core(published, ServingConfig())
    with pytest.raises(InvalidArgument, match="k must be between 1 and 500"):
        core.recommend("u0001", k)
    with pytest.raises(InvalidArgument, match="k must be between"):
        core.similar_items("i0001", k)


def test_limits_on_ids_and_lists(core: RecommenderCore) -> None:
    with pytest.raises(InvalidArgument, match="user_id"):
        core.recommend("", 5)
    with pytest.raises(InvalidArgument, match="item_id"):
        core.similar_items("", 5)
    with pytest.raises(InvalidArgument, match="longer than 256"):
        core.recommend("u" * 257, 5)
    with pytest.raises(InvalidArgument, match="at most 1000"):
        core.recommend("u0001", 5, Filters(exclude_item_ids=tuple(f"x{n}" for n in range(1001))))


def test_no_model_loaded_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        RecommenderCore().recommend("u0001", 5)


def test_popular_items_overall_per_category_and_trending(core: RecommenderCore) -> None:
    model = core.model
    overall = core.popular_items(20)
    assert len(overall.items) == 20
    scores = [i.score for i in overall.items]
    assert scores == sorted(scores, reverse=True)
    category = str(model.items.categories[model.item_index(overall.items[-1].item_id)])
    in_category = core.popular_items(10, [category])
    assert in_category.items
    for item in in_category.items:
        assert model.items.categories[model.item_index(item.item_id)] == category
    hot = core.popular_items(10, trending=True)
    assert {i.reason for i in hot.items} == {"trending"}
    assert core.popular_items(5, ["no-such-category"]).items == []
    # The filters' own include list applies too, alone or together with `categories`.
    filtered = core.popular_items(10, filters=Filters(include_categories=(category,)))
    assert filtered.items == in_category.items
    assert core.popular_items(5, [category], filters=Filters(include_categories=("x",))).items == []


def test_variants_are_assigned_deterministically_by_weight() -> None:
    experiment = ExperimentConfig(
        "e", "salt-1", [VariantConfig("a", 3.0), VariantConfig("b", 1.0, "popular")]
    )
    users = [f"user-{n}" for n in range(4000)]
    first = [assign_variant(experiment, u).name for u in users]
    assert first == [assign_variant(experiment, u).name for u in users]
    share = first.count("a") / len(users)
    assert 0.72 < share < 0.78
    reshuffled = dataclasses.replace(experiment, salt="salt-2")
    moved = np.mean(
        [assign_variant(reshuffled, u).name != v for u, v in zip(users, first, strict=True)]
    )
    assert moved > 0.2


def test_experiment_variant_is_returned_and_recorded(published: PublishedModel, tmp_path: Path):
    experiment = ExperimentConfig(
        "home", "s", [VariantConfig("model", 1.0), VariantConfig("popular", 1.0, "popular")]
    )
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, dataclasses.replace(WIDE, experiments=[experiment]), store)
    seen = {}
    for n in range(40):
        user = str(published.user_ids[n])
        result = core.recommend(user, 5)
        seen[result.variant] = result
        expected = assign_variant(experiment, user).name
        assert result.variant == f"home/{expected}"
        assert result.fallback == (expected == "popular")
        core.record_events(
            [
                EventInput(
                    user,
                    result.items[0].item_id,
                    "view",
                    recommendation_id=result.recommendation_id,
                )
            ]
        )
    assert set(seen) == {"home/model", "home/popular"}
    store.record_impressions(core.take_impressions())
    outcomes = store.read_outcomes()
    assert outcomes.num_rows == 40
    assert set(outcomes.column("variant").to_pylist()) == {"home/model", "home/popular"}
    assert store.read_impressions().num_rows == 40


def test_repeated_requests_reuse_the_list_until_something_changes(
    published: PublishedModel, tmp_path: Path
) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, store=store)
    first = core.recommend("u0005", 10)
    again = core.recommend("u0005", 10)
    assert again.items == first.items and again.recommendation_id != first.recommendation_id
    assert core._lists.hits == 1
    assert core.recommend("u0005", 9).items == first.items[:9]  # another request: computed
    core.record_events([EventInput("u0005", core.popular_items(60).items[-1].item_id, "cart")])
    assert core.recommend("u0005", 10).items != first.items
    uncached = fresh_core(published, dataclasses.replace(WIDE, cache_size=0))
    assert uncached.recommend("u0005", 10).items == first.items


def test_id_lookups_never_confuse_longer_ids(published: PublishedModel) -> None:
    from recsvc.ids import sorted_positions

    ids = np.array(["a", "b", "cc"])
    assert sorted_positions(ids, np.array(["cc", "ccc", "b", "z"])).tolist() == [2, -1, 1, -1]
    user = str(published.user_ids[0])
    assert published.user_index(user) == 0
    assert published.user_index(user + "0") is None  # truncated, it would match


def test_a_forgotten_user_stays_forgotten_after_a_restart(
    published: PublishedModel, tmp_path: Path
) -> None:
    """The deletion lives in the event store: a new process (a restart, another replica) on
    the same store keeps serving the user as a stranger, by every call."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    user = a_buyer(fresh_core(published))
    before = fresh_core(published, store=open_event_store(url))
    assert not before.recommend(user, 5).fallback
    assert user in before.find_audience(segment_id=before.user_profile(user)["rfm_segment_id"],
                                        k=5000).user_ids  # fmt: skip
    before.forget_user(user, "ticket 7")
    before.event_store.close()

    restarted = fresh_core(published, store=open_event_store(url))
    assert restarted.recommend(user, 5).fallback
    with pytest.raises(NotFound):
        restarted.user_profile(user)
    for category in ("garden", "books"):
        assert user not in restarted.find_audience(category=category, k=5000).user_ids
    restarted.event_store.close()


def test_a_forgotten_user_is_served_exactly_as_a_visitor_never_seen(
    published: PublishedModel, tmp_path: Path
) -> None:
    """Nothing the model holds about a forgotten user (history, profile, users-file
    attributes, lifecycle stage) shapes what they are served."""
    core = fresh_core(published, store=open_event_store(f"sqlite:///{tmp_path / 'e.db'}"))
    stranger = core.recommend("never-seen-visitor", 10)
    for user in (a_buyer(core), "u1460", "u0003"):
        before = core.recommend(user, 10)
        assert (before.strategy, before.lifecycle_stage) != (
            stranger.strategy,
            stranger.lifecycle_stage,
        ) or before.items != stranger.items
        core.forget_user(user, "test")
        after = core.recommend(user, 10)
        assert after.items == stranger.items
        assert (after.fallback, after.strategy, after.lifecycle_stage) == (
            stranger.fallback,
            stranger.strategy,
            stranger.lifecycle_stage,
        )
        filtered = Filters(include_categories=("garden",))
        assert (
            core.recommend(user, 5, filtered, exclude_purchased=True).items
            == core.recommend("never-seen-visitor", 5, filtered, exclude_purchased=True).items
        )
    core.event_store.close()


def test_a_variant_whose_pinned_version_is_not_loaded_counts_no_impression(
    published: PublishedModel, tmp_path: Path
) -> None:
    """Until its version is loaded, a pinned variant's users get the current model with no
    variant: their lists never count as that arm's impressions."""
    experiment = ExperimentConfig(
        "pin", "s", [VariantConfig("current", 1.0), VariantConfig("old", 1.0, "model", "v0")]
    )
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    core = fresh_core(published, dataclasses.replace(WIDE, experiments=[experiment]), store)
    variants = Counter(core.recommend(str(u), 5).variant for u in published.user_ids[:40])
    assert set(variants) == {"pin/current", ""} and variants[""] > 5
    assert {v for _, _, v, _, _ in core.take_impressions()} == {"pin/current"}
    store.close()


def test_where_the_log_has_no_repeats_fresh_and_trained_items_are_never_served_again(
    published: PublishedModel,
) -> None:
    """A model judged on unseen items (serving.exclude_seen) never serves what the user touched:
    in training, or since (fresh events), on the exact and the cached path alike."""
    manifest = {**published.manifest, "serving": {**published.manifest["serving"]}}
    manifest["serving"]["exclude_seen"] = True
    core = fresh_core(dataclasses.replace(published, manifest=manifest))
    user = a_buyer(core)
    row = core.model.user_index(user)
    touched = set(core.model.item_ids[core.model.seen_by(row)].tolist())
    first = [i.item_id for i in core.recommend(user, 20).items]
    assert len(first) == 20 and not touched & set(first)
    core.record_events([EventInput(user, first[0], "view"), EventInput(user, first[1], "cart")])
    after = [i.item_id for i in core.recommend(user, 20).items]
    assert len(after) == 20 and not (touched | {first[0], first[1]}) & set(after)
    visitor = [i.item_id for i in core.recommend("walk-in", 10, context_item_ids=(first[2],)).items]
    assert first[2] not in visitor and len(visitor) == 10


def test_similar_and_popular_lists_honour_exclusions_and_carry_the_version(
    published: PublishedModel,
) -> None:
    """Exclusions drop exactly the items named (the rest keep their order), the lists carry the
    model version and real scores, and business boosts never reorder similar items."""
    core = fresh_core(published)
    item = str(core.model.item_ids[3])
    similar = core.similar_items(item, 12)
    ids = [i.item_id for i in similar.items]
    assert similar.model_version == published.version and len(ids) == 12
    assert all(isinstance(i.score, float) and np.isfinite(i.score) for i in similar.items)
    fewer = core.similar_items(item, 10, Filters(exclude_item_ids=tuple(ids[:2])))
    assert [i.item_id for i in fewer.items] == ids[2:12]
    first = str(core.model.item_ids[0])  # index 0 is an item like any other
    assert first in {i.item_id for i in core.similar_items(str(core.model.item_ids[1]), 999).items}

    boosted = fresh_core(
        published,
        dataclasses.replace(WIDE, rules=RulesConfig(promoted_tag="gift", boost_promoted=50.0)),
    )
    assert [i.item_id for i in boosted.similar_items(item, 12).items] == ids

    popular = core.popular_items(10)
    top = [i.item_id for i in popular.items]
    assert popular.model_version == published.version
    assert [
        i.item_id
        for i in core.popular_items(8, filters=Filters(exclude_item_ids=tuple(top[:2]))).items
    ] == top[2:10]
    hot = core.popular_items(10, trending=True)
    assert [i.item_id for i in hot.items] != top and {i.reason for i in hot.items} == {"trending"}
    category = category_of(core, top[0])
    both = core.popular_items(5, [category, "toys-nowhere"], filters=Filters(
        include_categories=(category, "other")))  # fmt: skip
    assert both.items and {category_of(core, i.item_id) for i in both.items} == {category}
    assert core.popular_items(5, ["x"], filters=Filters(include_categories=("y",))).model_version


@pytest.mark.parametrize("scaling", ["log", "bm25", "none"])
def test_fresh_events_join_the_trained_row_exactly_as_training_would_weigh_them(
    core: RecommenderCore, scaling: str
) -> None:
    """A fresh event adds its signal weight to the raw count under the item's trained
    confidence, then the sum is scaled again (log1p for log and bm25, whose per-pair stand-in
    it is); context items count as views; items the model does not know are skipped."""
    serving = dataclasses.replace(core.serving, scaling=scaling, history_half_life=0.0)
    model = serving.published
    user = int(np.argmax(np.diff(model.history_indptr)))
    items, confidences = model.history_of(user)
    scale, unscale = (np.log1p, np.expm1) if scaling != "none" else (np.asarray, np.asarray)
    weights = serving.signal_weights

    unchanged = core.policy.history_row(serving, user, [], np.array([], dtype=np.int64))
    np.testing.assert_allclose(unchanged.toarray()[0, items], confidences, rtol=1e-5)
    assert unchanged.nnz == items.size and unchanged.shape == (1, serving.n_items)

    known, first = int(items[0]), 0 if int(items[0]) != 0 else 1
    fresh = [
        (str(model.item_ids[known]), "cart", 1),
        (str(model.item_ids[first]), "purchase", 2),
        ("no-such-item", "view", 3),
    ]
    row = core.policy.history_row(serving, user, fresh, np.array([first], dtype=np.int64))
    trained = dict(zip(items.tolist(), confidences.tolist(), strict=True))
    expected_known = scale(unscale(trained[known]) + weights["cart"])
    expected_first = scale(unscale(trained.get(first, 0.0)) + weights["purchase"] + weights["view"])
    dense = row.toarray()[0]
    np.testing.assert_allclose(dense[[known, first]], [expected_known, expected_first], rtol=1e-5)
    assert row.dtype == np.float32

    stranger = core.policy.history_row(serving, None, fresh[1:], np.array([], dtype=np.int64))
    assert stranger.indices.tolist() == [first]
    np.testing.assert_allclose(stranger.data, [scale(weights["purchase"])], rtol=1e-5)


@pytest.mark.parametrize("scaling", ["log", "none"])
def test_fresh_events_decay_a_user_s_history_as_training_over_all_of_them_would(
    core: RecommenderCore, scaling: str
) -> None:
    """With signals.history_half_life, the row served for a user whose newest moments came
    after training (fresh events, then context items: the newest moment) is the row training
    would have built from all of their events: older moments fade by the moments after them."""
    model = core.serving.published
    signals = SignalsConfig(scaling=scaling, history_half_life=2.0)
    items = [str(i) for i in model.item_ids[:4]]
    trained_rows = [("u", items[0], "purchase", 10), ("u", items[1], "view", 20)]
    fresh = [(items[1], "cart", 30), (items[2], "view", 30), (items[0], "view", 40)]
    context = items[3]
    every = [*trained_rows, *[("u", i, e, t) for i, e, t in fresh], ("u", context, "view", 50)]

    def row_of(rows: list[tuple[str, str, str, int]]) -> sp.csr_matrix:
        built = build_interactions(events_table(rows), signals, np.array(["u"]), model.item_ids)
        return built.confidence.tocsr()

    trained = row_of(trained_rows)
    published = dataclasses.replace(
        model,
        user_ids=np.array(["u"]),
        history_indptr=trained.indptr,
        history_indices=trained.indices,
        history_data=trained.data,
    )
    serving = dataclasses.replace(
        core.serving,
        published=published,
        signal_weights={e: signals.weight(e) for e in EVENT_NAMES},
        scaling=scaling,
        history_half_life=2.0,
    )
    context_index = published.item_indices([context])
    served = core.policy.history_row(serving, 0, fresh, context_index)
    np.testing.assert_allclose(served.toarray(), row_of(every).toarray(), rtol=1e-5)
    undecayed = dataclasses.replace(serving, history_half_life=0.0)
    assert not np.allclose(
        core.policy.history_row(undecayed, 0, fresh, context_index).toarray(),
        row_of(every).toarray(),
    )


def test_real_time_state_keeps_the_most_recently_active_users_within_its_bound() -> None:
    from recsvc.serving.state import RealtimeHistory

    history = RealtimeHistory(per_user=2, users=3)
    for n in range(5):
        history.add(f"u{n}", "i1", "view", n)
    history.add("u2", "i2", "view", 9)  # u2 active again: u3 is now the least recent
    history.add("u5", "i1", "view", 10)
    assert [u for u in (f"u{n}" for n in range(6)) if history.of(u)] == ["u2", "u4", "u5"]
    for stamp in range(3):
        history.add("u5", f"i{stamp}", "cart", stamp)
    assert [e[0] for e in history.of("u5")] == ["i1", "i2"], "newest per_user events kept"


def test_event_checks_at_their_bounds_and_what_is_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule of a RecordEvents batch at its edge, each refusal's exact words, and the
    stored event as given (price and all)."""
    import recsvc.serving.core as core_module

    now_ms = 1_760_000_000_000
    monkeypatch.setattr(core_module.time, "time", lambda: now_ms / 1000)
    core = RecommenderCore(ServingConfig(limits=LimitsConfig(max_events_per_call=3)))
    latest = now_ms + core_module.MAX_FUTURE_MS

    (stored,) = core.check_events([EventInput("u1", "i1", "purchase", latest, 2.0, 0.0, "rec-1")])
    assert tuple(stored) == ("u1", "i1", "purchase", latest, 2.0, 0.0, "", "rec-1")
    (cheap,) = core.check_events([EventInput("u1", "i1", "view", 1, 1.0, 0.5)])
    assert (cheap.timestamp_ms, cheap.price) == (1, 0.5)
    (now,) = core.check_events([EventInput("u1", "i1", "view")])
    assert now.timestamp_ms == now_ms, "0 means now"
    assert len(core.check_events([EventInput("u1", "i1", "view")] * 3)) == 3

    def refused(events: list[EventInput], message: str) -> None:
        with pytest.raises(InvalidArgument) as refusal:
            core.check_events(events)
        assert str(refusal.value) == message

    refused([], "events must not be empty")
    refused([EventInput("u1", "i1", "view")] * 4, "at most 3 events per call, got 4")
    refused(
        [EventInput("u1", "i1", "view"), EventInput("u1", "i\n1", "view")],
        "events[1].item_id holds a control character",
    )
    refused(
        [EventInput("u1", "i1", "like")],
        "events[0].event must be one of view, cart, purchase, got 'like'",
    )
    refused(
        [EventInput("u1", "i1", "view", latest + 1)],
        f"events[0].timestamp_ms {latest + 1} is outside the allowed range",
    )
    refused(
        [EventInput("u1", "i1", "view", -1)],
        "events[0].timestamp_ms -1 is outside the allowed range",
    )
    refused(
        [EventInput("u1", "i1", "view", 0, 0.0)],
        "events[0].quantity must be a positive whole number",
    )
    refused(
        [EventInput("u1", "i1", "view", 0, 1.0, float("inf"))],
        "events[0].price must be a number >= 0",
    )
    refused(
        [EventInput("u1", "i1", "view", 0, 1.0, None, "rec\x00")],
        "events[0].recommendation_id holds a control character",
    )


def test_recommend_names_each_refused_argument_and_uses_the_callers_attributes(
    published: PublishedModel,
) -> None:
    core = fresh_core(published, ServingConfig(limits=LimitsConfig(max_list_size=2)))
    refusals = [
        (lambda: core.recommend("", 5), "user_id must not be empty"),
        (
            lambda: core.recommend("u0001", 5, context_item_ids=("i1", "i2", "i3")),
            "context_item_ids has 3 entries; at most 2",
        ),
        (
            lambda: core.recommend("u0001", 5, user_attributes={"a": "1", "b": "2", "c": "3"}),
            "too many user_attributes",
        ),
    ]
    for call, message in refusals:
        with pytest.raises(InvalidArgument) as refusal:
            call()
        assert str(refusal.value) == message
    stranger = core.recommend("walk-in", 5)
    walk_in = core.recommend("walk-in", 5, user_attributes={"age_band": "55+", "region": "east"})
    assert (stranger.strategy, walk_in.strategy) == ("popular", "hybrid")
    assert stranger.lifecycle_stage == walk_in.lifecycle_stage == "new"
    known = core.recommend("u0001", 5)
    assert (known.strategy, known.lifecycle_stage) == ("personal", "active")


def test_a_new_event_reaches_the_list_when_the_bounded_history_keeps_its_length(
    published: PublishedModel,
) -> None:
    """Lists are cached under the user's fresh history; with the history at its bound, a new
    event drops the oldest and the length stays: the list must still follow the new event."""
    config = dataclasses.replace(WIDE, realtime_events_per_user=2)
    categories = published.items.categories
    first, second = (str(published.item_ids[np.flatnonzero(categories == c)[0]])
                     for c in ("garden", "books"))  # fmt: skip
    cached = fresh_core(published, config)
    visitor = "visitor-at-the-bound"
    cached.record_events([EventInput(visitor, first, "view"), EventInput(visitor, first, "cart")])
    assert cached.recommend(visitor, 10).items
    cached.record_events([EventInput(visitor, second, "view")])
    assert [item for item, _, _ in cached.realtime.of(visitor)] == [first, second]
    uncached = fresh_core(published, config)
    uncached.record_events(
        [EventInput(visitor, first, "cart"), EventInput(visitor, second, "view")]
    )
    assert cached.recommend(visitor, 10).items == uncached.recommend(visitor, 10).items
