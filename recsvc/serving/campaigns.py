"""Planning a campaign on the model in service: the audience (FindAudience's ranking, narrowed by
lifecycle stage and users-file attributes), the reach rules (channel opt-in, the frequency cap
across campaigns), the control split, each member's send hour and, for a recommendations offer,
each member's own list; then the treatment list to send and the uplift report.

Reach rules apply before the split, so that the control group is drawn from the same people as
the treatment group and the comparison stays fair.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.campaigns import (
    BEST_CHANNEL,
    DAY_MS,
    Campaign,
    CampaignSpec,
    contacts,
    opted_in,
    report,
    split,
)
from recsvc.config import CampaignsConfig
from recsvc.errors import InvalidArgument
from recsvc.profiles import UserProfiles
from recsvc.published import PublishedModel
from recsvc.serving.marketing import Audience


def plan_campaign(
    spec: CampaignSpec,
    audience: Audience,
    profiles: UserProfiles,
    settings: CampaignsConfig,
    earlier: list[Campaign],
    now_ms: int,
    stage_of: Callable[[str], str],
    own_recommendations: Callable[[str, int], list[str]],
) -> Campaign:
    """The campaign `spec` asks for, from the audience FindAudience ranked for it (everyone
    eligible, best first); InvalidArgument (nothing planned) when it comes out empty.
    `stage_of` gives a member's lifecycle stage now, `own_recommendations` their top k."""
    members = list(audience.user_ids)
    reach = {"matched": len(members)}
    rows: dict[str, int | None] = {}

    def row_of(member: str) -> int | None:
        """The member's profile row, looked up once for every rule that reads it."""
        if member not in rows:
            rows[member] = profiles.index(member)
        return rows[member]

    if spec.stages:
        wanted = set(spec.stages)
        members = [m for m in members if stage_of(m) in wanted]
        reach["other_stage"] = reach["matched"] - len(members)
    if spec.attributes:
        before = len(members)
        having = _attribute_test(profiles, dict(spec.attributes))
        members = [m for m in members if having(row_of(m))]
        reach["other_attributes"] = before - len(members)
    channels: list[str] = []
    if spec.channel:
        before = len(members)
        reachable = _channels(profiles, members, row_of, spec.channel, settings)
        members = [m for m, c in zip(members, reachable, strict=True) if c]
        channels = [c for c in reachable if c]
        reach["without_opt_in"] = before - len(members)
    if settings.max_per_customer:
        counted = contacts(earlier, now_ms - int(settings.frequency_days * DAY_MS))
        keep = [counted.get(m, 0) < settings.max_per_customer for m in members]
        reach["at_frequency_cap"] = len(members) - sum(keep)
        members = [m for m, k in zip(members, keep, strict=True) if k]
        channels = [c for c, k in zip(channels, keep, strict=True) if k] if channels else []
    if spec.size and len(members) > spec.size:
        reach["over_size"] = len(members) - spec.size
        members, channels = members[: spec.size], channels[: spec.size]
    if not members:
        raise InvalidArgument(f"the audience is empty: nobody matches the criteria ({reach})")
    salt = spec.salt or uuid.uuid4().hex[:12]
    offers = {
        m: own_recommendations(m, spec.offer_recommendations)
        for m in (members if spec.offer_recommendations else ())
    }
    criteria: dict[str, Any] = {
        "item_id": spec.item_id,
        "category": spec.category,
        "segment_id": spec.segment_id,
        "min_churn_risk": spec.min_churn_risk,
        "stages": list(spec.stages),
        "attributes": dict(spec.attributes),
        "size": spec.size,
        "basis": audience.basis,
        "model_version": audience.model_version,
    }
    return Campaign(
        name=spec.name,
        salt=salt,
        created_ms=now_ms,
        criteria=criteria,
        control_share=spec.control_share,
        offer_items=list(spec.offer_items),
        offer_category=spec.offer_category,
        conversion=spec.conversion,
        window_days=spec.window_days,
        members=members,
        control=split(members, salt, spec.control_share),
        channel=spec.channel,
        channels=channels,
        send_hours=_send_hours(profiles, members, row_of, settings.default_send_hour),
        offer_recommendations=spec.offer_recommendations,
        offers=offers,
        reach=reach,
    )


