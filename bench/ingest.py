"""Event ingest: RecordEvents against a no-op server, durable stores, a light client, one run.

Alternates, `--repeats` times, the same closed-loop load (bench/lightclient.py: requests
serialised in advance, 64 calls in flight on 4 channels) against:
- the no-op server (answers RecordEvents at once, stores nothing), single-event calls;
- `recsvc serve` on the embedded SQLite store (synchronous=FULL: fsynced before the answer),
  single-event calls, then calls of 100 events;
- the same on Redis (appendonly, appendfsync always: Redis fsyncs before it replies), when
  redis-server is installed.
Reports medians, recsvc's single-event rate as a ratio of the no-op's, events/s in calls of 100,
and the client's and server's CPU per call, and checks that the store holds every event that
was acknowledged.

    .venv/bin/python bench/ingest.py --model-dir var/models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightclient import Run, closed_loop
from serving import RECSVC, start, stop, wait_serving

from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.service.workers import free_port
from recsvc.v1 import recommender_pb2 as pb

METHOD = "/recsvc.v1.Recommender/RecordEvents"
BATCH = 100


def payloads(item_ids: list[str], per_call: int, n: int, tag: str) -> list[bytes]:
    """`n` distinct serialised requests of `per_call` events each, on real item ids."""
    out = []
    for call in range(n):
        events = [
            pb.Event(
                user_id=f"bench-{tag}-{call % 5000}",
                item_id=item_ids[(call * per_call + e) % len(item_ids)],
                event="view",
            )
            for e in range(per_call)
        ]
        out.append(pb.RecordEventsRequest(events=events).SerializeToString())
    return out


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not installed: Redis figures left out", file=sys.stderr)
        return None
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0?prefix=bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    store = ModelStore(args.model_dir)
    version = store.current_version()
    if version is None:
        raise SystemExit(f"no model in {args.model_dir}: run `make demo` or `recsvc train` first")
    item_ids = [str(i) for i in PublishedModel.load(store.path(version)).item_ids[:5000]]

    work = Path(tempfile.mkdtemp(prefix="recsvc-ingest-", dir=args.model_dir.resolve().parent))
    servers: dict[str, tuple[subprocess.Popen[str], int, list[int]]] = {}
    redis = None
    try:
        noop_port = free_port("127.0.0.1")
        noop = start([RECSVC, "noop-server", "--port", str(noop_port)], "listening on")
        servers["noop"] = (noop, noop_port, [noop.pid])
        stores = {"sqlite": f"sqlite:///{work / 'events.db'}"}
        redis = start_redis(work)
        if redis is not None:
            stores["redis"] = redis[1]
        for name, url in stores.items():
            port = free_port("127.0.0.1")
            process = start(
                [RECSVC, "serve", "--model-dir", str(args.model_dir), "--port", str(port),
                 "--event-store", url, "--no-access-log"],
                "listening on",
            )  # fmt: skip
            wait_serving(f"127.0.0.1:{port}")
            # Redis's own CPU counts as the server's: it is part of what answers the call.
            pids = [process.pid] + ([redis[0].pid] if name == "redis" and redis else [])
            servers[name] = (process, port, pids)
        runs: dict[str, list[Run]] = {}
        acknowledged: dict[str, int] = dict.fromkeys(stores, 0)
        for repeat in range(args.repeats):
            single = payloads(item_ids, 1, 4000, f"s{repeat}")
            batch = payloads(item_ids, BATCH, 200, f"b{repeat}")
            plan = [("noop", "noop single", single, 1)]
            for name in stores:
                plan += [
                    (name, f"{name} single", single, 1),
                    (name, f"{name} x{BATCH}", batch, BATCH),
                ]
            for server, label, requests, per_call in plan:
                _, port, pids = servers[server]
                run = closed_loop(f"127.0.0.1:{port}", METHOD, requests, args.seconds, pids)
                runs.setdefault(label, []).append(run)
                if server in acknowledged:
                    acknowledged[server] += run.calls * per_call
                print(f"repeat {repeat + 1} {label:<14} {json.dumps(run.as_dict())}", flush=True)
    finally:
        for process, _, _ in servers.values():
            stop(process)
        if redis is not None:
            redis[0].terminate()
            redis[0].wait(timeout=30)

    with sqlite3.connect(work / "events.db") as db:
        stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, object] = {"machine": platform.node(), "cpus": len(os.sched_getaffinity(0))}
    print(f"\nmedians of {args.repeats} runs of {args.seconds:g} s each")
    print(f"{'':<16}{'calls/s':>10}{'events/s':>10}{'client us/call':>16}{'server us/call':>16}")
    for label, label_runs in runs.items():
        per_call = BATCH if label.endswith(f"x{BATCH}") else 1
        rate = statistics.median(r.rate for r in label_runs)
        figures = {
            "calls_per_s": round(rate, 1),
            "events_per_s": round(rate * per_call, 1),
            "client_cpu_us_per_call": round(
                statistics.median(r.client_us_per_call for r in label_runs), 1
            ),
            "server_cpu_us_per_call": round(
                statistics.median(r.server_us_per_call for r in label_runs), 1
            ),
            "failed": sum(r.failed for r in label_runs),
        }
        summary[label] = figures
        print(
            f"{label:<16}{figures['calls_per_s']:>10,.0f}{figures['events_per_s']:>10,.0f}"
            f"{figures['client_cpu_us_per_call']:>16,.0f}{figures['server_cpu_us_per_call']:>16,.0f}"
        )
    noop_runs = runs["noop single"]
    for name in stores:
        ratios = [r.rate / n.rate for r, n in zip(runs[f"{name} single"], noop_runs, strict=True)]
        summary[f"{name} single / noop"] = round(statistics.median(ratios), 3)
        median = statistics.median(ratios)
        print(f"{name} single-event calls / no-op, same repeat: median {median:.2f}x")
    print(f"sqlite: {acknowledged['sqlite']:,} events acknowledged, {stored:,} stored")
    summary["sqlite acknowledged"], summary["sqlite stored"] = acknowledged["sqlite"], stored
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
