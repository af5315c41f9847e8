"""A load client in C: h2load (nghttp2) sending gRPC frames it was given, one process per payload.

Python's grpc costs the client about as much per call as the server it measures (250 against
320-470 us on this machine), so on two shared cores the client takes CPU the server would
have had. h2load costs about a seventh of that: the server gets the machine, and the ratio
measures the server. It knows HTTP/2, not gRPC: it counts a call whose trailers carry an error
status as a success, so the caller checks the server's own count of OK answers.

Each payload is one serialised request; each gets its own h2load process (one connection,
`streams` calls in flight), so a run cycles over as many users as there are payloads, each
asking again as soon as it is answered: the cache-hit path of page reloads and pagination.

    from h2client import h2load_closed_loop
    run = h2load_closed_loop(target, "/recsvc.v1.Recommender/Recommend", payloads, 10.0, [pid])

`h2load_open_loop` sends at a fixed rate instead (h2load's --rps, split over the payloads) and
reads each call's latency from h2load's per-request log. The latency is from when a request
was sent; with 64 streams per process a request waits for a free stream only past 64 calls in
flight, which the runs below never reach at half the maximum rate (it would show as a rate
below the target).
"""

from __future__ import annotations

import math
import re
import resource
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from lightclient import Run, process_cpu_seconds

H2LOAD = shutil.which("h2load")
INSTALL_HINT = "h2load is not installed: apt-get install nghttp2-client (or use --client python)"
STREAMS = 16
_DONE = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded")


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _request_files(folder: Path, payloads: list[bytes]) -> list[Path]:
    """Each payload as a gRPC frame in its own file, for h2load's --data."""
    paths = []
    for index, payload in enumerate(payloads):
        paths.append(folder / f"request-{index}.bin")
        paths[-1].write_bytes(grpc_frame(payload))
    return paths


def _command(target: str, method: str, request: Path, options: list[str]) -> list[str]:
    if H2LOAD is None:
        raise RuntimeError(INSTALL_HINT)
    return [
        H2LOAD, "--clients=1", f"--data={request}", *options,
        "--header=content-type: application/grpc", "--header=te: trailers",
        f"http://{target}{method}",
    ]  # fmt: skip


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def h2load_closed_loop(
    target: str,
    method: str,
    payloads: list[bytes],
    seconds: float,
    server_pids: list[int],
    streams: int = STREAMS,
) -> Run:
    """`streams` calls in flight per payload for `seconds`. `failed` counts calls h2load saw
    fail at the HTTP/2 level; gRPC errors are for the caller to count on the server."""
    with tempfile.TemporaryDirectory() as folder:
        options = [f"--max-concurrent-streams={streams}", f"--duration={seconds:g}"]
        commands = [
            _command(target, method, request, options)
            for request in _request_files(Path(folder), payloads)
        ]
        client_before = children_cpu_seconds()
        server_before = sum(process_cpu_seconds(pid) for pid in server_pids)
        started = time.perf_counter()
        processes = [
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for c in commands
        ]
        outputs = [p.communicate()[0] for p in processes]
        elapsed = time.perf_counter() - started
        server_after = sum(process_cpu_seconds(pid) for pid in server_pids)
        client_after = children_cpu_seconds()
    done = succeeded = 0
    for output in outputs:
        counts = _DONE.search(output)
        if counts is None:
            raise RuntimeError(f"h2load gave no counts:\n{output[-2000:]}")
        done += int(counts.group(1))
        succeeded += int(counts.group(2))
    # h2load's own clock: its duration excludes connecting, which the wall time here includes.
    return Run(
        calls=succeeded,
        failed=done - succeeded,
        seconds=min(elapsed, seconds),
        client_cpu_s=client_after - client_before,
        server_cpu_s=server_after - server_before,
    )


def h2load_open_loop(
    target: str, method: str, payloads: list[bytes], rate: float, seconds: float
) -> dict[str, object]:
    """`rate` calls/s for `seconds`, split evenly over one h2load process per payload:
    achieved rate, latency percentiles in ms, and calls that failed at the HTTP/2 level."""
    each = max(1, math.ceil(rate / len(payloads)))
    with tempfile.TemporaryDirectory() as folder:
        commands, logs = [], []
        for index, request in enumerate(_request_files(Path(folder), payloads)):
            logs.append(Path(folder) / f"log-{index}.tsv")
            options = [
                f"--rps={each}", "--max-concurrent-streams=64", f"--duration={seconds:g}",
                f"--log-file={logs[-1]}",
            ]  # fmt: skip
            commands.append(_command(target, method, request, options))
        processes = [
            subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for c in commands
        ]
        for process in processes:
            process.wait()
        rows = [line.split("\t") for log in logs for line in log.read_text().splitlines()]
    latency_ms = np.array([int(r[2]) / 1000 for r in rows if r[1] == "200"], dtype=np.float64)
    quantiles = np.percentile(latency_ms, [50, 90, 99, 99.9]) if latency_ms.size else [0.0] * 4
    return {
        "target_rate": each * len(payloads),
        "achieved_rate": round(latency_ms.size / seconds, 1),
        "latency_ms": {
            name: round(float(value), 3)
            for name, value in zip(("p50", "p90", "p99", "p99.9"), quantiles, strict=True)
        }
        | {"max": round(float(latency_ms.max()), 3) if latency_ms.size else 0.0},
        "failed": sum(1 for r in rows if r[1] != "200"),
    }
