"""Writes to the event store for many concurrent callers: group commit, in order, bounded.

One thread owns the writes. Calls queue their events (or a deletion) and wait; the thread takes
everything queued so far and stores all the events in one transaction, so a thousand callers
sending one event each cost one commit (one fsync), not a thousand. Deletions are stored alone,
in the order they came, so an event sent before a ForgetUser is deleted with the rest. Each
caller's future resolves only once its events are durable, and after the server's real-time
state has taken them in (the caller's next Recommend sees them).

A store that cannot be reached fails every waiting caller with StoreUnavailable, logged once per
outage (one line when it starts, one when it ends), never a traceback per call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from recsvc.errors import StoreUnavailable
from recsvc.events import EventStore, StoredEvent

log = logging.getLogger(__name__)

# Events stored in one transaction at most: big enough to absorb any burst of single-event
# calls, small enough that one transaction stays in the low milliseconds.
MAX_BATCH_EVENTS = 20_000


class OutageLog:
    """One log line when the event store becomes unreachable and one when it is back."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self, error: BaseException, doing: str) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                log.error(
                    "event store unreachable while %s: %s; RecordEvents and ForgetUser answer "
                    "UNAVAILABLE until it is back, recommendations go on",
                    doing,
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                )

    def succeeded(self) -> None:
        if self._since is None:  # the common case: no lock
            return
        with self._lock:
            if self._since is not None:
                log.warning(
                    "event store reachable again after %.1f s", time.monotonic() - self._since
                )
                self._since = None


@dataclass
class _Write:
    events: list[StoredEvent] | None  # None: a deletion
    future: Future[int] = field(default_factory=Future)
    user_id: str = ""
    reason: str = ""
    into: str = ""  # a deletion that moves the user's events to this id first (a merge)


class EventWriter:
    """The event store's single writer. After each stored batch, before its callers are
    answered, `appended(events, last_id)` or `forgotten()` lets the core take it in."""

    def __init__(
        self,
        store: EventStore,
        appended: Callable[[list[StoredEvent], int], None],
        forgotten: Callable[[], None],
        outages: OutageLog,
    ) -> None:
        self.store = store
        self.appended = appended
        self.forgotten = forgotten
        self.outages = outages
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def append(self, events: list[StoredEvent]) -> Future[int]:
        """A future of how many events were stored; StoreUnavailable if the store failed."""
        return self._submit(_Write(events))

    def forget(self, user_id: str, reason: str) -> Future[int]:
        """A future of how many events the deletion removed, resolved once it is durable."""
        return self._submit(_Write(None, user_id=user_id, reason=reason))

    def merge(self, user_id: str, into: str, reason: str) -> Future[int]:
        """A future of how many events moved to `into`, resolved once the merge is durable."""
        return self._submit(_Write(None, user_id=user_id, reason=reason, into=into))

    def _submit(self, write: _Write) -> Future[int]:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="recsvc-event-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(write)
        return write.future

    def close(self) -> None:
        """Stores what is queued, then stops the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        carried: list[_Write | None] = []  # taken while batching, handled after the batch
        while True:
            write = carried.pop() if carried else self._queue.get()
            if write is None:
                return
            if write.events is None:
                if write.future.set_running_or_notify_cancel():
                    self._finish(
                        [write],
                        lambda w=write: (
                            self.store.merge(w.user_id, w.into, w.reason)
                            if w.into
                            else self.store.forget(w.user_id, w.reason)
                        ),
                        lambda _: self.forgotten(),
                    )
                continue
            batch, n_events = [write], len(write.events)
            while n_events < MAX_BATCH_EVENTS:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None or following.events is None:
                    carried.append(following)  # the end, or a deletion: after these events
                    break
                batch.append(following)
                n_events += len(following.events)
            # A caller that stopped waiting (its deadline passed) was answered UNAVAILABLE:
            # its events are not stored, so the retry it makes is not a duplicate.
            live = [w for w in batch if w.future.set_running_or_notify_cancel()]
            if live:
                events = [e for w in live for e in w.events or ()]
                self._finish(
                    live,
                    lambda events=events: self.store.append(events),
                    lambda last, events=events: self.appended(events, last),
                )

    def _finish(
        self, writes: list[_Write], action: Callable[[], int], after: Callable[[int], None]
    ) -> None:
        """Runs the store action for `writes`, lets the core take it in (`after`, given the
        action's result), and answers each of their callers."""
        try:
            result = action()
        except StoreUnavailable as error:
            self.outages.failed(error, "storing events" if writes[0].events else "deleting")
            for write in writes:
                write.future.set_exception(error)
            return
        except Exception as error:  # a bug, not an outage: each caller gets it as INTERNAL
            log.exception("could not store %d writes", len(writes))
            for write in writes:
                write.future.set_exception(error)
            return
        self.outages.succeeded()
        try:
            after(result)
        except StoreUnavailable as error:  # stored and durable: the callers are answered
            self.outages.failed(error, "reading it back")
        for write in writes:
            write.future.set_result(len(write.events) if write.events is not None else result)
