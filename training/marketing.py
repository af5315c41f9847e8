"""Offline marketing jobs on a published model: audience export and the segments report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsvc.config import ServingConfig
from recsvc.errors import BadInput, InvalidArgument
from recsvc.modelstore import ModelStore
from recsvc.profiles import STAGES
from recsvc.published import PublishedModel
from recsvc.serving.core import published_core
from recsvc.training.progress import Progress
from recsvc.training.tables import TableWriter

ROWS_PER_WRITE = 100_000


def export_audience(
    model_dir: Path,
    out: Path,
    *,
    item_id: str = "",
    category: str = "",
    segment_id: str = "",
    k: int = 0,
    exclude_buyers: bool = False,
    config: ServingConfig | None = None,
    event_store: str = "",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Writes rank, user_id, score for the audience (every eligible user when k is 0), with the
    same ranking as FindAudience. The server's event store (found as `recsvc serve` finds it)
    supplies deletions and fresh purchases, so forgotten users never appear."""

    progress = progress or Progress("audience")
    with published_core(model_dir, config or ServingConfig(), event_store, existing=True) as core:
        users = max(1, core.serving.published.profiles.size)
        wanted = k or users
        if not 1 <= wanted <= users:
            raise InvalidArgument(f"k must be between 1 and {users}, got {wanted}")
        started = time.perf_counter()
        with progress.stage("rank users") as tally:
            # An export may list every user: no per-request limit, unlike FindAudience.
            audience = core.rank_audience(
                item_id=item_id,
                category=category,
                segment_id=segment_id,
                k=wanted,
                exclude_buyers=exclude_buyers,
            )
            tally.count, tally.unit = len(audience.user_ids), "users"
        with TableWriter(out) as writer, progress.stage(f"write {out}") as tally:
            for start in range(0, len(audience.user_ids), ROWS_PER_WRITE):
                end = min(start + ROWS_PER_WRITE, len(audience.user_ids))
                writer.write(
                    pa.table(
                        {
                            "rank": pa.array(np.arange(start + 1, end + 1), pa.int64()),
                            "user_id": pa.array(audience.user_ids[start:end], pa.string()),
                            "score": pa.array(audience.scores[start:end], pa.float64()),
                        }
                    )
                )
                progress.say(f"{end:,}/{len(audience.user_ids):,} rows written")
            tally.count, tally.unit = len(audience.user_ids), "rows"
    progress.say(f"audience: {audience.basis}; {len(audience.user_ids):,} users -> {out}")
    return {
        "users": len(audience.user_ids),
        "basis": audience.basis,
        "model_version": audience.model_version,
        "seconds": time.perf_counter() - started,
    }


def segments_report(model_dir: Path, out_dir: Path) -> Path:
    """segments.md with two charts (segment sizes with their stage mix; top categories per
    cluster), from the current model's segments. Returns the Markdown file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = PublishedModel.load(ModelStore(model_dir).current_path())
    segments = model.segments
    if not segments:
        raise BadInput(f"model {model.version} has no segments")
    out_dir.mkdir(parents=True, exist_ok=True)

    figure, axes = plt.subplots(figsize=(11, 0.35 * len(segments) + 1.5))
    names = [s["name"] if s["kind"] == "rfm" else s["id"] for s in segments]
    left = np.zeros(len(segments))
    for stage in STAGES:
        counts = np.array([s["stage_mix"].get(stage, 0) for s in segments], dtype=float)
        axes.barh(names, counts, left=left, label=stage)
        left += counts
    axes.invert_yaxis()
    axes.set_xlabel("users")
    axes.set_title(f"Segments of model {model.version}, by lifecycle stage")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="stage")
    figure.tight_layout()
    figure.savefig(out_dir / "segment_sizes.png", dpi=110)
    plt.close(figure)

    clusters = [s for s in segments if s["kind"] == "cluster"]
    categories = sorted({c for s in clusters for c, _ in s["top_categories"]})
    if clusters and categories:
        grid = np.array(
            [[dict(s["top_categories"]).get(c, 0.0) for c in categories] for s in clusters]
        )
        figure, axes = plt.subplots(figsize=(1 + 0.6 * len(categories), 1 + 0.45 * len(clusters)))
        image = axes.imshow(grid, cmap="Blues", aspect="auto")
        axes.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
        axes.set_yticks(range(len(clusters)), [s["id"] for s in clusters])
        axes.set_title("Share of each cluster's event weight, top categories")
        figure.colorbar(image, ax=axes)
        figure.tight_layout()
        figure.savefig(out_dir / "cluster_categories.png", dpi=110)
        plt.close(figure)

    as_of = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(model.profiles.meta["as_of_ms"] / 1000))
    lines = [
        f"# Segments of model {model.version}",
        "",
        f"{model.profiles.size:,} users with a profile, as of {as_of} (the end of the training "
        "data). RFM segments come from recency and frequency scores (quintiles among buyers); "
        f"clusters from {clusters[0]['clustering'] if clusters else 'no clustering'}.",
        "",
        "RFM counts purchases; lifecycle stages count any event (a view is activity). A "
        "customer who still browses but has not bought for a while is therefore `rfm:at_risk` "
        "and `active` at once: worth a purchase nudge, not a win-back. Live audiences "
        "(`FindAudience`, `recsvc audience export`) score recency on the same buyer quintiles "
        "moved along with the clock, so a segment keeps these members until their own "
        "purchases move them; lifecycle stages follow the clock itself (no event for "
        "`at_risk_days` makes a customer `at_risk`).",
        "",
        "![segment sizes](segment_sizes.png)",
        "",
    ]
    if clusters and categories:
        lines += ["![top categories per cluster](cluster_categories.png)", ""]
    lines += [
        "| segment | users | average order value | mean churn risk | at high churn risk "
        "| top categories | " + " | ".join(STAGES) + " |",
        "|---|---:|---:|---:|---:|---|" + "---:|" * len(STAGES),
    ]
    for s in segments:
        top = ", ".join(f"{c} {share:.0%}" for c, share in s["top_categories"][:3])
        mix = " | ".join(str(s["stage_mix"].get(stage, 0)) for stage in STAGES)
        risk = "-" if s.get("churn_risk") is None else f"{s['churn_risk']:.2f}"
        lines.append(
            f"| {s['id']} | {s['size']:,} | {s['average_order_value']:,.2f} | {risk} "
            f"| {s.get('high_churn_risk', 0):,} | {top} | {mix} |"
        )
    report = out_dir / "segments.md"
    report.write_text("\n".join(lines) + "\n")
    return report
