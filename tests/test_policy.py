"""The ranking policy's choices, each against an answer worked out apart from it: which list a
strategy serves, what a set of filters lets through, the unit of a boost, and why an item is
on an anonymous session's list."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.config import (
    ExperimentConfig,
    LifecycleConfig,
    LimitsConfig,
    PageConfig,
    PageRowConfig,
    RulesConfig,
    ServingConfig,
    VariantConfig,
)
from recsvc.errors import NotFound
from recsvc.itemgraph import ItemGraph
from recsvc.models.popularity import TrendingRecommender
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.serving.policy import (
    REPURCHASE_LIFT,
    SESSION_DECAY,
    SESSION_DEPTH,
    _popular_below,
    top_spread,
)
from recsvc.serving.values import EventInput, Filters
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


def _biggest_buyer(published: PublishedModel) -> int:
    """The index of the user with the most purchases."""
    return int(np.argmax(np.diff(published.purchased_indptr)))


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


def test_popular_and_trending_lists_are_the_available_items_by_each_count(
    published: PublishedModel,
) -> None:
    core = _core(published)
    available = np.asarray(published.items.available, dtype=bool)
    for trending, source, reason in ((False, published.fallback, "popular"),
                                     (True, published.trending, "trending")):  # fmt: skip
        scores = np.asarray(source.item_scores)
        order = [i for i in np.argsort(-scores, kind="stable").tolist() if available[i]][:20]
        expected = [(str(published.item_ids[i]), float(scores[i]), reason) for i in order]
        _assert_ranked_as(core.popular_items(20, trending=trending).items, expected)
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
    user = _biggest_buyer(published)
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
    user = _biggest_buyer(published)
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


# RankItems: a frontend's candidates ranked by what Recommend ranks by, under every strategy.


def _visitors(core: RecommenderCore) -> list[tuple[str, tuple[str, ...]]]:
    """(user, context items): the biggest buyer without and with a context, a customer who
    never bought, an anonymous visit with a context, one that viewed an item and bought another
    (events recorded here), and a visitor never seen."""
    published = core.model
    buyer = str(published.user_ids[_biggest_buyer(published)])
    never_bought = str(
        published.user_ids[np.flatnonzero(np.diff(published.purchased_indptr) == 0)[0]]
    )
    popular = [str(i) for i in published.item_ids[np.argsort(-published.fallback.item_scores)[:3]]]
    core.record_events(
        [EventInput("visit-2", popular[0], "view"), EventInput("visit-2", popular[1], "purchase")]
    )
    return [
        (buyer, ()), (buyer, (popular[2],)), (never_bought, ()), ("visit-1", tuple(popular[:2])),
        ("visit-2", ()), ("stranger", ()),
    ]  # fmt: skip


@pytest.mark.parametrize("strategy", ["personal", "repurchase", "blend", "popular", "trending"])
def test_rank_items_ranks_recommends_own_list_as_recommend_does(
    published: PublishedModel, strategy: str
) -> None:
    """RankItems scores a frontend's candidates by what Recommend ranks by: given Recommend's
    own list shuffled, it gives it back in Recommend's order (equal scores in either order),
    with Recommend's scores, reasons and strategy, for a customer without and with a context,
    an anonymous visit and a visitor never seen."""
    core = _core(published, lifecycle=_everyone(strategy))
    served = set()
    for user, context in _visitors(core):
        listed = core.recommend(user, 30, context_item_ids=context)
        shuffled = list(np.random.default_rng(7).permutation(_ids(listed)))
        ranked = core.rank_items(user, [*shuffled, "no-such-item"], context_item_ids=context)
        assert ranked.strategy == listed.strategy and ranked.unknown_item_ids == ("no-such-item",)
        assert listed.fallback == (listed.strategy in ("popular", "trending"))
        assert ranked.items[-1] == ("no-such-item", 0.0, "unknown")
        listed_score = {i.item_id: i.score for i in listed.items}
        assert {(i.item_id, i.reason) for i in ranked.items[:-1]} == {
            (i.item_id, i.reason) for i in listed.items
        }
        order = [listed_score[i.item_id] for i in ranked.items[:-1]]
        assert order == sorted(order, reverse=True), (user, context)
        for item in ranked.items[:-1]:
            assert item.score == pytest.approx(listed_score[item.item_id], rel=1e-5)
        served.add(listed.strategy)
        # An excluded item leaves Recommend's list under every strategy, which stays full.
        first = listed.items[0].item_id
        again = core.recommend(
            user, 30, Filters(exclude_item_ids=(first,)), context_item_ids=context
        )
        assert first not in _ids(again) and len(again.items) == 30
        assert again.strategy == listed.strategy
    expected = {"personal": {"personal", "session", "popular"},
                "repurchase": {"repurchase", "personal", "session", "popular"},
                "blend": {"blend", "personal", "session", "popular"},
                "popular": {"popular"}, "trending": {"trending"}}  # fmt: skip
    assert served == expected[strategy]


def test_rank_items_puts_items_over_the_category_cap_last_and_names_the_filtered_out(
    published: PublishedModel,
) -> None:
    """Over `max_per_category` a candidate goes after the list, best first, never dropped;
    filters and exclusions leave candidates out and say which."""
    user = str(published.user_ids[0])
    candidates = _ids(_core(published).recommend(user, 40))
    categories = published.items.categories.astype(str)
    head, tail, count = [], [], {}
    for item in candidates:
        category = categories[published.item_index(item)]
        count[category] = count.get(category, 0) + 1
        (head if count[category] <= 2 else tail).append(item)
    assert tail, "some category over the cap"
    capped = _core(published, rules=RulesConfig(max_per_category=2))
    ranked = capped.rank_items(user, list(reversed(candidates)))
    assert _ids(ranked) == head + tail and ranked.left_out_item_ids == ()
    # A category filter and an exclusion.
    kept = categories[published.item_index(candidates[0])]
    filters = Filters(include_categories=(kept,), exclude_item_ids=(candidates[0],))
    ranked = _core(published).rank_items(user, [*candidates, "no-such-item"], filters)
    inside = [i for i in candidates[1:] if categories[published.item_index(i)] == kept]
    assert _ids(ranked) == [*inside, "no-such-item"]
    assert set(ranked.left_out_item_ids) == set(candidates) - set(inside)
    assert len(ranked.left_out_item_ids) == len(candidates) - len(inside)


# Bought together and buy again (the frontend's lists), against answers worked out here.


def _spread_by_hand(
    published: PublishedModel,
    graph: ItemGraph,
    seeds: list[int],
    weights: list[float],
    exclude: set[int],
) -> list[tuple[int, float, int]]:
    """(item, summed edge weight times its seed's weight, the seed of the strongest
    contribution) for every available item `graph` links the seeds to, strongest first."""
    total: dict[int, float] = {}
    strongest: dict[int, tuple[float, int]] = {}
    for seed, weight in zip(seeds, weights, strict=True):
        for item, edge in zip(*graph.neighbours(seed), strict=True):
            item, part = int(item), float(edge) * weight
            total[item] = total.get(item, 0.0) + part
            if part > strongest.get(item, (-np.inf, -1))[0]:
                strongest[item] = (part, seed)
    available = np.asarray(published.items.available, dtype=bool)
    allowed = [i for i in total if i not in exclude and available[i]]
    return sorted(((i, total[i], strongest[i][1]) for i in allowed), key=lambda t: -t[1])


def _basket_neighbours(
    published: PublishedModel, seeds: list[int], banned: set[int]
) -> list[tuple[int, float, int]]:
    """(item, summed basket weight from the seeds, the seed it is bought with most), for every
    item the basket graph links to the seeds that may be listed, strongest first."""
    together = published.together
    return _spread_by_hand(published, together, seeds, [1.0] * len(seeds), banned | set(seeds))


def _assert_ranked_as(listed, expected: list[tuple[str, float, str]]) -> None:
    """The list is `expected` (id, score, reason), best first, equal scores in either order."""
    assert len(listed) == len(expected)
    assert {(i.item_id, i.reason) for i in listed} == {(e[0], e[2]) for e in expected}
    for got, want in zip(listed, expected, strict=True):
        assert got.score == pytest.approx(want[1], rel=1e-5)
    by_id = {e[0]: e[1] for e in expected}
    assert all(i.score == pytest.approx(by_id[i.item_id], rel=1e-5) for i in listed)


def _cart(published: PublishedModel, n: int) -> list[int]:
    """The n most popular items that have basket neighbours, none of them another's."""
    chosen: list[int] = []
    for item in np.argsort(-published.fallback.item_scores).tolist():
        linked = set(published.together.neighbours(item)[0].tolist())
        if (
            linked
            and not linked & set(chosen)
            and not any(item in published.together.neighbours(c)[0].tolist() for c in chosen)
        ):
            chosen.append(item)
        if len(chosen) == n:
            return chosen
    raise AssertionError("no such cart")


