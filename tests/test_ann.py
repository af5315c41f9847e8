"""The approximate index: built past a catalogue size, recall measured, filters still honoured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import train_once

from recsvc.ann import ItemIndex
from recsvc.config import Config, LifecycleConfig, LimitsConfig, RulesConfig, ServingConfig
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving import policy
from recsvc.serving.core import RecommenderCore
from recsvc.serving.policy import ANN_CANDIDATES, ANN_MAX_CANDIDATES, ANN_PER_RESULT, top_spread
from recsvc.serving.values import EventInput, Filters
from recsvc.training.pipeline import TrainInputs


@pytest.fixture(scope="module")
def indexed(shop_inputs: TrainInputs, tmp_path_factory: pytest.TempPathFactory) -> PublishedModel:
    config = Config()
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, type="als", ann_min_items=100, ann_target_recall=0.95
        ),
        # The index is judged on the shipped ALS parameters; see docs/TESTING.md on what the
        # job's search does to the served overlap.
        training=dataclasses.replace(
            config.training, quality_gate_tolerance=-1.0, tune_budget_s=0.0
        ),
    )
    model_dir = tmp_path_factory.mktemp("ann")
    result = train_once("ann", shop_inputs, model_dir, config)
    return PublishedModel.load(ModelStore(model_dir).path(result.version))


PERSONAL = LifecycleConfig(*["personal"] * 5)


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many candidates each index search asked for, in order."""
    asked: list[int] = []
    search = ItemIndex.search

    def counted(index: ItemIndex, queries: np.ndarray, k: int):
        asked.append(k)
        return search(index, queries, k)

    monkeypatch.setattr(ItemIndex, "search", counted)
    return asked


