"""The transport-independent core: validation, fallbacks and filters, without any socket."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.errors import InvalidArgument, NotFound, Unavailable
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from service.core import MAX_K, RecommenderCore
from training.pipeline import TrainResult


@pytest.fixture(scope="module")
def core(trained: TrainResult) -> RecommenderCore:
    core = RecommenderCore()
    core.swap(PublishedModel.load(ModelStore(trained.model_dir).path(trained.version)))
    return core


def a_buyer(core: RecommenderCore) -> str:
    model = core.model
    counts = np.diff(model.purchased_indptr)
    return str(model.user_ids[int(np.argmax(counts))])


def test_known_user_gets_personal_items(core: RecommenderCore) -> None:
    result = core.recommend("u0001", 10)
    assert not result.fallback
    assert len(result.items) == 10
    assert {i.reason for i in result.items} == {"personal"}
    assert result.model_version == core.version


def test_unknown_user_gets_popular_items_never_an_error(core: RecommenderCore) -> None:
    result = core.recommend("someone-we-never-saw", 5)
    assert result.fallback
    assert [i.reason for i in result.items] == ["popular"] * 5
    scores = [i.score for i in result.items]
    assert scores == sorted(scores, reverse=True)
    top = core.model.item_ids[np.argmax(core.model.fallback.item_scores)]
    assert result.items[0].item_id == top


def test_excluded_and_purchased_items_are_left_out(core: RecommenderCore) -> None:
    user = a_buyer(core)
    first = core.recommend(user, 5)
    excluded = [first.items[0].item_id, "not-an-item"]
    second = core.recommend(user, 5, exclude_item_ids=excluded)
    assert excluded[0] not in {i.item_id for i in second.items}
    bought = {
        str(core.model.item_ids[i]) for i in core.model.purchased_by(core.model.user_index(user))
    }
    assert bought
    everything = core.recommend(user, MAX_K)
    assert bought & {i.item_id for i in everything.items}, "the model does rank bought items"
    filtered = core.recommend(user, MAX_K, exclude_purchased=True)
    assert not bought & {i.item_id for i in filtered.items}
    assert len(filtered.items) == core.model.item_ids.size - len(bought)


def test_similar_items(core: RecommenderCore) -> None:
    item = str(core.model.item_ids[0])
    result = core.similar_items(item, 5)
    assert len(result.items) == 5
    assert item not in {i.item_id for i in result.items}
    assert {i.reason for i in result.items} == {f"similar_to:{item}"}
    with pytest.raises(NotFound):
        core.similar_items("no-such-item", 5)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_outside_range_is_invalid(core: RecommenderCore, k: int) -> None:
    with pytest.raises(InvalidArgument, match="k must be between"):
        core.recommend("u0001", k)
    with pytest.raises(InvalidArgument, match="k must be between"):
        core.similar_items("i0001", k)


def test_empty_ids_are_invalid(core: RecommenderCore) -> None:
    with pytest.raises(InvalidArgument, match="user_id"):
        core.recommend("", 5)
    with pytest.raises(InvalidArgument, match="item_id"):
        core.similar_items("", 5)


def test_no_model_loaded_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        RecommenderCore().recommend("u0001", 5)


def test_popular_items_overall_per_category_and_trending(core: RecommenderCore) -> None:
    model = core.model
    overall = core.popular_items(20)
    assert len(overall.items) == 20
    assert [i.score for i in overall.items] == sorted(
        (i.score for i in overall.items), reverse=True
    )
    category = str(model.items.categories[model.item_index(overall.items[-1].item_id)])
    in_category = core.popular_items(10, [category])
    assert in_category.items
    for item in in_category.items:
        assert model.items.categories[model.item_index(item.item_id)] == category
    hot = core.popular_items(10, trending=True)
    assert {i.reason for i in hot.items} == {"trending"}
    assert core.popular_items(5, ["no-such-category"]).items == []
