"""Precision marketing: profiles and lifecycle stages by their documented rules, RFM segments,
clusters, hybrid cold start with planted structure, lifecycle strategies, audiences that find the
planted buyers, and the export and report commands."""

from __future__ import annotations

import csv
import itertools
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import train_once
from hypothesis import given
from hypothesis import strategies as st

from recsvc.config import Config, LifecycleConfig, ProfilesConfig, RulesConfig, ServingConfig
from recsvc.errors import InvalidArgument, NotFound
from recsvc.events import open_event_store
from recsvc.modelstore import ModelStore
from recsvc.profiles import DAY_MS, STAGES, LifecycleRules
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.serving.values import EventInput, Filters
from recsvc.training.marketing import export_audience, segments_report
from recsvc.training.pipeline import TrainInputs, TrainResult
from recsvc.training.profiles import build_profiles
from recsvc.training.progress import Progress
from recsvc.training.sample_shop import AGE_AFFINITY, GENDER_AFFINITY, SampleShop

NOW = 1_790_000_000_000
RULES = LifecycleRules.of(ProfilesConfig())
# A user's event times, in days, for the lifecycle property tests.
USER_TIMES = {
    "has_events": st.booleans(),
    "first": st.integers(0, 400),
    "span": st.integers(0, 400),
    "reactivated": st.integers(-1, 400),
    "now": st.integers(0, 900),
}