@pytest.fixture
def exact_scorings(indexed: PublishedModel, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time the model scored the whole catalogue (for a user's row or a history): a list
    served through the index must not, or a broken index path would hide behind the exact
    one it falls back to."""
    scored: list[str] = []
    model_type = type(indexed.model)
    for name in ("score", "score_history"):
        original = getattr(model_type, name)

        def counted(model, rows, name=name, original=original):
            scored.append(name)
            return original(model, rows)

        monkeypatch.setattr(model_type, name, counted)
    return scored


def test_index_is_published_with_its_measured_recall(indexed: PublishedModel) -> None:
    ann = indexed.manifest["ann"]
    assert ann["recall@10"] >= 0.95 and ann["sample_users"] == 1000
    assert indexed.ann is not None and indexed.ann.ef_search == ann["ef_search"]
    assert indexed.ann.index.ntotal == indexed.item_ids.size


def test_served_lists_match_exact_scoring_and_honour_filters(
    indexed: PublishedModel, exact_scorings: list[str]
) -> None:
    exact = RecommenderCore(ServingConfig(limits=LimitsConfig(max_k=500), lifecycle=PERSONAL))
    exact.swap(dataclasses.replace(indexed, ann=None))
    approximate = RecommenderCore(ServingConfig(lifecycle=PERSONAL))
    approximate.swap(indexed)
    overlaps = []
    for user in indexed.user_ids[:200].tolist():
        exact_scorings.clear()
        served = approximate.recommend(user, 10)
        assert not exact_scorings and {i.reason for i in served.items} == {"personal"}
        a = [i.item_id for i in served.items]
        e = [i.item_id for i in exact.recommend(user, 10).items]
        overlaps.append(len(set(a) & set(e)) / 10)
    assert np.mean(overlaps) >= 0.9, np.mean(overlaps)
    top = approximate.recommend("u0001", 20)
    category = str(indexed.items.categories[indexed.item_index(top.items[0].item_id)])
    inside = approximate.recommend("u0001", 10, Filters(include_categories=(category,)))
    assert {str(indexed.items.categories[indexed.item_index(i.item_id)]) for i in inside.items} == {
        category
    }
    bought = set(indexed.item_ids[indexed.purchased_by(indexed.user_index("u0001"))].tolist())
    exact_scorings.clear()
    listed = approximate.recommend("u0001", 50, exclude_purchased=True).items
    assert not exact_scorings, "the index's candidates, with the purchases left out"
    assert len(listed) == 50 and not bought & {i.item_id for i in listed}


def test_served_lists_match_exact_scoring_with_every_rule_on(indexed: PublishedModel) -> None:
    """Boosts are in units of the best scores' spread whatever the candidates, so the index's
    few dozen candidates and the whole catalogue scored exactly give the same lists."""
    rules = RulesConfig(
        max_per_category=3,
        new_item_days=30.0,
        boost_new=0.5,
        promoted_tag="gift",  # a tag of the sample catalogue
        boost_promoted=1.0,
    )
    exact = RecommenderCore(ServingConfig(rules=rules))
    exact.swap(dataclasses.replace(indexed, ann=None))
    approximate = RecommenderCore(ServingConfig(rules=rules))
    approximate.swap(indexed)
    unboosted = RecommenderCore(
        ServingConfig(rules=dataclasses.replace(rules, boost_new=0.0, boost_promoted=0.0))
    )
    unboosted.swap(dataclasses.replace(indexed, ann=None))
    serving = exact.serving
    assert serving.new.any() and serving.promoted.any()  # both boosts have items to act on
    overlaps, boosted, boosted_without = [], 0, 0
    for user in indexed.user_ids[:200].tolist():
        a = [i.item_id for i in approximate.recommend(user, 10).items]
        e = [i.item_id for i in exact.recommend(user, 10).items]
        overlaps.append(len(set(a) & set(e)) / 10)
        positions = indexed.item_indices(e)
        boosted += int((serving.new[positions] | serving.promoted[positions]).sum())
        plain = indexed.item_indices([i.item_id for i in unboosted.recommend(user, 10).items])
        boosted_without += int((serving.new[plain] | serving.promoted[plain]).sum())
    # The boosts lift new and promoted items well above where the model alone puts them.
    assert boosted > 1.5 * boosted_without, (boosted, boosted_without)
    assert np.mean(overlaps) >= 0.9, np.mean(overlaps)


def test_boosts_have_one_unit_for_a_whole_catalogue_and_its_best_candidates(
    indexed: PublishedModel,
) -> None:
    """The approximate path boosts a few dozen candidates, the exact path a whole catalogue:
    the unit of a boost (the spread of the best scores) must be the same for both."""
    whole_vs_best = []
    for user in range(20):
        scores = indexed.model.score(np.array([user]))[0]
        best = np.argsort(-scores)[: ANN_CANDIDATES * 2]
        assert top_spread(scores) == pytest.approx(top_spread(scores[best]), rel=1e-5)
        whole_vs_best.append(abs(scores.std() / scores[best].std() - 1))
    assert max(whole_vs_best) > 0.2  # the plain spread of all scores would not be one unit


@pytest.mark.parametrize("max_candidates", [ANN_MAX_CANDIDATES, 200])
def test_the_index_search_widens_so_filtered_lists_are_not_cut_short(
    indexed: PublishedModel,
    searches: list[int],
    max_candidates: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A filter that keeps few of the index's first candidates still gets k items: the search
    widens, up to the catalogue or ANN_MAX_CANDIDATES (then falls back to exact scoring),
    instead of serving a short list."""
    monkeypatch.setattr(policy, "ANN_MAX_CANDIDATES", max_candidates)
    approximate = RecommenderCore()
    approximate.swap(indexed)
    serving = approximate.serving
    categories = indexed.items.categories.astype(str)
    available = ~serving.unavailable
    sizes = {c: int(((categories == c) & available).sum()) for c in np.unique(categories)}
    rare = min((c for c, n in sizes.items() if n >= 10), key=sizes.__getitem__)
    widened = 0
    for user in range(100):
        user_id = str(indexed.user_ids[user])
        scores = indexed.model.score(np.array([user]))[0]
        first = np.argsort(-scores)[:ANN_CANDIDATES]
        widened += int((categories[first] == rare).sum() < 10)
        searches.clear()
        items = approximate.recommend(user_id, 10, Filters(include_categories=(rare,))).items
        assert len(items) == 10, (user_id, rare, sizes[rare])
        # Each widening asks 8 times as many, up to the catalogue, and stops there.
        cap = min(indexed.item_ids.size, max_candidates)
        assert searches == [min(cap, searches[0] * 8**n) for n in range(len(searches))]
        assert searches.count(cap) <= 1
        assert {categories[indexed.item_index(i.item_id)] for i in items} == {rare}
    assert widened > 50  # most users' first candidates held fewer than 10 of that category


def test_the_index_asks_for_enough_candidates_once_when_they_suffice(
    indexed: PublishedModel, searches: list[int]
) -> None:
    """One search, sized by k and by how many items are banned, when it yields k items."""
    approximate = RecommenderCore(ServingConfig(limits=LimitsConfig(max_k=500), lifecycle=PERSONAL))
    approximate.swap(indexed)
    user = int(np.argmax(np.diff(indexed.purchased_indptr)))
    bought = indexed.purchased_by(user).size
    listed = approximate.recommend(str(indexed.user_ids[user]), 10)
    assert (len(listed.items), listed.fallback, listed.strategy) == (10, False, "personal")
    assert searches == [max(ANN_CANDIDATES, ANN_PER_RESULT * 10)]
    searches.clear()
    items = approximate.recommend(str(indexed.user_ids[user]), 30, exclude_purchased=True).items
    assert len(items) == 30
    assert searches[0] == ANN_PER_RESULT * (30 + bought), "banned items widen the first search"


@pytest.mark.parametrize("strategy", ["personal", "blend"])
def test_the_first_item_of_the_catalogue_can_be_served_through_the_index(
    indexed: PublishedModel, searches: list[int], exact_scorings: list[str], strategy: str
) -> None:
    """Item index 0 is a real candidate, not the index's "no result" marker (-1)."""
    config = ServingConfig(lifecycle=LifecycleConfig(*[strategy] * 5))
    exact = RecommenderCore(config)
    exact.swap(dataclasses.replace(indexed, ann=None))
    approximate = RecommenderCore(config)
    approximate.swap(indexed)
    first = str(indexed.item_ids[0])
    only_its_category = Filters(include_categories=(str(indexed.items.categories[0]),))
    fans = [
        user
        for user in indexed.user_ids.tolist()
        if first in [i.item_id for i in exact.recommend(user, 2, only_its_category).items]
    ]
    assert fans, "the first item is among some users' two best of its category"
    for user in fans:
        exact_scorings.clear()
        listed = approximate.recommend(user, 2, only_its_category)
        assert first in [i.item_id for i in listed.items], user
        assert not exact_scorings, f"{user}'s list came through the index"
    assert searches


def test_fresh_events_are_served_through_the_index_like_exact_scoring(
    indexed: PublishedModel, searches: list[int], exact_scorings: list[str]
) -> None:
    """A known user's fresh events fold into a query for the index (ALS folds in exactly); the
    lists match exact scoring of the same history, and differ from the user's trained list."""
    approximate = RecommenderCore(ServingConfig(lifecycle=PERSONAL))
    exact = RecommenderCore(ServingConfig(lifecycle=PERSONAL))
    approximate.swap(indexed)
    exact.swap(dataclasses.replace(indexed, ann=None))
    assert not indexed.exclude_seen
    overlaps, changed, kept = [], 0, 0
    for user in indexed.user_ids[:60].tolist():
        before = [i.item_id for i in approximate.recommend(user, 10).items]
        events = [EventInput(user, item, "cart") for item in before[:3]]
        for core in (approximate, exact):
            core.record_events(events)
        searches.clear()
        exact_scorings.clear()
        a = approximate.recommend(user, 10)
        assert len(searches) == 1, "the fresh history was folded into one index search"
        assert not exact_scorings, "served from the index's candidates"
        assert (a.fallback, a.strategy) == (False, "personal")
        assert {i.reason for i in a.items} == {"personal"}
        e = [i.item_id for i in exact.recommend(user, 10).items]
        a_ids = [i.item_id for i in a.items]
        overlaps.append(len(set(a_ids) & set(e)) / 10)
        changed += a_ids != before
        # The model does not exclude what was seen, so what was just carted stays eligible,
        # and the trained history still counts beside the fresh events.
        kept += set(before[:3]) <= set(a_ids)
        # Exact scoring is of the trained row with the fresh events added (history_row, whose
        # arithmetic test_core checks), unavailable items left out.
        row = exact.policy.history_row(
            exact.serving, indexed.user_index(user), exact.realtime.of(user), np.array([], int)
        )
        scores = indexed.model.score_history(row)[0]
        scores[exact.serving.unavailable] = -np.inf
        assert set(e) == set(indexed.item_ids[np.argsort(-scores)[:10]].tolist())
    assert np.mean(overlaps) >= 0.9, np.mean(overlaps)
    assert changed > 30 and kept > 20, (changed, kept)


def test_the_blend_is_served_through_the_index_like_exact_scoring(
    indexed: PublishedModel, searches: list[int], exact_scorings: list[str]
) -> None:
    """The blend's candidates are the index's plus what the user bought, scored exactly: the
    lists match the blend over the whole catalogue, with one search each."""
    blend = ServingConfig(lifecycle=LifecycleConfig(*["blend"] * 5))
    approximate, exact = RecommenderCore(blend), RecommenderCore(blend)
    approximate.swap(indexed)
    exact.swap(dataclasses.replace(indexed, ann=None))
    buyers = np.flatnonzero(np.diff(indexed.purchased_indptr) >= 3)[:60]
    overlaps, repurchases = [], 0
    for user in indexed.user_ids[buyers].tolist():
        searches.clear()
        exact_scorings.clear()
        a = approximate.recommend(user, 10)
        assert len(searches) == 1 and a.strategy == "blend"
        assert not exact_scorings, "the candidates alone were scored"
        first = a.items[0].item_id
        without = approximate.recommend(user, 10, Filters(exclude_item_ids=(first,)))
        assert first not in {i.item_id for i in without.items} and not exact_scorings
        e = exact.recommend(user, 10)
        overlaps.append(len({i.item_id for i in a.items} & {i.item_id for i in e.items}) / 10)
        repurchases += any(i.reason == "repurchase" for i in a.items)
    assert np.mean(overlaps) >= 0.9, np.mean(overlaps)
    assert repurchases > 30, "bought items are lifted into most lists"
    # Fresh events fold into the query, as they do for the personal list.
    overlaps, changed = [], 0
    for user in indexed.user_ids[buyers[:30]].tolist():
        before = [i.item_id for i in approximate.recommend(user, 10).items]
        popular = [
            i.item_id for i in approximate.popular_items(40).items if i.item_id not in before
        ]
        for core in (approximate, exact):
            core.record_events([EventInput(user, item, "cart") for item in popular[:5]])
        exact_scorings.clear()
        a = [i.item_id for i in approximate.recommend(user, 10).items]
        assert not exact_scorings
        e = [i.item_id for i in exact.recommend(user, 10).items]
        overlaps.append(len(set(a) & set(e)) / 10)
        changed += a != before
    assert np.mean(overlaps) >= 0.9 and changed > 20, (np.mean(overlaps), changed)


def test_a_context_goes_through_the_index_unless_it_must_explain_an_anonymous_list(
    indexed: PublishedModel, exact_scorings: list[str]
) -> None:
    """A known customer's context items and an anonymous visitor's clicks fold into one
    index query; an anonymous visitor's context items are scored exactly, since each listed
    item names the context item it is most like."""
    core = RecommenderCore(ServingConfig(lifecycle=PERSONAL, session_scoring="model"))
    core.swap(indexed)
    popular = [i.item_id for i in core.popular_items(3).items]
    exact_scorings.clear()
    listed = core.recommend("u0001", 10, context_item_ids=tuple(popular[:2]))
    assert not exact_scorings and {i.reason for i in listed.items} == {"personal"}
    core.record_events([EventInput("visit-1", item, "view") for item in popular[:2]])
    listed = core.recommend("visit-1", 10)
    assert not exact_scorings and listed.strategy == "personal" and len(listed.items) == 10
    listed = core.recommend("visit-2", 10, context_item_ids=tuple(popular[:2]))
    assert exact_scorings and set(exact_scorings) == {"score_history"}
    assert {i.reason for i in listed.items} <= {f"similar_to:{p}" for p in popular[:2]}
