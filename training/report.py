"""`recsvc evaluate`: every configured model on one holdout, side by side."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from recsvc.config import Config
from recsvc.errors import BadInput
from recsvc.training.evaluate import validation_holdout
from recsvc.training.pipeline import TrainInputs, candidates, ingest_and_clean, select_model
from recsvc.training.progress import Progress

SHOWN = (
    "precision@10",
    "recall@10",
    "ndcg@10",
    "map@10",
    "hit_rate@10",
    "coverage@10",
    "popularity@10",
)


def evaluate_models(
    inputs: TrainInputs,
    config: Config,
    out_dir: Path,
    models: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Writes evaluation.json, evaluation.md and evaluation.png into `out_dir`."""
    progress = progress or Progress("evaluate")
    if models:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, type="auto", candidates=models)
        )
    dataset, _ = ingest_and_clean(inputs, config, out_dir / "rejects", progress)
    events = dataset.events
    shape = (
        pc.count_distinct(events.column("user_id")).as_py(),
        pc.count_distinct(events.column("item_id")).as_py(),
    )
    names, skipped = candidates(config, shape)
    holdout = validation_holdout(events, config)
    if holdout is None:
        raise BadInput("too little data for a holdout: nothing to evaluate")
    result, _ = select_model(names, skipped, holdout, dataset, config, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown(result, inputs))
    chart(result, out_dir / "evaluation.png")
    progress.say(f"wrote {out_dir}/evaluation.json, .md and .png; best: {result['selected']}")
    return result


def markdown(result: dict[str, Any], inputs: TrainInputs) -> str:
    holdout = result["holdout"]
    lines = [
        f"# Offline evaluation of {inputs.events.name}",
        "",
        f"Holdout: {holdout['method']}, {holdout['test_users']} users, {holdout['test_pairs']} "
        f"user-item pairs; trained on {holdout['train_events']} events. "
        f"{holdout['repeat_share']:.1%} of holdout pairs repeat a training pair, so models are "
        f"judged on **{result['variant']}** items.",
        "",
        f"Selected: **{result['selected']}** ({result['reason']}).",
        "",
    ]
    for variant, title in (
        ("all", "All items (repeat purchases count)"),
        ("new", "New items only (items the user bought before excluded)"),
        ("unseen", "Unseen items only (every item the user touched before excluded)"),
    ):
        lines += [
            f"## {title}",
            "",
            "| model | " + " | ".join(SHOWN) + " |",
            "|---|" + "---:|" * len(SHOWN),
        ]
        for name, metrics in result["models"].items():
            values = metrics.get(variant, {})
            lines.append(
                f"| {name} | "
                + " | ".join(f"{values[m]:.4f}" if m in values else "-" for m in SHOWN)
                + " |"
            )
        lines.append("")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"Skipped {name}: {why}.")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    metrics = ("ndcg@10", "recall@10", "hit_rate@10", "coverage@10")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5))
    for axis, metric in zip(axes, metrics, strict=True):
        values = [result["models"][n][result["variant"]].get(metric, 0.0) for n in names]
        bars = axis.bar(
            names,
            values,
            color=["tab:green" if n == result["selected"] else "tab:blue" for n in names],
        )
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
        axis.set_title(metric)
        axis.margins(y=0.15)
        axis.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Holdout metrics, {result['variant']} items (selected model in green)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
