"""The event store on Redis: one shared store for many server replicas behind a load balancer.

`redis://host:port/db[?prefix=recsvc]`. Events and impressions are Redis streams whose entry ids
are a sequence number ("N-0"), so the cursor a server keeps of what it has taken in is a plain
integer, as with SQLite. A list per user indexes their entries, so `forget` deletes exactly
them. Appends and deletions run as Lua scripts: Redis runs a script atomically, so a batch is
stored whole or not at all, and no replica ever sees half a deletion. The audit log of
deletions is a Redis list (`<prefix>:audit`), one JSON line per deletion. Every change is
also published on `<prefix>:changes`, which replicas wait on instead of polling.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import redis

from recsvc.errors import AlreadyExists, BadInput, StoreUnavailable
from recsvc.events.records import (
    EVENTS_SCHEMA,
    IMPRESSIONS_SCHEMA,
    OUTCOMES_SCHEMA,
    StoredEvent,
    forget_audit_line,
)

READ_CHUNK = 10_000
# KEYS: stream, sequence counter, change channel. ARGV: the writer's token (published, so that
# it can ignore its own changes), user-index key prefix, fields per entry, then the entries'
# field values, the user id first. Returns the last entry's sequence number (the entries have
# the consecutive numbers ending there).
_APPEND = """
local per = tonumber(ARGV[3])
local names = {}
for n = 1, per do names[n] = ARGV[3 + n] end
local first = 4 + per
local last = redis.call('INCRBY', KEYS[2], (#ARGV - first + 1) / per)
local seq = last - (#ARGV - first + 1) / per
for start = first, #ARGV, per do
    seq = seq + 1
    local fields = {}
    for n = 1, per do
        fields[#fields + 1] = names[n]
        fields[#fields + 1] = ARGV[start + n - 1]
    end
    redis.call('XADD', KEYS[1], seq .. '-0', unpack(fields))
    redis.call('RPUSH', ARGV[2] .. ARGV[start], seq)
end
redis.call('PUBLISH', KEYS[3], ARGV[1])
return last
"""
# Events are stored packed: one stream field holding the event's values joined by SEPARATOR,
# a control character that no id can hold (recsvc.ids), so a call of 100 events sends 100
# arguments instead of 800. KEYS: stream, sequence counter, change channel. ARGV: the writer's
# token, user-index key prefix, then one packed event each (the user id first).
SEPARATOR = "\x1f"
PACKED = "e"
_APPEND_EVENTS = """
local n = #ARGV - 2
local last = redis.call('INCRBY', KEYS[2], n)
local seq = last - n
for i = 3, #ARGV do
    seq = seq + 1
    local event = ARGV[i]
    local user = string.sub(event, 1, string.find(event, '\\31', 1, true) - 1)
    redis.call('XADD', KEYS[1], seq .. '-0', 'e', event)
    redis.call('RPUSH', ARGV[2] .. user, seq)
end
redis.call('PUBLISH', KEYS[3], ARGV[1])
return last
"""
# KEYS: events stream, the user's event index, impressions stream, the user's impression
# index, forgotten hash, change channel, forgotten users by time (a sorted set, so that a sync
# reads only deletions since its last). ARGV: user id, now (ms), the writer's token. Returns
# the events deleted.
_FORGET = """
local function drop(stream, index)
    local ids = redis.call('LRANGE', index, 0, -1)
    for _, seq in ipairs(ids) do redis.call('XDEL', stream, seq .. '-0') end
    redis.call('DEL', index)
    return #ids
end
local removed = drop(KEYS[1], KEYS[2])
drop(KEYS[3], KEYS[4])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[6], ARGV[3])
return removed
"""
# A merge: the user's events re-stored under another id with new sequence numbers (appended
# to the stream, so replicas take them in), then the user forgotten as by _FORGET. KEYS: events
# stream, the user's event index, the other user's event index, sequence counter, forgotten
# hash, change channel, forgotten by time, the user's impression index, impressions stream.
# ARGV: user id, now (ms), the writer's token, the other user's id. Returns the events moved.
_MERGE = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local moved = 0
for _, seq in ipairs(ids) do
    local entry = redis.call('XRANGE', KEYS[1], seq .. '-0', seq .. '-0')
    if #entry == 1 then
        local fields = entry[1][2]
        for n = 1, #fields, 2 do
            if fields[n] == 'e' then
                local packed = fields[n + 1]
                local rest = string.sub(packed, string.find(packed, '\\31', 1, true), -1)
                local new = redis.call('INCR', KEYS[4])
                redis.call('XADD', KEYS[1], new .. '-0', 'e', ARGV[4] .. rest)
                redis.call('RPUSH', KEYS[3], new)
                moved = moved + 1
            end
        end
        redis.call('XDEL', KEYS[1], seq .. '-0')
    end
end
redis.call('DEL', KEYS[2])
local impressions = redis.call('LRANGE', KEYS[8], 0, -1)
for _, seq in ipairs(impressions) do redis.call('XDEL', KEYS[9], seq .. '-0') end
redis.call('DEL', KEYS[8])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[6], ARGV[3])
return moved
"""
EVENT_FIELDS = (
    "user_id",
    "item_id",
    "event",
    "timestamp_ms",
    "quantity",
    "price",
    "variant",
    "recommendation_id",
)
IMPRESSION_FIELDS = ("user_id", "recommendation_id", "variant", "timestamp_ms", "n_items")


@contextlib.contextmanager
def _outage_is_unavailable(address: str) -> Iterator[None]:
    """Redis down, unreachable or too slow is StoreUnavailable (a retry later may succeed).
    A context, as in the SQLite store: mutmut leaves decorated functions unmutated."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise StoreUnavailable(f"event store redis at {address}: {error}") from error


class RedisEventStore:
    """Same contract as SQLiteEventStore (tests/test_eventstore.py runs one suite on both).

    Each call gives up after `timeout` seconds (once more on a fresh connection, so that a
    connection Redis dropped while restarting costs no failed call)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parsed = urlparse(url)
        self.prefix = parse_qs(parsed.query).get("prefix", ["recsvc"])[0]
        try:
            database = int(parsed.path.lstrip("/") or 0)
        except ValueError as exc:
            raise BadInput(f"event store URL {url!r}: the path must be a database number") from exc
        self._redis = redis.Redis(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 6379,
            db=database,
            password=parsed.password,
            decode_responses=True,
            socket_timeout=timeout / 2,
            socket_connect_timeout=timeout / 2,
            retry=Retry(NoBackoff(), 1),
        )
        self.address = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"
        self._changes: Any = None  # pub/sub subscription, opened by the first wait_for_change
        # Published with every change this store makes: its own are not news to its owner.
        self._token = uuid.uuid4().hex
        self._forgotten_indexed = False
        self._append = self._redis.register_script(_APPEND)
        self._append_events = self._redis.register_script(_APPEND_EVENTS)
        self._forget = self._redis.register_script(_FORGET)
        self._merge = self._redis.register_script(_MERGE)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def append(self, events: list[StoredEvent]) -> int:
        with _outage_is_unavailable(self.address):
            packed = [
                SEPARATOR.join(
                    (
                        e.user_id,
                        e.item_id,
                        e.event,
                        str(int(e.timestamp_ms)),
                        repr(float(e.quantity)),
                        "" if e.price is None else repr(float(e.price)),
                        e.variant,
                        e.recommendation_id,
                    )
                )
                for e in events
            ]
            return int(
                self._append_events(
                    keys=[self._key("events"), self._key("events", "seq"), self._key("changes")],
                    args=[self._token, self._key("user-events", ""), *packed],
                )
            )

    def forget(self, user_id: str, reason: str = "") -> int:
        with _outage_is_unavailable(self.address):
            now = int(time.time() * 1000)
            removed = int(
                self._forget(
                    keys=[
                        self._key("events"),
                        self._key("user-events", user_id),
                        self._key("impressions"),
                        self._key("user-impressions", user_id),
                        self._key("forgotten"),
                        self._key("changes"),
                        self._key("forgotten", "by-time"),
                    ],
                    args=[user_id, now, self._token],
                )
            )
            self._redis.rpush(self._key("audit"), forget_audit_line(user_id, removed, reason, now))
            return removed

    def merge(self, user_id: str, into: str, reason: str = "") -> int:
        with _outage_is_unavailable(self.address):
            now = int(time.time() * 1000)
            moved = int(
                self._merge(
                    keys=[
                        self._key("events"),
                        self._key("user-events", user_id),
                        self._key("user-events", into),
                        self._key("events", "seq"),
                        self._key("forgotten"),
                        self._key("changes"),
                        self._key("forgotten", "by-time"),
                        self._key("user-impressions", user_id),
                        self._key("impressions"),
                    ],
                    args=[user_id, now, self._token, into],
                )
            )
            self._redis.rpush(
                self._key("audit"), forget_audit_line(user_id, moved, reason, now, merged_into=into)
            )
            return moved

    def forgotten_users(self) -> dict[str, int]:
        with _outage_is_unavailable(self.address):
            return {u: int(ms) for u, ms in self._redis.hgetall(self._key("forgotten")).items()}

    def changes_after(
        self, event_id: int, forgotten_ms: int
    ) -> tuple[list[tuple[int, str, str, str, int]], dict[str, int]]:
        with _outage_is_unavailable(self.address):
            events = [
                (seq, f["user_id"], f["item_id"], f["event"], int(f["timestamp_ms"]))
                for seq, f in self._entries("events", event_id)
            ]
            if not self._forgotten_indexed:
                self._index_forgotten()
            by_time = self._redis.zrangebyscore(
                self._key("forgotten", "by-time"), forgotten_ms, "+inf", withscores=True
            )
            return events, {user: int(ms) for user, ms in by_time}

    def _index_forgotten(self) -> None:
        """Fills the by-time index from the hash for deletions stored before it existed."""
        index = self._key("forgotten", "by-time")
        if self._redis.zcard(index) < self._redis.hlen(self._key("forgotten")):
            for user, ms in self._redis.hgetall(self._key("forgotten")).items():
                self._redis.zadd(index, {user: int(ms)})
        self._forgotten_indexed = True

    def _entries(self, stream: str, after: int = 0):
        """(sequence number, fields) of the stream's entries after `after`, oldest first."""
        start = f"({after}-0" if after else "-"
        while True:
            chunk = self._redis.xrange(self._key(stream), start, "+", count=READ_CHUNK)
            for entry_id, fields in chunk:
                packed = fields.get(PACKED)
                if packed is not None:
                    fields = dict(zip(EVENT_FIELDS, packed.split(SEPARATOR), strict=True))
                yield int(entry_id.split("-", 1)[0]), fields
            if len(chunk) < READ_CHUNK:
                return
            start = f"({chunk[-1][0]}"

    def add_campaign(self, name: str, spec: str) -> None:
        with _outage_is_unavailable(self.address):
            if not self._redis.hsetnx(self._key("campaigns"), name, spec):
                raise AlreadyExists(f"a campaign named {name!r} exists already")

    def campaigns(self) -> dict[str, str]:
        with _outage_is_unavailable(self.address):
            return dict(self._redis.hgetall(self._key("campaigns")))

    def read_events(self) -> pa.Table:
        with _outage_is_unavailable(self.address):
            rows = [f for _, f in self._entries("events")]
            return pa.table(
                {
                    "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
                    "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
                    "event": pa.array([r["event"] for r in rows], pa.string()),
                    "timestamp_ms": pa.array([int(r["timestamp_ms"]) for r in rows], pa.int64()),
                    "quantity": pa.array([float(r["quantity"]) for r in rows], pa.float64()),
                    "price": pa.array(
                        [float(r["price"]) if r["price"] else None for r in rows], pa.float64()
                    ),
                },
                schema=EVENTS_SCHEMA,
            )

    def read_outcomes(self) -> pa.Table:
        with _outage_is_unavailable(self.address):
            rows = [f for _, f in self._entries("events") if f["recommendation_id"]]
            return pa.table(
                [
                    pa.array([r["variant"] for r in rows], pa.string()),
                    pa.array([r["recommendation_id"] for r in rows], pa.string()),
                    pa.array([r["event"] for r in rows], pa.string()),
                    pa.array([r["item_id"] for r in rows], pa.string()),
                    pa.array([float(r["quantity"]) for r in rows], pa.float64()),
                    pa.array(
                        [float(r["price"]) if r["price"] else None for r in rows], pa.float64()
                    ),
                ],
                schema=OUTCOMES_SCHEMA,
            )

    def record_impressions(self, rows: list[tuple[str, str, str, int, int]]) -> None:
        with _outage_is_unavailable(self.address):
            values: list[Any] = []
            for recommendation_id, user_id, variant, stamp, n_items in rows:
                values += [user_id, recommendation_id, variant, int(stamp), int(n_items)]
            if values:
                self._append(
                    keys=[
                        self._key("impressions"),
                        self._key("impressions", "seq"),
                        self._key("changes"),
                    ],
                    args=[
                        self._token,
                        self._key("user-impressions", ""),
                        len(IMPRESSION_FIELDS),
                        *IMPRESSION_FIELDS,
                        *values,
                    ],
                )

    def read_impressions(self) -> pa.Table:
        with _outage_is_unavailable(self.address):
            seen: dict[str, tuple[str, str]] = {}
            for _, f in self._entries("impressions"):
                # First wins, as in SQLite.
                seen.setdefault(f["recommendation_id"], (f["variant"], f["user_id"]))
            return pa.table(
                [
                    pa.array(list(seen), pa.string()),
                    pa.array([v for v, _ in seen.values()], pa.string()),
                    pa.array([u for _, u in seen.values()], pa.string()),
                ],
                schema=IMPRESSIONS_SCHEMA,
            )

    def wait_for_change(self, timeout: float) -> None:
        """Waits on the change channel every append and deletion publishes to, so replicas take
        in each other's events and deletions within milliseconds, not a polling interval."""
        with _outage_is_unavailable(self.address):
            if self._changes is None:
                self._changes = self._redis.pubsub(ignore_subscribe_messages=True)
                self._changes.subscribe(self._key("changes"))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                message = self._changes.get_message(timeout=left)
                if message is not None and message["data"] != self._token:
                    while self._changes.get_message(timeout=0) is not None:
                        pass  # one sync takes in every change so far
                    return

    def close(self) -> None:
        if self._changes is not None:
            self._changes.close()
        self._redis.close()