def test_bought_together_for_a_cart_is_its_basket_neighbours_then_what_is_most_like_it(
    published: PublishedModel,
) -> None:
    core = _core(published)
    cart = _cart(published, 3)
    names = [str(published.item_ids[i]) for i in cart]
    n_items = published.item_ids.size
    available = np.asarray(published.items.available, dtype=bool)
    baskets = _basket_neighbours(published, cart, set())
    # The fill: each item's similarity to the cart summed over its items, named after the one
    # it is most like; never a cart item, a basket neighbour listed already, or unavailable.
    ids, scores = published.model.similar_items(np.array(cart), n_items)
    summed: dict[int, float] = {}
    most_like: dict[int, tuple[float, int]] = {}
    for seed, row_ids, row_scores in zip(cart, ids, scores, strict=True):
        for item, score in zip(row_ids.tolist(), row_scores.tolist(), strict=True):
            summed[item] = summed.get(item, 0.0) + score
            if score > most_like.get(item, (-np.inf, -1))[0]:
                most_like[item] = (score, seed)
    taken = {i for i, _, _ in baskets} | set(cart)
    fill = sorted(
        ((i, s) for i, s in summed.items() if i >= 0 and i not in taken and available[i]),
        key=lambda t: -t[1],
    )
    listed = core.bought_together(names, n_items)
    assert (listed.strategy, listed.fallback) == ("baskets+similar_items", False)
    assert len(baskets) == 3 and len(listed.items) == len(baskets) + len(fill)
    _assert_ranked_as(
        listed.items[:3],
        [(str(published.item_ids[i]), w, f"bought_with:{published.item_ids[s]}")
         for i, w, s in baskets],
    )  # fmt: skip
    _assert_ranked_as(
        listed.items[3:],
        [(str(published.item_ids[i]), s, f"similar_to:{published.item_ids[most_like[i][1]]}")
         for i, s in fill],
    )  # fmt: skip
    # A short list starts with the same basket neighbours; its fill sums each item's
    # similarity to the cart items it is among the most similar to (a few hundred).
    short = core.bought_together(names, 10)
    assert len(short.items) == 10 and set(_ids(short)[:3]) == set(_ids(listed)[:3])
    assert set(_ids(short)[3:]) <= set(_ids(listed)[3:20])
    # Exclusions, and a customer's own purchases when asked, leave the list; the rest move up.
    buyer = _biggest_buyer(published)
    bought = {str(i) for i in published.item_ids[published.purchased_by(buyer)]}
    first = listed.items[0].item_id
    for user, exclude_purchased, banned in (
        ("", False, {first}),
        (str(published.user_ids[buyer]), True, {first} | bought),
        (str(published.user_ids[buyer]), False, {first}),
    ):
        again = core.bought_together(
            names, n_items, Filters(exclude_item_ids=(first,)), user, exclude_purchased
        )
        assert _ids(again) == [i for i in _ids(listed) if i not in banned]
    assert bought & set(_ids(listed)[1:]), "the buyer bought some of them"


