"""`recsvc campaign create|list|show|export|report`: campaigns built on the published model and
kept in the event store beside the events that measure them (recsvc/campaigns.py).

The work is the serving core's (recsvc/serving/campaigns.py), so that the command line and the
gRPC CreateCampaign/GetCampaign/ListCampaigns plan and judge campaigns alike; this module opens
the core on the published model and the event store and writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from recsvc.campaigns import Campaign, CampaignSpec
from recsvc.config import ServingConfig
from recsvc.serving.core import RecommenderCore, published_core
from recsvc.training.sample_shop import campaign_response
from recsvc.training.tables import TableWriter


def campaign_core(
    model_dir: Path, event_store: str = "", config: ServingConfig | None = None
) -> AbstractContextManager[RecommenderCore]:
    """The serving core on the published model and the event store, as the server has them."""
    return published_core(model_dir, config or ServingConfig(), event_store)


def create_campaign(
    model_dir: Path, spec: CampaignSpec, event_store: str = "", config: ServingConfig | None = None
) -> Campaign:
    """Chooses the audience, applies the reach rules, splits it and stores the campaign; nothing
    is stored on bad input."""
    with campaign_core(model_dir, event_store, config) as core:
        return core.create_campaign(spec)


def load_campaign(model_dir: Path, name: str, event_store: str = "") -> Campaign:
    with campaign_core(model_dir, event_store) as core:
        return core.campaign(name)


def list_campaigns(model_dir: Path, event_store: str = "") -> list[dict[str, Any]]:
    with campaign_core(model_dir, event_store) as core:
        return [summary(c) for c in core.campaigns()]


def summary(campaign: Campaign) -> dict[str, Any]:
    return {
        "name": campaign.name,
        "created_ms": campaign.created_ms,
        "members": len(campaign.members),
        "treatment": len(campaign.treatment),
        "control_share": campaign.control_share,
        "channel": campaign.channel,
        "reach": campaign.reach,
    }


def describe(campaign: Campaign) -> dict[str, Any]:
    """`campaign show`: the definition and group sizes, without the member lists."""
    shown = dataclasses.asdict(campaign)
    for bulky in ("members", "control", "channels", "send_hours", "offers"):
        shown.pop(bulky)
    shown["treatment"] = len(campaign.treatment)
    shown["control"] = len(campaign.members) - len(campaign.treatment)
    shown["channel_mix"] = {c: campaign.channels.count(c) for c in sorted(set(campaign.channels))}
    return shown


def export_treatment(model_dir: Path, name: str, out: Path, event_store: str = "") -> int:
    """Writes the treatment group (rank, user_id, send hour, channel, offered items) as CSV or
    Parquet, in batches with progress on stderr; forgotten users never."""
    with campaign_core(model_dir, event_store) as core:
        table = core.campaign_treatment(name)
    batch = 50_000
    with TableWriter(out) as writer:
        for start in range(0, max(table.num_rows, 1), batch):
            writer.write(table.slice(start, batch))
            done = min(start + batch, table.num_rows)
            print(f"\rexported {done:,} of {table.num_rows:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return table.num_rows


def campaign_report(
    model_dir: Path, name: str, out: Path | None = None, event_store: str = ""
) -> dict[str, Any]:
    """The uplift report from the events stored since the send; with `out`, report.json,
    report.md and report.png there too."""
    with campaign_core(model_dir, event_store) as core:
        _, result = core.campaign_with_report(name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "report.md").write_text(_markdown(result))
        _chart(result, out / "report.png")
    return result


def _markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    lines = [
        f"# Campaign {result['campaign']}",
        "",
        "| arm | members | converters | conversion (95% CI) | revenue per member (95% CI) "
        "| average order value |",
        "|---|---:|---:|---|---|---:|",
    ]
    for arm in ("treatment", "control"):
        a = arms[arm]
        r = a["revenue_per_member"]
        lines.append(
            f"| {arm} | {a['members']:,} | {a['converters']:,} | {a['conversion']:.2%} "
            f"[{a['conversion_ci'][0]:.2%}, {a['conversion_ci'][1]:.2%}] | {r['value']:.2f} "
            f"[{r['low']:.2f}, {r['high']:.2f}] | {a['average_order_value']:.2f} |"
        )
    c, m, i = (
        result["conversion_uplift"],
        result["revenue_per_member_uplift"],
        result["incremental_revenue"],
    )
    lines += [
        "",
        f"- Conversion uplift: {c['value']:+.2%} (95% CI {c['ci'][0]:+.2%} to "
        f"{c['ci'][1]:+.2%}), p = {c['p_value']:.4f}",
        f"- Revenue per member uplift: {m['value']:+.2f} (95% CI {m['ci'][0]:+.2f} to "
        f"{m['ci'][1]:+.2f}), p = {m['p_value']:.4f}",
        f"- Incremental revenue: {i['value']:+,.2f} (95% CI {i['ci'][0]:+,.2f} to "
        f"{i['ci'][1]:+,.2f})",
        "",
    ]
    return "\n".join(lines)


def _chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ("treatment", "control")
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, title, values in (
        (
            left,
            "conversion",
            [(result["arms"][a]["conversion"], *result["arms"][a]["conversion_ci"]) for a in arms],
        ),
        (
            right,
            "revenue per member",
            [
                (
                    result["arms"][a]["revenue_per_member"]["value"],
                    result["arms"][a]["revenue_per_member"]["low"],
                    result["arms"][a]["revenue_per_member"]["high"],
                )
                for a in arms
            ],
        ),
    ):
        means = [v[0] for v in values]
        errors = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
        axis.bar(arms, means, yerr=errors, capsize=6, color=["#2b8cbe", "#bdbdbd"])
        axis.set_title(f"{title} (95% CI)")
    figure.suptitle(f"Campaign {result['campaign']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def simulate_response(
    model_dir: Path,
    name: str,
    *,
    base_rate: float,
    uplift: float,
    seed: int = 0,
    event_store: str = "",
) -> int:
    """Records the sample shop's simulated answer to a campaign (a known uplift) in the event
    store, as RecordEvents would; returns the purchases recorded."""
    with campaign_core(model_dir, event_store) as core:
        campaign = core.campaign(name)
        model = core.serving.published
        catalogue = (model.item_ids, model.items.categories, model.items.price)
        store = core.event_store
        assert store is not None  # campaign() found one
        forgotten = frozenset(store.forgotten_users())
        bought = campaign_response(campaign, catalogue, seed, base_rate, uplift, forgotten)
        if bought:
            store.append(bought)
    return len(bought)
