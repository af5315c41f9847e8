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
from recsvc.experiments import Z_95
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
    # The planted uplift recovered: within 3.5 standard errors (a 95% interval would miss it in
    # one draw of twenty, and which customers are members moves with the trained model).
    uplift = result["conversion_uplift"]
    assert abs(uplift["value"] - 0.15) < 3.5 * _standard_error(uplift["ci"])
    assert uplift["p_value"] < 0.001
    money = result["revenue_per_member_uplift"]
    assert abs(money["value"] - 1.5) < 3.5 * _standard_error(money["ci"])
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
    assert abs(lift["value"] - 0.3) < 3.5 * _standard_error(lift["ci"]) and lift["p_value"] < 0.01


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


def test_the_report_arithmetic_on_a_hand_made_campaign() -> None:
    """Each number of the report worked out by hand, to the digit it is rounded to: the
    window's edges, what counts as the offer, prices from the event or the catalogue (or none),
    orders, intervals and p-values."""
    from recsvc.campaigns import DAY_MS
    from recsvc.experiments import Rate, two_proportion_p_value, welch_p_value

    members = ["t1", "t2", "c1", "c2", "c3"]
    campaign = Campaign("hand", "s", 1000, {}, 0.5, ["i1", "i9"], "garden", "offered", 14.0,
                        members, [False, False, True, True, True])  # fmt: skip
    end = 1000 + 14 * DAY_MS
    rows = [
        ("t1", "i1", 1000 + DAY_MS, 2.0, 10.0),  # 20
        ("t1", "i3", end, 1.0, None),  # the window's last moment; garden, catalogue price 5
        ("t2", "i2", 1000 + DAY_MS, 1.0, 50.0),  # not the offer
        ("t2", "i1", 1000, 1.0, 10.0),  # at the send itself: before the window
        ("t2", "i9", 1000 + DAY_MS, 1.0, None),  # offered, no price anywhere: converts, 0
        ("c1", "i1", 1000 + DAY_MS, None, None),  # no quantity: 1; catalogue price 4
        ("c2", "i1", end + 1, 1.0, 10.0),  # after the window
        ("c3", "i1", 1000 + DAY_MS, 1.0, 10.0),
        ("c3", "i1", 1000 + DAY_MS, 1.0, 10.0),  # one order of two lines
        ("stranger", "i1", 1000 + DAY_MS, 1.0, 10.0),  # not a member: counts nowhere
    ]
    events = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event": ["purchase"] * len(rows),
            "timestamp_ms": pa.array([r[2] for r in rows], pa.int64()),
            "quantity": pa.array([r[3] for r in rows], pa.float64()),
            "price": pa.array([r[4] for r in rows], pa.float64()),
        }
    )
    result = report(campaign, events, {"i3": "garden", "i1": "toys"}, {"i1": 4.0, "i3": 5.0})
    t, c = result["arms"]["treatment"], result["arms"]["control"]
    assert (t["members"], t["converters"], c["members"], c["converters"]) == (2, 2, 3, 2)
    assert (t["conversion"], c["conversion"]) == (1.0, round(2 / 3, 6))
    assert c["conversion_ci"] == [round(x, 6) for x in Rate(2, 3).wilson()]
    assert t["revenue_per_member"]["value"] == pytest.approx(25 / 2)
    assert c["revenue_per_member"]["value"] == pytest.approx(24 / 3)
    assert t["average_order_value"] == round(25 / 3, 4), "t1 two orders, t2 one"
    assert c["average_order_value"] == 12.0, "c1 one order, c3 one of two lines"
    assert result["conversion"] == "offered" and result["window"] == [1000, end]
    diff = 1.0 - 2 / 3
    spread = np.sqrt((2 / 3) * (1 / 3) / 3)
    lift = result["conversion_uplift"]
    assert lift["value"] == round(diff, 6)
    assert lift["ci"] == [round(diff - 1.959963984540054 * spread, 6),
                          round(diff + 1.959963984540054 * spread, 6)]  # fmt: skip
    assert lift["p_value"] == round(two_proportion_p_value(Rate(2, 3), Rate(2, 2)), 6)
    treated, held = np.array([25.0, 0.0]), np.array([4.0, 0.0, 20.0])
    money = result["revenue_per_member_uplift"]
    half = 1.959963984540054 * np.sqrt(treated.var(ddof=1) / 2 + held.var(ddof=1) / 3)
    assert money["value"] == 4.5
    assert money["ci"] == [round(4.5 - half, 4), round(4.5 + half, 4)]
    assert money["p_value"] == round(welch_p_value(held, treated), 6)
    assert result["incremental_revenue"] == {
        "value": 9.0, "ci": [round((4.5 - half) * 2, 2), round((4.5 + half) * 2, 2)]
    }  # fmt: skip
    # Any purchase counts with conversion "any".
    anything = Campaign("any", "s", 1000, {}, 0.5, [], "", "any", 14.0, members,
                        [False, False, True, True, True])  # fmt: skip
    assert report(anything, events, {}, {"i1": 4.0})["arms"]["treatment"]["converters"] == 2