def test_a_thin_basket_history_is_filled_with_the_items_most_similar(
    published: PublishedModel,
) -> None:
    core = _core(published)
    available = np.asarray(published.items.available, dtype=bool)
    thin = next(
        i
        for i in np.argsort(published.fallback.item_scores).tolist()
        if 0 < len(_basket_neighbours(published, [i], set())) < 5
    )
    baskets = _basket_neighbours(published, [thin], set())
    ids, scores = published.model.similar_items(np.array([thin]), published.item_ids.size)
    taken = {i for i, _, _ in baskets} | {thin}
    similar = [
        (int(i), float(s))
        for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
        if i >= 0 and i not in taken and available[i]
    ]
    name = str(published.item_ids[thin])
    listed = core.bought_together([name], 20)
    assert listed.strategy == "baskets+similar_items"
    assert [i.reason for i in listed.items] == [f"bought_with:{name}"] * len(baskets) + [
        f"similar_to:{name}"
    ] * (20 - len(baskets))
    _assert_ranked_as(
        listed.items[: len(baskets)],
        [(str(published.item_ids[i]), w, f"bought_with:{name}") for i, w, _ in baskets],
    )
    _assert_ranked_as(
        listed.items[len(baskets) :],
        [(str(published.item_ids[i]), s, f"similar_to:{name}")
         for i, s in similar[: 20 - len(baskets)]],
    )  # fmt: skip


