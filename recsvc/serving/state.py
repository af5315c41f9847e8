"""A server's real-time state: users' fresh events since the model was trained, and the cache of
computed lists."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Fresh:
    """One user's events since the model was trained, newest last."""

    events: deque[tuple[str, str, int]] = field(default_factory=deque)  # item, event, time


class RealtimeHistory:
    """Recent events per user, bounded per user and in the number of users."""

    def __init__(self, per_user: int, users: int) -> None:
        self.per_user = per_user
        self.users = users  # the least recently active are dropped first
        self._users: OrderedDict[str, _Fresh] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, user_id: str, item_id: str, event: str, timestamp_ms: int) -> None:
        with self._lock:
            fresh = self._users.pop(user_id, None) or _Fresh(deque(maxlen=self.per_user))
            fresh.events.append((item_id, event, timestamp_ms))
            self._users[user_id] = fresh
            while len(self._users) > self.users:
                self._users.popitem(last=False)

    def of(self, user_id: str) -> list[tuple[str, str, int]]:
        with self._lock:
            fresh = self._users.get(user_id)
            return list(fresh.events) if fresh else []

    def users_who(self, item_ids: set[str], event: str) -> set[str]:
        """Users with a fresh `event` on any of `item_ids` (audiences leave buyers out)."""
        with self._lock:
            return {
                user_id
                for user_id, fresh in self._users.items()
                if any(e[1] == event and e[0] in item_ids for e in fresh.events)
            }

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._users.pop(user_id, None)

    def forget_before(self, user_id: str, timestamp_ms: int) -> None:
        """Drops the user's events stamped at or before `timestamp_ms` (a privacy deletion)."""
        with self._lock:
            fresh = self._users.get(user_id)
            if fresh is None:
                return
            kept = [e for e in fresh.events if e[2] > timestamp_ms]
            if kept:
                fresh.events = deque(kept, maxlen=self.per_user)
            else:
                del self._users[user_id]

    def drop_before(self, timestamp_ms: int) -> None:
        """Drops events a newly loaded model was trained on."""
        with self._lock:
            for user_id in list(self._users):
                kept = [e for e in self._users[user_id].events if e[2] > timestamp_ms]
                if kept:
                    self._users[user_id].events = deque(kept, maxlen=self.per_user)
                else:
                    del self._users[user_id]


class LruCache:
    """Least-recently-used values. Recommend keeps lists in one, keyed by everything a list
    depends on (model version, user, request fields, the user's fresh events and deletion), so
    a hit is always what scoring would return; popular users under a skewed load are served
    without scoring."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[object, ...]) -> Any:
        if not self.size:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[object, ...], value: Any) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries[key] = value
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