def test_the_report_with_a_small_or_empty_arm() -> None:
    """No control group: no interval to give; one member an arm: a difference, no spread; no
    purchases: zeros, never a division by zero."""
    from recsvc.campaigns import DAY_MS

    bought = pa.table(
        {
            "user_id": ["a", "b", "c", "d"],
            "item_id": ["i1"] * 4,
            "event": ["purchase"] * 4,
            "timestamp_ms": pa.array([DAY_MS] * 4, pa.int64()),
            "quantity": [1.0] * 4,
            "price": [10.0, 4.0, 6.0, 2.0],
        }
    )

    def judged(control: list[bool]) -> dict:
        members = ["a", "b", "c", "d"][: len(control)]
        campaign = Campaign("x", "s", 0, {}, 0.5, [], "", "any", 14.0, members, control)
        return report(campaign, bought, {}, {})

    alone = judged([False, False])
    assert alone["conversion_uplift"]["ci"] == [1.0, 1.0] and alone["arms"]["control"] == {
        "members": 0, "converters": 0, "conversion": 0.0, "conversion_ci": [0.0, 0.0],
        "revenue_per_member": {"value": 0.0, "low": 0.0, "high": 0.0, "n": 0},
        "average_order_value": 0.0,
    }  # fmt: skip
    assert alone["revenue_per_member_uplift"]["value"] == 7.0
    assert alone["revenue_per_member_uplift"]["ci"] == [7.0, 7.0]
    one_each = judged([False, True])
    assert one_each["revenue_per_member_uplift"]["value"] == 6.0
    assert one_each["revenue_per_member_uplift"]["ci"] == [6.0, 6.0]
    one_against_three = judged([False, True, True, True])
    assert one_against_three["revenue_per_member_uplift"]["ci"] == [6.0, 6.0]
    two_against_two = judged([False, False, True, True])
    spread = np.var([10.0, 4.0], ddof=1) / 2 + np.var([6.0, 2.0], ddof=1) / 2
    half = 1.959963984540054 * np.sqrt(spread)
    assert two_against_two["revenue_per_member_uplift"]["ci"] == [
        round(3.0 - half, 4), round(3.0 + half, 4)
    ]  # fmt: skip
    none_treated = judged([True, True])
    assert none_treated["revenue_per_member_uplift"]["value"] == -7.0
    assert none_treated["revenue_per_member_uplift"]["ci"] == [-7.0, -7.0]
    # Uneven numbers, to the digit each is rounded to.
    campaign = Campaign("u", "s", 0, {}, 0.5, [], "", "any", 14.0, list("abcdefg"),
                        [False, False, True, True, True, True, True])  # fmt: skip
    result = report(campaign, bought, {}, {})
    treated, held = np.array([10.0, 4.0]), np.array([6.0, 2.0, 0.0, 0.0, 0.0])
    uplift = treated.mean() - held.mean()
    half = 1.959963984540054 * np.sqrt(treated.var(ddof=1) / 2 + held.var(ddof=1) / 5)
    assert result["revenue_per_member_uplift"]["value"] == round(uplift, 4)
    assert result["incremental_revenue"] == {
        "value": round(uplift * 2, 2), "ci": [round((uplift - half) * 2, 2),
                                             round((uplift + half) * 2, 2)],
    }  # fmt: skip
    diff, spread = 1 - 2 / 5, 1.959963984540054 * np.sqrt(0.4 * 0.6 / 5)
    assert result["conversion_uplift"]["ci"] == [round(diff - spread, 6), round(diff + spread, 6)]
    # Both arms with buyers and non-buyers, and thirds that show each number's last digit.
    campaign = Campaign("v", "s", 0, {}, 0.5, [], "", "any", 14.0, ["a", "e", "b", "c", "f"],
                        [False, False, True, True, True])  # fmt: skip
    result = report(campaign, bought, {}, {})
    treated, held = np.array([10.0, 0.0]), np.array([4.0, 6.0, 0.0])
    uplift = treated.mean() - held.mean()  # 5 - 10/3
    half = 1.959963984540054 * np.sqrt(treated.var(ddof=1) / 2 + held.var(ddof=1) / 3)
    assert result["revenue_per_member_uplift"]["value"] == 1.6667
    assert result["revenue_per_member_uplift"]["ci"] == [round(uplift - half, 4),
                                                         round(uplift + half, 4)]  # fmt: skip
    assert result["incremental_revenue"]["value"] == 3.33
    diff = 1 / 2 - 2 / 3
    spread = 1.959963984540054 * np.sqrt(0.5 * 0.5 / 2 + (2 / 3) * (1 / 3) / 3)
    assert result["conversion_uplift"]["value"] == round(diff, 6)
    assert result["conversion_uplift"]["ci"] == [round(diff - spread, 6), round(diff + spread, 6)]
    nothing = report(Campaign("y", "s", 0, {}, 0.5, [], "", "any", 14.0, ["a", "b"],
                              [False, True]), bought.slice(0, 0), {}, {})  # fmt: skip
    assert nothing["arms"]["treatment"]["average_order_value"] == 0.0
    assert nothing["conversion_uplift"]["value"] == 0.0


