"""The ranking policy's choices, each against an answer worked out apart from it: which list a
strategy serves, what a set of filters lets through, the unit of a boost, and why an item is
on an anonymous session's list."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.config import (
    ExperimentConfig,
    LifecycleConfig,
    LimitsConfig,
    ServingConfig,
    VariantConfig,
)
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.serving.policy import REPURCHASE_LIFT, top_spread
from recsvc.serving.values import Filters
from recsvc.training.pipeline import TrainResult

WIDE = LimitsConfig(max_k=5000, max_list_size=1000)


@pytest.fixture(scope="module")
def published(trained: TrainResult) -> PublishedModel:
    return PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))


def _core(published: PublishedModel, **config) -> RecommenderCore:
    core = RecommenderCore(ServingConfig(limits=WIDE, **config))
    core.swap(published)
    return core


def _ids(listed) -> list[str]:
    return [i.item_id for i in listed.items]


def _everyone(strategy: str) -> LifecycleConfig:
    return LifecycleConfig(*[strategy] * 5)


@pytest.mark.parametrize("strategy", ["popular", "trending"])
def test_a_stage_served_popular_or_trending_gets_that_list(
    published: PublishedModel, strategy: str
) -> None:
    core = _core(published, lifecycle=_everyone(strategy))
    user = str(published.user_ids[0])
    listed = core.recommend(user, 20)
    expected = core.popular_items(20, trending=strategy == "trending")
    assert _ids(listed) == _ids(expected)
    assert (listed.fallback, listed.strategy) == (True, strategy)
    assert {i.reason for i in listed.items} == {strategy}
    assert {i.reason for i in expected.items} == {strategy}


def test_popular_and_trending_lists_differ(published: PublishedModel) -> None:
    core = _core(published)
    assert _ids(core.popular_items(20)) != _ids(core.popular_items(20, trending=True))


def test_a_visitor_never_seen_gets_the_popular_list_not_the_trending_one(
    published: PublishedModel,
) -> None:
    core = _core(published)
    listed = core.recommend("never-seen", 20)
    assert _ids(listed) == _ids(core.popular_items(20))
    assert (listed.fallback, listed.strategy) == (True, "popular")


def test_buy_again_for_someone_who_never_bought_serves_their_personal_list(
    published: PublishedModel,
) -> None:
    bought = np.diff(published.purchased_indptr)
    never_bought = [
        str(published.user_ids[u])
        for u in np.flatnonzero(bought == 0)[:5].tolist()
        if published.history_of(u)[0].size
    ]
    assert never_bought
    personal = _core(published, lifecycle=_everyone("personal"))
    buy_again = _core(published, lifecycle=_everyone("repurchase"))
    for user in never_bought:
        listed = buy_again.recommend(user, 10)
        assert (listed.fallback, listed.strategy) == (False, "personal")
        assert _ids(listed) == _ids(personal.recommend(user, 10))


def test_buy_again_honours_the_request_s_exclusions(published: PublishedModel) -> None:
    core = _core(published, lifecycle=_everyone("repurchase"))
    user = int(np.argmax(np.diff(published.purchased_indptr)))
    user_id = str(published.user_ids[user])
    first = _ids(core.recommend(user_id, 10))
    excluded = first[:2]
    again = core.recommend(user_id, 10, Filters(exclude_item_ids=tuple(excluded)))
    assert not set(excluded) & set(_ids(again)) and len(again.items) == 10
    assert set(_ids(again)[:8]) == set(first[2:]), "the rest move up (ties in either order)"


def test_a_variant_on_the_model_follows_the_user_s_stage(published: PublishedModel) -> None:
    experiment = ExperimentConfig(
        name="exp", salt="s", variants=[VariantConfig(name="model", strategy="model")]
    )
    core = _core(published, experiments=[experiment])
    listed = core.recommend(str(published.user_ids[0]), 10)
    assert listed.variant == "exp/model"
    chosen = published.manifest["serving"]["lifecycle"][listed.lifecycle_stage]
    assert listed.strategy == chosen, "the stage's strategy, as training chose it"


def test_every_filter_at_once_lets_through_exactly_the_items_that_pass_each(
    published: PublishedModel,
) -> None:
    """A whole-catalogue list for a visitor never seen is every item the filters allow: no
    filter may undo another, and the price bounds include the bound itself."""
    core = _core(published)
    items = published.items
    categories = items.categories.astype(str)
    names = sorted(set(categories.tolist()))
    include, exclude_category = tuple(names[:3]), names[0]
    inside = categories == names[1]
    low, high = np.quantile(items.price[inside], [0.25, 0.75]).tolist()
    at_the_bounds = inside & ((items.price == low) | (items.price == high))
    if not at_the_bounds.any():  # make the bounds real prices
        low = float(np.min(items.price[inside & (items.price >= low)]))
        high = float(np.max(items.price[inside & (items.price <= high)]))
    excluded_item = str(published.item_ids[np.flatnonzero(categories == names[2])[0]])
    filters = Filters(
        include_categories=include,
        exclude_categories=(exclude_category,),
        exclude_item_ids=(excluded_item,),
        min_price=low,
        max_price=high,
    )
    expected = (
        np.isin(categories, include)
        & (categories != exclude_category)
        & (items.price >= low)
        & (items.price <= high)
        & np.asarray(items.available, dtype=bool)
        & (published.item_ids != excluded_item)
    )
    served = set(_ids(core.recommend("never-seen", 5000, filters)))
    assert served == set(published.item_ids[expected].tolist())
    assert {low, high} <= {float(items.price[published.item_index(i)]) for i in served}


def test_similar_items_are_not_cut_short_by_exclusions(published: PublishedModel) -> None:
    core = _core(published)
    anchor = str(published.item_ids[0])
    first = _ids(core.similar_items(anchor, 10))
    after = core.similar_items(anchor, 10, Filters(exclude_item_ids=tuple(first)))
    assert len(after.items) == 10 and not set(first) & set(_ids(after))


def test_an_anonymous_session_s_items_name_the_context_item_they_are_most_like(
    published: PublishedModel,
) -> None:
    """The fold-in's explanation (session_scoring "model"; the session model names the
    item each was viewed after: tests/test_frontend.py)."""
    core = _core(published, session_scoring="model")
    categories = published.items.categories.astype(str)
    popular = _ids(core.popular_items(200))
    by_category: dict[str, str] = {}
    for item in popular:
        by_category.setdefault(categories[published.item_index(item)], item)
    first, second = list(by_category.values())[:2]
    listed = core.recommend("session-1", 20, context_item_ids=(first, second))
    reasons = {f"similar_to:{first}", f"similar_to:{second}"}
    assert {i.reason for i in listed.items} == reasons, "both context items explain some"
    for entry in listed.items:
        anchor = entry.reason.removeprefix("similar_to:")
        alone = core.recommend("session-alone", 1000, context_item_ids=(anchor,))
        other = core.recommend(
            "session-other", 1000, context_item_ids=tuple({first, second} - {anchor})
        )
        score = {i.item_id: i.score for i in alone.items}.get(entry.item_id, -np.inf)
        rival = {i.item_id: i.score for i in other.items}.get(entry.item_id, -np.inf)
        assert score >= rival, entry


@pytest.mark.parametrize(("n", "explained"), [(20, True), (21, False)])
def test_context_items_explain_the_list_up_to_twenty(
    published: PublishedModel, n: int, explained: bool
) -> None:
    """Explaining each item costs one scoring per context item: up to 20, then plain."""
    core = _core(published, session_scoring="model")
    context = tuple(_ids(core.popular_items(n)))
    listed = core.recommend("session-2", 10, context_item_ids=context)
    named = {i.reason.startswith("similar_to:") for i in listed.items}
    assert named == {explained}


def test_the_unit_of_a_boost_is_the_spread_of_the_best_scores() -> None:
    assert top_spread(np.array([3.0])) == 1.0, "one score has no spread"
    assert top_spread(np.array([0.0, 4.0])) == pytest.approx(2.0)
    assert top_spread(np.array([2.0, 2.0, 2.0])) == 1.0, "equal scores have none either"
    assert top_spread(np.array([1.0, np.inf, -np.inf, np.nan, 3.0])) == pytest.approx(1.0)


def test_the_blend_lifts_bought_items_by_how_strongly_they_were_bought(
    published: PublishedModel,
) -> None:
    core = _core(published, lifecycle=_everyone("blend"))
    user = int(np.argmax(np.diff(published.purchased_indptr)))
    scores = published.model.score(np.array([user]))[0]
    items, confidences = published.history_of(user)
    known = dict(zip(items.tolist(), confidences.tolist(), strict=True))
    strength = {int(i): known.get(int(i), 1.0) for i in published.purchased_by(user).tolist()}
    unit = REPURCHASE_LIFT * top_spread(scores) / max(strength.values())
    listed = core.recommend(str(published.user_ids[user]), 50)
    assert listed.strategy == "blend"
    for entry in listed.items:
        item = published.item_index(entry.item_id)
        lift = unit * strength[item] if item in strength else 0.0
        assert entry.score == pytest.approx(scores[item] + lift, rel=1e-4, abs=1e-5)
        assert (entry.reason == "repurchase") == (item in strength)
    assert any(entry.reason == "repurchase" for entry in listed.items)
