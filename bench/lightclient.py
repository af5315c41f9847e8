"""A load client that costs less per call than the server it measures.

On a 2-core machine the client and the server share the CPU, so a client that spends as much
per call as the server halves what the server gets and pulls every ratio towards 1. This one
sends requests serialised once in advance, leaves responses as bytes (no parsing), keeps a
fixed number of calls in flight over a few grpc.aio channels, and runs nothing else in its
process. Each run reports its own CPU per call and the server processes' (from /proc), so a
reader sees which side was the bottleneck.

    from lightclient import closed_loop
    result = closed_loop(target, "/recsvc.v1.Recommender/Recommend", payloads, 10.0, [pid])
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

CHANNELS = 4
IN_FLIGHT = 64
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    calls: int
    failed: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def client_us_per_call(self) -> float:
        return 1e6 * self.client_cpu_s / max(self.calls, 1)

    @property
    def server_us_per_call(self) -> float:
        return 1e6 * self.server_cpu_s / max(self.calls, 1)

    def as_dict(self) -> dict[str, float]:
        return {
            "calls_per_s": round(self.rate, 1),
            "failed": self.failed,
            "client_cpu_us_per_call": round(self.client_us_per_call, 1),
            "server_cpu_us_per_call": round(self.server_us_per_call, 1),
        }


async def _drive(
    target: str, method: str, payloads: list[bytes], seconds: float, in_flight: int
) -> tuple[int, int, float]:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    # No serializer either way: the payloads are bytes already, the answers stay bytes.
    calls = [channel.unary_unary(method) for channel in channels]
    counter = itertools.count()
    done = failed = 0
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal done, failed
        call = calls[index % CHANNELS]
        while time.perf_counter() < deadline:
            payload = payloads[next(counter) % len(payloads)]
            try:
                await call(payload, timeout=10)
                done += 1
            except grpc.aio.AioRpcError:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return done, failed, elapsed


def closed_loop(
    target: str,
    method: str,
    payloads: list[bytes],
    seconds: float,
    server_pids: list[int],
    in_flight: int = IN_FLIGHT,
) -> Run:
    """`in_flight` calls kept going for `seconds`, cycling through `payloads`."""
    client_before = own_cpu_seconds()
    server_before = sum(process_cpu_seconds(pid) for pid in server_pids)
    done, failed, elapsed = asyncio.run(_drive(target, method, payloads, seconds, in_flight))
    return Run(
        calls=done,
        failed=failed,
        seconds=elapsed,
        client_cpu_s=own_cpu_seconds() - client_before,
        server_cpu_s=sum(process_cpu_seconds(pid) for pid in server_pids) - server_before,
    )
