"""What recsvc's own Recommend handler costs per call, without gRPC: request bytes in, response
bytes out, through the servicer's wire handler and the serving core, in one process.

The server's CPU per call (bench/serving.py) is grpc-aio's work plus this; the no-op server pays
the first part too. Four cases, each a median of `--repeats` passes:

- hit: one request asked again (a page reload, pagination): parsed and listed once, after that
  only the cache lookups, the freshness check and the call's own recommendation id;
- first call: each known user once (parse, stage, score, rules, serialise);
- fresh events: each of those users again after one new event (the list is recomputed with it);
- stranger: ids the model has never seen (the shared anonymous list).

    .venv/bin/python bench/handler_cost.py --model-dir var/models
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from recsvc.config import load_config
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.service.servicer import RecommenderServicer
from recsvc.serving.core import RecommenderCore
from recsvc.serving.values import EventInput
from recsvc.v1 import recommender_pb2 as pb


class NoMetadata:
    """The part of a gRPC context the handler reads (with an experiment on): no metadata."""

    def invocation_metadata(self) -> tuple[()]:
        return ()


def answer(servicer: RecommenderServicer, request: bytes) -> bytes:
    """The wire handler run to completion outside an event loop (it never waits on a hit)."""
    coroutine = servicer.recommend_wire(request, NoMetadata())  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return bytes(done.value)
    raise RuntimeError("the handler waited")


def per_call_us(servicer: RecommenderServicer, requests: list[bytes]) -> float:
    started = time.perf_counter()
    for request in requests:
        answer(servicer, request)
    return 1e6 * (time.perf_counter() - started) / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    config = load_config(args.config).serving
    store = ModelStore(args.model_dir)
    version = store.current_version()
    assert version is not None, f"no model published in {args.model_dir}"
    published = PublishedModel.load(store.path(version))
    known = [str(u) for u in published.user_ids[: args.users]]
    item = str(published.item_ids[0])
    # The newest event the model knows: fresh events must come after it to count.
    now_ms = int(published.manifest.get("data_end_ms", 0)) + 1000

    def request(user: str) -> bytes:
        return pb.RecommendRequest(user_id=user, k=args.k).SerializeToString()

    results: dict[str, list[float]] = {
        case: [] for case in ("hit", "first call", "fresh events", "stranger")
    }
    for repeat in range(args.repeats):
        core = RecommenderCore(config)
        core.swap(published)
        servicer = RecommenderServicer(core)
        one = request(known[0])
        answer(servicer, one)
        results["hit"].append(per_call_us(servicer, [one] * 5000))
        requests = [request(u) for u in known]
        results["first call"].append(per_call_us(servicer, requests))
        for offset, user in enumerate(known):
            core.record_events([EventInput(user, item, "view", now_ms + repeat * 10_000 + offset)])
        results["fresh events"].append(per_call_us(servicer, requests))
        strangers = [request(f"stranger-{repeat}-{n}") for n in range(len(known))]
        results["stranger"].append(per_call_us(servicer, strangers))
    summary = {
        "model": f"{published.manifest.get('model_type')} {version}",
        "items": int(published.item_ids.size),
        "users": len(known),
        "us_per_call_median": {case: round(statistics.median(v), 1) for case, v in results.items()},
        "us_per_call_runs": {case: [round(x, 1) for x in v] for case, v in results.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
