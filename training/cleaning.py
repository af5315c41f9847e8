"""Documented rules that leave events out of training, each one counted for the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import CleaningConfig
from recsvc.training.interactions import MS_PER_DAY


@dataclass
class CleaningReport:
    bot_users: int = 0
    bot_events: int = 0
    sparse_users: int = 0
    sparse_items: int = 0
    sparse_events: int = 0
    forgotten_users: int = 0  # users deleted on request (ForgetUser), whose events were dropped
    forgotten_events: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"cleaning: {self.bot_users} bot-like users ({self.bot_events} events) and "
            f"{self.sparse_users} users / {self.sparse_items} items below the minimum "
            f"interactions ({self.sparse_events} events) left out"
            + (
                f"; {self.forgotten_events} events of {self.forgotten_users} forgotten users "
                "left out"
                if self.forgotten_users
                else ""
            )
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "bot_users": self.bot_users,
            "bot_events": self.bot_events,
            "sparse_users": self.sparse_users,
            "sparse_items": self.sparse_items,
            "sparse_events": self.sparse_events,
            "forgotten_users": self.forgotten_users,
            "forgotten_events": self.forgotten_events,
            "examples": self.examples,
        }


def clean_events(events: pa.Table, config: CleaningConfig) -> tuple[pa.Table, CleaningReport]:
    report = CleaningReport()
    if events.num_rows == 0:
        return events, report
    users = pc.dictionary_encode(events.column("user_id")).combine_chunks()
    user_codes = users.indices.to_numpy()
    days = events.column("timestamp_ms").to_numpy() // MS_PER_DAY
    # Events per (user, day): a bot browses at a rate no person does.
    pair = user_codes.astype(np.int64) * (days.max() - days.min() + 1) + (days - days.min())
    _, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
    bots = np.unique(user_codes[counts[inverse] > config.max_events_per_user_day])
    is_bot = np.isin(user_codes, bots)
    report.bot_users, report.bot_events = int(bots.size), int(is_bot.sum())
    report.examples["bot_users"] = users.dictionary.take(pa.array(bots[:5])).to_pylist()
    events = events.filter(pa.array(~is_bot))

    # One pass: users and items with too few distinct partners.
    user_ids, item_ids = events.column("user_id"), events.column("item_id")
    u = pc.dictionary_encode(user_ids).combine_chunks().indices.to_numpy()
    i = pc.dictionary_encode(item_ids).combine_chunks().indices.to_numpy()
    pairs = np.unique(np.stack([u, i], axis=1), axis=0) if u.size else np.empty((0, 2), int)
    users_per_item = np.bincount(pairs[:, 1], minlength=i.max(initial=-1) + 1)
    items_per_user = np.bincount(pairs[:, 0], minlength=u.max(initial=-1) + 1)
    sparse_user = items_per_user < config.min_user_interactions
    sparse_item = users_per_item < config.min_item_interactions
    drop = sparse_user[u] | sparse_item[i]
    report.sparse_users, report.sparse_items = int(sparse_user.sum()), int(sparse_item.sum())
    report.sparse_events = int(drop.sum())
    return events.filter(pa.array(~drop)), report
