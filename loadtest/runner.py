"""`recsvc loadtest`: closed- or open-loop load against a recsvc server, HDR latency histogram.

Closed loop: `concurrency` callers, each sends its next call when the last one returns; it finds
the server's maximum rate. Open loop: calls start on a fixed schedule at `rate` per second
whether or not earlier ones have returned, and each latency is measured from the call's
scheduled start, so queueing shows in the latency instead of hiding in a lower rate (no
coordinated omission). Calls are spread over several channels (the kernel spreads connections,
not calls, across server worker processes) and, with `processes`, over several client processes,
whose histograms are merged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram

from recsvc.errors import Unavailable
from recsvc.v1 import LOAD_TEST_METADATA_KEY
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

# Latencies are recorded in microseconds, from 1 us to 60 s, to 3 significant digits.
LOWEST_US, HIGHEST_US, DIGITS = 1, 60_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MAX_IN_FLIGHT = 20_000  # open loop: beyond this the client itself is the bottleneck


# The RPCs a --mix may name. MergeUsers is not: it moves stored events, which a load test
# must never do (its RecordEvents are checked, not stored).
MIXABLE = (
    "Recommend",
    "SimilarItems",
    "RecordEvents",
    "RankItems",
    "FrequentlyBoughtTogether",
    "RecommendPage",
    "RecommendCategories",
    "RecentlyViewed",
)
# RankItems re-ranks this many items drawn at random (a category page's worth).
RANK_CANDIDATES = 50


@dataclass(frozen=True)
class LoadSpec:
    target: str = "127.0.0.1:50051"
    duration_s: float = 10.0
    max_requests: int = 0  # 0: bounded by duration only
    concurrency: int = 32  # closed loop callers (per process)
    rate: float = 0.0  # open loop calls per second (all processes together); 0: closed loop
    channels: int = 4
    processes: int = 1
    mix: dict[str, float] = field(
        default_factory=lambda: {"Recommend": 0.8, "SimilarItems": 0.15, "RecordEvents": 0.05}
    )
    k: int = 10
    zipf: float = 1.1
    unknown_share: float = 0.05
    timeout_s: float = 5.0
    api_key: str = ""
    tls_ca: str = ""
    seed: int = 1
    live: bool = False  # count as real traffic: impressions, stored events (and so training)


@dataclass
class Workload:
    """User and item ids to draw from: users by a Zipf law over a shuffled ranking."""

    users: np.ndarray
    items: np.ndarray

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> Workload:
        from recsvc.modelstore import ModelStore

        store = ModelStore(model_dir)
        version = store.current_version()
        if version is None:
            raise SystemExit(f"recsvc loadtest: no published model in {model_dir}")
        path = store.path(version)
        return cls(
            np.load(path / "user_ids.npy", mmap_mode="r", allow_pickle=False),
            np.load(path / "item_ids.npy", mmap_mode="r", allow_pickle=False),
        )


class Requests:
    """Draws the next call: an RPC by the mix, a user by Zipf rank or unknown, items uniformly."""

    def __init__(self, spec: LoadSpec, workload: Workload, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.spec = spec
        self.workload = workload
        self.methods = list(spec.mix)
        weights = np.array([spec.mix[m] for m in self.methods], dtype=float)
        self.method_p = weights / weights.sum()
        n = len(workload.users)
        ranks = np.arange(1, n + 1, dtype=float) ** -spec.zipf
        self.user_p = ranks / ranks.sum()
        self.user_order = self.rng.permutation(n)
        self.unknown = 0

    def draw(self, batch: int = 4096) -> list[tuple[str, object]]:
        spec, workload, rng = self.spec, self.workload, self.rng
        methods = rng.choice(len(self.methods), size=batch, p=self.method_p)
        users = self.user_order[rng.choice(len(self.user_p), size=batch, p=self.user_p)]
        unknown = rng.random(batch) < spec.unknown_share
        items = rng.integers(0, len(workload.items), size=batch)
        out: list[tuple[str, object]] = []
        for n, (m, u, is_new, i) in enumerate(zip(methods, users, unknown, items, strict=True)):
            method = self.methods[m]
            if is_new:
                self.unknown += 1
                user = f"loadtest-new-{self.unknown}"
            else:
                user = str(workload.users[u])
            item = str(workload.items[i])
            if method == "Recommend":
                out.append((method, pb.RecommendRequest(user_id=user, k=spec.k)))
            elif method == "SimilarItems":
                out.append((method, pb.SimilarItemsRequest(item_id=item, k=spec.k)))
            elif method == "RecordEvents":
                event = pb.Event(user_id=user, item_id=item, event="view")
                out.append((method, pb.RecordEventsRequest(events=[event])))
            elif method == "RankItems":
                drawn = np.roll(items, -n)[:RANK_CANDIDATES]
                candidates = [str(workload.items[c]) for c in drawn.tolist()]
                out.append((method, pb.RankItemsRequest(user_id=user, item_ids=candidates)))
            elif method == "FrequentlyBoughtTogether":
                request = pb.FrequentlyBoughtTogetherRequest(item_ids=[item], k=spec.k)
                out.append((method, request))
            elif method == "RecommendPage":
                out.append((method, pb.RecommendPageRequest(user_id=user)))
            elif method == "RecommendCategories":
                out.append((method, pb.RecommendCategoriesRequest(user_id=user, k=5)))
            elif method == "RecentlyViewed":
                out.append((method, pb.RecentlyViewedRequest(user_id=user, k=spec.k)))
            else:
                raise SystemExit(f"recsvc loadtest: unknown RPC {method!r} in the mix")
        return out


@dataclass
class Tally:
    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    )
    codes: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    dropped: int = 0  # open loop: not sent because the client had too many calls in flight

    def record(self, code: str, seconds: float) -> None:
        self.codes[code] += 1
        self.histogram.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


def _credentials(spec: LoadSpec) -> grpc.ChannelCredentials | None:
    return grpc.ssl_channel_credentials(Path(spec.tls_ca).read_bytes()) if spec.tls_ca else None


def _channel(spec: LoadSpec) -> grpc.aio.Channel:
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel object
    credentials = _credentials(spec)
    if credentials is not None:
        return grpc.aio.secure_channel(spec.target, credentials, options=options)
    return grpc.aio.insecure_channel(spec.target, options=options)


async def _run(spec: LoadSpec, workload: Workload, index: int, share: float, report) -> Tally:
    """One client process: `share` of the rate (open loop) or its own callers (closed)."""
    channels = [_channel(spec) for _ in range(spec.channels)]
    stubs = [pb_grpc.RecommenderStub(c) for c in channels]
    metadata = (("authorization", f"Bearer {spec.api_key}"),) if spec.api_key else ()
    if not spec.live:
        metadata += ((LOAD_TEST_METADATA_KEY, "1"),)
    requests = Requests(spec, workload, spec.seed * 1000 + index)
    pending: list[tuple[str, object]] = []
    tally = Tally()
    started = time.perf_counter()
    deadline = started + spec.duration_s
    limit = spec.max_requests // spec.processes if spec.max_requests else 0

    def next_call() -> tuple[str, object]:
        if not pending:
            pending.extend(requests.draw())
        return pending.pop()

    async def call(stub: pb_grpc.RecommenderStub, method: str, message: object, t0: float):
        try:
            await getattr(stub, method)(message, timeout=spec.timeout_s, metadata=metadata)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        tally.record(code, time.perf_counter() - t0)

    def done() -> bool:
        return time.perf_counter() >= deadline or bool(limit and tally.sent >= limit)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            report(index, tally, time.perf_counter() - started)

    reporter = asyncio.create_task(progress())
    if spec.rate > 0:
        interval = 1.0 / (spec.rate * share)
        in_flight: set[asyncio.Task] = set()
        n = 0
        while not done():
            scheduled = started + n * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                tally.dropped += 1
                continue
            method, message = next_call()
            tally.sent += 1
            task = asyncio.create_task(call(stubs[n % len(stubs)], method, message, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=spec.timeout_s + 1)
    else:

        async def caller(number: int) -> None:
            stub = stubs[number % len(stubs)]
            while not done():
                method, message = next_call()
                tally.sent += 1
                await call(stub, method, message, time.perf_counter())

        await asyncio.gather(*(caller(c) for c in range(spec.concurrency)))
    reporter.cancel()
    for channel in channels:
        await channel.close()
    return tally


def _print_progress(index: int, tally: Tally, elapsed: float) -> None:
    h = tally.histogram
    ok = tally.codes.get("OK", 0)
    errors = sum(tally.codes.values()) - ok
    print(
        f"[loadtest client {index}] {elapsed:5.1f}s sent {tally.sent:,} ok {ok:,} "
        f"errors {errors:,} rate {sum(tally.codes.values()) / max(elapsed, 1e-9):,.0f}/s "
        f"p50 {h.get_value_at_percentile(50) / 1000:.2f} ms "
        f"p99 {h.get_value_at_percentile(99) / 1000:.2f} ms",
        file=sys.stderr,
        flush=True,
    )


def _process_main(spec: LoadSpec, workload: Workload, index: int, queue) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    random.seed(spec.seed + index)
    tally = asyncio.run(_run(spec, workload, index, 1.0 / spec.processes, _print_progress))
    queue.put(
        {
            "histogram": base64.b64encode(tally.histogram.encode()).decode(),
            "codes": dict(tally.codes),
            "sent": tally.sent,
            "dropped": tally.dropped,
        }
    )


def wait_for_server(spec: LoadSpec, timeout_s: float = 5.0) -> None:
    """Unavailable when nothing answers at the target: a load against a dead port would only
    count refusals for its whole duration."""
    credentials = _credentials(spec)
    channel = (
        grpc.secure_channel(spec.target, credentials)
        if credentials is not None
        else grpc.insecure_channel(spec.target)
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=min(timeout_s, spec.duration_s))
    except grpc.FutureTimeoutError:
        raise Unavailable(
            f"nothing answers at {spec.target} (waited {min(timeout_s, spec.duration_s):g} s)"
        ) from None
    finally:
        channel.close()


def run_load(spec: LoadSpec, workload: Workload) -> dict[str, object]:
    """Runs the load (in `spec.processes` processes) and returns the merged report."""
    wait_for_server(spec)
    started = time.perf_counter()
    if spec.processes == 1:
        tally = asyncio.run(_run(spec, workload, 0, 1.0, _print_progress))
        tallies = [tally]
    else:
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        workers = [
            context.Process(target=_process_main, args=(spec, workload, i, queue))
            for i in range(spec.processes)
        ]
        for worker in workers:
            worker.start()
        parts = [queue.get() for _ in workers]
        for worker in workers:
            worker.join()
        tallies = []
        for part in parts:
            tally = Tally()
            tally.histogram.decode_and_add(base64.b64decode(part["histogram"]))
            tally.codes.update(part["codes"])
            tally.sent, tally.dropped = part["sent"], part["dropped"]
            tallies.append(tally)
    elapsed = time.perf_counter() - started
    merged = Tally()
    for tally in tallies:
        merged.histogram.add(tally.histogram)
        merged.codes.update(tally.codes)
        merged.sent += tally.sent
        merged.dropped += tally.dropped
    completed = sum(merged.codes.values())
    h = merged.histogram
    return {
        "spec": asdict(spec),
        "mode": "open" if spec.rate > 0 else "closed",
        "seconds": round(elapsed, 3),
        "sent": merged.sent,
        "completed": completed,
        "dropped": merged.dropped,
        "achieved_rate": round(completed / elapsed, 1) if elapsed else 0.0,
        "codes": dict(merged.codes),
        "latency_ms": {
            **{f"p{p:g}": h.get_value_at_percentile(p) / 1000 for p in PERCENTILES},
            "max": h.get_max_value() / 1000,
            "mean": round(h.get_mean_value() / 1000, 3),
        },
    }


def format_report(report: dict[str, object]) -> str:
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(report["codes"].items()))  # type: ignore[union-attr]
    return (
        f"{report['mode']} loop, {report['seconds']} s: {report['completed']:,} calls, "
        f"{report['achieved_rate']:,}/s ({codes})\n"
        + "latency ms: "
        + ", ".join(f"{k} {v:.2f}" for k, v in latency.items())
        + (f"\nnot sent (client saturated): {report['dropped']:,}" if report["dropped"] else "")
    )


def save_report(report: dict[str, object], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if path is None:
        print(text)
    else:
        path.write_text(text + "\n")