@pytest.mark.parametrize("cart", [[], ["no-such-item"]])
def test_bought_together_for_a_cart_the_model_does_not_know_is_the_popular_list(
    published: PublishedModel, cart: list[str]
) -> None:
    core = _core(published)
    first = _ids(core.popular_items(1))
    listed = core.bought_together(cart, 5, Filters(exclude_item_ids=tuple(first)))
    assert (listed.strategy, listed.fallback) == ("popular", True)
    assert listed.model_version == published.version
    assert _ids(listed) == _ids(core.popular_items(6))[1:]
    assert {i.reason for i in listed.items} == {"popular"}
    # Where training chose trending as the fallback, the items say so.
    hot = _core(dataclasses.replace(published, fallback=published.trending))
    assert {i.reason for i in hot.bought_together(cart, 5).items} == {"trending"}
    ranked = hot.rank_items("stranger", _ids(hot.popular_items(5)))
    assert {i.reason for i in ranked.items} == {"trending"} and ranked.strategy == "trending"


def test_buy_again_lists_what_the_customer_bought_most_strongly_first(
    published: PublishedModel,
) -> None:
    """The page's buy-again row: training purchases by their confidence, a fresh purchase
    adding one purchase weight, exclusions and unavailable items left out."""
    page = PageConfig(rows=[PageRowConfig("again", "buy_again", 8, "Buy again")])
    core = _core(published, page=page)
    buyer = _biggest_buyer(published)
    user = str(published.user_ids[buyer])
    items, confidences = published.history_of(buyer)
    known = dict(zip(items.tolist(), confidences.tolist(), strict=True))
    available = np.asarray(published.items.available, dtype=bool)
    strength = {
        int(i): known.get(int(i), 1.0)
        for i in published.purchased_by(buyer).tolist()
        if available[i]
    }
    assert len(strength) > 9

    def expected(strengths: dict[int, float], skip: int = 0) -> list[tuple[str, float, str]]:
        ranked = sorted(strengths.items(), key=lambda t: -t[1])[skip : skip + 8]
        return [(str(published.item_ids[i]), s, "repurchase") for i, s in ranked]

    (row,) = core.recommend_page(user).rows
    assert (row.name, row.kind) == ("again", "buy_again")
    _assert_ranked_as(row.items, expected(strength))
    top = row.items[0].item_id
    (row,) = core.recommend_page(user, Filters(exclude_item_ids=(top,))).rows
    _assert_ranked_as(row.items, expected(strength, skip=1))
    # A fresh purchase of the weakest adds one purchase weight to it; a new one starts at one.
    weakest = min(strength, key=strength.get)
    new = next(i for i in range(published.item_ids.size) if i not in known and available[i])
    weight = float(published.manifest["config"]["signals"]["purchase"])
    core.record_events(
        [EventInput(user, str(published.item_ids[i]), "purchase") for i in (weakest, new)]
    )
    (row,) = core.recommend_page(user).rows
    _assert_ranked_as(
        row.items, expected({**strength, weakest: strength[weakest] + weight, new: weight})
    )
    assert not any(row.items for row in core.recommend_page("never-seen").rows)


