"""What each fault costs, under load: calls failed, events kept.

Each scenario runs `recsvc serve` on a published model with a steady mixed load (Recommend and
single-event RecordEvents calls from a few client threads, every event with its own user id),
applies one fault in the middle, and reports per RPC the calls answered OK and failed (by
status code), then counts the events the store holds against those acknowledged.

- `worker-kill`: `--workers 2`, SIGKILL one worker; how long until its replacement serves.
- `redis-restart`: the store on a real redis-server (appendonly, fsync always), stopped for
  3 s and started again.
- `hot-swap`: a new version published under load (the watcher swaps it in).
- `corrupt-version`: a version whose model file is garbage made current; it must be refused.

    .venv/bin/python bench/faults.py --model-dir var/models [--scenarios worker-kill,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from serving import RECSVC, start, stop, wait_serving

from recsvc.events import open_event_store
from recsvc.modelstore import ModelStore
from recsvc.service.workers import free_port
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

SCENARIOS = ("worker-kill", "redis-restart", "hot-swap", "corrupt-version")


class Load:
    """Client threads calling Recommend and RecordEvents until stopped, tallying outcomes."""

    def __init__(self, target: str, threads: int = 4) -> None:
        self.target = target
        self.codes: dict[str, Counter[str]] = {"Recommend": Counter(), "RecordEvents": Counter()}
        self.acknowledged: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, index: int) -> None:
        channel = grpc.insecure_channel(
            self.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = pb_grpc.RecommenderStub(channel)
        n = 0
        while not self._stop.is_set():
            n += 1
            user = f"fault-{index}-{n}"
            try:
                if n % 4 == 0:
                    event = pb.Event(user_id=user, item_id="i0001", event="view")
                    stub.RecordEvents(pb.RecordEventsRequest(events=[event]), timeout=5)
                    with self._lock:
                        self.acknowledged.add(user)
                    self._tally("RecordEvents", "OK")
                else:
                    stub.Recommend(pb.RecommendRequest(user_id=f"u{n % 2000:04d}", k=10), timeout=5)
                    self._tally("Recommend", "OK")
            except grpc.RpcError as error:
                self._tally("RecordEvents" if n % 4 == 0 else "Recommend", error.code().name)
            time.sleep(0.002)
        channel.close()

    def _tally(self, method: str, code: str) -> None:
        with self._lock:
            self.codes[method][code] += 1


def serve(model_dir: Path, store: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port("127.0.0.1")
    process = start(
        [RECSVC, "serve", "--model-dir", str(model_dir), "--port", str(port),
         "--event-store", store, "--no-access-log", "--reload-interval", "0.5", *extra],
        "listening on",
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    wait_serving(target)
    return process, target


def stored_users(store_url: str) -> set[str]:
    store = open_event_store(store_url)
    users = set(store.read_events().column("user_id").to_pylist())
    store.close()
    return {u for u in users if u.startswith("fault-")}


def outcome(name: str, load: Load, store_url: str, **facts: object) -> dict[str, object]:
    stored = stored_users(store_url)
    result = {
        "scenario": name,
        "Recommend": dict(load.codes["Recommend"]),
        "RecordEvents": dict(load.codes["RecordEvents"]),
        "events_acknowledged": len(load.acknowledged),
        "acknowledged_and_lost": len(load.acknowledged - stored),
        "stored_though_not_acknowledged": len(stored - load.acknowledged),
        **facts,
    }
    print(json.dumps(result), flush=True)
    return result


def worker_kill(model_dir: Path, work: Path) -> dict[str, object]:
    url = f"sqlite:///{work / 'kill.db'}"
    process, target = serve(model_dir, url, "--workers", "2")
    try:
        with Load(target) as load:
            time.sleep(3)
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            workers = [
                int(pid)
                for pid in children.split()
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            os.kill(workers[0], signal.SIGKILL)
            killed = time.monotonic()
            while True:
                now = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
                fresh = [
                    int(p)
                    for p in now.split()
                    if int(p) not in workers
                    and b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
                ]
                if fresh:
                    break
                time.sleep(0.05)
            replaced_after = time.monotonic() - killed
            time.sleep(5)
    finally:
        stop(process)
    return outcome("worker-kill", load, url, replacement_started_after_s=round(replaced_after, 2))


def redis_restart(model_dir: Path, work: Path) -> dict[str, object] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not installed: redis-restart left out")
        return None
    port = free_port("127.0.0.1")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--dir", str(work)]  # fmt: skip
    redis = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    url = f"redis://127.0.0.1:{port}/0?prefix=faults"
    process, target = serve(model_dir, url)
    try:
        with Load(target) as load:
            time.sleep(3)
            redis.terminate()
            redis.wait()
            time.sleep(3)
            redis = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            time.sleep(5)
        result = outcome("redis-restart", load, url, redis_down_s=3)
    finally:
        stop(process)
        redis.terminate()
        redis.wait()
    return result


def hot_swap(model_dir: Path, work: Path, corrupt: bool) -> dict[str, object]:
    copy = work / ("corrupt-models" if corrupt else "swap-models")
    shutil.copytree(model_dir, copy)
    store = ModelStore(copy)
    current = store.current_version()
    assert current is not None
    url = f"sqlite:///{work / (copy.name + '.db')}"
    process, target = serve(copy, url)
    try:
        with Load(target) as load:
            time.sleep(3)
            new = f"{current[:-8]}{'deadbeef' if corrupt else 'cafef00d'}"
            shutil.copytree(store.path(current), store.versions_dir / new)
            if corrupt:
                for array in (store.versions_dir / new / "model").glob("*.npy"):
                    array.write_bytes(b"not a numpy file")
            store.set_current(new)
            time.sleep(5)
        with grpc.insecure_channel(target) as channel:
            info = pb_grpc.RecommenderStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    finally:
        stop(process)
    name = "corrupt-version" if corrupt else "hot-swap"
    return outcome(name, load, url, published=new, serving_after=info.version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, default=Path("var/bench/faults.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="recsvc-faults-") as directory:
        work = Path(directory)
        for name in args.scenarios.split(","):
            if name == "worker-kill":
                results.append(worker_kill(args.model_dir, work))
            elif name == "redis-restart":
                results.append(redis_restart(args.model_dir, work))
            elif name in ("hot-swap", "corrupt-version"):
                results.append(hot_swap(args.model_dir, work, corrupt=name == "corrupt-version"))
            else:
                raise SystemExit(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([r for r in results if r], indent=2))


if __name__ == "__main__":
    main()
