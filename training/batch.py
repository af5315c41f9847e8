"""`recsvc batch-recommend`: every user's list, to Parquet or CSV, for e-mail campaigns and caches.

Each list is the one Recommend serves (same model, same `[serving]` config: filters, boosts, the
per-category cap, lifecycle strategies), computed by the same ranking policy, without an
experiment (a campaign list is no experiment's impression). Users deleted (ForgetUser) since
the model was trained are left out: the servers' event store says who they are.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsvc.config import ServingConfig
from recsvc.published import PublishedModel
from recsvc.serving.core import RecommenderCore, published_core
from recsvc.training.progress import Progress
from recsvc.training.tables import TableWriter

PROGRESS_SECONDS = 5.0


def batch_recommend(
    model_dir: Path,
    out: Path,
    k: int = 10,
    limit: int = 0,
    batch: int = 1024,
    exclude_purchased: bool = False,
    progress: Progress | None = None,
    event_store: str = "",
    config: ServingConfig | None = None,
) -> dict[str, float]:
    """Writes user_id, item_ids, scores for the first `limit` users (all when 0), leaving out
    users forgotten since the model was trained."""
    progress = progress or Progress("batch")
    # Every list is computed once: the cache would only hold what is written already.
    config = dataclasses.replace(config or ServingConfig(), experiments=[], cache_size=0)
    with published_core(model_dir, config, event_store, existing=True) as core:
        model = core.serving.published
        return _write_lists(core, model, out, k, limit, batch, exclude_purchased, progress)


def _write_lists(
    core: RecommenderCore,
    model: PublishedModel,
    out: Path,
    k: int,
    limit: int,
    batch: int,
    exclude_purchased: bool,
    progress: Progress,
) -> dict[str, float]:
    n_users = model.user_ids.size if not limit else min(limit, model.user_ids.size)
    started = last = time.perf_counter()
    done = left_out = 0
    with TableWriter(out) as writer:
        for start in range(0, n_users, batch):
            users = model.user_ids[start : start + batch].tolist()
            # The core took the store's deletions in when it opened it.
            kept = [u for u in users if not core.forgotten_since_training(u)]
            lists = [core.recommend(u, k, exclude_purchased=exclude_purchased).items for u in kept]
            writer.write(
                pa.table(
                    {
                        "user_id": pa.array(kept, pa.string()),
                        "item_ids": pa.array(
                            [[i.item_id for i in items] for items in lists], pa.list_(pa.string())
                        ),
                        "scores": pa.array(
                            [np.float32([i.score for i in items]).tolist() for items in lists],
                            pa.list_(pa.float32()),
                        ),
                    }
                )
            )
            done += len(users)
            left_out += len(users) - len(kept)
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                progress.say(f"{done:,}/{n_users:,} users, {done / (now - started):,.0f} users/s")
    seconds = time.perf_counter() - started
    rate = done / seconds if seconds else 0.0
    progress.say(
        f"wrote {done - left_out:,} users' top {k} to {out} in {seconds:.1f} s: "
        f"{rate:,.0f} users/s" + (f"; left out {left_out:,} forgotten users" if left_out else "")
    )
    return {
        "users": done - left_out,
        "forgotten": left_out,
        "seconds": seconds,
        "users_per_s": rate,
    }
