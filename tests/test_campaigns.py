"""Campaigns: the control split, creation with its checks, the treatment export, and the uplift
report recovering a planted effect (and showing none where there is none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from recsvc.campaigns import Campaign, in_control, report, split
from recsvc.cli.main import main
from recsvc.events import StoredEvent, open_event_store
from recsvc.training.pipeline import TrainResult

DAY = 86_400_000


def test_the_split_is_deterministic_and_balanced() -> None:
    users = [f"user-{n}" for n in range(20_000)]
    held = split(users, "salt-1", 0.2)
    assert held == split(users, "salt-1", 0.2), "a rerun gives the same groups"
    assert np.mean(held) == pytest.approx(0.2, abs=0.01)
    assert held != split(users, "salt-2", 0.2), "another campaign's salt reshuffles"
    assert not any(split(users, "s", 0.0)) and in_control("s", "u", 1.0)


@pytest.fixture
def model_dir(trained: TrainResult, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(trained.model_dir, target)
    return target


def test_create_export_and_report_a_campaign_with_a_planted_uplift(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    create = ["campaign", "create", "--model-dir", str(model_dir), "--category", "garden",
              "--size", "1200", "--control-share", "0.5", "--offer-category", "garden"]  # fmt: skip
    assert main([*create, "--name", "spring"]) == 0
    assert "1,200 members" in capsys.readouterr().out
    # Bad input: a clear error, nothing created.
    assert main([*create, "--name", "spring"]) == 2, "the name is taken"
    assert main([*create[:-4], "--control-share", "0.95", "--name", "greedy"]) == 2
    assert main([*create, "--name", "nobody", "--stage", "sleeping"]) == 2
    empty = ["campaign", "create", "--model-dir", str(model_dir), "--name", "empty",
             "--min-churn-risk", "1.0", "--conversion", "any"]  # fmt: skip
    assert main(empty) == 2
    assert "audience is empty" in capsys.readouterr().err
    assert main(["campaign", "create", "--model-dir", str(model_dir), "--name", "x",
                 "--segment", "rfm:no-such-segment", "--conversion", "any"]) == 2  # fmt: skip
    capsys.readouterr()
    assert main(["campaign", "list", "--model-dir", str(model_dir)]) == 0
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == ["spring"]

    store = open_event_store(f"sqlite:///{model_dir / 'events.db'}")
    campaign = Campaign.from_json(store.campaigns()["spring"])
    # A member forgotten after the send is never exported.
    gone = campaign.treatment[0]
    store.forget(gone)
    out = tmp_path / "treatment.csv"
    assert main(["campaign", "export", "--model-dir", str(model_dir), "--name", "spring",
                 "--out", str(out)]) == 0  # fmt: skip
    exported = pa_csv.read_csv(out).column("user_id").to_pylist()
    assert set(exported) == set(campaign.treatment) - {gone}

    # Planted: control members buy from the offered category with p 0.10, treated with 0.25,
    # spending 10 each time; outside the window or off-offer purchases do not count.
    garden = next(
        str(i)
        for i, c in zip(store_items(model_dir), store_categories(model_dir), strict=True)
        if c == "garden"
    )
    rng = np.random.default_rng(3)
    events = []
    for user, held in zip(campaign.members, campaign.control, strict=True):
        if user != gone and rng.random() < (0.10 if held else 0.25):
            events.append(StoredEvent(user, garden, "purchase", campaign.created_ms + DAY, 1.0,
                                      10.0))  # fmt: skip
        events.append(StoredEvent(user, garden, "purchase", campaign.created_ms + 30 * DAY))
    store.append(events)
    store.close()
    capsys.readouterr()
    assert main(["campaign", "report", "--model-dir", str(model_dir), "--name", "spring",
                 "--out", str(tmp_path / "report")]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    uplift = result["conversion_uplift"]
    assert uplift["ci"][0] < 0.15 < uplift["ci"][1] and uplift["p_value"] < 0.001
    money = result["revenue_per_member_uplift"]
    assert money["ci"][0] < 1.5 < money["ci"][1]
    assert result["arms"]["treatment"]["average_order_value"] == pytest.approx(10.0)
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert "Conversion uplift" in (tmp_path / "report" / "report.md").read_text()


def store_items(model_dir: Path) -> list[str]:
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel

    return PublishedModel.load(ModelStore(model_dir).current_path()).item_ids.tolist()


def store_categories(model_dir: Path) -> list[str]:
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel

    model = PublishedModel.load(ModelStore(model_dir).current_path())
    return model.items.categories.tolist()


def test_an_a_a_campaign_is_significant_about_as_often_as_the_level_says() -> None:
    members = [f"m{n}" for n in range(2000)]
    significant = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        campaign = Campaign(f"aa-{seed}", f"salt-{seed}", 0, {}, 0.5, [], "", "any", 14.0,
                            members, split(members, f"salt-{seed}", 0.5))  # fmt: skip
        buyers = [m for m in members if rng.random() < 0.1]
        events = pa.table(
            {
                "user_id": buyers,
                "item_id": ["i"] * len(buyers),
                "event": ["purchase"] * len(buyers),
                "timestamp_ms": pa.array([DAY] * len(buyers), pa.int64()),
                "quantity": [1.0] * len(buyers),
                "price": [5.0] * len(buyers),
            }
        )
        significant += report(campaign, events, {}, {})["conversion_uplift"]["p_value"] < 0.05
    assert significant <= 6, f"{significant} of 40 A/A campaigns significant at 5%"
