"""What every event store holds and hands out: the stored event, the tables' schemas, and the
audit record of a privacy deletion (the same for every backend)."""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import pyarrow as pa

# The data contract's clean events: what ingest produces and what the store hands to training.
EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event", pa.string()),
        ("timestamp_ms", pa.int64()),
        ("quantity", pa.float64()),
        ("price", pa.float64()),
    ]
)
OUTCOMES_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("recommendation_id", pa.string()),
        ("event", pa.string()),
        ("item_id", pa.string()),
        ("quantity", pa.float64()),
        ("price", pa.float64()),
    ]
)
IMPRESSIONS_SCHEMA = pa.schema(
    [("recommendation_id", pa.string()), ("variant", pa.string()), ("user_id", pa.string())]
)


class StoredEvent(NamedTuple):
    """One event as stored (a tuple: made for every event of every RecordEvents call, where a
    frozen dataclass's constructor costs several times more)."""

    user_id: str
    item_id: str
    event: str  # view, cart or purchase
    timestamp_ms: int
    quantity: float = 1.0
    price: float | None = None
    variant: str = ""  # "experiment/variant" the user was in when the event happened
    recommendation_id: str = ""  # the Recommend response the event followed, if any


def forget_audit_line(
    user_id: str, removed: int, reason: str, now_ms: int, merged_into: str = ""
) -> str:
    """The JSON audit record of one privacy deletion, or of a merge (the id's events moved to
    `merged_into`, the id itself forgotten), the same for every backend."""
    record = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000)),
        "action": "merge_users" if merged_into else "forget_user",
        "user_id": user_id,
        "events_deleted": removed,
        "reason": reason,
    }
    if merged_into:
        record["merged_into"] = merged_into
    return json.dumps(record)
