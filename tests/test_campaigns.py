"""Campaigns: the control split, creation with its checks, the treatment export, and the uplift
report recovering a planted effect (and showing none where there is none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from recsvc.campaigns import Campaign, CampaignSpec, in_control, report, split
from recsvc.cli.main import main
from recsvc.config import CampaignsConfig, ChannelConfig, ServingConfig
from recsvc.errors import InvalidArgument
from recsvc.events import StoredEvent, open_event_store
from recsvc.training.campaigns import create_campaign, list_campaigns, load_campaign
from recsvc.training.pipeline import TrainResult
from recsvc.training.sample_shop import campaign_response

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
              "--size", "1200", "--control-share", "0.5", "--offer-category", "garden",
              "--salt", "s1"]  # fmt: skip
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


def _opt_ins(model_dir: Path) -> dict[str, dict[str, str]]:
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel

    profiles = PublishedModel.load(ModelStore(model_dir).current_path()).profiles
    return {
        user: dict(zip(profiles.attribute_names, row, strict=True))
        for user, row in zip(profiles.user_ids.tolist(), profiles.attributes.tolist(), strict=True)
    }


def test_reach_rules_channels_and_the_frequency_cap_across_campaigns(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    attributes = _opt_ins(model_dir)
    config = ServingConfig(campaigns=CampaignsConfig(max_per_customer=1, frequency_days=7.0))
    email = create_campaign(
        model_dir,
        CampaignSpec("email-garden", category="garden", size=500, control_share=0.3,
                     conversion="any", channel="email"),
        config=config,
    )  # fmt: skip
    assert email.reach["without_opt_in"] > 0, "some of the audience did not opt in to email"
    assert set(email.channels) == {"email"}
    assert all(attributes[m]["email_opt_in"] == "yes" for m in email.members)
    assert all(0 <= h <= 23 for h in email.send_hours)
    # The cap counts the first campaign's treatment group (contacted), not its control group.
    second = create_campaign(
        model_dir,
        CampaignSpec("any-garden", category="garden", control_share=0.3, conversion="any",
                     channel="best"),
        config=config,
    )  # fmt: skip
    assert not set(second.members) & set(email.treatment)
    assert set(email.members) - set(email.treatment) <= set(second.members) | {
        m for m in email.members if not any(attributes[m][f"{c}_opt_in"] == "yes"
                                            for c in ("push", "email", "sms"))
    }  # fmt: skip
    assert second.reach["at_frequency_cap"] == len(email.treatment)
    for member, channel in zip(second.members, second.channels, strict=True):
        wanted = [c for c in ("push", "email", "sms") if attributes[member][f"{c}_opt_in"] == "yes"]
        assert channel == wanted[0], "best: the first configured channel they opted in to"
    out = tmp_path / "second.parquet"
    assert main(["campaign", "export", "--model-dir", str(model_dir), "--name", "any-garden",
                 "--out", str(out)]) == 0  # fmt: skip
    exported = pq.read_table(out)
    assert exported.column_names == ["rank", "user_id", "send_hour_utc", "channel"]
    assert exported.column("user_id").to_pylist() == second.treatment
    # An unknown channel, or one whose opt-in column the users file lacks: nothing created.
    capsys.readouterr()
    pigeons = ["campaign", "create", "--model-dir", str(model_dir), "--name", "pigeons",
               "--category", "garden", "--conversion", "any", "--channel", "pigeon"]  # fmt: skip
    assert main(pigeons) == 2
    assert "unknown channel 'pigeon'" in capsys.readouterr().err
    renamed = ServingConfig(campaigns=CampaignsConfig(channels=[ChannelConfig("fax", "fax_ok")]))
    with pytest.raises(InvalidArgument, match="no opt-in column"):
        create_campaign(model_dir, CampaignSpec("fax", category="garden", conversion="any",
                                                channel="fax"), config=renamed)  # fmt: skip
    assert [c["name"] for c in list_campaigns(model_dir)] == ["email-garden", "any-garden"]


def test_own_recommendations_offered_and_a_simulated_response_recovered(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    """The whole loop through the command line, with the sample shop's simulated response."""
    assert main(["campaign", "create", "--model-dir", str(model_dir), "--name", "for-you",
                 "--segment", "rfm:champions", "--min-churn-risk", "0", "--control-share", "0.5",
                 "--offer-recommendations", "5", "--salt", "s1"]) == 0  # fmt: skip
    campaign = load_campaign(model_dir, "for-you")
    assert campaign.offer_recommendations == 5 and len(campaign.offers) == len(campaign.members)
    some = campaign.members[0]
    assert len(campaign.offers[some]) == 5
    assert main(["campaign", "simulate", "--model-dir", str(model_dir), "--name", "for-you",
                 "--base-rate", "0.05", "--uplift", "0.3", "--seed", "1"]) == 0  # fmt: skip
    out = tmp_path / "treat.csv"
    assert main(["campaign", "export", "--model-dir", str(model_dir), "--name", "for-you",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = pa_csv.read_csv(out).to_pylist()
    assert rows[0]["offer_items"].split() == campaign.offers[rows[0]["user_id"]]
    capsys.readouterr()
    assert main(["campaign", "report", "--model-dir", str(model_dir), "--name", "for-you"]) == 0
    result = json.loads(capsys.readouterr().out)
    lift = result["conversion_uplift"]
    assert lift["ci"][0] < 0.3 < lift["ci"][1] and lift["p_value"] < 0.01


def test_simulated_a_a_campaigns_are_significant_at_about_the_nominal_rate() -> None:
    members = [f"m{n}" for n in range(1500)]
    catalogue = (np.array(["a", "b"]), np.array(["x", "x"]), np.array([3.0, 4.0]))
    significant = 0
    for seed in range(40):
        campaign = Campaign(f"aa-{seed}", f"s{seed}", 0, {}, 0.5, [], "x", "offered", 14.0,
                            members, split(members, f"s{seed}", 0.5))  # fmt: skip
        bought = campaign_response(campaign, catalogue, seed, base_rate=0.1, uplift=0.0)
        events = pa.Table.from_pylist([e._asdict() for e in bought])
        significant += (
            report(campaign, events, {"a": "x", "b": "x"}, {})["conversion_uplift"]["p_value"]
            < 0.05
        )
    assert significant <= 6, f"{significant} of 40 A/A campaigns significant at 5%"


def test_consent_columns_reach_profiles_and_never_the_models(trained: TrainResult) -> None:
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel

    model = PublishedModel.load(ModelStore(trained.model_dir).current_path())
    assert {"push_opt_in", "email_opt_in", "sms_opt_in"} <= set(model.profiles.attribute_names)
    assert model.coldstart is not None
    learned = {name.split("=", 1)[0] for name in model.coldstart.user_attribute_names.tolist()}
    assert learned == {"age_band", "gender", "region"}, learned
