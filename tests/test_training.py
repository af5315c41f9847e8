"""Training recovers planted structure and publishes a complete, pickle-free version atomically."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsvc.config import Config
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.training.pipeline import BLEND_MARGIN, TrainInputs, TrainResult, train
from recsvc.training.progress import Progress
from recsvc.training.sample_shop import SampleShop


def preferred_share(model: PublishedModel, shop: SampleShop, personal: bool) -> float:
    """Mean share of each active user's top 10 (purchases excluded) in their planted categories."""
    activity = Counter(shop.events.column("user_id").to_pylist())
    shares = []
    for user_id, n_events in activity.items():
        if n_events < 20:
            continue
        user = model.user_index(user_id)
        exclude = model.purchased_by(user)
        scorer = model.model if personal else model.fallback
        scores = scorer.score(np.array([user]))[0]
        scores[exclude] = -np.inf
        top = np.argsort(-scores)[:10]
        wanted = set(shop.preferred_categories[user_id])
        shares.append(np.mean([model.items.categories[i] in wanted for i in top]))
    assert len(shares) > 500
    return float(np.mean(shares))


def test_model_recovers_planted_category_preferences(trained: TrainResult, shop: SampleShop):
    model = PublishedModel.load(ModelStore(trained.model_dir).path(trained.version))
    personal = preferred_share(model, shop, personal=True)
    popular = preferred_share(model, shop, personal=False)
    assert personal >= 0.75, personal
    assert personal >= popular + 0.4, (personal, popular)


def test_selection_picks_the_best_candidate_and_says_why(trained: TrainResult) -> None:
    evaluation = trained.manifest["evaluation"]
    models = evaluation["models"]
    assert set(models) - {"blend"} == {"als", "itemknn", "ease", "popularity", "trending"}
    variant = evaluation["variant"]
    best = max(("als", "itemknn", "ease"), key=lambda n: models[n][variant]["ndcg@10"])
    selected = evaluation["selected"]
    assert selected == trained.manifest["model_type"]
    if selected == "blend":
        # A blend is chosen only where it beats the best single model by the margin.
        blended = models["blend"][variant]["ndcg@10"]
        assert blended > models[best][variant]["ndcg@10"] * (1 + BLEND_MARGIN)
        assert best in {m["model_type"] for m in evaluation["blend"]["members"]}
    else:
        assert selected == best
    assert best in evaluation["reason"] and "ndcg@10" in evaluation["reason"]
    assert evaluation["holdout"]["method"] == "temporal"
    assert models[best]["all"]["ndcg@10"] > 2 * models["popularity"]["all"]["ndcg@10"]
    for shown in ("all", "new", "unseen"):
        for metric in (
            "precision@10",
            "recall@10",
            "ndcg@10",
            "map@10",
            "hit_rate@10",
            "coverage@10",
            "popularity@10",
        ):
            assert 0.0 <= models[best][shown][metric] <= 1.0
    # Popularity recommends the same few items to everyone: tiny coverage, high popularity.
    assert models["popularity"]["all"]["coverage@10"] < models[best]["all"]["coverage@10"]


def test_published_version_is_complete_and_pickle_free(trained: TrainResult) -> None:
    store = ModelStore(trained.model_dir)
    assert store.current_version() == trained.version
    directory = store.path(trained.version)
    manifest = json.loads((directory / "manifest.json").read_text())
    for key in (
        "schema_version",
        "model_type",
        "params",
        "data_fingerprint",
        "created_at",
        "metrics",
        "ingest",
    ):
        assert key in manifest, key
    assert manifest["model_type"] == manifest["evaluation"]["selected"]
    assert manifest["cleaning"]["bot_users"] == 0
    arrays = list(directory.rglob("*.npy"))
    assert len(arrays) >= 8
    for path in arrays:
        array = np.load(path, allow_pickle=False)
        assert array.dtype != object
    assert all(
        np.load(p).dtype == np.float32
        for p in (directory / "model").glob("*.npy")
        if np.load(p).dtype.kind == "f"
    )
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in directory.rglob("*"))


