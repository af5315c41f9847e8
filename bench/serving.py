"""Serving speed: recsvc against a no-op gRPC server, same machine, same client, same run.

Alternates, `--repeats` times: the no-op server (fixed response of the same size), then
`recsvc serve` on the model, each under the same closed-loop Recommend load, and reports
medians, the throughput ratio, and the client's and each server's CPU per call (from /proc), so
that a reader sees which side was the bottleneck. Two clients:

- `--client h2load` (the default): h2load, in C, one process per user (`--users`, 4), each
  asking again as soon as it is answered (bench/h2client.py): the cache-hit path, with a
  client that costs a seventh of the server per call. recsvc's count of OK answers (from its
  /metrics) is checked against the calls made.
- `--client python`: bench/lightclient.py, grpc.aio with requests serialised in advance and
  responses left as bytes, cycling over 20,000 Zipf-drawn requests (5% unknown users), 64 in
  flight on 4 channels: a realistic mix, with a client that costs nearly as much as the server.

Then an open-loop run at half of recsvc's measured maximum gives the latency under a steady
rate: h2load at a fixed rate over `--open-loop-users` (8) distinct requests (64 h2load
processes on two cores add a 60 ms p99 of their own, to the no-op too), or, with
`--client python`, `recsvc loadtest` (Zipf users, latency from each call's scheduled start).
The resident memory of each server process is read from /proc. `--method` loads another RPC
(RankItems with 50 candidates, FrequentlyBoughtTogether, RecommendPage, RecommendCategories,
RecentlyViewed); the no-op answers each with a response of recsvc's size.

    .venv/bin/python bench/serving.py --model-dir var/models --label sample
    .venv/bin/python bench/serving.py --model-dir var/bench/million --config bench/all-rules.toml \
        --label million --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2client import H2LOAD, STREAMS, h2load_closed_loop, h2load_open_loop
from lightclient import Run, closed_loop
from prometheus_client.parser import text_string_to_metric_families

from recsvc.loadtest.runner import MIXABLE, LoadSpec, Requests, Workload, run_load
from recsvc.modelstore import ModelStore
from recsvc.service.workers import free_port

ROOT = Path(__file__).resolve().parents[1]

RECSVC = str(Path(sys.executable).with_name("recsvc"))


def start(command: list[str], ready: str) -> tuple[subprocess.Popen[str], list[str]]:
    """The process, once it has printed `ready`, and the lines it printed until then."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if ready in line:
            return process, lines
    raise RuntimeError(f"{command[1]} exited before it was ready")


