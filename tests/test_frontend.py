"""What shop frontends ask for beyond Recommend, end to end over a real channel: RankItems,
FrequentlyBoughtTogether, sessions (an anonymous visitor followed click by click, RecentlyViewed,
MergeUsers), RecommendPage and RecommendCategories; plus the page's per-stage rows in the core."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from test_server_e2e import RunningServer, start_server

from recsvc.config import PageConfig, PageRowConfig, PageStagesConfig, ServingConfig
from recsvc.events import open_event_store
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.training.pipeline import TrainResult
from recsvc.training.sample_shop import SampleShop
from recsvc.v1 import recommender_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def model_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("frontend") / "models"
    shutil.copytree(trained.model_dir, target)
    return target


@pytest.fixture(scope="module")
def api(model_dir: Path) -> Iterator[RunningServer]:
    running = start_server(model_dir)
    running.wait_for_health(SERVING)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def published(model_dir: Path) -> PublishedModel:
    return PublishedModel.load(ModelStore(model_dir).current_path())


def _ids(response) -> list[str]:
    return [i.item_id for i in response.items]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code()


def test_rank_items_orders_as_recommend_keeps_unknown_ids_last_and_names_the_left_out(
    api: RunningServer,
) -> None:
    stub = api.stub
    top = _ids(stub.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=5))
    below = _ids(stub.Recommend(pb.RecommendRequest(user_id="u0001", k=40), timeout=5))[30:]
    candidates = [*below[:5], "no-such-1", *reversed(top), "no-such-2", top[0], below[5]]
    ranked = stub.RankItems(
        pb.RankItemsRequest(
            user_id="u0001",
            item_ids=candidates,
            filters=pb.Filters(),
            context_item_ids=[],
        ),
        timeout=5,
    )
    listed = _ids(ranked)
    # The user's own top five come first, in Recommend's order; duplicates count once.
    assert listed[:5] == top
    assert listed[-2:] == ["no-such-1", "no-such-2"], "unknown ids last, in their given order"
    assert list(ranked.unknown_item_ids) == ["no-such-1", "no-such-2"]
    assert {i.reason for i in ranked.items[-2:]} == {"unknown"}
    assert len(listed) == len(set(listed)) == 13
    assert ranked.recommendation_id and ranked.strategy and ranked.lifecycle_stage
    scores = [i.score for i in ranked.items[:-2]]
    assert scores == sorted(scores, reverse=True)
    # Exclusions and filters leave candidates out, and say which.
    excluded = stub.RankItems(
        pb.RankItemsRequest(
            user_id="u0001", item_ids=[*top, "no-such-1"], filters=pb.Filters(min_price=1e9)
        ),
        timeout=5,
    )
    assert _ids(excluded) == ["no-such-1"]
    assert sorted(excluded.left_out_item_ids) == sorted(top)


def test_rank_items_bounds_are_invalid_argument(api: RunningServer) -> None:
    stub = api.stub
    assert _code(lambda: stub.RankItems(pb.RankItemsRequest(user_id="u0001"), timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    too_many = pb.RankItemsRequest(user_id="u0001", item_ids=[f"i{n}" for n in range(501)])
    assert _code(lambda: stub.RankItems(too_many, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    at_most = pb.RankItemsRequest(user_id="someone-new", item_ids=[f"x{n}" for n in range(500)])
    assert len(stub.RankItems(at_most, timeout=5).unknown_item_ids) == 500


def test_bought_together_recovers_planted_complements(api: RunningServer, shop: SampleShop):
    """The sample shop puts each item's complement into 30% of the orders of the item."""
    stub = api.stub
    popular = _ids(stub.PopularItems(pb.PopularItemsRequest(k=60), timeout=5))
    found = []
    for item in popular:
        together = stub.FrequentlyBoughtTogether(
            pb.FrequentlyBoughtTogetherRequest(item_ids=[item], k=10), timeout=5
        )
        assert item not in _ids(together)
        found.append(shop.complements[item] in _ids(together))
        if together.items and together.items[0].reason.startswith("bought_with:"):
            assert together.strategy.startswith("baskets")
    assert np.mean(found) >= 0.7, np.mean(found)
    # The planted complement comes first, with its reason, for the most popular item.
    first = stub.FrequentlyBoughtTogether(
        pb.FrequentlyBoughtTogetherRequest(item_ids=[popular[0]], k=3), timeout=5
    )
    assert first.items[0].item_id == shop.complements[popular[0]]
    assert first.items[0].reason == f"bought_with:{popular[0]}"