def test_new_arrivals_are_the_items_first_seen_last_scored_by_days_back(
    published: PublishedModel,
) -> None:
    page = PageConfig(rows=[PageRowConfig("fresh", "new_arrivals", 6, "Just in")])
    core = _core(published, page=page)
    first_seen = np.asarray(published.items.first_seen_ms, dtype=np.int64)
    available = np.asarray(published.items.available, dtype=bool)
    newest = first_seen.max()
    categories = published.items.categories.astype(str)

    def expected(allowed: np.ndarray) -> list[tuple[str, float, str]]:
        order = [i for i in np.argsort(-first_seen, kind="stable").tolist() if allowed[i]][:6]
        days = (first_seen[order] - newest) / 86_400_000
        return [(str(published.item_ids[i]), d, "new") for i, d in zip(order, days, strict=True)]

    (row,) = core.recommend_page("u0001").rows
    assert (row.name, row.title) == ("fresh", "Just in")
    _assert_ranked_as(row.items, expected(available))
    assert row.items[-1].score < 0.0, "scores count days back from the newest item"
    # An exclusion and a category filter hold on the row, which stays full.
    top = row.items[0].item_id
    category = categories[published.item_index(row.items[1].item_id)]
    filters = Filters(include_categories=(category,), exclude_item_ids=(top,))
    (row,) = core.recommend_page("u0001", filters).rows
    allowed = available & (categories == category)
    allowed[published.item_index(top)] = False
    _assert_ranked_as(row.items, expected(allowed))


def test_a_repurchase_list_is_what_was_bought_strongest_first_then_trending_items(
    published: PublishedModel,
) -> None:
    core = _core(published, lifecycle=_everyone("repurchase"))
    buyer = _biggest_buyer(published)
    items, confidences = published.history_of(buyer)
    known = dict(zip(items.tolist(), confidences.tolist(), strict=True))
    available = np.asarray(published.items.available, dtype=bool)
    everything = {int(i): known[int(i)] for i in published.purchased_by(buyer).tolist()}
    strength = {i: s for i, s in everything.items() if available[i]}
    assert len(strength) < len(everything), "some were bought and are unavailable now"
    floor = min(everything.values()) - 1.0  # below every purchase, listed or not
    # Trending items not bought, one point apart in trending order (counting those
    # unavailable, which are then left out).
    order = np.argsort(-np.asarray(published.trending.item_scores), kind="stable").tolist()
    below = [(i, floor - n) for n, i in enumerate(i for i in order if i not in everything)]
    trending = [(i, s) for i, s in below if available[i]][:10]
    expected = [
        (str(published.item_ids[i]), s, "repurchase")
        for i, s in sorted(strength.items(), key=lambda t: -t[1])
    ] + [(str(published.item_ids[i]), s, "trending") for i, s in trending]
    user = str(published.user_ids[buyer])
    listed = core.recommend(user, len(strength) + 10)
    assert (listed.strategy, listed.fallback) == ("repurchase", False)
    _assert_ranked_as(listed.items, expected)
    # A fresh purchase of an item of a lower index than those bought before joins at one
    # purchase weight; RankItems scores the new list as Recommend does.
    first = next(i for i in range(published.item_ids.size) if i not in everything and available[i])
    assert first < max(strength)
    core.record_events([EventInput(user, str(published.item_ids[first]), "purchase")])
    weight = float(published.manifest["config"]["signals"]["purchase"])
    listed = core.recommend(user, len(strength) + 11)
    assert {i.item_id: i.score for i in listed.items}[str(published.item_ids[first])] == weight
    ranked = core.rank_items(user, _ids(listed)[::-1])
    scores = [i.score for i in ranked.items]
    assert scores == sorted(scores, reverse=True)
    assert {i.item_id: (i.score, i.reason) for i in ranked.items} == {
        i.item_id: (i.score, i.reason) for i in listed.items
    }


