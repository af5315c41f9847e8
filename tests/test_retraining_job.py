"""The scheduled retraining job: exit codes, quality gate, retention, rollback, crash safety."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pytest
from helpers import events_table, quiet

from recsvc.cli.main import main
from recsvc.config import CleaningConfig, Config, ModelConfig, SignalsConfig, TrainingConfig
from recsvc.errors import QualityGateRefused
from recsvc.models import PopularityRecommender, TrendingRecommender
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.training.cleaning import clean_events
from recsvc.training.evaluate import (
    published_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.interactions import build_interactions, event_weights
from recsvc.training.pipeline import TrainInputs, TrainResult, ingest_and_clean, train

RECSVC = str(Path(sys.executable).with_name("recsvc"))


def copy_store(trained: TrainResult, target: Path) -> Path:
    shutil.copytree(trained.model_dir, target)
    return target


def with_model(config: Config, **model: object) -> Config:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model))


def test_worse_model_is_refused_with_exit_3(
    trained: TrainResult, shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    model_dir = copy_store(trained, tmp_path / "models")
    before = ModelStore(model_dir).versions()
    with pytest.raises(QualityGateRefused, match="below the published"):
        train(shop_inputs, model_dir, with_model(Config(), type="popularity"), progress=quiet())
    assert ModelStore(model_dir).versions() == before
    assert ModelStore(model_dir).current_version() == trained.version

    config = tmp_path / "worse.toml"
    config.write_text('[model]\ntype = "popularity"\n')
    code = main(
        [
            "train",
            "--events",
            str(shop_inputs.events),
            "--model-dir",
            str(model_dir),
            "--config",
            str(config),
        ]
    )
    assert code == 3
    assert ModelStore(model_dir).current_version() == trained.version


def test_gate_can_be_disabled_and_equal_models_pass(
    trained: TrainResult, shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    model_dir = copy_store(trained, tmp_path / "models")
    same = train(shop_inputs, model_dir, Config(), progress=quiet())
    assert same.manifest["quality_gate"]["passed"]
    assert same.manifest["quality_gate"]["method"].startswith("refit")
    off = dataclasses.replace(Config(), training=TrainingConfig(quality_gate_tolerance=-1.0))
    worse = train(shop_inputs, model_dir, with_model(off, type="popularity"), progress=quiet())
    assert ModelStore(model_dir).current_version() == worse.version


def test_keeps_the_last_n_versions_and_rolls_back(
    trained: TrainResult,
    shop_inputs: TrainInputs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = copy_store(trained, tmp_path / "models")
    config = dataclasses.replace(Config(), training=TrainingConfig(keep_versions=2))
    results = [train(shop_inputs, model_dir, config, progress=quiet()) for _ in range(2)]
    store = ModelStore(model_dir)
    assert store.versions() == sorted(r.version for r in results)
    assert main(["models", "list", "--model-dir", str(model_dir)]) == 0
    listing = capsys.readouterr().out
    assert f"* {results[-1].version}" in listing
    assert main(["models", "rollback", results[0].version, "--model-dir", str(model_dir)]) == 0
    assert store.current_version() == results[0].version
    assert main(["models", "rollback", "no-such-version", "--model-dir", str(model_dir)]) == 2


def test_config_file_alone_is_a_complete_job(shop_inputs: TrainInputs, tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        f'[inputs]\nevents = "{shop_inputs.events}"\nmodel_dir = "models"\n'
        '[model]\ntype = "itemknn"\n'
    )
    assert main(["train", "--config", str(config)]) == 0
    store = ModelStore(tmp_path / "models")
    manifest = PublishedModel.load(store.path(store.current_version())).manifest
    assert manifest["model_type"] == "itemknn"


def test_sigkill_during_publish_leaves_the_previous_model_current(
    trained: TrainResult, shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    """Kill -9 the job the moment its staging directory appears, several times."""
    model_dir = copy_store(trained, tmp_path / "models")
    store = ModelStore(model_dir)
    killed_in_publish = 0
    for _ in range(3):
        job = subprocess.Popen(
            [RECSVC, "train", "--events", str(shop_inputs.events), "--model-dir", str(model_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while job.poll() is None:
            if any(model_dir.glob(".staging-*")):
                job.send_signal(signal.SIGKILL)
                killed_in_publish += 1
                break
            time.sleep(0.0005)
        job.wait()
        current = store.current_version()
        assert current in store.versions()
        PublishedModel.load(store.path(current))  # complete and consistent
        if job.returncode == -signal.SIGKILL:
            assert current == trained.version
    assert killed_in_publish >= 1
    # A half-written version is never picked up, and the next run clears it away.
    assert all(PublishedModel.load(store.path(v)) for v in store.versions())
    assert main(["train", "--events", str(shop_inputs.events), "--model-dir", str(model_dir)]) == 0
    assert not list(model_dir.glob(".staging-*"))


def test_bot_like_and_sparse_users_are_left_out_and_reported() -> None:
    day = 1_740_787_200_000
    rows = [("bot", f"i{n % 7}", "view", day + n * 1000) for n in range(50)]
    rows += [("alice", "i1", "view", day), ("alice", "i2", "purchase", day)]
    rows += [("bob", "i1", "view", day)]
    cleaned, report = clean_events(
        events_table(rows), CleaningConfig(min_user_interactions=2, max_events_per_user_day=20)
    )
    assert report.bot_users == 1 and report.bot_events == 50
    assert report.examples["bot_users"] == ["bot"]
    assert report.sparse_users == 1  # bob has one item
    assert set(cleaned.column("user_id").to_pylist()) == {"alice"}


def test_time_decay_halves_weight_per_half_life() -> None:
    day = 86_400_000
    table = events_table([("u", "i", "purchase", 10 * day), ("u", "i", "purchase", 17 * day)])
    weights = event_weights(table, SignalsConfig(purchase=8.0, half_life_days=7.0))
    np.testing.assert_allclose(weights, [4.0, 8.0])


def test_history_half_life_halves_a_user_s_older_moments_and_a_basket_is_one_moment() -> None:
    """Each user's events weigh half as much per `history_half_life` later moments of that
    user (distinct timestamps), counted per user, never across users."""
    rows = [
        ("u", "a", "purchase", 100),
        ("u", "b", "purchase", 200),  # b and c: one basket, one moment
        ("u", "c", "purchase", 200),
        ("u", "d", "purchase", 300),
        ("u", "a", "view", 300),  # a again, in the newest moment
        ("v", "a", "purchase", 50),  # v's only moment: its newest, whatever u did later
    ]
    signals = SignalsConfig(view=1.0, purchase=8.0, scaling="none", history_half_life=1.0)
    matrix = build_interactions(events_table(rows), signals)
    row = matrix.confidence.toarray()[0].tolist()
    dense = dict(zip(matrix.item_ids.tolist(), row, strict=True))
    assert dense == {"a": 8.0 / 4 + 1.0, "b": 4.0, "c": 4.0, "d": 8.0}
    assert matrix.confidence.toarray()[1].tolist() == [8.0, 0.0, 0.0, 0.0]
    off = build_interactions(events_table(rows), dataclasses.replace(signals, history_half_life=0))
    assert off.confidence.toarray()[0].tolist() == [9.0, 8.0, 8.0, 8.0]
    assert matrix.purchased.toarray().tolist() == off.purchased.toarray().tolist()
    assert matrix.recent.toarray().tolist() == off.recent.toarray().tolist()


def test_ease_is_skipped_for_large_catalogues(shop_inputs: TrainInputs, tmp_path: Path) -> None:
    config = with_model(Config(), candidates=["ease", "itemknn"])
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, ease=dataclasses.replace(ModelConfig().ease, max_items=10)
        ),
    )
    result = train(shop_inputs, tmp_path, config, progress=quiet())
    assert result.manifest["model_type"] == "itemknn"
    assert "max_items" in result.manifest["evaluation"]["skipped"]["ease"]


def _once_per_pair(events: pa.Table, event: str) -> pa.Table:
    """One `event` per user-item pair of `events`, at the pair's first timestamp."""
    first = events.group_by(["user_id", "item_id"], use_threads=False).aggregate(
        [("timestamp", "min")]
    )
    return pa.table(
        {
            "user_id": first.column("user_id"),
            "item_id": first.column("item_id"),
            "event": [event] * first.num_rows,
            "timestamp": first.column("timestamp_min"),
        }
    )