def events_table(rows: list[tuple[str, str, str, float, float]]) -> pa.Table:
    """(user, item, event, days before NOW, price) rows as a clean events table."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event": [r[2] for r in rows],
            "timestamp_ms": pa.array([NOW - int(r[3] * DAY_MS) for r in rows], pa.int64()),
            "quantity": pa.array([1.0] * len(rows)),
            "price": pa.array([r[4] for r in rows], pa.float64()),
        }
    )


def stage_by_user(rows: list[tuple[str, str, str, float, float]]) -> dict[str, str]:
    profiles = build_profiles(events_table(rows), None, None, Config())
    stages = profiles.stages(NOW)
    return {str(u): STAGES[int(s)] for u, s in zip(profiles.user_ids, stages, strict=True)}


def test_lifecycle_stages_follow_the_documented_thresholds() -> None:
    # Defaults: new < 14 days since the first event; at risk after 30 idle days, churned
    # after 60; reactivated = back within 30 days after a gap of at least 30. "now" is the
    # newest event (the clock user below).
    rows = [
        ("clock", "i1", "view", 0, 1.0),
        ("newbie", "i1", "view", 3, 1.0),
        ("regular", "i1", "view", 40, 1.0),
        ("regular", "i1", "view", 20, 1.0),
        ("regular", "i1", "view", 1, 1.0),
        ("lapsing", "i1", "view", 50, 1.0),
        ("lapsing", "i1", "view", 35, 1.0),
        ("gone", "i1", "view", 90, 1.0),
        ("gone", "i1", "view", 61, 1.0),
        ("returner", "i1", "view", 100, 1.0),
        ("returner", "i1", "view", 5, 1.0),
    ]
    stages = stage_by_user(rows)
    assert stages["newbie"] == "new"
    assert stages["regular"] == "active"
    assert stages["lapsing"] == "at_risk"
    assert stages["gone"] == "churned"
    assert stages["returner"] == "reactivated"


@given(**USER_TIMES)
def test_request_path_stage_agrees_with_training_stages(
    has_events: bool, first: int, span: int, reactivated: int, now: int
) -> None:
    first_ms, last_ms = first * DAY_MS, (first + span) * DAY_MS
    back_ms = 0 if reactivated < 0 else reactivated * DAY_MS
    vector = RULES.stages(
        np.array([has_events]),
        np.array([first_ms]),
        np.array([last_ms]),
        np.array([back_ms]),
        now * DAY_MS,
    )
    assert STAGES[int(vector[0])] == RULES.stage(
        has_events, first_ms, last_ms, back_ms, now * DAY_MS
    )


@given(**USER_TIMES, probe=st.integers(-1000, 1000))
def test_a_stage_holds_over_its_whole_span(
    has_events: bool, first: int, span: int, reactivated: int, now: int, probe: int
) -> None:
    first_ms, last_ms = first * DAY_MS, (first + span) * DAY_MS
    back_ms = 0 if reactivated < 0 else reactivated * DAY_MS
    stage, since, until = RULES.stage_span(has_events, first_ms, last_ms, back_ms, now * DAY_MS)
    assert since <= now * DAY_MS < until
    assert stage == RULES.stage(has_events, first_ms, last_ms, back_ms, now * DAY_MS)
    later = min(max(now * DAY_MS + probe * DAY_MS // 10, since), until - 1)
    assert RULES.stage(has_events, first_ms, last_ms, back_ms, later) == stage


def test_recommend_moves_a_user_to_the_next_stage_when_the_clock_crosses_it(
    published: PublishedModel,
) -> None:
    core = serving_core(published, BUY_AGAIN_WHEN_LAPSED)
    profiles = published.profiles
    now = core.now_ms()
    active = np.flatnonzero(profiles.stages(now) == STAGES.index("active"))
    row = int(active[np.argmin(profiles.last_ms[active])])  # the first to lapse
    user_id = str(profiles.user_ids[row])
    assert core.recommend(user_id, 5).lifecycle_stage == "active"
    assert core.recommend(user_id, 5).lifecycle_stage == "active"  # from the stage cache
    lapse_ms = int(profiles.last_ms[row]) + RULES.at_risk_ms
    other = str(profiles.user_ids[active[-1] if active[-1] != row else active[0]])
    # Another user's event, stamped just before the lapse, moves the clock but not the stage.
    core.record_events([EventInput(other, str(published.item_ids[0]), "view", lapse_ms - 1)])
    assert core.recommend(user_id, 5).lifecycle_stage == "active"
    core.record_events([EventInput(other, str(published.item_ids[0]), "view", lapse_ms)])
    lapsed = core.recommend(user_id, 5)
    assert lapsed.lifecycle_stage == "at_risk" and lapsed.strategy == "repurchase"


def test_rfm_scores_and_segments_rank_buyers() -> None:
    rows = [("clock", "i1", "view", 0, 1.0)]
    # Twenty buyers from frequent, recent and big spenders down to one small order long ago.
    for n in range(20):
        for order in range(20 - n):
            rows.append((f"b{n:02d}", "i1", "purchase", n * 3 + order * 0.01, 10.0 * (20 - n)))
    rows.append(("browser", "i1", "view", 1, 5.0))
    profiles = build_profiles(events_table(rows), None, None, Config())
    segments = dict(
        zip(profiles.user_ids.tolist(), profiles.rfm_segments(NOW).tolist(), strict=True)
    )
    best = profiles.index("b00")
    worst = profiles.index("b19")
    assert (
        profiles.rfm(
            int(profiles.last_purchase_ms[best]),
            int(profiles.orders[best]),
            float(profiles.monetary[best]),
            NOW,
        )["segment"]
        == "champions"
    )
    assert segments["b00"] == "champions"
    assert segments["b19"] == "lost"
    assert segments["browser"] == "prospect"
    assert profiles.orders[best] == 20 and profiles.orders[worst] == 1
    assert profiles.monetary[best] == pytest.approx(20 * 200.0)


# Lapsed users offered what they bought before (the shipped "auto" serves what training chose).
BUY_AGAIN_WHEN_LAPSED = ServingConfig(
    lifecycle=LifecycleConfig(at_risk="repurchase", churned="repurchase")
)


def serving_core(model: PublishedModel, config: ServingConfig | None = None) -> RecommenderCore:
    """A core serving `model`, with no event store: its real-time state is its own."""
    core = RecommenderCore(config or ServingConfig())
    core.swap(model)
    return core


@pytest.fixture(scope="module")
def published(trained: TrainResult) -> PublishedModel:
    return PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))


@pytest.fixture(scope="module")
def core(published: PublishedModel) -> RecommenderCore:
    return serving_core(published)


def test_profiles_recover_each_users_planted_categories(
    core: RecommenderCore, shop: SampleShop
) -> None:
    hits = total = 0
    for user_id, preferred in list(shop.preferred_categories.items())[:400]:
        try:
            profile = core.user_profile(user_id)
        except NotFound:
            continue
        total += 1
        hits += profile["top_categories"][0][0] in preferred
        assert profile["attributes"]["age_band"]  # static attributes from the users file
    assert total > 300
    assert hits / total > 0.8, f"top category is a planted favourite for {hits}/{total}"


def test_segments_partition_the_users_and_describe_themselves(core: RecommenderCore) -> None:
    model = core.model
    rfm = core.list_segments("rfm")
    clusters = core.list_segments("cluster")
    assert sum(s["size"] for s in rfm) == model.profiles.size
    assert 2 <= len(clusters) <= ProfilesConfig().clusters
    assert sum(s["size"] for s in clusters) == model.user_ids.size
    for segment in rfm + clusters:
        assert sum(segment["stage_mix"].values()) == segment["size"]
        assert segment["top_categories"]
    champions = core.get_segment("rfm:champions")
    lost = core.get_segment("rfm:lost")
    assert champions["average_order_value"] > 0 and lost["size"] > 0
    with pytest.raises(NotFound):
        core.get_segment("rfm:nobody")
    with pytest.raises(InvalidArgument):
        core.list_segments("astrology")


def test_real_time_events_update_recency_stage_and_rfm(published: PublishedModel) -> None:
    core = serving_core(published)
    profiles = published.profiles
    now = core.now_ms()
    stages = profiles.stages(now)
    lapsed = str(profiles.user_ids[np.flatnonzero(stages == STAGES.index("at_risk"))[0]])
    before = core.user_profile(lapsed)
    assert before["lifecycle_stage"] == "at_risk"
    core.record_events([EventInput(lapsed, str(published.item_ids[0]), "purchase", now + 1000)])
    after = core.user_profile(lapsed)
    assert after["lifecycle_stage"] == "reactivated"  # back after 30+ idle days
    assert after["rfm"]["frequency"] == before["rfm"]["frequency"] + 1
    assert after["rfm"]["recency_days"] == 0.0
    assert after["fresh_events"] == 1
    # A user nobody has seen has no profile until their first event.
    with pytest.raises(NotFound):
        core.user_profile("never-seen")
    core.record_events([EventInput("never-seen", str(published.item_ids[0]), "view", now)])
    assert core.user_profile("never-seen")["lifecycle_stage"] == "new"


def test_at_risk_buyers_are_offered_repurchases_then_trending(published: PublishedModel) -> None:
    core = serving_core(published, BUY_AGAIN_WHEN_LAPSED)
    profiles = published.profiles
    now = core.now_ms()
    stages = profiles.stages(now)
    at_risk_buyers = np.flatnonzero((stages == STAGES.index("at_risk")) & (profiles.orders > 0))
    user_id = str(profiles.user_ids[at_risk_buyers[0]])
    result = core.recommend(user_id, 10)
    assert (result.strategy, result.lifecycle_stage) == ("repurchase", "at_risk")
    bought = set(published.item_ids[published.purchased_by(published.user_index(user_id))].tolist())
    reasons = [i.reason for i in result.items]
    repurchased = [i.item_id for i in result.items if i.reason == "repurchase"]
    assert repurchased and set(repurchased) <= bought
    assert reasons == sorted(reasons, key=lambda r: r != "repurchase")  # repurchases lead
    # The same user with the personal strategy for every stage gets the model's list.
    personal = serving_core(published, ServingConfig(lifecycle=LifecycleConfig(at_risk="personal")))
    assert personal.recommend(user_id, 10).strategy == "personal"


def affinity_share(items: list[str], published: PublishedModel, categories: tuple[str, ...]):
    cats = published.items.categories[[published.item_index(i) for i in items]]
    return float(np.isin(cats, categories).mean())


def test_a_user_known_only_by_attributes_gets_items_of_their_cohort(
    core: RecommenderCore,
) -> None:
    model = core.model
    assert model.coldstart is not None
    popular = [i.item_id for i in core.recommend("walk-in", 20).items]
    for age_band, favoured in AGE_AFFINITY.items():
        result = core.recommend("walk-in", 20, user_attributes={"age_band": age_band})
        assert result.strategy == "hybrid" and result.fallback
        items = [i.item_id for i in result.items]
        share = affinity_share(items, model, favoured)
        base = affinity_share(popular, model, favoured)
        assert share > max(0.5, base + 0.2), (age_band, share, base)


def test_audience_for_a_category_finds_its_planted_fans(
    core: RecommenderCore, shop: SampleShop
) -> None:
    fans = {u for u, prefs in shop.preferred_categories.items() if "garden" in prefs}
    base_rate = len(fans) / len(shop.preferred_categories)
    audience = core.find_audience(category="garden", k=100)
    precision = len(set(audience.user_ids) & fans) / len(audience.user_ids)
    assert precision > 3 * base_rate, (precision, base_rate)
    # Without buyers: nobody who bought from the category before.
    model = core.model
    garden = set(np.flatnonzero(model.items.categories == "garden").tolist())
    fresh = core.find_audience(category="garden", k=100, exclude_buyers=True)
    for user_id in fresh.user_ids:
        bought = set(model.purchased_by(model.user_index(user_id)).tolist())
        assert not bought & garden
    with pytest.raises(InvalidArgument):
        core.find_audience(item_id="i0001", category="garden", k=5)
    with pytest.raises(InvalidArgument):
        core.find_audience(category="garden", k=0)
    with pytest.raises(NotFound):
        core.find_audience(category="no-such-category", k=5)


def test_a_fresh_purchase_leaves_the_buyer_out_of_an_audience_without_buyers(
    published: PublishedModel,
) -> None:
    core = serving_core(published)
    top = core.find_audience(category="garden", k=5, exclude_buyers=True).user_ids[0]
    garden_item = str(published.item_ids[np.flatnonzero(published.items.categories == "garden")[0]])
    core.record_events([EventInput(top, garden_item, "purchase", core.now_ms())])
    assert top not in core.find_audience(category="garden", k=5000, exclude_buyers=True).user_ids
    assert top in core.find_audience(category="garden", k=5000).user_ids


def test_a_forgotten_user_never_appears_in_an_audience(published: PublishedModel) -> None:
    core = serving_core(published)
    top = core.find_audience(category="garden", k=5).user_ids[0]
    core.forget_user(top)
    assert top not in core.find_audience(category="garden", k=5000).user_ids
    with pytest.raises(NotFound):
        core.user_profile(top)


@pytest.fixture(scope="module")
def cold_shop(
    shop: SampleShop, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, str, str]:
    """The sample shop with one garden item's events removed (a new item, in the catalogue
    only) and one user in the users file who has no event."""
    directory = tmp_path_factory.mktemp("cold-shop")
    shop.write(directory)
    items = shop.items
    garden = [
        i
        for i, c in zip(
            items.column("item_id").to_pylist(), items.column("category").to_pylist(), strict=True
        )
        if c == "garden"
    ]
    new_item = garden[0]
    with open(directory / "events.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("item_id")
    with open(directory / "events.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(r for r in rows if r[column] != new_item)
    with open(directory / "users.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["prospect-55", "55+", "f", "north", "yes", "no", "no"])
    inputs = TrainInputs(directory / "events.csv", directory / "items.csv", directory / "users.csv")
    result = train_once("cold-shop", inputs, directory / "models", Config())
    return result, new_item, "prospect-55"


def test_a_new_item_known_only_by_attributes_has_similar_items_and_an_audience(
    cold_shop: tuple[TrainResult, str, str], shop: SampleShop
) -> None:
    result, new_item, prospect = cold_shop
    model = PublishedModel.load(ModelStore(result.model_dir).path(result.version))
    assert model.item_index(new_item) is None and model.coldstart is not None
    core = serving_core(model)
    similar = core.similar_items(new_item, 10)
    assert similar.strategy == "hybrid" and similar.model_version == model.version
    assert {i.reason for i in similar.items} == {f"similar_attributes:{new_item}"}
    assert all(a.score >= b.score for a, b in itertools.pairwise(similar.items))
    shown = tuple(i.item_id for i in similar.items[:3])
    rest = core.similar_items(new_item, 7, Filters(exclude_item_ids=shown))
    assert [i.item_id for i in rest.items] == [i.item_id for i in similar.items[3:]]
    with pytest.raises(NotFound, match=f"'no-such-item' is not in model {model.version}"):
        core.similar_items("no-such-item", 10)
    # Likeness is not boosted: new and promoted items rank where their attributes put them.
    boosts = RulesConfig(boost_new=5.0, promoted_tag="gift", boost_promoted=5.0)
    boosted = serving_core(model, ServingConfig(rules=boosts)).similar_items(new_item, 10)
    assert boosted.items == similar.items
    assert affinity_share([i.item_id for i in similar.items], model, ("garden",)) >= 0.8
    fans = {u for u, prefs in shop.preferred_categories.items() if "garden" in prefs}
    audience = core.find_audience(item_id=new_item, k=100)
    precision = len(set(audience.user_ids) & fans) / 100
    assert precision > 2 * len(fans) / len(shop.preferred_categories), precision
    # The users-file prospect has a profile and gets hybrid items for a 55+ shopper.
    profile = core.user_profile(prospect)
    assert profile["lifecycle_stage"] == "new" and profile["attributes"]["age_band"] == "55+"
    # (Asked after an anonymous walk-in, whose list they must not be given.)
    popular = [i.item_id for i in core.recommend("walk-in", 20).items]
    listed = core.recommend(prospect, 20)
    assert listed.strategy == "hybrid"
    # Favourites were planted from age band and gender (a 55+ woman: garden, books, grocery,
    # beauty, fashion); the popular list is the bar to clear.
    favoured = AGE_AFFINITY["55+"] + GENDER_AFFINITY["f"]
    share = affinity_share([i.item_id for i in listed.items], model, favoured)
    assert share > max(0.6, affinity_share(popular, model, favoured) + 0.15), share
    # RankItems ranks that list as Recommend does; a walk-in who gives the same attributes
    # with the call gets the same list, and an exclusion holds on it.
    ids = [i.item_id for i in listed.items]
    ranked = core.rank_items(prospect, ids[::-1])
    assert ranked.strategy == "hybrid" and [i.item_id for i in ranked.items] == ids
    attributes = {str(k): str(v) for k, v in profile["attributes"].items()}
    told = core.recommend("walk-in-2", 20, user_attributes=attributes)
    assert told.strategy == "hybrid" and [i.item_id for i in told.items] == ids
    ranked = core.rank_items("walk-in-2", ids[::-1], user_attributes=attributes)
    assert ranked.strategy == "hybrid" and [i.item_id for i in ranked.items] == ids
    again = core.recommend(prospect, 20, Filters(exclude_item_ids=(ids[0],)))
    assert [i.item_id for i in again.items][:19] == ids[1:]


def test_audience_export_and_segments_report(trained: TrainResult, tmp_path: Path) -> None:
    quiet = Progress("audience", open(os.devnull, "w"))  # noqa: SIM115
    url = f"sqlite:///{tmp_path / 'events.db'}"
    # The server's store holds a deletion and a fresh purchase, both of top garden prospects.
    model = PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))
    live = RecommenderCore(event_store=open_event_store(url))
    live.swap(model)
    before = live.find_audience(category="garden", k=60, exclude_buyers=True).user_ids
    forgotten, buyer = before[0], before[1]
    live.forget_user(forgotten, "test")
    garden_item = str(model.item_ids[np.flatnonzero(model.items.categories == "garden")[0]])
    live.record_events([EventInput(buyer, garden_item, "purchase", live.now_ms() + 60_000)])
    as_csv = tmp_path / "garden.csv"
    summary = export_audience(
        trained.model_dir, as_csv, category="garden", k=50, exclude_buyers=True,
        event_store=url, progress=quiet,
    )  # fmt: skip
    with open(as_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert summary["users"] == len(rows) == 50
    assert [int(r["rank"]) for r in rows] == list(range(1, 51))
    # Exactly what FindAudience answers from the same model and store.
    served = live.find_audience(category="garden", k=50, exclude_buyers=True)
    assert [r["user_id"] for r in rows] == list(served.user_ids)
    assert [float(r["score"]) for r in rows] == pytest.approx(list(served.scores))
    assert forgotten not in served.user_ids and buyer not in served.user_ids
    assert [r["user_id"] for r in rows][:48] == [u for u in before if u not in (forgotten, buyer)][
        :48
    ]
    live.event_store.close()
    everyone = tmp_path / "champions.parquet"
    export_audience(
        trained.model_dir,
        everyone,
        segment_id="rfm:champions",
        event_store=f"sqlite:///{tmp_path / 'events.db'}",
        progress=quiet,
    )
    table = pq.read_table(everyone)
    champions = next(s for s in model.segments if s["id"] == "rfm:champions")
    assert table.num_rows == champions["size"]

    report = segments_report(trained.model_dir, tmp_path / "report")
    text = report.read_text()
    assert "rfm:champions" in text and "cluster:0" in text
    for picture in ("segment_sizes.png", "cluster_categories.png"):
        assert (tmp_path / "report" / picture).read_bytes()[:4] == b"\x89PNG"


def test_live_events_moving_the_clock_leave_rfm_segments_as_trained(
    published: PublishedModel,
) -> None:
    """A month of clock (one live event stamped a month after the data) must not empty the
    best segments: a segment's members change only with their own purchases."""
    core = serving_core(published)
    trained_sizes = {s["id"]: s["size"] for s in published.segments if s["kind"] == "rfm"}
    month_later = int(published.manifest["data_end_ms"]) + 30 * DAY_MS
    core.record_events([EventInput("someone-new", "i0001", "view", month_later)])
    assert core.now_ms() == month_later
    for segment in ("rfm:champions", "rfm:loyal", "rfm:at_risk"):
        members = core.find_audience(segment_id=segment, k=5000).user_ids
        assert len(members) == trained_sizes[segment] > 0, segment
    champion = core.find_audience(segment_id="rfm:champions", k=1).user_ids[0]
    assert core.user_profile(champion)["rfm"]["segment"] == "champions"