def ok_answers(metrics_url: str, method: str = "Recommend") -> float:
    """The server's count of calls of `method` answered OK, from its /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "recsvc_requests_total"
        and sample.labels == {"code": "OK", "method": method}
    )


def wait_serving(target: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"{target} never became SERVING")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process, split into anonymous (its own) and file-backed (shared
    page cache, e.g. the memory-mapped model)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def server_pids(process: subprocess.Popen[str], workers: int) -> list[int]:
    if workers == 1:
        return [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    pids = [int(c) for c in children]
    # spawn starts a resource tracker beside the workers; keep processes that serve.
    return [p for p in pids if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]


def read_through(directory: Path) -> None:
    """Reads every file of the version once, so that the page cache holds the memory-mapped
    model as it does on a server under steady traffic. (The development VM's kernel reclaims
    idle page cache within seconds, and a cold 1.3 GB model pays disk faults per request.)"""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def load(spec: LoadSpec, workload: Workload) -> dict[str, object]:
    report = run_load(spec, workload)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="recsvc serve --config")
    parser.add_argument("--label", default="model")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    # The open-loop latency run's client (recsvc loadtest's engine).
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client", choices=("h2load", "python"), default="h2load")
    parser.add_argument("--users", type=int, default=4, help="h2load: distinct requests")
    parser.add_argument(
        "--open-loop-users", type=int, default=8, help="h2load's open loop: distinct requests"
    )
    parser.add_argument(
        "--method",
        default="Recommend",
        choices=[m for m in MIXABLE if m != "RecordEvents"],
        help="the RPC to load (the no-op answers each with a response of the same size)",
    )
    args = parser.parse_args()
    if args.client == "h2load" and H2LOAD is None:
        parser.error("h2load is not installed: apt-get install nghttp2-client, or --client python")

    workload = Workload.from_model_dir(args.model_dir)
    version = ModelStore(args.model_dir).current_version()
    assert version is not None
    on_disk = sum(
        f.stat().st_size for f in ModelStore(args.model_dir).path(version).rglob("*") if f.is_file()
    )
    host = "127.0.0.1"
    mix = {args.method: 1.0}

    def spec(target: str, rate: float = 0.0) -> LoadSpec:
        return LoadSpec(
            target=target,
            duration_s=args.duration,
            concurrency=args.concurrency,
            rate=rate,
            channels=args.channels,
            processes=args.client_processes,
            mix=mix,
            k=args.k,
        )

    # The same calls for both servers: Zipf-drawn users of the model (5% unknown), k items.
    payloads = [
        message.SerializeToString()  # type: ignore[attr-defined]
        for _, message in Requests(spec("unused"), workload, seed=1).draw(20_000)
    ]
    method = f"/recsvc.v1.Recommender/{args.method}"
    drive: Callable[[str, float, list[int]], Run]
    distinct = list(dict.fromkeys(payloads))  # h2load's processes: one request each
    if args.client == "h2load":

        def drive(target: str, seconds: float, pids: list[int]) -> Run:
            return h2load_closed_loop(target, method, distinct[: args.users], seconds, pids)
    else:

        def drive(target: str, seconds: float, pids: list[int]) -> Run:
            return closed_loop(target, method, payloads, seconds, pids)

    noop_runs, ours_runs = [], []
    memory: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        port = free_port(host)
        noop, _ = start(
            [RECSVC, "noop-server", "--port", str(port), "-k", str(args.k)],
            "listening on",
        )
        try:
            drive(f"{host}:{port}", 2.0, [noop.pid])  # warm-up
            noop_runs.append(drive(f"{host}:{port}", args.duration, [noop.pid]))
        finally:
            stop(noop)
        port = free_port(host)
        command = [
            RECSVC, "serve", "--model-dir", str(args.model_dir), "--port", str(port),
            "--workers", str(args.workers), "--no-access-log", "--metrics-port", "0",
            "--event-store", f"sqlite:///{ROOT / 'var' / 'bench' / f'serving-{args.label}.db'}",
        ]  # fmt: skip
        if args.config:
            command += ["--config", str(args.config)]
        read_through(ModelStore(args.model_dir).path(version))
        ours, printed = start(command, "listening on")
        try:
            wait_serving(f"{host}:{port}")
            pids = server_pids(ours, args.workers)
            drive(f"{host}:{port}", 2.0, pids)  # warm-up
            # One worker's count: with several, each has its own /metrics.
            metrics_url = next(line.split()[-1] for line in printed if "metrics on" in line)
            answered = ok_answers(metrics_url, args.method)
            run = drive(f"{host}:{port}", args.duration, pids)
            if args.workers == 1:
                # Calls answered with an error status: h2load counts them as successes.
                run.failed += max(
                    0, run.calls - round(ok_answers(metrics_url, args.method) - answered)
                )
            ours_runs.append(run)
            if repeat == args.repeats - 1:
                half = statistics.median(r.rate for r in ours_runs) / 2
                if args.client == "h2load":
                    steady = distinct[: args.open_loop_users]
                    open_loop = h2load_open_loop(
                        f"{host}:{port}", method, steady, half, args.duration
                    )
                else:
                    open_loop = load(spec(f"{host}:{port}", rate=half), workload)
                memory = [memory_mib(pid) for pid in server_pids(ours, args.workers)]
        finally:
            stop(ours)
        print(
            f"repeat {repeat + 1}: no-op {json.dumps(noop_runs[-1].as_dict())}\n"
            f"          recsvc {json.dumps(ours_runs[-1].as_dict())}",
            file=sys.stderr,
        )

    noop_rates = [r.rate for r in noop_runs]
    ours_rates = [r.rate for r in ours_runs]
    ratios = [o / n for o, n in zip(ours_rates, noop_rates, strict=True)]
    result = {
        "label": args.label,
        "method": args.method,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
        "model_version": version,
        "model_on_disk_mib": round(on_disk / 2**20, 1),
        "workers": args.workers,
        "client": (
            f"h2load: {args.users} users, {STREAMS} calls in flight each"
            if args.client == "h2load"
            else "bench/lightclient.py: 64 in flight, 4 channels, requests serialised ahead"
        ),
        "duration_s": args.duration,
        "k": args.k,
        "noop_rates": [round(r, 1) for r in noop_rates],
        "recsvc_rates": [round(r, 1) for r in ours_rates],
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(ours_rates) / statistics.median(noop_rates), 3),
        "cpu_us_per_call": {
            side: {
                "client": round(statistics.median(r.client_us_per_call for r in runs), 1),
                "server": round(statistics.median(r.server_us_per_call for r in runs), 1),
            }
            for side, runs in (("noop", noop_runs), ("recsvc", ours_runs))
        },
        "failed_calls": sum(r.failed for r in (*noop_runs, *ours_runs)),
        "open_loop": open_loop
        if args.client == "h2load"
        else {
            "target_rate": open_loop["spec"]["rate"],  # type: ignore[index]
            "achieved_rate": open_loop["achieved_rate"],
            "latency_ms": open_loop["latency_ms"],
            "codes": open_loop["codes"],
            "dropped": open_loop["dropped"],
        },
        "memory_mib": memory,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
