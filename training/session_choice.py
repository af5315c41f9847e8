"""Whether the server follows anonymous visits with the session model or by folding the visit's
items into the trained model, chosen on the validation split as models are.

The held-out events are cut into visits (`model.sessions.gap_minutes`); at sampled points of
each visit, the items clicked so far are what an anonymous visitor's Recommend sends (context
items), and the next item clicked is the answer. Both ways are scored by what the ranking policy
itself serves, with the serving rules of the config: hit rate at 10 of the next click.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recsvc.config import Config
from recsvc.serving.model import ServingModel
from recsvc.serving.policy import RankingPolicy
from recsvc.serving.values import NO_FILTERS
from recsvc.training.evaluate import Holdout, K
from recsvc.training.itemgraphs import visits
from recsvc.training.progress import Progress

# Points of visits scored, at most (a seeded sample beyond that).
MAX_POINTS = 2000
# Clicks of the visit so far sent as context, at most (the newest).
CONTEXT_CLICKS = 10
# The session model must win by this share of the fold-in's hit rate to be served: on a tie the
# trained model, which serves every other path too, is kept.
MARGIN = 0.02


def next_click_points(
    serving: ServingModel, holdout: Holdout, config: Config
) -> list[tuple[list[str], str]]:
    """(clicks so far, newest last; the next click) at sampled points of held-out visits."""
    if holdout.test_events is None:
        return []
    item_ids = serving.published.item_ids
    items, session = visits(holdout.test_events, item_ids, config.model.sessions)
    later = np.flatnonzero(np.r_[False, session[1:] == session[:-1]])
    if later.size > MAX_POINTS:
        rng = np.random.default_rng(config.training.seed)
        later = np.sort(rng.choice(later, MAX_POINTS, replace=False))
    starts = np.searchsorted(session, session[later])
    points = []
    for at, start in zip(later.tolist(), starts.tolist(), strict=True):
        clicks = item_ids[items[max(start, at - CONTEXT_CLICKS) : at]].tolist()
        points.append((clicks, str(item_ids[items[at]])))
    return points


def choose_session_scoring(
    holdout: Holdout, serving: ServingModel, config: Config, progress: Progress
) -> dict[str, Any]:
    """{"session_model": bool, "evidence": hit rate of each way, "reason": why}."""
    points = next_click_points(serving, holdout, config)
    graph = serving.published.sessions
    if not points or graph is None or not graph.n_edges:
        return {
            "session_model": False,
            "evidence": {"points": len(points)},
            "reason": "no held-out visit with a next click, or no session model",
        }
    hits = {}
    with progress.stage("session model against the fold-in") as tally:
        for way in ("session", "model"):
            policy = RankingPolicy(dataclasses.replace(config.serving, session_scoring=way))
            found = 0
            for clicks, answer in points:
                listed, _, _ = policy.compute(
                    serving, None, "", K, NO_FILTERS, False, clicks, [], "new", {}
                )
                found += any(i.item_id == answer for i in listed)
            hits[way] = found / len(points)
        tally.count, tally.unit = 2 * len(points), "lists"
    chosen = hits["session"] > hits["model"] * (1 + MARGIN)
    evidence = {"points": len(points)} | {f"hit@{K} {w}": round(h, 4) for w, h in hits.items()}
    progress.say(
        f"anonymous visits: session model hit@{K} {hits['session']:.4f}, fold-in "
        f"{hits['model']:.4f}: serving the {'session model' if chosen else 'fold-in'}"
    )
    return {
        "session_model": chosen,
        "evidence": evidence,
        "reason": f"the session model is served where its validation hit rate at {K} of the "
        f"next click beats the fold-in's by {MARGIN:.0%}",
    }