def treatment_table(campaign: Campaign, forgotten: set[str]) -> pa.Table:
    """What to send: the treatment group in audience order, with channel, send hour and, for a
    recommendations offer, each member's items; forgotten customers never."""
    keep = [
        i
        for i, (m, held) in enumerate(zip(campaign.members, campaign.control, strict=True))
        if not held and m not in forgotten
    ]
    users = [campaign.members[i] for i in keep]
    columns: dict[str, pa.Array] = {
        "rank": pa.array(np.arange(1, len(keep) + 1), pa.int64()),
        "user_id": pa.array(users, pa.string()),
        "send_hour_utc": pa.array([campaign.send_hours[i] for i in keep], pa.int8()),
    }
    if campaign.channel:
        columns["channel"] = pa.array([campaign.channels[i] for i in keep], pa.string())
    if campaign.offer_recommendations:
        columns["offer_items"] = pa.array(
            [" ".join(campaign.offers.get(u, ())) for u in users], pa.string()
        )
    return pa.table(columns)


def campaign_report(model: PublishedModel, campaign: Campaign, events: pa.Table) -> dict[str, Any]:
    """The uplift report, with the catalogue's categories and prices for the conversions."""
    categories, prices = catalogue_facts(model, events)
    return report(campaign, events, categories, prices)


def catalogue_facts(
    model: PublishedModel, events: pa.Table
) -> tuple[dict[str, str], dict[str, float]]:
    """Category and known price of each catalogue item the events name: only those, so that a
    report costs the same on a catalogue of a million items as on one of a thousand."""
    named = pc.unique(events.column("item_id")).to_pylist() if events.num_rows else []
    rows = model.item_indices(named)
    ids = model.item_ids[rows].tolist()
    categories = dict(zip(ids, model.items.categories[rows].tolist(), strict=True))
    price = model.items.price[rows]
    known = np.isfinite(price)
    prices = dict(zip(model.item_ids[rows][known].tolist(), price[known].tolist(), strict=True))
    return categories, prices


def _attribute_test(profiles: UserProfiles, wanted: dict[str, str]) -> Callable[[int | None], bool]:
    """Whether a profile row holds every wanted users-file value (none can, for a column the
    users file lacks, or a user known from fresh events only)."""
    names = profiles.attribute_names
    if any(name not in names for name in wanted):
        return lambda row: False
    positions = [(names.index(name), value) for name, value in wanted.items()]

    def test(row: int | None) -> bool:
        return row is not None and all(profiles.attributes[row, p] == v for p, v in positions)

    return test


def _channels(
    profiles: UserProfiles,
    members: list[str],
    row_of: Callable[[str], int | None],
    channel: str,
    settings: CampaignsConfig,
) -> list[str]:
    """Per member, the channel to reach them by, "" where they opted in to none asked for."""
    names = profiles.attribute_names
    wanted = (
        list(settings.channels)
        if channel == BEST_CHANNEL
        else [c for c in settings.channels if c.name == channel]
    )
    usable = [c for c in wanted if c.opt_in_column in names]
    if not usable:
        columns = ", ".join(c.opt_in_column for c in wanted)
        raise InvalidArgument(
            f"channel {channel}: the users file has no opt-in column ({columns}); "
            "map the columns in serving.campaigns.channels"
        )
    positions = [names.index(c.opt_in_column) for c in usable]
    chosen = []
    for member in members:
        row = row_of(member)
        if row is None:  # known from fresh events only: no users-file row, no opt-in
            chosen.append("")
            continue
        values = profiles.attributes[row].tolist()
        opted = [c.name for c, p in zip(usable, positions, strict=True) if opted_in(values[p])]
        chosen.append(opted[0] if opted else "")
    return chosen


def _send_hours(
    profiles: UserProfiles,
    members: list[str],
    row_of: Callable[[str], int | None],
    default: int,
) -> list[int]:
    """The member's busiest hour of day (UTC) from their profile, else the configured default."""
    hours = []
    for member in members:
        row = row_of(member)
        busiest = int(profiles.active_hours[row, 0]) if row is not None else -1
        hours.append(busiest if busiest >= 0 else default)
    return hours
