"""What each lifecycle stage is served, chosen on the validation split as models are.

The candidate strategies (the model's personal list, repurchase, the model blended with
repurchase, trending) are scored by what the ranking policy itself would serve: the model
fitted on the validation split's training part is wrapped as a published model in memory,
and every validation user's list comes from `RankingPolicy.compute` with the serving rules of
the config, so the evaluation is of served lists, not of raw scores. Per stage, the strategy
with the highest NDCG@10 wins; a stage with too few validation users takes the winner over
all users. Repurchase and the blend are candidates only where users come back to what they
know (models are judged on all items) and the log has an order in time: where it has no repeats
the server excludes what users have seen, where purchases never repeat what they bought, and
where every event has one timestamp (the holdout is a random share of each user's events)
nothing was bought "before" anything else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recsvc.config import Config, LifecycleConfig
from recsvc.itemgraph import ItemGraph
from recsvc.models import Recommender, TrendingRecommender
from recsvc.profiles import STAGES
from recsvc.published import ItemAttributes, PublishedModel
from recsvc.serving import marketing
from recsvc.serving.model import ServingModel
from recsvc.serving.policy import RankingPolicy
from recsvc.serving.values import NO_FILTERS
from recsvc.training.evaluate import Holdout, K, list_ndcg
from recsvc.training.ingest import Dataset
from recsvc.training.profiles import build_profiles
from recsvc.training.progress import Progress

# Strategies in order of preference: on a tie the simpler, more personal one wins.
WITH_REPEATS = ("personal", "blend", "repurchase", "trending")
WITHOUT_REPEATS = ("personal", "trending")
# A strategy less preferred must beat the chosen one by more than this share to replace it:
# differences within it are the noise of one split, and the simpler list is cheaper to serve.
STRATEGY_MARGIN = 0.01
# A stage needs this many validation users to get a strategy of its own.
MIN_STAGE_USERS = 100
# Validation users scored per strategy, at most (a seeded sample beyond that).
MAX_USERS = 3000


def choose_stage_strategies(
    holdout: Holdout, serving: ServingModel, config: Config, progress: Progress
) -> dict[str, Any]:
    """{"lifecycle": stage -> strategy, "evidence": per stage NDCG of each, "reason": why};
    `serving` is the validation split's model as the server would hold it."""
    ordered_repeats = holdout.variant == "all" and holdout.method != "per_user"
    strategies = WITH_REPEATS if ordered_repeats else WITHOUT_REPEATS
    truth = holdout.judged  # as models are judged
    users = np.flatnonzero(np.diff(truth.indptr))
    if users.size > MAX_USERS:
        users = np.sort(
            np.random.default_rng(config.training.seed).choice(users, MAX_USERS, replace=False)
        )
    now_ms = int(serving.published.manifest["data_end_ms"])
    user_ids = serving.published.user_ids
    stages = [marketing.user_stage(serving, str(user_ids[u]), [], now_ms).stage for u in users]
    scores = {s: np.zeros(users.size) for s in strategies}
    with progress.stage(f"serving strategies per lifecycle stage ({', '.join(strategies)})") as t:
        for strategy in strategies:
            policy = RankingPolicy(
                dataclasses.replace(
                    config.serving, lifecycle=LifecycleConfig(*[strategy] * len(STAGES))
                )
            )
            for n, (user, stage) in enumerate(zip(users.tolist(), stages, strict=True)):
                listed, _, _ = policy.compute(
                    serving, None, str(user_ids[user]), K, NO_FILTERS, False, (), [], stage, {}
                )
                ranked = serving.published.item_indices([i.item_id for i in listed])
                relevant = truth.indices[truth.indptr[user] : truth.indptr[user + 1]]
                scores[strategy][n] = list_ndcg(ranked, relevant, K)
        t.count, t.unit = users.size * len(strategies), "lists"
    return _choose(strategies, scores, np.array(stages), progress)


def _choose(
    strategies: tuple[str, ...],
    scores: dict[str, np.ndarray],
    stages: np.ndarray,
    progress: Progress,
) -> dict[str, Any]:
    def best(mask: np.ndarray) -> str:
        """The most preferred strategy that no later one beats by more than STRATEGY_MARGIN."""
        chosen, chosen_mean = strategies[0], float(scores[strategies[0]][mask].mean())
        for strategy in strategies[1:]:
            mean = float(scores[strategy][mask].mean())
            if mean > chosen_mean * (1 + STRATEGY_MARGIN):
                chosen, chosen_mean = strategy, mean
        return chosen

    everyone = np.ones(stages.size, dtype=bool)
    overall = best(everyone)
    lifecycle, evidence = {}, {}
    for stage in STAGES:
        mask = stages == stage
        evidence[stage] = {"users": int(mask.sum())} | {
            s: round(float(scores[s][mask].mean()), 4) if mask.any() else None for s in strategies
        }
        lifecycle[stage] = best(mask) if mask.sum() >= MIN_STAGE_USERS else overall
    evidence["all"] = {"users": int(stages.size)} | {
        s: round(float(scores[s].mean()), 4) if stages.size else None for s in strategies
    }
    reason = (
        f"highest validation NDCG@{K} of the served list per stage among {', '.join(strategies)}"
        f" (one less preferred must win by over {STRATEGY_MARGIN:.0%})"
        f"; stages with fewer than {MIN_STAGE_USERS} validation users take the best over all "
        f"users ({overall})"
    )
    progress.say(
        "served per stage: "
        + ", ".join(f"{stage} {lifecycle[stage]} ({evidence[stage]['users']})" for stage in STAGES)
    )
    return {"lifecycle": lifecycle, "evidence": evidence, "reason": reason}


def validation_serving(
    holdout: Holdout,
    model: Recommender,
    fallback: Recommender,
    items: ItemAttributes,
    dataset: Dataset,
    config: Config,
    sessions: ItemGraph | None = None,
) -> ServingModel:
    """The validation split's model as the server would hold it, in memory (with the session
    model mined from the split's training part, where given)."""
    train, events = holdout.train, holdout.train_events
    profiles = build_profiles(events, dataset.items, dataset.users, config)
    purchased, history = train.purchased.tocsr(), train.confidence.tocsr()
    published = PublishedModel(
        version="validation",
        manifest={
            "data_end_ms": int(events.column("timestamp_ms").to_numpy().max()),
            "serving": {
                "exclude_seen": holdout.variant == "unseen",
                "exclude_purchased": holdout.variant == "new",
            },
            "config": dataclasses.asdict(config),
        },
        model=model,
        fallback=fallback,
        trending=TrendingRecommender().fit(train.recent),
        user_ids=train.user_ids,
        item_ids=train.item_ids,
        items=items,
        purchased_indptr=purchased.indptr,
        purchased_indices=purchased.indices,
        history_indptr=history.indptr,
        history_indices=history.indices,
        history_data=history.data,
        profiles=profiles,
        segments=[],
        sessions=sessions,
    )
    return ServingModel.prepare(published, config.serving)