def test_lists_of_likeness_are_not_boosted(published: PublishedModel) -> None:
    """Similar items, bought together, buy again and new arrivals rank by likeness, purchases
    and age alone: the rules' boosts of new and promoted items act on Recommend's list."""
    boosts = RulesConfig(boost_new=5.0, promoted_tag="gift", boost_promoted=5.0)
    plain, boosted = _core(published), _core(published, rules=boosts)
    buyer = str(published.user_ids[_biggest_buyer(published)])
    assert _ids(plain.recommend(buyer, 10)) != _ids(boosted.recommend(buyer, 10))
    item = _ids(plain.popular_items(1))[0]
    assert boosted.similar_items(item, 30).items == plain.similar_items(item, 30).items
    cart = [str(published.item_ids[i]) for i in _cart(published, 3)]
    assert boosted.bought_together(cart, 30).items == plain.bought_together(cart, 30).items
    rows = [PageRowConfig("again", "buy_again", 30), PageRowConfig("fresh", "new_arrivals", 30)]
    pages = [
        _core(published, rules=rules, page=PageConfig(rows=rows)).recommend_page(buyer).rows
        for rules in (RulesConfig(), boosts)
    ]
    assert [len(r.items) for r in pages[0]] == [30, 30] and pages[0] == pages[1]


def _followed(
    published: PublishedModel, seeds: list[int], weights: list[float], exclude: set[int]
) -> list[tuple[str, float, str]]:
    """What the session model says visitors view after `seeds` (newest first, with their
    recency weights): each item's summed edge weight times its seed's weight, naming the seed
    of the strongest contribution, strongest first."""
    names = published.item_ids
    return [
        (str(names[i]), score, f"viewed_after:{names[seed]}")
        for i, score, seed in _spread_by_hand(
            published, published.sessions, seeds, weights, exclude
        )
    ]


@pytest.mark.parametrize("mode", ["session", "model", "auto"])
def test_session_scoring_says_whether_an_anonymous_visit_is_followed_by_the_session_model(
    published: PublishedModel, mode: str
) -> None:
    core = _core(published, session_scoring=mode)
    follows = mode == "session" or (mode == "auto" and core.serving.session_model)
    assert core.serving.session_model, "training found the session model the better"
    item = _ids(core.popular_items(1))[0]
    listed = core.recommend("visit-3", 10, context_item_ids=(item,))
    assert listed.strategy == ("session" if follows else "personal")
    assert all(i.reason.startswith("viewed_after:") for i in listed.items) == follows
    known = core.recommend("u0001", 10, context_item_ids=(item,))
    assert known.strategy == "personal", "a known customer's context folds into their own row"


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_a_visit_is_followed_from_its_newest_items_each_worth_half_the_one_after(
    published: PublishedModel, exclude_seen: bool
) -> None:
    """The context is newer than the visit's recorded clicks, the newest click first; an item
    seen twice counts once, where it was seen last; unknown items are skipped; ten items at
    most; where the model excludes what was seen, the visit's own items are not listed."""
    serving = {**published.manifest.get("serving", {}), "exclude_seen": exclude_seen}
    model = dataclasses.replace(published, manifest={**published.manifest, "serving": serving})
    core = _core(model, session_scoring="session")
    linked = [
        i
        for i in np.argsort(-published.fallback.item_scores).tolist()
        if published.sessions.neighbours(i)[0].size
    ]
    a, b, c, d = (str(published.item_ids[i]) for i in linked[:4])
    core.record_events([EventInput("visit-4", item, "view") for item in (c, a, d)])
    listed = core.recommend("visit-4", 20, context_item_ids=(a, "no-such-item", b))
    seeds = [linked[1], linked[0], linked[3], linked[2]]  # b, a (context), then d, c clicked
    weights = [SESSION_DECAY**n for n in range(4)]
    expected = _followed(published, seeds, weights, set(seeds) if exclude_seen else set())
    assert listed.strategy == "session" and len(expected) >= 20
    _assert_ranked_as(listed.items, expected[:20])
    # Past ten distinct items the oldest are not followed: what only it leads to is not
    # listed for it, but as a popular fill after what the ten lead to.
    many = linked[: SESSION_DEPTH + 1]
    seeds = many[::-1][:SESSION_DEPTH]
    weights = [SESSION_DECAY**n for n in range(SESSION_DEPTH)]
    banned = set(many) if exclude_seen else set()
    expected = _followed(published, seeds, weights, banned)
    k = len(expected) + 30
    names = tuple(str(published.item_ids[i]) for i in many)
    deep = core.recommend("visit-5", k, context_item_ids=names)
    assert len(deep.items) == k
    _assert_ranked_as(deep.items[: len(expected)], expected)
    # The fill: the most popular of the rest (equal counts in either order).
    listed_first = {e[0] for e in expected} | {str(published.item_ids[i]) for i in banned}
    popular = [i for i in _ids(core.popular_items(k + len(many))) if i not in listed_first]
    counts = np.asarray(published.fallback.item_scores)
    fill = deep.items[len(expected) :]
    assert [counts[published.item_index(i.item_id)] for i in fill] == [
        counts[published.item_index(i)] for i in popular[:30]
    ]
    assert {i.reason for i in fill} == {"popular"}
    oldest = set(published.sessions.neighbours(linked[0])[0].tolist())
    assert oldest - {published.item_index(e[0]) for e in expected}, "it leads elsewhere too"
    # RankItems puts even the weakest of what the visit leads to before the most popular
    # of the rest, as Recommend lists them.
    weakest, most_popular = [e[0] for e in expected[-5:]], popular[:5]
    ranked = core.rank_items("visit-5", [*most_popular, *weakest], context_item_ids=names)
    assert set(_ids(ranked)[:5]) == set(weakest) and _ids(ranked)[5:] == most_popular