def test_bought_together_for_a_cart_empty_carts_and_unknown_items(api: RunningServer) -> None:
    stub = api.stub
    cart = _ids(stub.PopularItems(pb.PopularItemsRequest(k=3), timeout=5))
    together = stub.FrequentlyBoughtTogether(
        pb.FrequentlyBoughtTogetherRequest(item_ids=cart, k=20, exclude_item_ids=["i0001"]),
        timeout=5,
    )
    assert len(together.items) == 20 and not set([*cart, "i0001"]) & set(_ids(together))
    anchors = {i.reason.split(":", 1)[1] for i in together.items}
    assert anchors <= set(cart) and len(anchors) >= 2, "a cart is more than its first item"
    for empty in ([], ["no-such-item"]):
        popular = stub.FrequentlyBoughtTogether(
            pb.FrequentlyBoughtTogetherRequest(item_ids=empty, k=5), timeout=5
        )
        assert popular.fallback and popular.strategy == "popular" and len(popular.items) == 5
    # A thin basket history is filled with similar items, and the reason says so.
    rare = _ids(stub.PopularItems(pb.PopularItemsRequest(k=500), timeout=5))[-1]
    thin = stub.FrequentlyBoughtTogether(
        pb.FrequentlyBoughtTogetherRequest(item_ids=[rare], k=30), timeout=5
    )
    assert len(thin.items) == 30 and "similar_items" in thin.strategy
    assert thin.items[-1].reason == f"similar_to:{rare}"
    for k in (0, 501):
        bad = pb.FrequentlyBoughtTogetherRequest(item_ids=cart, k=k)
        assert _code(lambda b=bad: stub.FrequentlyBoughtTogether(b, timeout=5)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def test_an_anonymous_visit_is_followed_click_by_click(api: RunningServer) -> None:
    stub = api.stub
    visitor = "session-7f3a"
    popular = _ids(stub.PopularItems(pb.PopularItemsRequest(k=200), timeout=5))
    first, second = popular[150], popular[10]
    before = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=10), timeout=5)
    assert before.fallback
    lists = []
    for item in (first, second):
        stub.RecordEvents(
            pb.RecordEventsRequest(events=[pb.Event(user_id=visitor, item_id=item, event="view")]),
            timeout=5,
        )
        listed = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=10), timeout=5)
        assert not listed.fallback and listed.strategy == "session", listed.strategy
        lists.append(listed)
    # Each click changes the list, and the newest click leads it.
    assert _ids(lists[0]) != _ids(lists[1]) != _ids(before)
    assert lists[0].items[0].reason == f"viewed_after:{first}"
    assert lists[1].items[0].reason == f"viewed_after:{second}"
    viewed = stub.RecentlyViewed(pb.RecentlyViewedRequest(user_id=visitor, k=10), timeout=5)
    assert [i.item_id for i in viewed.items] == [second, first]
    assert viewed.items[0].timestamp_ms >= viewed.items[1].timestamp_ms > 0


