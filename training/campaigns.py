"""`recsvc campaign create|list|show|export|report`: campaigns built on the published model and
kept in the event store beside the events that measure them (recsvc/campaigns.py).

An audience is FindAudience's: an item's or a category's likely buyers, a segment, a churn-risk
threshold, or a combination; optionally only some lifecycle stages and users-file attribute
values; capped in size. Forgotten users never appear. The control group is held out at random
(deterministic from the campaign's salt), the treatment group is what `export` writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsvc.campaigns import Campaign, report, split
from recsvc.config import ServingConfig
from recsvc.errors import BadInput
from recsvc.events import open_models_store
from recsvc.modelstore import ModelStore
from recsvc.profiles import STAGES
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore
from recsvc.training.tables import TableWriter


def _core(model_dir: Path, event_store: str, config: ServingConfig):
    model = PublishedModel.load(ModelStore(model_dir).current_path())
    store = open_models_store(model_dir, event_store or config.event_store)
    assert store is not None
    limits = dataclasses.replace(config.limits, max_audience=max(1, model.profiles.size))
    core = RecommenderCore(dataclasses.replace(config, limits=limits), store)
    core.swap(model)
    return core, store, model


def create_campaign(
    model_dir: Path,
    name: str,
    *,
    item_id: str = "",
    category: str = "",
    segment_id: str = "",
    min_churn_risk: float | None = None,
    stages: tuple[str, ...] = (),
    attributes: dict[str, str] | None = None,
    size: int = 0,
    control_share: float = 0.2,
    offer_items: tuple[str, ...] = (),
    offer_category: str = "",
    conversion: str = "offered",
    window_days: float = 14.0,
    event_store: str = "",
    config: ServingConfig | None = None,
) -> Campaign:
    """Chooses the audience, splits it and stores the campaign; nothing is stored on bad input."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise BadInput(f"unknown lifecycle stage {bad[0]!r}; one of {', '.join(STAGES)}")
    core, store, model = _core(model_dir, event_store, config or ServingConfig())
    try:
        audience = core.find_audience(
            item_id=item_id,
            category=category,
            segment_id=segment_id,
            k=max(1, model.profiles.size),
            min_churn_risk=min_churn_risk,
        )
        members = list(audience.user_ids)
        if stages:
            members = [m for m in members if core.user_profile(m)["lifecycle_stage"] in stages]
        if attributes:
            members = [m for m in members if _has(model, m, attributes)]
        if size:
            members = members[:size]
        salt = uuid.uuid4().hex[:12]
        criteria = {
            "item_id": item_id,
            "category": category,
            "segment_id": segment_id,
            "min_churn_risk": min_churn_risk,
            "stages": list(stages),
            "attributes": attributes or {},
            "size": size,
            "basis": audience.basis,
        }
        campaign = Campaign(
            name,
            salt,
            int(time.time() * 1000),
            criteria,
            control_share,
            list(offer_items),
            offer_category,
            conversion,
            window_days,
            members,
            split(members, salt, control_share),
        )
        campaign.check()
        store.add_campaign(name, campaign.to_json())
        return campaign
    finally:
        store.close()


def _has(model: PublishedModel, user_id: str, wanted: dict[str, str]) -> bool:
    row = model.profiles.index(user_id)
    if row is None:
        return False
    values = dict(
        zip(model.profiles.attribute_names, model.profiles.attributes[row].tolist(), strict=True)
    )
    return all(values.get(k) == v for k, v in wanted.items())


def load_campaign(model_dir: Path, name: str, event_store: str = "") -> Campaign:
    store = open_models_store(model_dir, event_store, existing=True)
    if store is None:
        raise BadInput(f"no event store beside {model_dir}: no campaign there")
    try:
        stored = store.campaigns()
    finally:
        store.close()
    if name not in stored:
        raise BadInput(f"no campaign named {name!r}")
    return Campaign.from_json(stored[name])


def list_campaigns(model_dir: Path, event_store: str = "") -> list[dict[str, Any]]:
    store = open_models_store(model_dir, event_store, existing=True)
    if store is None:
        return []
    try:
        stored = store.campaigns()
    finally:
        store.close()
    rows = []
    for spec in stored.values():
        c = Campaign.from_json(spec)
        rows.append(
            {
                "name": c.name,
                "created_ms": c.created_ms,
                "members": len(c.members),
                "treatment": len(c.treatment),
                "control_share": c.control_share,
            }
        )
    return sorted(rows, key=lambda r: r["created_ms"])


def export_treatment(model_dir: Path, name: str, out: Path, event_store: str = "") -> int:
    """Writes the treatment group (user_id, rank) as CSV or Parquet; forgotten users never."""
    campaign = load_campaign(model_dir, name, event_store)
    store = open_models_store(model_dir, event_store, existing=True)
    forgotten = set(store.forgotten_users()) if store is not None else set()
    if store is not None:
        store.close()
    treated = [u for u in campaign.treatment if u not in forgotten]
    with TableWriter(out) as writer:
        writer.write(
            pa.table(
                {
                    "rank": pa.array(np.arange(1, len(treated) + 1), pa.int64()),
                    "user_id": pa.array(treated, pa.string()),
                }
            )
        )
    return len(treated)


def campaign_report(
    model_dir: Path, name: str, out: Path | None = None, event_store: str = ""
) -> dict[str, Any]:
    """The uplift report from the events stored since the send; with `out`, report.md and
    report.png there too."""
    campaign = load_campaign(model_dir, name, event_store)
    model = PublishedModel.load(ModelStore(model_dir).current_path())
    store = open_models_store(model_dir, event_store, existing=True)
    assert store is not None
    try:
        events = store.read_events()
    finally:
        store.close()
    ids = model.item_ids.tolist()
    categories = dict(zip(ids, model.items.categories.tolist(), strict=True))
    known = np.isfinite(model.items.price)
    prices = dict(
        zip(model.item_ids[known].tolist(), model.items.price[known].tolist(), strict=True)
    )
    result = report(campaign, events, categories, prices)
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
