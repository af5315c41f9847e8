"""The quality gate, called directly: which baseline it scores, at which bound it refuses.

The job's own runs through the gate are in test_retraining_job.py (exit code 3, the nightly
path end to end); these call `quality_gate` on the sample shop's trained model and a holdout,
so `make mutation` can judge the gate in seconds per mutant.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import quiet

from recsvc.config import Config, SignalsConfig, build
from recsvc.errors import QualityGateRefused
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.training.evaluate import Holdout, published_scorer, ranking_metrics, validation_holdout
from recsvc.training.ingest import Dataset
from recsvc.training.pipeline import (
    TrainInputs,
    TrainResult,
    ingest_and_clean,
    quality_gate,
    refit_published,
)
from recsvc.training.progress import Progress

# Settings that ruin a model trained with them: views outweigh purchases a thousandfold and
# everything older than an hour is forgotten.
RUINOUS = SignalsConfig(view=1.0, cart=0.01, purchase=0.001, scaling="none", half_life_days=0.05)


def with_tolerance(tolerance: float, config: Config | None = None) -> Config:
    config = config or Config()
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, quality_gate_tolerance=tolerance)
    )


@pytest.fixture(scope="module")
def shop_split(
    shop_inputs: TrainInputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Dataset, Holdout]:
    rejects = tmp_path_factory.mktemp("rejects")
    dataset, _ = ingest_and_clean(shop_inputs, Config(), rejects, quiet())
    holdout = validation_holdout(dataset.events, Config())
    assert holdout is not None and holdout.cut_ms is not None
    return dataset, holdout


@pytest.fixture
def model_dir(trained: TrainResult, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained.model_dir, tmp_path / "models"))


def _gate(
    model_dir: Path,
    new: float,
    tolerance: float,
    holdout: Holdout | None,
    dataset: Dataset,
    config: Config | None = None,
    progress: Progress | None = None,
) -> dict:
    variant = holdout.variant if holdout is not None else "all"
    evaluation = {
        "selected": "ease",
        "variant": variant,
        "models": {"ease": {variant: {"ndcg@10": new}}},
    }
    return quality_gate(
        ModelStore(model_dir), holdout, evaluation, dataset, with_tolerance(tolerance, config),
        progress or quiet(),
    )  # fmt: skip


def published_in(model_dir: Path) -> PublishedModel:
    return PublishedModel.load(ModelStore(model_dir).current_path())


def edit_manifest(model_dir: Path, **changes: object) -> None:
    path = ModelStore(model_dir).current_path() / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_gate_boundary_and_an_unreadable_published_model(
    model_dir: Path, shop_split: tuple[Dataset, Holdout], caplog: pytest.LogCaptureFixture
) -> None:
    """A new score exactly at the tolerance's edge passes; a hair below is refused. A published
    model that cannot be read does not block the job, and the verdict says why."""
    dataset, holdout = shop_split
    verdict = _gate(model_dir, 1.0, 0.1, holdout, dataset)
    published = verdict["published"]
    assert published > 0.05
    version = ModelStore(model_dir).current_version()
    kind = published_in(model_dir).manifest["model_type"]
    assert verdict == {
        "checked": True,
        "published_version": version,
        "method": f"refit {kind} with the published version's parameters, cleaning and signals",
        "published": published,
        "new": 1.0,
        "tolerance": 0.1,
        "passed": True,
    }
    edge = published * (1 - 0.1)
    said = io.StringIO()
    inside = _gate(model_dir, edge + 1e-9, 0.1, holdout, dataset, progress=Progress("t", said))
    assert inside["new"] == round(edge + 1e-9, 6) != edge + 1e-9  # rounded to six places
    assert said.getvalue().endswith(
        f"] quality gate: new ndcg@10 {edge + 1e-9:.4f} vs published {version} {published:.4f} "
        f"({verdict['method']}), tolerance 10%: pass\n"
    )
    assert inside["passed"] and inside["published"] == published
    said = io.StringIO()
    with pytest.raises(QualityGateRefused, match="below the published") as refused:
        _gate(model_dir, edge - 1e-4, 0.1, holdout, dataset, progress=Progress("t", said))
    assert said.getvalue().endswith(
        f"{published:.4f} ({verdict['method']}), tolerance 10%: REFUSED\n"
    )
    assert f"new model ease ndcg@10 {edge - 1e-4:.4f} is below the published {version}" in str(
        refused.value
    )
    assert "by more than 10%; nothing published" in str(refused.value)
    with pytest.raises(QualityGateRefused):
        _gate(model_dir, published - 1e-4, 0.0, holdout, dataset)  # no tolerance at all
    assert _gate(model_dir, published, 0.0, holdout, dataset)["passed"]
    assert _gate(model_dir, 0.0, -1.0, holdout, dataset) == {"checked": False, "reason": "disabled"}
    empty = model_dir.parent / "empty-store"
    first = {"checked": False, "reason": "no published model"}
    assert _gate(empty, 0.0, 0.1, holdout, dataset) == first
    assert _gate(empty, 0.0, 0.0, holdout, dataset) == first, "a tolerance of 0 is not disabled"
    assert _gate(model_dir, 0.0, 0.1, None, dataset) == {"checked": False, "reason": "no holdout"}

    (ModelStore(model_dir).path(version) / "item_ids.npy").write_bytes(b"not an array")
    with caplog.at_level(logging.WARNING, logger="recsvc.training.pipeline"):
        verdict = _gate(model_dir, 0.0, 0.1, holdout, dataset)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(
        f"published model {version} cannot be loaded ("
    )
    error = verdict["reason"].split("unreadable: ", 1)[1]
    assert error and warned[0].endswith(f"({error}); gate skipped")
    assert not verdict["checked"] and verdict["reason"].startswith(f"published model {version}")
    assert "unreadable" in verdict["reason"]


def test_a_published_model_older_than_the_holdout_is_scored_on_its_own_arrays(
    model_dir: Path, shop_split: tuple[Dataset, Holdout]
) -> None:
    """The usual night: the published model saw nothing of the holdout, so its own arrays are
    scored; one whose data reaches the cut has seen the holdout and is refitted instead."""
    dataset, holdout = shop_split
    assert holdout.cut_ms is not None
    edit_manifest(model_dir, data_end_ms=holdout.cut_ms - 1)
    verdict = _gate(model_dir, 1.0, 0.05, holdout, dataset)
    assert verdict["method"] == "published arrays"
    published = published_in(model_dir)
    scorer = published_scorer(published, holdout.train.user_ids, holdout.train.item_ids)
    expected = ranking_metrics(scorer, holdout)[holdout.variant]["ndcg@10"]
    assert verdict["published"] == round(expected, 6) and expected > 0.05
    # A version from before the manifest recorded its data's end is taken as older too.
    edit_manifest(model_dir, data_end_ms=None)
    assert _gate(model_dir, 1.0, 0.05, holdout, dataset)["method"] == "published arrays"

    edit_manifest(model_dir, data_end_ms=holdout.cut_ms)
    assert _gate(model_dir, 1.0, 0.05, holdout, dataset)["method"].startswith("refit")
    per_user = dataclasses.replace(holdout, cut_ms=None)  # no cut date: it may have seen it
    assert _gate(model_dir, 1.0, 0.05, per_user, dataset)["method"].startswith("refit")


def test_the_refit_baseline_is_built_with_the_published_versions_own_settings(
    model_dir: Path, shop_split: tuple[Dataset, Holdout]
) -> None:
    """Settings that ruin the new run must not ruin its baseline too: the published model is
    refitted with the cleaning and signals it recorded, and this run's only where it recorded
    none."""
    dataset, holdout = shop_split
    ruinous_run = dataclasses.replace(Config(), signals=RUINOUS)
    fair = _gate(model_dir, 1.0, 0.05, holdout, dataset)["published"]
    assert _gate(model_dir, 1.0, 0.05, holdout, dataset, ruinous_run)["published"] == fair

    recorded = build(Config, published_in(model_dir).manifest["config"], "")
    edit_manifest(model_dir, config=None)  # a version from before configs were recorded
    ruined = _gate(model_dir, 1.0, 0.05, holdout, dataset, ruinous_run)["published"]
    assert ruined < 0.8 * fair, (ruined, fair)
    assert (fair, ruined) == (round(fair, 6), round(ruined, 6)), "six places, as shown"
    assert _gate(model_dir, 1.0, 0.05, holdout, dataset, recorded)["published"] == fair


def test_the_refit_is_the_published_type_and_parameters_on_the_holdouts_training_part(
    model_dir: Path, shop_split: tuple[Dataset, Holdout]
) -> None:
    dataset, holdout = shop_split
    edit_manifest(model_dir, model_type="popularity", params={})
    published = published_in(model_dir)
    scorer = refit_published(published, holdout, dataset, Config())
    users = holdout.train.user_ids
    scores = scorer(np.arange(2))
    assert scores.shape == (2, holdout.train.item_ids.size)
    # Popularity refitted on the training part: every user gets the same list, led by the
    # training part's most bought item.
    assert (scores[0] == scores[1]).all() and users.size > 2
    counts = holdout.train.confidence.sum(axis=0).A1
    assert scores[0].argmax() == counts.argmax()
    verdict = _gate(model_dir, 1.0, 0.05, holdout, dataset)
    assert verdict["method"].startswith("refit popularity with")


def test_users_the_published_settings_clean_away_get_the_refits_popular_items(
    model_dir: Path, shop_split: tuple[Dataset, Holdout]
) -> None:
    """The refit cleans the holdout's training part with the published version's own settings;
    users that leaves out are still scored, by popularity, as the served model would."""
    dataset, holdout = shop_split
    manifest = published_in(model_dir).manifest
    recorded = manifest["config"]
    recorded["cleaning"]["min_user_interactions"] = 40
    edit_manifest(model_dir, config=recorded, model_type="itemknn", params={"neighbours": 20})
    published = published_in(model_dir)
    scorer = refit_published(published, holdout, dataset, Config())
    counts = np.diff(holdout.train.confidence.indptr)
    few = np.flatnonzero(counts < 5)[:3]  # under 40 events each: cleaned away
    many = np.flatnonzero(counts > 60)[:3]
    assert few.size == 3 and many.size == 3
    scores = scorer(np.r_[few, many])
    assert np.isfinite(scores[:3]).any(axis=1).all(), "cleaned-away users still get a list"
    assert (scores[0] == scores[1]).all() and (scores[0] == scores[2]).all()
    assert not (scores[3] == scores[0]).all(), "kept users get their own scores"


def test_a_hybrid_published_model_is_refitted_with_the_runs_features(
    model_dir: Path, shop_split: tuple[Dataset, Holdout]
) -> None:
    dataset, holdout = shop_split
    edit_manifest(model_dir, model_type="lightfm", params={"factors": 4, "epochs": 1})
    published = published_in(model_dir)
    scores = refit_published(published, holdout, dataset, Config())(np.arange(3))
    assert np.isfinite(scores).all() and scores.shape == (3, holdout.train.item_ids.size)
    verdict = _gate(model_dir, 1.0, 0.05, holdout, dataset)  # the gate hands it the features
    assert verdict["method"].startswith("refit lightfm with") and verdict["published"] > 0.0
    assert verdict["published"] == round(verdict["published"], 6)