def test_merge_users_moves_the_visit_to_the_customer_and_deletion_follows(
    api: RunningServer, model_dir: Path
) -> None:
    stub = api.stub
    anonymous, customer = "device-91", "customer-new-91"
    items = _ids(stub.PopularItems(pb.PopularItemsRequest(k=3), timeout=5))
    stub.RecordEvents(
        pb.RecordEventsRequest(
            events=[pb.Event(user_id=anonymous, item_id=i, event="view") for i in items]
        ),
        timeout=5,
    )
    moved = stub.MergeUsers(
        pb.MergeUsersRequest(anonymous_id=anonymous, user_id=customer, reason="login"), timeout=5
    )
    assert moved.events_moved == 3
    recent = stub.RecentlyViewed(pb.RecentlyViewedRequest(user_id=customer, k=10), timeout=5)
    assert [i.item_id for i in recent.items] == list(reversed(items))
    gone = stub.RecentlyViewed(pb.RecentlyViewedRequest(user_id=anonymous, k=10), timeout=5)
    assert not gone.items
    assert not stub.Recommend(pb.RecommendRequest(user_id=customer, k=5), timeout=5).fallback
    store = open_event_store(f"sqlite:///{model_dir / 'test-events.db'}")
    users = set(store.read_events().column("user_id").to_pylist())
    assert customer in users and anonymous not in users
    # A deletion of the customer takes what was merged with it, and stays.
    deleted = stub.ForgetUser(pb.ForgetUserRequest(user_id=customer), timeout=5)
    assert deleted.events_deleted == 3
    assert customer not in set(store.read_events().column("user_id").to_pylist())
    assert not stub.RecentlyViewed(pb.RecentlyViewedRequest(user_id=customer, k=5)).items
    # A visitor forgotten before logging in brings nothing.
    stub.RecordEvents(
        pb.RecordEventsRequest(
            events=[pb.Event(user_id="device-92", item_id=items[0], event="view")]
        ),
        timeout=5,
    )
    stub.ForgetUser(pb.ForgetUserRequest(user_id="device-92"), timeout=5)
    again = stub.MergeUsers(pb.MergeUsersRequest(anonymous_id="device-92", user_id=customer))
    assert again.events_moved == 0
    for bad in (
        pb.MergeUsersRequest(anonymous_id="", user_id=customer),
        pb.MergeUsersRequest(anonymous_id=customer, user_id=customer),
    ):
        assert _code(lambda b=bad: stub.MergeUsers(b, timeout=5)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def test_a_page_in_one_call_has_its_rows_and_no_item_twice(api: RunningServer) -> None:
    stub = api.stub
    user = "u0003"
    page = stub.RecommendPage(pb.RecommendPageRequest(user_id=user), timeout=5)
    names = [r.name for r in page.rows]
    assert names[0] == "for_you" and "new_arrivals" in names, names
    assert "bought_together" not in names, "no cart, no row"
    every = [i.item_id for r in page.rows for i in r.items]
    assert len(every) == len(set(every)), "an item on two rows"
    assert all(0 < len(r.items) <= 10 and r.title for r in page.rows)
    # The first row is the user's Recommend list.
    own = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=5)
    assert _ids(page.rows[0]) == _ids(own)
    viewed = next(r for r in page.rows if r.kind == "because_you_viewed")
    assert viewed.anchor and viewed.anchor in viewed.title
    assert {i.reason for i in viewed.items} == {f"similar_to:{viewed.anchor}"}
    # A cart brings the bought-together row; exclusions hold on every row.
    cart_item = _ids(stub.PopularItems(pb.PopularItemsRequest(k=1), timeout=5))[0]
    stub.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=cart_item, event="cart")]),
        timeout=5,
    )
    with_cart = stub.RecommendPage(
        pb.RecommendPageRequest(user_id=user, exclude_item_ids=every[:5]), timeout=5
    )
    together = next(r for r in with_cart.rows if r.kind == "bought_together")
    assert together.items[0].reason.endswith(f":{cart_item}")
    shown = [i.item_id for r in with_cart.rows for i in r.items]
    assert not set(shown) & set(every[:5]) and len(shown) == len(set(shown))


def test_top_categories_follow_the_planted_preferences(
    api: RunningServer, shop: SampleShop
) -> None:
    stub = api.stub
    hits = []
    for user in ("u0001", "u0002", "u0003", "u0004", "u0005", "u0006"):
        top = stub.RecommendCategories(
            pb.RecommendCategoriesRequest(user_id=user, k=3), timeout=5
        ).categories
        shares = [c.weight for c in top]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        hits.append(top[0].name in shop.preferred_categories[user])
    assert np.mean(hits) >= 0.8, hits
    brands = stub.RecommendCategories(
        pb.RecommendCategoriesRequest(user_id="u0001", k=3, kind="brand"), timeout=5
    ).categories
    assert len(brands) == 3 and all("brand" in b.name for b in brands)
    bad = pb.RecommendCategoriesRequest(user_id="u0001", k=3, kind="colour")
    assert _code(lambda: stub.RecommendCategories(bad, timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_page_rows_and_their_order_come_from_the_config_per_stage(
    published: PublishedModel,
) -> None:
    page = PageConfig(
        rows=[
            PageRowConfig("hot", "trending", 4, "Hot now"),
            PageRowConfig("mine", "for_you", 6, "For you"),
            PageRowConfig("fresh", "new_arrivals", 3, "Just in"),
        ],
        stages=PageStagesConfig(new=["fresh", "hot"]),
    )
    core = RecommenderCore(ServingConfig(page=page))
    core.swap(published)
    newcomer = core.recommend_page("never-seen-before")
    assert newcomer.lifecycle_stage == "new"
    assert [(r.name, len(r.items)) for r in newcomer.rows] == [("fresh", 3), ("hot", 4)]
    regular = next(
        str(u)
        for u in published.user_ids[:200]
        if core.recommend(str(u), 1).lifecycle_stage == "active"
    )
    rows = core.recommend_page(regular).rows
    assert [(r.name, len(r.items)) for r in rows] == [("hot", 4), ("mine", 6), ("fresh", 3)]
    assert {i.reason for i in rows[2].items} == {"new"}
    newest = published.items.first_seen_ms[published.item_indices([rows[2].items[0].item_id])]
    shown = {i.item_id for r in rows[:2] for i in r.items}
    others = np.setdiff1d(np.arange(published.item_ids.size), published.item_indices(list(shown)))
    others = others[np.asarray(published.items.available)[others]]
    assert newest[0] == published.items.first_seen_ms[others].max()