def test_contacts_count_treatments_after_the_cut_only() -> None:
    from recsvc.campaigns import contacts

    def made(at: int, members: list[str], control: list[bool]) -> Campaign:
        return Campaign(f"c{at}", "s", at, {}, 0.5, [], "", "any", 14.0, members, control)

    earlier = [
        made(100, ["a", "b"], [False, False]),  # at the cut itself: not counted
        made(200, ["a", "b", "c"], [False, False, True]),
        made(300, ["a", "d"], [False, True]),
    ]
    assert contacts(earlier, 100) == {"a": 2, "b": 1}
    assert contacts(earlier, 99) == {"a": 3, "b": 2}
    assert contacts(earlier, 300) == {}


def test_what_counts_as_offered() -> None:
    own = Campaign("own", "s", 0, {}, 0.5, ["ignored"], "", "offered", 14.0, ["a", "b"],
                   [False, True], offer_recommendations=5, offers={"a": ["i1", "i2"]})  # fmt: skip
    assert own.offered("a") == {"i1", "i2"} and own.offered("b") == set()
    listed = Campaign("items", "s", 0, {}, 0.5, ["i7"], "", "offered", 14.0, ["a"], [False])
    assert listed.offered("a") == {"i7"} == listed.offered("anyone")


def test_the_spec_checks_at_their_bounds() -> None:
    stages, channels = ("new", "active"), ["push", "email"]

    def check(**changes: object) -> None:
        fields = {"name": "n", "category": "garden", "conversion": "any", **changes}
        CampaignSpec(**fields).check(stages, channels, 100)  # type: ignore[arg-type]

    for fine in ({"name": "x" * 128}, {"control_share": 0.0}, {"control_share": 0.9},
                 {"offer_recommendations": 100}, {"size": 0}, {"window_days": 0.01},
                 {"channel": "best"}, {"channel": "email"}, {"stages": ("new",)},
                 {"conversion": "offered", "offer_items": ("i1",)},
                 {"conversion": "offered", "offer_category": "toys"},
                 {"conversion": "offered", "offer_recommendations": 3}):  # fmt: skip
        check(**fine)
    for bad, words in (
        ({"name": ""}, "a campaign needs a name of 1..128 characters"),
        ({"name": "x" * 129}, "a campaign needs a name of 1..128 characters"),
        ({"control_share": -0.01}, "control share must be within 0..0.9, got -0.01"),
        ({"control_share": 0.91}, "control share must be within 0..0.9, got 0.91"),
        ({"conversion": "sometimes"}, "conversion must be one of offered, any"),
        ({"offer_items": ("i1",), "offer_category": "toys"},
         "offer items, a category or recommendations: one of them"),
        ({"offer_category": "toys", "offer_recommendations": 2},
         "offer items, a category or recommendations: one of them"),
        ({"conversion": "offered"},
         "an offer (items, a category or recommendations) is needed to count conversions"),
        ({"offer_recommendations": 101}, "offer_recommendations must be within 0..100"),
        ({"offer_recommendations": -1}, "offer_recommendations must be within 0..100"),
        ({"window_days": 0.0}, "the attribution window must be positive"),
        ({"size": -1}, "size must not be negative"),
        ({"stages": ("new", "gone")}, "unknown lifecycle stage 'gone'; one of new, active"),
        ({"channel": "fax"}, "unknown channel 'fax'; one of push, email, best"),
    ):  # fmt: skip
        with pytest.raises(InvalidArgument) as caught:
            check(**bad)
        assert str(caught.value) == words, bad


def test_an_audience_narrowed_by_attributes_and_stages(model_dir: Path) -> None:
    from recsvc.serving.core import RecommenderCore

    attributes = _opt_ins(model_dir)
    north_women = create_campaign(
        model_dir,
        CampaignSpec("north-f", category="garden", conversion="any",
                     attributes=(("region", "north"), ("gender", "f"))),
    )  # fmt: skip
    expected = {u for u, a in attributes.items() if a["region"] == "north" and a["gender"] == "f"}
    assert set(north_women.members) == expected
    assert north_women.reach["other_attributes"] == 2000 - len(expected)
    with pytest.raises(InvalidArgument, match="the audience is empty"):
        create_campaign(model_dir, CampaignSpec("gold", category="garden", conversion="any",
                                                attributes=(("tier", "gold"),)))  # fmt: skip
    active = create_campaign(
        model_dir, CampaignSpec("active", category="garden", conversion="any", stages=("active",))
    )
    core = RecommenderCore()
    core.swap(_model(model_dir))
    assert active.members and all(
        core.user_profile(m)["lifecycle_stage"] == "active" for m in active.members
    )
    assert active.reach["other_stage"] == 2000 - len(active.members)


def _model(model_dir: Path):
    from recsvc.modelstore import ModelStore
    from recsvc.published import PublishedModel

    return PublishedModel.load(ModelStore(model_dir).current_path())


def _standard_error(interval: list[float]) -> float:
    """The standard error behind a report's 95% interval (estimate +- 1.96 SE)."""
    low, high = interval
    return (high - low) / (2 * Z_95)