def test_rank_items_for_a_visit_puts_what_it_leads_to_first_then_the_most_popular(
    published: PublishedModel,
) -> None:
    core = _core(published, session_scoring="session")
    seed = next(
        i
        for i in np.argsort(-published.fallback.item_scores).tolist()
        if published.sessions.neighbours(i)[0].size >= 5
    )
    followed = _followed(published, [seed], [1.0], set())[:5]
    leads = {published.item_index(f[0]) for f in followed}
    others = [
        str(published.item_ids[i])
        for i in np.argsort(-published.fallback.item_scores, kind="stable").tolist()
        if i not in leads
        and i != seed
        and published.items.available[i]
        and i not in set(published.sessions.neighbours(seed)[0].tolist())
    ][:5]
    candidates = [*others[::-1], *[f[0] for f in followed][::-1]]
    ranked = core.rank_items(
        "visit-6", candidates, context_item_ids=(str(published.item_ids[seed]),)
    )
    assert ranked.strategy == "session"
    _assert_ranked_as(ranked.items[:5], followed)
    assert _ids(ranked)[5:] == others and {i.reason for i in ranked.items[5:]} == {"popular"}
    assert max(i.score for i in ranked.items[5:]) < min(i.score for i in ranked.items[:5])


def test_rank_items_knows_the_first_item_leaves_out_purchases_when_asked_and_follows_a_variant(
    published: PublishedModel,
) -> None:
    buyer = _biggest_buyer(published)
    user = str(published.user_ids[buyer])
    bought = {str(i) for i in published.item_ids[published.purchased_by(buyer)]}
    first = str(published.item_ids[0])
    candidates = [first, *sorted(bought)[:3], *_ids(_core(published).popular_items(10))]
    core = _core(published)
    ranked = core.rank_items(user, candidates, exclude_purchased=True)
    assert first in _ids(ranked) or first in bought, "the catalogue's first item is known"
    assert ranked.unknown_item_ids == ()
    assert set(ranked.left_out_item_ids) == set(candidates) & bought != set()
    assert not set(_ids(ranked)) & bought
    assert set(core.rank_items(user, candidates).left_out_item_ids) == set()
    hot = ExperimentConfig(
        name="e", salt="s", variants=[VariantConfig(name="hot", strategy="trending")]
    )
    ranked = _core(published, experiments=[hot]).rank_items(user, candidates)
    assert (ranked.variant, ranked.strategy) == ("e/hot", "trending")
    trending = np.asarray(published.trending.item_scores)
    scores = [float(trending[published.item_index(i)]) for i in _ids(ranked)]
    assert scores == [i.score for i in ranked.items] == sorted(scores, reverse=True)