def test_failed_publish_leaves_current_untouched(trained: TrainResult, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.publish(lambda d: (d / "marker").write_text("v1"), suffix="a")

    def broken(directory: Path) -> None:
        (directory / "half").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.publish(broken, suffix="b")
    assert store.current_version() == first
    assert store.versions() == [first]
    assert not list(tmp_path.glob(".staging-*"))


def test_abandoned_staging_of_a_dead_process_is_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    dead = tmp_path / ".staging-999999999-abc"
    dead.mkdir()
    mine = tmp_path / f".staging-{os.getpid()}-live"
    mine.mkdir()
    store.publish(lambda d: (d / "x").write_text("x"), suffix="a")
    assert not dead.exists()
    assert mine.exists(), "a live process's staging directory must not be removed"


def test_same_input_and_seed_give_the_same_model(
    shop_inputs: TrainInputs, trained: TrainResult, tmp_path: Path
) -> None:
    with open(os.devnull, "w") as quiet:
        again = train(shop_inputs, tmp_path, Config(), progress=Progress("t", quiet))
    assert again.manifest["data_fingerprint"] == trained.manifest["data_fingerprint"]
    a = ModelStore(trained.model_dir).path(trained.version) / "model"
    b = ModelStore(tmp_path).path(again.version) / "model"
    for array in a.glob("*.npy"):
        np.testing.assert_array_equal(np.load(array), np.load(b / array.name))
    assert again.manifest["metrics"] == trained.manifest["metrics"]


def test_tune_searches_without_seeing_the_test_period(shop_inputs, tmp_path, monkeypatch) -> None:
    import json

    from recsvc.cli.main import main
    from recsvc.config import load_config
    from recsvc.training import search as searching
    from recsvc.training import tune as tuning

    # Every fit and every scoring the search does is recorded with the newest event it could
    # see: the search's own must all end before the test period, the final check's must not.
    fits: list[int] = []
    scorings: list[tuple[int | None, int]] = []
    fit, score = tuning.fit_model, tuning.ranking_metrics

    def spy_fit(model, interactions, dataset):
        fits.append(int(dataset.events.column("timestamp_ms").to_numpy().max()))
        return fit(model, interactions, dataset)

    def spy_score(scorer, holdout, *args, **kwargs):
        newest = int(holdout.train_events.column("timestamp_ms").to_numpy().max())
        scorings.append((holdout.cut_ms, newest))
        return score(scorer, holdout, *args, **kwargs)

    for module in (searching, tuning):  # the trials, then the final check
        monkeypatch.setattr(module, "fit_model", spy_fit)
        monkeypatch.setattr(module, "ranking_metrics", spy_score)
    out = tmp_path / "tuned.toml"
    code = main(
        [
            "tune",
            "--events",
            str(shop_inputs.events),
            "--out",
            str(out),
            "--trials",
            "6",
            "--models",
            "itemknn,als",
        ]
    )
    assert code == 0
    tuned = load_config(out)
    assert tuned.model.type in ("itemknn", "als")
    result = json.loads(out.with_suffix(".trials.json").read_text())
    assert result["trials"] == 6 and len(result["all_trials"]) == 6
    # The defaults are the first trials, so tuning never ends below them on validation.
    assert result["validation"]["tuned"] >= result["validation"]["default"]
    assert result["search_data_end_ms"] < result["test_cut_ms"]
    test_cut = result["test_cut_ms"]
    assert len(fits) == len(scorings) == 6 + 2  # six trials, then tuned and default once each
    search_cut = scorings[0][0]
    assert search_cut is not None and search_cut < test_cut
    for newest_fitted, (cut, newest_trained) in zip(fits[:6], scorings[:6], strict=True):
        assert cut == search_cut  # validated on the validation period, not the test period
        assert newest_fitted < search_cut and newest_trained < search_cut
    for newest_fitted, (cut, newest_trained) in zip(fits[6:], scorings[6:], strict=True):
        assert cut == test_cut and search_cut <= newest_fitted < test_cut
        assert newest_trained < test_cut
    assert (
        main(
            [
                "tune",
                "--events",
                str(shop_inputs.events),
                "--out",
                str(out),
                "--models",
                "popularity",
            ]
        )
        == 2
    )


def _blend_result(weights: list[float], ndcg: float, se: float) -> dict:
    members = [{"model_type": name, "params": {}} for name in ("als", "itemknn", "ease")]
    return {
        "members": members[: len(weights)],
        "weights": weights,
        "metrics": {"all": {"ndcg@10": ndcg, "ndcg_se@10": se}},
    }


@pytest.mark.parametrize(
    ("pair_ndcg", "equal_ndcg", "served"),
    [
        (0.300, 0.300, "equal"),  # as good as the pair
        (0.300, 0.296, "equal"),  # behind it by less than the pair's standard error (0.005)
        (0.300, 0.290, "pair"),  # behind by twice the standard error
        (0.286, 0.282, "pair"),  # within noise of the pair, but not 1% above the best single
    ],
)
def test_equal_blend_is_served_unless_the_pair_is_clearly_better(
    pair_ndcg: float, equal_ndcg: float, served: str
) -> None:
    from recsvc.training.pipeline import prefer_equal_weights

    pair = _blend_result([0.75, 0.25], pair_ndcg, 0.005)
    equal = _blend_result([1 / 3, 1 / 3, 1 / 3], equal_ndcg, 0.005)
    best_single = 0.280
    chosen = prefer_equal_weights(pair, equal, "all", must_beat=best_single * 1.01)
    assert chosen["weights"] == (equal if served == "equal" else pair)["weights"]


def test_the_job_tunes_on_its_validation_split_and_trains_with_what_won(
    shop_inputs: TrainInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsvc.training import search as searching

    # Shipped parameters planted to be poor (two factors, two sweeps): the search must find
    # better ones on the validation split, and the job must train with them.
    poor = Config()
    poor = dataclasses.replace(
        poor,
        model=dataclasses.replace(
            poor.model,
            candidates=["als"],
            blend=False,
            als=dataclasses.replace(poor.model.als, factors=2, iterations=2),
        ),
        training=dataclasses.replace(poor.training, tune_trials=10),
    )
    newest_fitted: list[int] = []
    fit = searching.fit_model

    def spy_fit(model, interactions, dataset):
        newest_fitted.append(int(dataset.events.column("timestamp_ms").to_numpy().max()))
        return fit(model, interactions, dataset)

    monkeypatch.setattr(searching, "fit_model", spy_fit)
    with open(os.devnull, "w") as quiet:
        tuned = train(shop_inputs, tmp_path / "tuned", poor, progress=Progress("t", quiet))
    evaluation = tuned.manifest["evaluation"]
    tuning = evaluation["tuning"]
    assert tuning["searched"] and tuning["adopted"], tuning
    assert tuning["trials"] == 10
    # Every trial fitted on the validation split's training part only.
    cut = evaluation["holdout"]["cut_ms"]
    assert len(newest_fitted) == 9 and max(newest_fitted) < cut  # the shipped one was known
    best = tuning["best"]["params"]
    params = tuned.manifest["params"]
    assert params["factors"] == best["als.factors"] != 2
    assert params["regularization"] == best["als.regularization"]
    shipped = tuning["shipped"]["als"]
    served = evaluation["models"]["als"][evaluation["variant"]]["ndcg@10"]
    assert served == pytest.approx(tuning["best"]["ndcg@10"]) and served > shipped * 1.01
    assert tuned.manifest["config"]["model"]["als"]["factors"] == best["als.factors"]
    assert tuned.manifest["config"]["model"]["type"] == "auto"  # the job still chooses

    # A budget smaller than a fifth of one fit: nothing is searched, and the manifest says why.
    tight = dataclasses.replace(
        poor, training=dataclasses.replace(poor.training, tune_budget_s=1e-3)
    )
    with open(os.devnull, "w") as quiet:
        rushed = train(shop_inputs, tmp_path / "tight", tight, progress=Progress("t", quiet))
    assert rushed.manifest["params"]["factors"] == 2
    tuning = rushed.manifest["evaluation"]["tuning"]
    assert not tuning["searched"] and set(tuning["not_searched"]) == {"als"}

    # Off: the shipped parameters are trained, and the manifest says why nothing was searched.
    off = dataclasses.replace(poor, training=dataclasses.replace(poor.training, tune_budget_s=0))
    with open(os.devnull, "w") as quiet:
        kept = train(shop_inputs, tmp_path / "off", off, progress=Progress("t", quiet))
    assert kept.manifest["params"]["factors"] == 2
    assert kept.manifest["evaluation"]["tuning"] == {
        "searched": False,
        "reason": "training.tune_budget_s is 0",
    }
