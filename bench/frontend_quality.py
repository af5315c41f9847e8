"""What the frontend RPCs serve, measured from outside on real logs (issue 19).

For each dataset: the training period (bench/quality.py's split) is trained with the shipped
defaults by `recsvc train`, two `recsvc serve` processes serve it (one following anonymous
visits with the session model, one by folding them into the trained model), and the test period
is replayed against them over gRPC:

- RankItems (online-retail, tmall): per test user, their real test-period purchases (up to 10)
  mixed with 90 items drawn from the catalogue, in random order; NDCG@10 of RankItems' order,
  of the popularity order and of the given order.
- FrequentlyBoughtTogether (online-retail): held-out invoices (a customer's purchases at one
  moment); given one item of the basket, hit rate@10 (any other item of the basket in the ten)
  and recall@10 of the others, against SimilarItems and PopularItems.
- Sessions (taobao, tmall): the test period cut into visits as training cuts them; at sampled
  points an anonymous visitor sends the visit's clicks so far as context items; hit rate@10 and
  MRR@10 of the next click, session model against the fold-in and popularity.

    .venv/bin/python bench/frontend_quality.py [--datasets online-retail tmall taobao]

Skips, saying so, where ../shared/data is absent. Prints a table and writes JSON
(var/bench/frontend-quality.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pyarrow.compute as pc
from quality import RECSVC, SHARED, SPLITS, _listening_on, prepare, train_period
from serving import wait_serving

from recsvc.config import Config
from recsvc.training.evaluate import Holdout, list_ndcg
from recsvc.training.itemgraphs import visits
from recsvc.training.progress import Progress
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
K = 10
SAMPLED = 90  # RankItems: catalogue items mixed with the user's real purchases
MAX_RELEVANT = 10
MAX_USERS = 1500
MAX_BASKETS = 2000
MAX_POINTS = 2000
TASKS = {
    "online-retail": ("rank", "together"),
    "tmall": ("rank", "sessions"),
    "taobao": ("sessions",),
}


@contextmanager
def serving(models: Path, session_scoring: str, work: Path):
    config = work / f"serve-{session_scoring}.toml"
    config.write_text(f'[serving]\nsession_scoring = "{session_scoring}"\n')
    server = subprocess.Popen(
        [RECSVC, "serve", "--model-dir", str(models), "--port", "0", "--config", str(config),
         "--event-store", f"sqlite:///{work / f'events-{session_scoring}.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        target = _listening_on(server)
        wait_serving(target)
        with grpc.insecure_channel(target) as channel:
            yield pb_grpc.RecommenderStub(channel)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def train_job(outer: Holdout, data_dir: Path, progress: Progress) -> tuple[Path, dict]:
    result, seconds = train_period(outer, data_dir, data_dir / "frontend", progress)
    manifest = result.manifest
    return result.model_dir, {
        "job_s": round(seconds, 1),
        "model": manifest["model_type"],
        "session_model_chosen": manifest["serving"]["session_model"],
        "session_choice": manifest["evaluation"].get("sessions", {}).get("evidence"),
        "item_graphs": manifest["item_graphs"],
    }


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {
        "mean": round(float(array.mean()), 4) if array.size else None,
        "se": round(float(array.std() / np.sqrt(max(array.size, 1))), 4),
    }


def rank_items(stub, outer: Holdout, rng: np.random.Generator, progress: Progress) -> dict:
    test = outer.test_events
    bought = test.filter(pc.equal(test.column("event"), "purchase"))
    train_items = outer.train.item_ids
    popularity = np.bincount(
        np.searchsorted(train_items, outer.train_events.column("item_id").to_numpy().astype(str)),
        minlength=train_items.size,
    )
    by_user: dict[str, set[str]] = {}
    known = set(train_items.tolist())
    train_users = set(outer.train.user_ids.tolist())
    for user, item in zip(
        bought.column("user_id").to_pylist(), bought.column("item_id").to_pylist(), strict=True
    ):
        if item in known and user in train_users:
            by_user.setdefault(user, set()).add(item)
    users = sorted(by_user)
    if len(users) > MAX_USERS:
        users = sorted(rng.choice(users, MAX_USERS, replace=False).tolist())
    scores: dict[str, list[float]] = {"RankItems": [], "popularity order": [], "given order": []}
    with progress.stage(f"RankItems for {len(users):,} test users") as tally:
        for user in users:
            relevant = sorted(by_user[user])[:MAX_RELEVANT]
            others = rng.choice(train_items.size, SAMPLED + len(relevant), replace=False)
            sampled = [i for i in train_items[others].tolist() if i not in by_user[user]][:SAMPLED]
            given = list(rng.permutation(relevant + sampled))
            ranked = [i.item_id for i in stub.RankItems(
                pb.RankItemsRequest(user_id=user, item_ids=given), timeout=30).items]  # fmt: skip
            position = {item: n for n, item in enumerate(given)}
            by_popularity = sorted(
                given, key=lambda i: (-popularity[np.searchsorted(train_items, i)], position[i])
            )
            truth = np.arange(len(relevant))  # judged in the candidate-id space below
            for name, order in (("RankItems", ranked), ("popularity order", by_popularity),
                                ("given order", given)):  # fmt: skip
                ids = [relevant.index(i) if i in relevant else -1 for i in order[:K]]
                scores[name].append(list_ndcg(np.array(ids), truth, K))
        tally.count, tally.unit = len(users), "users"
    return {"users": len(users)} | {f"ndcg@10 {n}": _summary(v) for n, v in scores.items()}


def bought_together(stub, outer: Holdout, rng: np.random.Generator, progress: Progress) -> dict:
    test = outer.test_events
    bought = test.filter(pc.equal(test.column("event"), "purchase"))
    known = set(outer.train.item_ids.tolist())
    baskets: dict[tuple[str, int], list[str]] = {}
    for user, item, stamp in zip(
        bought.column("user_id").to_pylist(),
        bought.column("item_id").to_pylist(),
        bought.column("timestamp_ms").to_pylist(),
        strict=True,
    ):
        if item in known:
            basket = baskets.setdefault((user, stamp), [])
            if item not in basket:
                basket.append(item)
    usable = [b for b in baskets.values() if len(b) >= 2]
    if len(usable) > MAX_BASKETS:
        usable = [usable[i] for i in sorted(rng.choice(len(usable), MAX_BASKETS, replace=False))]
    popular = [i.item_id for i in stub.PopularItems(pb.PopularItemsRequest(k=K + 1)).items]
    hits: dict[str, list[float]] = {"FrequentlyBoughtTogether": [], "SimilarItems": [],
                                    "PopularItems": []}  # fmt: skip
    recall: dict[str, list[float]] = {name: [] for name in hits}
    sources: dict[str, int] = {}
    with progress.stage(f"bought together for {len(usable):,} held-out baskets") as tally:
        for basket in usable:
            given = basket[int(rng.integers(len(basket)))]
            others = set(basket) - {given}
            together = stub.FrequentlyBoughtTogether(
                pb.FrequentlyBoughtTogetherRequest(item_ids=[given], k=K), timeout=30
            )
            sources[together.strategy] = sources.get(together.strategy, 0) + 1
            similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id=given, k=K), timeout=30)
            lists = {
                "FrequentlyBoughtTogether": [i.item_id for i in together.items],
                "SimilarItems": [i.item_id for i in similar.items],
                "PopularItems": [i for i in popular if i != given][:K],
            }
            for name, listed in lists.items():
                found = len(others & set(listed))
                hits[name].append(float(found > 0))
                recall[name].append(found / min(len(others), K))
        tally.count, tally.unit = len(usable), "baskets"
    return (
        {"baskets": len(usable), "served_from": sources}
        | {f"hit@10 {n}": _summary(v) for n, v in hits.items()}
        | {f"recall@10 {n}": _summary(v) for n, v in recall.items()}
    )


def next_clicks(outer: Holdout, rng: np.random.Generator) -> list[tuple[list[str], str]]:
    item_ids = outer.train.item_ids
    items, session = visits(outer.test_events, item_ids, Config().model.sessions)
    later = np.flatnonzero(np.r_[False, session[1:] == session[:-1]])
    if later.size > MAX_POINTS:
        later = np.sort(rng.choice(later, MAX_POINTS, replace=False))
    starts = np.searchsorted(session, session[later])
    return [
        (item_ids[items[max(start, at - 10) : at]].tolist(), str(item_ids[items[at]]))
        for at, start in zip(later.tolist(), starts.tolist(), strict=True)
    ]


def sessions(stubs: dict, outer: Holdout, rng: np.random.Generator, progress: Progress) -> dict:
    points = next_clicks(outer, rng)
    popular = [i.item_id for i in stubs["session"].PopularItems(pb.PopularItemsRequest(k=K)).items]
    hit: dict[str, list[float]] = {"session model": [], "fold-in": [], "popularity": []}
    rr: dict[str, list[float]] = {name: [] for name in hit}
    strategies: dict[str, int] = {}
    with progress.stage(f"next click of {len(points):,} held-out visit points") as tally:
        for n, (clicks, answer) in enumerate(points):
            lists = {"popularity": popular}
            for name, way in (("session model", "session"), ("fold-in", "model")):
                reply = stubs[way].Recommend(
                    pb.RecommendRequest(user_id=f"visit-{n}", k=K, context_item_ids=clicks),
                    timeout=30,
                )
                strategies[f"{name}: {reply.strategy}"] = (
                    strategies.get(f"{name}: {reply.strategy}", 0) + 1
                )
                lists[name] = [i.item_id for i in reply.items]
            for name, listed in lists.items():
                rank = listed.index(answer) + 1 if answer in listed else 0
                hit[name].append(float(rank > 0))
                rr[name].append(1.0 / rank if rank else 0.0)
        tally.count, tally.unit = 2 * len(points), "lists"
    return (
        {"points": len(points), "served_as": strategies}
        | {f"hit@10 {n}": _summary(v) for n, v in hit.items()}
        | {f"mrr@10 {n}": _summary(v) for n, v in rr.items()}
    )


def run_dataset(name: str, work: Path, progress: Progress) -> dict:
    outer, _ = prepare(name, work, Config(), progress)
    data_dir = work / name
    models, job = train_job(outer, data_dir, progress)
    rng = np.random.default_rng(7)
    result: dict = {"dataset": name, "split": SPLITS[name][2], "training": job}
    tasks = TASKS[name]
    with (
        serving(models, "session", data_dir) as by_session,
        serving(models, "model", data_dir) as by_model,
    ):
        if "rank" in tasks:
            result["rank_items"] = rank_items(by_session, outer, rng, progress)
        if "together" in tasks:
            result["bought_together"] = bought_together(by_session, outer, rng, progress)
        if "sessions" in tasks:
            stubs = {"session": by_session, "model": by_model}
            result["sessions"] = sessions(stubs, outer, rng, progress)
    return result


def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(f"\n## {r['dataset']} ({r['split']}; job {r['training']['job_s']} s, "
                     f"session model chosen: {r['training']['session_model_chosen']})")  # fmt: skip
        for task in ("rank_items", "bought_together", "sessions"):
            if task in r:
                lines.append(f"{task}:")
                for key, value in r[task].items():
                    if isinstance(value, dict) and "mean" in value:
                        lines.append(f"  {key:<40} {value['mean']:.4f} ± {value['se']:.4f}")
                    else:
                        lines.append(f"  {key:<40} {value}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "quality")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "var" / "bench" / "frontend-quality.json"
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is not there (the real datasets live beside the checkout)")
        return
    progress = Progress("frontend", sys.stderr)
    results = [run_dataset(name, args.work, progress) for name in args.datasets]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.node(), "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