def test_bought_together_without_basket_history_or_with_most_items_excluded(
    published: PublishedModel,
) -> None:
    item = int(np.argsort(-published.fallback.item_scores)[0])
    name = str(published.item_ids[item])
    available = np.asarray(published.items.available, dtype=bool)
    ids, scores = published.model.similar_items(np.array([item]), 40)
    similar = [
        (str(published.item_ids[i]), float(s), f"similar_to:{name}")
        for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
        if i >= 0 and i != item and available[i]
    ][:10]
    core = _core(dataclasses.replace(published, together=None))
    listed = core.bought_together([name], 10)
    assert (listed.strategy, listed.model_version) == ("similar_items", published.version)
    _assert_ranked_as(listed.items, similar)
    # A frontend excluding most of the catalogue still gets a full list.
    core = _core(published)
    excluded = tuple(_ids(core.popular_items(600)))
    listed = core.bought_together([name], 10, Filters(exclude_item_ids=excluded))
    assert len(listed.items) == 10 and not set(_ids(listed)) & set(excluded)
    nothing = core.bought_together([name], 10, Filters(min_price=1e12))
    assert (nothing.items, nothing.strategy, nothing.fallback) == ((), "baskets", False)


def test_an_item_the_model_does_not_know_is_not_found_without_a_hybrid_model(
    published: PublishedModel,
) -> None:
    core = _core(dataclasses.replace(published, coldstart=None))
    with pytest.raises(NotFound):
        core.similar_items("no-such-item", 10)


def test_a_model_without_a_session_graph_folds_a_visit_into_the_model(
    published: PublishedModel,
) -> None:
    core = _core(dataclasses.replace(published, sessions=None), session_scoring="session")
    item = _ids(core.popular_items(1))[0]
    assert core.recommend("visit-7", 10, context_item_ids=(item,)).strategy == "personal"


def test_a_trending_list_is_read_in_trending_order_however_unlike_popularity(
    published: PublishedModel,
) -> None:
    """Trending taken from time-decayed sums that reverse popularity: the hottest items are
    the least popular, far past the popular order's first few hundred."""
    popularity = np.asarray(published.fallback.item_scores)
    n_items = popularity.size
    heat = (popularity.max() - popularity + 1.0).astype(np.float32)
    recent = sp.csr_matrix((heat, np.arange(n_items), [0, n_items]), shape=(1, n_items))
    core = _core(dataclasses.replace(published, trending=TrendingRecommender().fit(recent)))
    available = np.asarray(published.items.available, dtype=bool)
    order = [i for i in np.argsort(-heat, kind="stable").tolist() if available[i]]
    # A list length where no tie is cut in two.
    k = next(n for n in range(10, len(order)) if heat[order[n - 1]] != heat[order[n]])
    order = order[:k]
    expected = [(str(published.item_ids[i]), float(heat[i]), "trending") for i in order]
    _assert_ranked_as(core.popular_items(k, trending=True).items, expected)
    assert not set(order) & set(np.argsort(-popularity)[:256].tolist())


def test_auto_serves_each_stage_what_training_chose_for_it_and_personal_where_it_chose_none(
    published: PublishedModel,
) -> None:
    core = _core(published)
    user = str(published.user_ids[0])
    stage = core.recommend(user, 1).lifecycle_stage
    chosen = {stage: "trending"}
    serving = {**published.manifest.get("serving", {}), "lifecycle": chosen}
    model = dataclasses.replace(published, manifest={**published.manifest, "serving": serving})
    core = _core(model)
    assert core.recommend(user, 10).strategy == "trending"
    other = next(
        str(u)
        for u in published.user_ids[:500].tolist()
        if core.recommend(str(u), 1).lifecycle_stage != stage
        and core.recommend(str(u), 1).strategy != "popular"
    )
    assert core.recommend(other, 10).strategy == "personal", "no choice for that stage"


def test_a_visits_popular_fill_stays_under_its_weakest_lead_in_popularity_order(
    published: PublishedModel,
) -> None:
    popularity = np.asarray(published.fallback.item_scores)
    serving, every = _core(published).serving, np.arange(popularity.size)
    fill = _popular_below(serving, np.array([3.0, 0.5, 7.0], dtype=np.float32), every)
    assert fill.max() < 0.5 and fill.min() >= 0.0
    order = np.argsort(-popularity, kind="stable")
    assert (np.argsort(-fill, kind="stable") == order).all()
    # A visit that leads nowhere: the fill is all there is, under 1.
    nowhere = _popular_below(serving, np.empty(0, dtype=np.float32), every)
    assert nowhere.max() < 1.0 and (np.argsort(-nowhere, kind="stable") == order).all()