def test_log_without_repeats_is_judged_and_served_on_unseen_items(
    shop_dir: Path, tmp_path: Path
) -> None:
    """Like film ratings: each user touches an item once, so history is filtered when served."""
    import pyarrow.csv as pa_csv

    once = _once_per_pair(pa_csv.read_csv(shop_dir / "events.csv"), "view")
    pa_csv.write_csv(once, tmp_path / "events.csv")
    result = train(TrainInputs(tmp_path / "events.csv"), tmp_path / "m", Config(), progress=quiet())
    evaluation = result.manifest["evaluation"]
    assert evaluation["holdout"]["repeat_share"] == 0.0
    assert evaluation["variant"] == "unseen" and "unseen items" in evaluation["reason"]
    assert result.manifest["serving"]["exclude_seen"] is True

    from recsvc.serving.core import RecommenderCore

    core = RecommenderCore()
    published = PublishedModel.load(ModelStore(tmp_path / "m").path(result.version))
    core.swap(published)
    for user in published.user_ids[:50]:
        seen = set(published.item_ids[published.seen_by(published.user_index(user))].tolist())
        got = {i.item_id for i in core.recommend(str(user), 50).items}
        assert got and not got & seen


def test_a_log_where_purchases_never_repeat_is_judged_and_served_without_what_was_bought(
    shop_dir: Path, tmp_path: Path
) -> None:
    """Like durable goods: users come back to what they viewed, but buy an item once. Models
    are judged on items the user has not bought, and served lists leave purchases out."""
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    events = pa_csv.read_csv(shop_dir / "events.csv")
    bought = pc.equal(events.column("event"), "purchase")
    once = _once_per_pair(events.filter(bought), "purchase")
    browsing = events.filter(pc.invert(bought)).select(once.column_names)
    pa_csv.write_csv(pa.concat_tables([browsing, once.cast(browsing.schema)]), tmp_path / "e.csv")
    result = train(TrainInputs(tmp_path / "e.csv"), tmp_path / "m", Config(), progress=quiet())
    evaluation = result.manifest["evaluation"]
    assert evaluation["holdout"]["repeat_share"] > 0.05
    assert evaluation["holdout"]["purchase_repeat_share"] == 0.0
    assert evaluation["variant"] == "new"
    assert "0% of holdout purchases repeat a purchase" in evaluation["reason"]
    assert result.manifest["serving"]["exclude_purchased"] is True
    assert result.manifest["serving"]["exclude_seen"] is False
    assert set(result.manifest["serving"]["lifecycle"].values()) <= {"personal", "trending"}

    from recsvc.serving.core import RecommenderCore

    core = RecommenderCore()
    published = PublishedModel.load(ModelStore(tmp_path / "m").path(result.version))
    core.swap(published)
    buyers = [u for u in range(published.user_ids.size) if published.purchased_by(u).size]
    for user in buyers[:50]:
        bought_before = set(published.item_ids[published.purchased_by(user)].tolist())
        got = {i.item_id for i in core.recommend(str(published.user_ids[user]), 50).items}
        assert got and not got & bought_before