def test_the_segments_report_says_its_clock_and_what_each_measure_counts(
    trained: TrainResult, tmp_path: Path
) -> None:
    text = segments_report(trained.model_dir, tmp_path / "report").read_text()
    day = time.strftime("%Y-%m-%d", time.gmtime(trained.manifest["data_end_ms"] / 1000))
    assert f"as of {day}" in text
    assert "RFM counts purchases" in text and "lifecycle stages count any event" in text


def test_repurchase_ranks_by_strength_and_counts_fresh_purchases_only(
    published: PublishedModel,
) -> None:
    """Buy-again lists rank what the user bought by how strongly (the training confidence), and
    a purchase since training joins them at one purchase weight; a fresh view does not."""
    always = LifecycleConfig(*(["repurchase"] * 5))
    core = serving_core(published, ServingConfig(lifecycle=always))
    counts = np.diff(published.purchased_indptr)
    row = int(np.flatnonzero(counts >= 3)[0])
    user = str(published.user_ids[row])
    items, confidences = published.history_of(row)
    strength = dict(zip(items.tolist(), confidences.tolist(), strict=True))
    bought = published.purchased_by(row).tolist()
    on_sale = [i for i in bought if published.items.available[i]]  # the rules drop the rest
    expected = sorted((strength.get(i, 1.0) for i in on_sale), reverse=True)
    listed = [i for i in core.recommend(user, 50).items if i.reason == "repurchase"]
    assert [i.score for i in listed] == pytest.approx(expected) and len(expected) >= 2
    assert {i.item_id for i in listed} == set(published.item_ids[on_sale].tolist())

    never = [
        str(published.item_ids[i])
        for i in range(published.item_ids.size)
        if i not in bought and published.items.available[i]
    ][:2]
    later = core.now_ms() + 60_000
    core.record_events([EventInput(user, never[0], "purchase", later),
                        EventInput(user, never[1], "view", later)])  # fmt: skip
    again = {i.item_id: i for i in core.recommend(user, 50).items if i.reason == "repurchase"}
    weight = float(published.manifest["config"]["signals"]["purchase"])
    assert never[0] in again and again[never[0]].score == pytest.approx(weight)
    assert never[1] not in again
