"""`recsvc batch-recommend`: top-k for every user of a published model, to Parquet or CSV.

For e-mail campaigns and caches. Users are scored in batches: with the approximate index when the
version has one (faiss searches a batch on every core), otherwise exactly, a batch of users
against the whole catalogue at once. Items the catalogue marks unavailable are left out, so
are items the user already touched where the model is served that way (serving.exclude_seen),
and items the user bought with --exclude-purchased. Users deleted (ForgetUser) since the model
was trained are left out: the server's event store says who they are.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsvc.events import open_event_store
from recsvc.models.base import mask_rows, top_k
from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.training.progress import Progress
from recsvc.training.tables import TableWriter

PROGRESS_SECONDS = 5.0


def _exclusions(model: PublishedModel, users: np.ndarray, exclude_purchased: bool) -> sp.csr_matrix:
    n_items = model.item_ids.size
    parts = []
    if model.exclude_seen:
        parts.append((model.history_indptr, model.history_indices))
    if exclude_purchased:
        parts.append((model.purchased_indptr, model.purchased_indices))
    rows, cols = [], []
    for indptr, indices in parts:
        for row, user in enumerate(users.tolist()):
            items = np.asarray(indices[indptr[user] : indptr[user + 1]])
            rows.append(np.full(items.size, row))
            cols.append(items)
    if not rows:
        return sp.csr_matrix((users.size, n_items), dtype=np.float32)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(users.size, n_items))


def forgotten_since(model_dir: Path, event_store: str, since_ms: int) -> np.ndarray:
    """Users deleted since `since_ms`, from `event_store` or, without one, the store `recsvc
    serve` keeps beside the models (when there is one: this command creates no store)."""
    default = model_dir / "events.db"
    url = event_store or (f"sqlite:///{default.resolve()}" if default.exists() else "")
    if not url:
        return np.empty(0, dtype=str)
    store = open_event_store(url, existing=True)
    try:
        forgotten = store.forgotten_users()
    finally:
        store.close()
    return np.array(sorted(u for u, when in forgotten.items() if when >= since_ms), dtype=str)


def batch_recommend(
    model_dir: Path,
    out: Path,
    k: int = 10,
    limit: int = 0,
    batch: int = 1024,
    exclude_purchased: bool = False,
    progress: Progress | None = None,
    event_store: str = "",
) -> dict[str, float]:
    """Writes user_id, item_ids, scores for the first `limit` users (all when 0), leaving out
    users forgotten since the model was trained."""
    progress = progress or Progress("batch")
    model = PublishedModel.load(ModelStore(model_dir).current_path())
    forgotten = forgotten_since(model_dir, event_store, int(model.manifest.get("started_at_ms", 0)))
    n_users = model.user_ids.size if not limit else min(limit, model.user_ids.size)
    available = np.asarray(model.items.available, dtype=bool)
    started = last = time.perf_counter()
    done = left_out = 0
    with TableWriter(out) as writer:
        for start in range(0, n_users, batch):
            users = np.arange(start, min(start + batch, n_users))
            excluded = _exclusions(model, users, exclude_purchased)
            widest = int(np.diff(excluded.indptr).max(initial=0))
            if model.ann is not None:
                vectors = np.asarray(model.model.user_factors[users])  # type: ignore[attr-defined]
                ids, scores = model.ann.search(vectors, 2 * k + widest)
                keep = (ids >= 0) & available[np.maximum(ids, 0)]
                for r in np.flatnonzero(np.diff(excluded.indptr)):
                    row = excluded.indices[excluded.indptr[r] : excluded.indptr[r + 1]]
                    keep[r] &= ~np.isin(ids[r], row)
                order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
                ids = np.where(
                    np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1
                )
                scores = np.take_along_axis(scores, order, 1)
            else:
                scores = model.model.score(users)
                scores[:, ~available] = -np.inf
                mask_rows(scores, excluded)
                ids, scores = top_k(scores, k)
            item_lists = [model.item_ids[row[row >= 0]].tolist() for row in ids]
            score_lists = [
                s[r >= 0].astype(np.float32).tolist() for s, r in zip(scores, ids, strict=True)
            ]
            table = pa.table(
                {
                    "user_id": pa.array(model.user_ids[users].tolist(), pa.string()),
                    "item_ids": pa.array(item_lists, pa.list_(pa.string())),
                    "scores": pa.array(score_lists, pa.list_(pa.float32())),
                }
            )
            if forgotten.size:
                kept = ~np.isin(model.user_ids[users], forgotten)
                table = table.filter(pa.array(kept))
                left_out += int((~kept).sum())
            writer.write(table)
            done += users.size
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                progress.say(f"{done:,}/{n_users:,} users, {done / (now - started):,.0f} users/s")
    seconds = time.perf_counter() - started
    rate = done / seconds if seconds else 0.0
    progress.say(
        f"wrote {done - left_out:,} users' top {k} to {out} in {seconds:.1f} s: "
        f"{rate:,.0f} users/s ({'approximate index' if model.ann is not None else 'exact scoring'})"
        + (f"; left out {left_out:,} forgotten users" if left_out else "")
    )
    return {
        "users": done - left_out,
        "forgotten": left_out,
        "seconds": seconds,
        "users_per_s": rate,
    }