def test_shop_log_with_repeats_is_judged_on_all_items(trained: TrainResult) -> None:
    evaluation = trained.manifest["evaluation"]
    assert evaluation["holdout"]["repeat_share"] > 0.05
    assert evaluation["holdout"]["purchase_repeat_share"] > 0.05
    assert evaluation["variant"] == "all"
    assert trained.manifest["serving"]["exclude_seen"] is False
    assert trained.manifest["serving"]["exclude_purchased"] is False


def test_trending_follows_recent_sales_where_popularity_follows_all_time() -> None:
    day = 86_400_000
    now = 100 * day
    rows = [(f"old{u}", "old-hit", "purchase", now - 70 * day) for u in range(60)]
    rows += [(f"new{u}", "new-hit", "purchase", now - u * day // 10) for u in range(30)]
    rows += [("x", "steady", "view", now - d * day) for d in range(0, 70, 7)]
    interactions = build_interactions(events_table(rows), SignalsConfig())
    items = interactions.item_ids.tolist()
    popular, _ = PopularityRecommender().fit(interactions.confidence).recommend(np.zeros(1), 3)
    hot, _ = TrendingRecommender().fit(interactions.recent).recommend(np.zeros(1), 3)
    assert items[popular[0][0]] == "old-hit"
    assert items[hot[0][0]] == "new-hit"
    assert items[hot[0][-1]] == "old-hit"  # ten half-lives ago: faded below a weekly viewer


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_training_reads_the_event_store_and_leaves_forgotten_users_out(
    shop_inputs: TrainInputs, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from recsvc.events import StoredEvent, open_event_store

    url = (
        f"sqlite:///{tmp_path / 'events.db'}"
        if backend == "sqlite"
        else f"{request.getfixturevalue('redis_url')}?prefix=train-{tmp_path.name}"
    )
    store = open_event_store(url)
    late = 1_795_000_000_000  # 2026-11-18, after the shop's log: the newest events in the run
    store.append(
        [StoredEvent("new-shopper", f"i{n:04d}", "purchase", late + n) for n in range(1, 6)]
        + [StoredEvent("u0001", "i0001", "view", late)]
    )
    store.forget("u0002")
    store.close()
    command = ["train", "--events", str(shop_inputs.events), "--items", str(shop_inputs.items)]
    assert main([*command, "--model-dir", str(tmp_path / "m"), "--event-store", url]) == 0
    model = PublishedModel.load(ModelStore(tmp_path / "m").current_path())
    assert model.user_index("new-shopper") is not None
    assert model.user_index("u0002") is None, "a forgotten user is left out of training"
    cleaning = model.manifest["cleaning"]
    assert cleaning["forgotten_users"] == 1 and cleaning["forgotten_events"] > 0
    assert model.manifest["data_end_ms"] >= late


def _events_before(source: Path, target: Path, cut_ms: int) -> Path:
    """The rows of an events CSV stamped before `cut_ms`: the log as it was on an earlier night."""
    table = pa_csv.read_csv(source)
    stamps = pc.cast(table.column("timestamp"), pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    pa_csv.write_csv(table.filter(pc.less(stamps, cut_ms)), target)
    return target


def test_nightly_gate_scores_the_published_arrays_on_the_new_holdout(
    shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    """The usual night: the published model was trained before the new run's holdout begins,
    so the gate scores its own arrays there (no refit), and refuses a worse new model."""
    config = Config()
    dataset, _ = ingest_and_clean(shop_inputs, config, tmp_path / "rejects", quiet())
    holdout = validation_holdout(dataset.events, config)
    assert holdout is not None and holdout.cut_ms is not None
    older = _events_before(shop_inputs.events, tmp_path / "older.csv", holdout.cut_ms)
    model_dir = tmp_path / "models"
    earlier = TrainInputs(older, shop_inputs.items, shop_inputs.users)
    first = train(earlier, model_dir, config, progress=quiet())
    assert first.manifest["data_end_ms"] < holdout.cut_ms

    nightly = train(shop_inputs, model_dir, config, progress=quiet())
    gate = nightly.manifest["quality_gate"]
    assert gate["checked"] and gate["passed"] and gate["method"] == "published arrays"
    published = PublishedModel.load(ModelStore(model_dir).path(first.version))
    scorer = published_scorer(published, holdout.train.user_ids, holdout.train.item_ids)
    expected = ranking_metrics(scorer, holdout)[holdout.variant]["ndcg@10"]
    assert gate["published"] == pytest.approx(expected, abs=1e-6)
    assert gate["published"] > 0.05  # the published model's own arrays, scored: not a default

    current = ModelStore(model_dir).current_version()
    ModelStore(model_dir).set_current(first.version)
    with pytest.raises(QualityGateRefused, match="below the published"):
        train(shop_inputs, model_dir, with_model(config, type="popularity"), progress=quiet())
    assert ModelStore(model_dir).current_version() == first.version
    assert current == nightly.version


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_a_rolled_back_version_is_never_pruned(tmp_path: Path, keep: int) -> None:
    store = ModelStore(tmp_path / "models")
    published = [
        store.publish(lambda staging, n=n: (staging / "n").write_text(str(n)), suffix=f"v{n}")
        for n in range(4)
    ]
    store.set_current(published[0])  # rolled back to the oldest
    removed = store.prune(keep)
    newest = published[len(published) - keep :] if keep else []
    assert store.current_version() == published[0]
    assert store.versions() == sorted({published[0], *newest})
    assert sorted(removed) == sorted(set(published) - {published[0], *newest})
    assert (store.current_path() / "n").read_text() == "0"


def test_a_config_change_cannot_weaken_the_gates_baseline(
    trained: TrainResult, shop_inputs: TrainInputs, tmp_path: Path
) -> None:
    """Signal settings that ruin the new model must not ruin the published model's refit too:
    the baseline is refitted with the published version's own recorded settings."""
    model_dir = copy_store(trained, tmp_path / "models")
    ruinous = dataclasses.replace(
        Config(),
        signals=SignalsConfig(
            view=1.0, cart=0.01, purchase=0.001, scaling="none", half_life_days=0.05
        ),
    )
    with pytest.raises(QualityGateRefused, match="below the published") as refused:
        train(shop_inputs, model_dir, ruinous, progress=quiet())
    assert ModelStore(model_dir).current_version() == trained.version
    published_score = trained.manifest["metrics"]["all"]["ndcg@10"]
    baseline = float(str(refused.value).split(f"{trained.version} ")[1].split()[0])
    assert baseline > 0.8 * published_score, (baseline, published_score)
