"""What each lifecycle stage is served is chosen on data: on a ratings-like log (no item twice,
users active for a few days, then gone, as MovieLens) no stage is served repurchase, and the
lists the server returns with the shipped defaults beat popularity clearly."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from helpers import train_once

from recsvc.config import Config, LifecycleConfig, ServingConfig
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.training.evaluate import list_ndcg
from recsvc.training.pipeline import TrainInputs, TrainResult
from recsvc.training.sample_shop import ShopSpec, generate_shop

HELD_OUT_SHARE = 0.2


@pytest.fixture(scope="module")
def ratings(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, dict[str, set[str]]]:
    """Trained with the defaults on each user's older 80% of ratings; the newer 20% held out."""
    directory = tmp_path_factory.mktemp("ratings")
    shop = generate_shop(11, ShopSpec(ratings=True, weeks=26))
    events = shop.events
    users = events.column("user_id").to_pylist()
    stamps = events.column("timestamp").to_pylist()  # ISO 8601: sorts as time does
    by_user: dict[str, list[int]] = defaultdict(list)
    for row in sorted(range(events.num_rows), key=lambda r: (users[r], stamps[r])):
        by_user[users[row]].append(row)
    held: set[int] = set()
    for rows in by_user.values():
        n = int(len(rows) * HELD_OUT_SHARE)
        held.update(rows[len(rows) - n :] if n else [])
    mask = np.array([r not in held for r in range(events.num_rows)])
    pa_csv.write_csv(events.filter(pa.array(mask)), directory / "events.csv")
    pa_csv.write_csv(shop.items, directory / "items.csv")
    truth: dict[str, set[str]] = defaultdict(set)
    items = events.column("item_id").to_pylist()
    for row in held:
        truth[users[row]].add(items[row])
    inputs = TrainInputs(directory / "events.csv", directory / "items.csv")
    return train_once("ratings", inputs, directory / "models", Config()), dict(truth)


def _served_ndcg(published: PublishedModel, config: ServingConfig, truth) -> tuple[float, dict]:
    core = RecommenderCore(config)
    core.swap(published)
    scores, stages = [], defaultdict(int)
    for user, wanted in truth.items():
        listed = core.recommend(user, 10, exclude_purchased=True)
        stages[listed.lifecycle_stage] += 1
        ranked = published.item_indices([i.item_id for i in listed.items])
        scores.append(list_ndcg(ranked, published.item_indices(sorted(wanted))))
    return float(np.mean(scores)), dict(stages)


def test_no_stage_is_served_repurchase_where_nothing_is_bought_twice(ratings) -> None:
    result, _ = ratings
    manifest = result.manifest
    assert manifest["evaluation"]["variant"] == "unseen"
    served = manifest["serving"]["lifecycle"]
    assert set(served) == {"new", "active", "reactivated", "at_risk", "churned"}
    assert set(served.values()) <= {"personal", "trending"}
    evidence = manifest["evaluation"]["lifecycle"]["evidence"]
    assert "repurchase" not in evidence["all"] and evidence["all"]["users"] > 100


def test_served_lists_beat_popularity_clearly_with_the_shipped_defaults(
    ratings, tmp_path: Path
) -> None:
    result, truth = ratings
    published = PublishedModel.load(ModelStore(result.model_dir).path(result.version))
    served, stages = _served_ndcg(published, ServingConfig(), truth)
    popular, _ = _served_ndcg(
        published, ServingConfig(lifecycle=LifecycleConfig(*["popular"] * 5)), truth
    )
    fixed_table, _ = _served_ndcg(
        published,
        ServingConfig(lifecycle=LifecycleConfig(*["personal"] * 3, "repurchase", "repurchase")),
        truth,
    )
    lapsed = stages.get("at_risk", 0) + stages.get("churned", 0)
    assert lapsed > 0.4 * len(truth), stages  # many rated in a burst, then left
    assert served > 1.5 * popular, (served, popular)
    # The table shipped before (lapsed users: repurchase) served them trending items here.
    assert served > 1.3 * fixed_table, (served, fixed_table)


def test_a_log_without_time_is_never_served_repurchase(
    shop_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every event at one instant: the holdout is a random share of each user's events, and
    nothing was bought before anything else."""
    events = pa_csv.read_csv(shop_dir / "events.csv")
    one_instant = events.set_column(
        events.schema.get_field_index("timestamp"),
        "timestamp",
        pa.array(["2026-11-01T00:00:00Z"] * events.num_rows),
    )
    directory = tmp_path_factory.mktemp("timeless")
    pa_csv.write_csv(one_instant, directory / "events.csv")
    result = train_once(
        "timeless", TrainInputs(directory / "events.csv"), directory / "m", Config()
    )
    assert result.manifest["evaluation"]["holdout"]["method"] == "per_user"
    assert set(result.manifest["serving"]["lifecycle"].values()) <= {"personal", "trending"}


def test_a_less_preferred_strategy_must_win_by_more_than_the_margin_to_be_served() -> None:
    """Per stage the most preferred strategy stands unless a later one beats it by more than
    STRATEGY_MARGIN: a tie within the noise of one split keeps the simpler list."""
    from recsvc.profiles import STAGES
    from recsvc.training.progress import Progress
    from recsvc.training.stage_policy import MIN_STAGE_USERS, STRATEGY_MARGIN, _choose

    n = MIN_STAGE_USERS
    stages = np.array(["new"] * n + ["active"] * n + ["churned"] * (n - 1))
    just_under, clearly = 0.2 * (1 + STRATEGY_MARGIN * 0.9), 0.2 * (1 + STRATEGY_MARGIN * 1.1)
    personal = np.full(stages.size, 0.2)
    blend = np.where(stages == "new", just_under, np.where(stages == "active", clearly, 0.0))
    trending = np.where(stages == "churned", 0.5, 0.0)  # churned's best, but too few of them
    scores = {"personal": personal, "blend": blend, "trending": trending}
    with open("/dev/null", "w") as quiet:
        chosen = _choose(("personal", "blend", "trending"), scores, stages, Progress("t", quiet))
    lifecycle = chosen["lifecycle"]
    assert lifecycle["new"] == "personal" and lifecycle["active"] == "blend"
    # Too few churned users for a choice of their own: the winner over everyone.
    assert lifecycle["churned"] == lifecycle["at_risk"] == "personal"
    assert set(lifecycle) == set(STAGES)
    assert chosen["evidence"]["churned"]["users"] == n - 1
