"""The training job: ingest, clean, hold out, select, gate, fit, publish, prune."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.ann import ItemIndex
from recsvc.coldstart import ColdStart
from recsvc.config import Config, build
from recsvc.errors import BadInput, QualityGateRefused
from recsvc.events import open_event_store
from recsvc.ids import sorted_positions
from recsvc.models import (
    MODEL_TYPES,
    BlendRecommender,
    FactorRecommender,
    PopularityRecommender,
    Recommender,
    TrendingRecommender,
)
from recsvc.models.neighbours import ease_form
from recsvc.modelstore import ModelStore
from recsvc.profiles import UserProfiles
from recsvc.published import ItemAttributes, PublishedModel, write_published
from recsvc.training.churn import fit_churn
from recsvc.training.cleaning import CleaningReport, clean_events
from recsvc.training.coldstart import fit_coldstart
from recsvc.training.engines import engine_for, fit_model, make_model
from recsvc.training.evaluate import (
    SELECTION_METRIC,
    SELECTION_SE,
    Holdout,
    Scorer,
    mapped_scorer,
    model_scorer,
    published_scorer,
    ranking_metrics,
    validation_holdout,
)
from recsvc.training.ingest import Dataset
from recsvc.training.inputs import TrainInputs
from recsvc.training.interactions import Interactions, build_interactions
from recsvc.training.itemgraphs import mine_bought_together, mine_sessions
from recsvc.training.profiles import assign_clusters, build_profiles, describe_segments
from recsvc.training.progress import Progress
from recsvc.training.search import TUNABLE, search, with_signals
from recsvc.training.session_choice import choose_session_scoring
from recsvc.training.stage_policy import choose_stage_strategies, validation_serving

log = logging.getLogger(__name__)
# Non-personalised models, always evaluated; the better one serves users the model lacks.
FALLBACKS = ("popularity", "trending")
BLEND = "blend"
BLENDABLE = ("als", "bpr", "itemknn", "rp3beta", "ease")
BLEND_WEIGHTS = (0.25, 0.5, 0.75)
# A blend costs its members' scoring time per request: it must earn it on the holdout.
BLEND_MARGIN = 0.01
# The best of many trials on one split is an optimistic estimate of it: tuned parameters
# replace the shipped ones only where they win by more than this.
TUNE_MARGIN = 0.01
SEARCHABLE_SHARE = 0.2
# How models are judged under each metric variant (see recsvc.training.evaluate), in words.
VARIANT_WORDS = {
    "all": "on all items",
    "new": "on items the user has not bought (purchases never repeat: served lists leave them out)",
    "unseen": "on items the user has not touched",
}


@dataclass
class TrainResult:
    version: str
    model_dir: Path
    manifest: dict[str, Any]


def fingerprint(dataset: Dataset, config: Config) -> str:
    """sha256 of what the run read (the validated events, event store's included and forgotten
    users left out, the catalogue and the users file) and of the configuration: same data,
    same fingerprint. Computed from the tables in memory: the inputs are never read twice."""
    digest = hashlib.sha256()
    for table in (dataset.events, dataset.items, dataset.users):
        digest.update(b"\0table\0")
        if table is not None:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table.combine_chunks())
            digest.update(sink.getvalue())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    return digest.hexdigest()


def candidates(config: Config, shape: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
    """The model types to try for a users x items matrix, and why any configured one was
    skipped (EASE needs the catalogue or the user base within model.ease.max_items)."""
    names = list(config.model.candidates) if config.model.type == "auto" else [config.model.type]
    skipped = {}
    n_users, n_items = shape
    ease = config.model.ease
    limit = ease.max_items
    if "ease" in names and ease_form(n_users, n_items, limit, ease.form) is None:
        skipped["ease"] = f"{n_items} items and {n_users} users > model.ease.max_items {limit}"
        names.remove("ease")
    if not names:
        raise BadInput("no model to train: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return names, skipped


def item_attributes(interactions: Interactions, dataset: Dataset) -> ItemAttributes:
    """Catalogue facts per item column; items missing from the catalogue get neutral values."""
    n = interactions.item_ids.size
    events = dataset.events
    codes = sorted_positions(interactions.item_ids, events.column("item_id").to_numpy().astype(str))
    stamps = events.column("timestamp_ms").to_numpy()
    first_seen = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    known = codes >= 0
    np.minimum.at(first_seen, codes[known], stamps[known])
    attributes = ItemAttributes(
        categories=np.full(n, "", dtype=object),
        available=np.ones(n, dtype=bool),
        price=np.full(n, np.nan, dtype=np.float32),
        tags=np.full(n, "", dtype=object),
        first_seen_ms=first_seen,
        brands=np.full(n, "", dtype=object),
    )
    if dataset.items is not None:
        catalogue = dataset.items
        rows = sorted_positions(
            interactions.item_ids, catalogue.column("item_id").to_numpy().astype(str)
        )
        inside = rows >= 0
        for name, column in (
            ("categories", "category"),
            ("available", "available"),
            ("price", "price"),
            ("tags", "tags"),
            ("brands", "brand"),
        ):
            values = catalogue.column(column).to_numpy(zero_copy_only=False)
            getattr(attributes, name)[rows[inside]] = values[inside]
    attributes.categories = attributes.categories.astype(str)
    attributes.tags = attributes.tags.astype(str)
    attributes.brands = attributes.brands.astype(str)
    return attributes


def train(
    inputs: TrainInputs,
    model_dir: Path,
    config: Config,
    rejects_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Runs the whole job and publishes a new current version.

    Raises BadInput for unusable data and QualityGateRefused when the new model is worse than
    the published one; in both cases nothing is published.
    """
    progress = progress or Progress("train")
    store = ModelStore(model_dir)
    started_at_ms = int(time.time() * 1000)
    config = engine_for(config).prepare(config)
    dataset, cleaning = ingest_and_clean(
        inputs, config, rejects_dir or model_dir / "rejects", progress
    )
    events = dataset.events

    with progress.stage("interaction matrix") as tally:
        interactions = build_interactions(events, config.signals)
        tally.count, tally.unit = interactions.confidence.nnz, "user-item pairs"
    progress.say(f"{interactions.shape[0]:,} users x {interactions.shape[1]:,} items")

    names, skipped = candidates(config, interactions.shape)
    with progress.stage("holdout split"):
        holdout = validation_holdout(events, config)
    evaluation, fitted = select_model(names, skipped, holdout, dataset, config, progress)
    given = config  # what the operator asked for: the fingerprint's, whatever the search finds
    tuned, tuning = tune_parameters(names, holdout, evaluation, dataset, config, progress)
    if tuned is not None and holdout is not None:
        if tuned.signals != config.signals:
            holdout = with_signals(holdout, tuned.signals)
            with progress.stage("interaction matrix with the tuned signals"):
                interactions = build_interactions(events, tuned.signals)
        config = tuned
        evaluation, fitted = select_model(names, skipped, holdout, dataset, config, progress)
    evaluation["tuning"] = tuning
    chosen = evaluation["selected"]
    stage_choice = session_choice = None
    if holdout is not None and fitted:
        with progress.stage("session model on the validation split"):
            validation_sessions, _ = mine_sessions(
                holdout.train_events, holdout.train.item_ids, config.model.sessions
            )
        serving = validation_serving(
            holdout,
            fitted[chosen],
            fitted[evaluation["fallback"]],
            item_attributes(holdout.train, dataset),
            dataset,
            config,
            validation_sessions,
        )
        stage_choice = choose_stage_strategies(holdout, serving, config, progress)
        evaluation["lifecycle"] = stage_choice
        session_choice = choose_session_scoring(holdout, serving, config, progress)
        evaluation["sessions"] = session_choice
    gate = quality_gate(store, holdout, evaluation, dataset, config, progress)

    with progress.stage(f"fit {chosen} on all data") as tally:
        unfitted = (
            BlendRecommender(evaluation["blend"]["members"], evaluation["blend"]["weights"])
            if chosen == BLEND
            else make_model(chosen, config)
        )
        model = fit_model(unfitted, interactions, dataset)
        tally.count, tally.unit = interactions.shape[0], "users"
    fallback = fit_model(make_model(evaluation["fallback"], config), interactions, dataset)
    trending = TrendingRecommender().fit(interactions.recent)
    profiles, segments, coldstart, evaluation["churn"] = build_marketing(
        model, interactions, dataset, config, progress
    )
    with progress.stage("bought together and the session model") as tally:
        together, together_summary = mine_bought_together(
            events, interactions.item_ids, config.model.together
        )
        sessions, sessions_summary = mine_sessions(
            events, interactions.item_ids, config.model.sessions
        )
        tally.count, tally.unit = together.n_edges + sessions.n_edges, "item pairs"
    progress.say(
        f"bought together: {together_summary['items_with_complements']:,} items with "
        f"complements from {together_summary['baskets']:,} baskets; sessions: "
        f"{sessions_summary['sessions']:,} visits"
    )

    manifest = {
        "model_type": model.model_type,
        "params": model.get_params(),
        "data_fingerprint": fingerprint(dataset, given),
        "data_end_ms": int(events.column("timestamp_ms").to_numpy().max()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "started_at_ms": started_at_ms,
        "n_users": int(interactions.shape[0]),
        "n_items": int(interactions.shape[1]),
        "n_interactions": int(interactions.confidence.nnz),
        "metrics": evaluation["models"].get(chosen, {}),
        "serving": {
            "exclude_seen": evaluation["variant"] == "unseen",
            "exclude_purchased": evaluation["variant"] == "new",
            "fallback": evaluation["fallback"],
            # What each lifecycle stage is served where the config says "auto".
            "lifecycle": stage_choice["lifecycle"] if stage_choice else {},
            # Whether anonymous visits are followed by the session model (else the fold-in).
            "session_model": bool(session_choice and session_choice["session_model"]),
        },
        "item_graphs": {"together": together_summary, "sessions": sessions_summary},
        "evaluation": evaluation,
        "quality_gate": gate,
        "ingest": [r.as_dict() for r in dataset.reports],
        "cleaning": cleaning.as_dict(),
        "config": dataclasses.asdict(config),
    }
    ann, manifest["ann"] = build_ann(model, config, progress)
    with progress.stage("publish"):
        version = store.publish(
            lambda staging: write_published(
                staging,
                model=model,
                fallback=fallback,
                trending=trending,
                user_ids=interactions.user_ids,
                item_ids=interactions.item_ids,
                items=item_attributes(interactions, dataset),
                purchased=interactions.purchased,
                history=interactions.confidence,
                manifest=manifest,
                profiles=profiles,
                segments=segments,
                ann=ann,
                coldstart=coldstart,
                together=together,
                sessions=sessions,
            ),
            suffix=manifest["data_fingerprint"][:8],
        )
    removed = store.prune(config.training.keep_versions)
    if removed:
        progress.say(f"removed old versions {', '.join(removed)}")
    score = manifest["metrics"].get(evaluation["variant"], {}).get(SELECTION_METRIC)
    progress.say(
        f"published {version}: {chosen}, {manifest['n_users']:,} users, "
        f"{manifest['n_items']:,} items"
        + (f", holdout {SELECTION_METRIC} {score:.4f}" if score is not None else "")
    )
    return TrainResult(version, model_dir, manifest)


def _churn_summary(evidence: dict[str, Any]) -> str:
    if "model" not in evidence:
        return f"the recency rule is served ({evidence['reason']})"
    model, rule = evidence["model"], evidence["recency_rule"]
    return (
        f"ROC AUC {model['roc_auc']:.3f} (model) against {rule['roc_auc']:.3f} (recency rule) "
        f"on the time cut: the {evidence['served']} is served"
    )


def build_marketing(
    model: Recommender,
    interactions: Interactions,
    dataset: Dataset,
    config: Config,
    progress: Progress,
) -> tuple[UserProfiles, list[dict[str, Any]], ColdStart | None, dict[str, Any]]:
    """Customer profiles with churn risk, segments and, where attributes exist, the hybrid
    cold-start model; and the churn model's evidence."""
    with progress.stage("user profiles") as tally:
        profiles = build_profiles(dataset.events, dataset.items, dataset.users, config)
        tally.count, tally.unit = profiles.size, "users"
    with progress.stage("churn risk") as tally:  # before segments, which describe it
        churn_users, churn_risk, churn_evidence = fit_churn(dataset.events, config)
        rows = sorted_positions(profiles.user_ids, churn_users)
        profiles.arrays["churn_risk"][rows[rows >= 0]] = churn_risk[rows >= 0]
        tally.count, tally.unit = churn_users.size, "customers"
    progress.say(f"churn risk: {_churn_summary(churn_evidence)}")
    with progress.stage("segments"):
        clustering = assign_clusters(
            profiles,
            model,
            interactions.user_ids,
            interactions.confidence,
            config.profiles.clusters,
            config.training.seed,
        )
        segments = describe_segments(profiles, clustering)
    progress.say(f"segments: {len(segments)} ({clustering} and RFM)")
    coldstart = None
    if config.profiles.coldstart and (dataset.users is not None or dataset.items is not None):
        with progress.stage("hybrid cold-start model") as tally:
            coldstart = fit_coldstart(
                interactions.confidence,
                interactions.user_ids,
                interactions.item_ids,
                dataset.modelled_users,
                dataset.items,
                config,
            )
            tally.count, tally.unit = interactions.confidence.nnz, "user-item pairs"
    return profiles, segments, coldstart, churn_evidence


def build_ann(
    model: Recommender, config: Config, progress: Progress
) -> tuple[ItemIndex | None, dict[str, Any] | None]:
    """An approximate index for a factor model past `model.ann_min_items`, its search breadth
    set to reach `model.ann_target_recall` (recall@10 against exact, on sampled users)."""
    if not isinstance(model, FactorRecommender) or model.n_items < config.model.ann_min_items:
        return None, None
    with progress.stage("approximate index") as tally:
        index = ItemIndex.build(model.item_factors)
        tally.count, tally.unit = model.n_items, "items"
    rng = np.random.default_rng(config.training.seed)
    users = rng.choice(model.user_factors.shape[0], size=min(1000, model.user_factors.shape[0]))
    recall = index.tune(
        np.asarray(model.user_factors[users]),
        np.asarray(model.item_factors),
        config.model.ann_target_recall,
    )
    progress.say(f"approximate index: recall@10 {recall:.4f} at efSearch {index.ef_search}")
    return index, {"ef_search": index.ef_search, "recall@10": recall, "sample_users": users.size}


def ingest_and_clean(
    inputs: TrainInputs, config: Config, rejects_dir: Path, progress: Progress
) -> tuple[Dataset, CleaningReport]:
    """Validated inputs with the cleaning rules applied; BadInput when no event is left."""
    if inputs.events is None and not inputs.event_store:
        raise BadInput("no events: give an events file, an event store, or both")
    with progress.stage("ingest") as tally:
        dataset = engine_for(config).read(inputs, config, rejects_dir)
        tally.count = sum(r.rows_read for r in dataset.reports)
    for report in dataset.reports:
        progress.say(report.summary())
    forgotten: dict[str, int] = {}
    if inputs.event_store:
        store = open_event_store(inputs.event_store, existing=True)
        try:
            stored = store.read_events()
            forgotten = store.forgotten_users()
        finally:
            store.close()
        progress.say(f"event store {inputs.event_store}: {stored.num_rows:,} events")
        dataset = dataclasses.replace(dataset, events=pa.concat_tables([dataset.events, stored]))
    dataset, privacy = leave_out_forgotten(dataset, forgotten)
    events, cleaning = clean_events(dataset.events, config.cleaning)
    cleaning.forgotten_users, cleaning.forgotten_events = privacy
    progress.say(cleaning.summary())
    if events.num_rows == 0:
        raise BadInput("the inputs have no usable events")
    return dataclasses.replace(dataset, events=events), cleaning


def leave_out_forgotten(
    dataset: Dataset, forgotten: dict[str, int]
) -> tuple[Dataset, tuple[int, int]]:
    """Drops what forgotten users did up to the moment they were forgotten, and their profile."""
    if not forgotten:
        return dataset, (0, 0)
    events = dataset.events
    names = pa.array(list(forgotten), pa.string())
    when = np.array(list(forgotten.values()), dtype=np.int64)
    slot = pc.index_in(events.column("user_id"), value_set=names)
    slot = slot.to_numpy(zero_copy_only=False)
    hit = ~np.isnan(slot.astype(float))
    stamps = events.column("timestamp_ms").to_numpy()
    drop = np.zeros(events.num_rows, dtype=bool)
    drop[hit] = stamps[hit] <= when[slot[hit].astype(np.int64)]
    users = dataset.users
    if users is not None:
        users = users.filter(pc.invert(pc.is_in(users.column("user_id"), value_set=names)))
    touched = int(np.unique(events.column("user_id").to_numpy(zero_copy_only=False)[drop]).size)
    return (
        dataclasses.replace(dataset, events=events.filter(pa.array(~drop)), users=users),
        (touched, int(drop.sum())),
    )


def tune_parameters(
    names: list[str],
    holdout: Holdout | None,
    evaluation: dict[str, Any],
    dataset: Dataset,
    config: Config,
    progress: Progress,
) -> tuple[Config | None, dict[str, Any]]:
    """Searches the candidates' parameters and the signal weights on the validation split
    within `training.tune_budget_s`, starting from the scores `select_model` gave the shipped
    parameters. Returns the configuration to train with where the best trial beats the best
    shipped model by more than TUNE_MARGIN (else None), and the evidence for the manifest."""
    budget, trials = config.training.tune_budget_s, config.training.tune_trials
    tunable = [n for n in names if n in TUNABLE]
    why_not = (
        "training.tune_budget_s is 0"
        if budget <= 0
        else "training.tune_trials is 0"
        if trials <= 0
        else "no holdout"
        if holdout is None
        else "the spark engine fits on the cluster; the search runs on the local engine only"
        if config.training.engine != "local"
        else f"no tunable candidate (tunable: {', '.join(TUNABLE)})"
        if not tunable
        else None
    )
    if why_not is not None:
        return None, {"searched": False, "reason": why_not}
    assert holdout is not None
    # A model whose one fit and scoring takes a good share of the budget would spend it on a
    # trial or two (and overrun it by one): its shipped parameters stand.
    too_slow = {
        n: f"one fit and scoring took {evaluation['seconds'][n]:.0f} s, over "
        f"{SEARCHABLE_SHARE:.0%} of the budget"
        for n in tunable
        if evaluation["seconds"][n] > budget * SEARCHABLE_SHARE
    }
    tunable = [n for n in tunable if n not in too_slow]
    if not tunable:
        return None, {
            "searched": False,
            "reason": "every candidate too slow",
            "not_searched": too_slow,
        }
    variant = holdout.variant
    scores = {n: evaluation["models"][n][variant].get(SELECTION_METRIC, 0.0) for n in names}
    known = {n: scores[n] for n in tunable}
    with progress.stage(f"parameter search ({budget:.0f} s, {trials} trials at most)"):
        found = search(
            holdout,
            dataclasses.replace(dataset, events=holdout.train_events),
            config,
            tunable,
            budget,
            trials,
            known,
            progress,
        )
    # Tuned parameters must beat every candidate at its configured parameters, searched or not.
    best = found.best
    best_shipped = max(scores, key=lambda n: scores[n])
    shipped = scores[best_shipped]
    adopted = best.value is not None and best.value > shipped * (1 + TUNE_MARGIN)
    evidence = {
        "searched": True,
        "budget_s": budget,
        "seconds": found.seconds,
        "trials": len(found.study.trials),
        "shipped": known,
        "best_shipped": {"model": best_shipped, SELECTION_METRIC: shipped},
        "not_searched": too_slow,
        "best": {
            "model": best.params["model"],
            "params": best.params,
            SELECTION_METRIC: best.value,
        },
        "adopted": adopted,
        "reason": (
            f"best trial {best.params['model']} {best.value:.4f} against the best model at its "
            f"configured parameters, {best_shipped} {shipped:.4f}, on the validation split: "
            + ("trained with the tuned parameters" if adopted else "kept the shipped ones")
            + f" (a tuned configuration must beat them by more than {TUNE_MARGIN:.0%})"
        ),
    }
    progress.say(f"parameter search: {evidence['reason']}")
    if not adopted:
        return None, evidence
    tuned = found.config_of(best, config)
    # The search names one model per trial; the job still chooses (and blends) among all.
    return dataclasses.replace(
        tuned, model=dataclasses.replace(tuned.model, type=config.model.type)
    ), evidence


def select_model(
    names: list[str],
    skipped: dict[str, str],
    holdout: Holdout | None,
    dataset: Dataset,
    config: Config,
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, Recommender]]:
    """Fits each candidate on the training part; the best on the holdout wins. Returns the
    evaluation (for the manifest) and the models fitted on the training part, by name."""
    if holdout is None:
        progress.say("too little data for a holdout: no evaluation, no quality gate")
        return {
            "holdout": None,
            "models": {},
            "blend": None,
            "selected": names[0],
            "skipped": skipped,
            "reason": "no holdout possible; first configured candidate",
            "variant": "all",
            "fallback": "popularity",
        }, {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    variant = holdout.variant
    progress.say(
        f"{holdout.repeat_share:.1%} of holdout pairs repeat a training pair: models are judged "
        + VARIANT_WORDS[variant]
    )
    fitted: dict[str, Recommender] = {}
    seconds: dict[str, float] = {}
    for name in [*names, *FALLBACKS]:
        if name in results:
            continue
        started = time.perf_counter()
        with progress.stage(f"evaluate {name}") as tally:
            model = fit_model(make_model(name, config), holdout.train, dataset)
            results[name] = ranking_metrics(model_scorer(model), holdout)
            fitted[name] = model
            tally.count, tally.unit = results[name][variant].get("users", 0), "holdout users"
        seconds[name] = round(time.perf_counter() - started, 2)
        progress.say(
            f"{name}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in results[name][variant].items() if k != "users")
        )

    def score(name: str) -> float:
        return results[name][variant].get(SELECTION_METRIC, -1.0)

    best_single = max(names, key=score)
    must_beat = score(best_single) * (1 + BLEND_MARGIN)
    blend = None
    if config.model.type == "auto" and config.model.blend:
        blend = best_blend(names, fitted, score, holdout, progress, must_beat)
        if blend is not None:
            results[BLEND] = blend.pop("metrics")
    chosen = best_single
    if blend is not None and score(BLEND) > must_beat:
        chosen = BLEND
        fitted[BLEND] = BlendRecommender.of_fitted(
            [fitted[m["model_type"]] for m in blend["members"]], blend["weights"]
        )
    fallback = max(FALLBACKS, key=score)
    ranked = sorted([*names, *([BLEND] if blend else [])], key=lambda n: -score(n))
    reason = (
        f"highest holdout {SELECTION_METRIC} ({variant} items; {holdout.repeat_share:.0%} of "
        f"holdout pairs repeat a known pair{_bought_again(holdout)}) among {', '.join(ranked)}: "
        + ", ".join(f"{n} {score(n):.4f}" for n in ranked)
        + (
            f"; a blend must beat the best single model by {BLEND_MARGIN:.0%} to be chosen"
            " (the blend scored: "
            + " + ".join(
                f"{w:.2f} {m['model_type']}"
                for m, w in zip(blend["members"], blend["weights"], strict=True)
            )
            + ")"
            if blend
            else ""
        )
    )
    return {
        "blend": blend,
        "holdout": holdout.describe(),
        "models": results,
        "seconds": seconds,  # each model's fit and scoring on the holdout
        "selected": chosen,
        "skipped": skipped,
        "reason": reason,
        "variant": variant,
        "fallback": fallback,
    }, fitted


def best_blend(
    names: list[str],
    fitted: dict[str, Recommender],
    score: Callable[[str], float],
    holdout: Holdout,
    progress: Progress,
    must_beat: float,
) -> dict[str, Any] | None:
    """The best weighting of the two best blendable candidates, scored on the holdout; or, with
    three or more candidates, the equal-weight blend of all of them where it scores above
    `must_beat` and the holdout cannot tell it from that pair (see prefer_equal_weights)."""
    blendable = sorted((n for n in names if n in BLENDABLE), key=lambda n: -score(n))[:2]
    if len(blendable) < 2:
        return None
    best: dict[str, Any] | None = None
    with progress.stage(f"evaluate blends of {' and '.join(blendable)}"):
        for weight in BLEND_WEIGHTS:
            weights = [weight, 1.0 - weight]
            blend = BlendRecommender.of_fitted([fitted[n] for n in blendable], weights)
            metrics = ranking_metrics(model_scorer(blend), holdout)
            value = metrics[holdout.variant].get(SELECTION_METRIC, -1.0)
            progress.say(f"blend {blendable[0]} {weight:.2f} + {blendable[1]}: {value:.4f}")
            if best is None or value > best["metrics"][holdout.variant][SELECTION_METRIC]:
                best = {"members": blend.members, "weights": weights, "metrics": metrics}
    assert best is not None
    rest = [n for n in names if n in BLENDABLE and n not in blendable]
    if not rest:
        return best
    # Weights fitted on a holdout carry its noise, and the best pair's lead over an equal-weight
    # blend of every family is often within it (the "forecast combination puzzle": equal weights
    # tend to do as well out of sample). Where the holdout cannot tell them apart, serve the
    # equal blend; the pair must be clearly better to be preferred.
    members = [*blendable, *rest]
    with progress.stage(f"evaluate the equal blend of {', '.join(members)}"):
        equal = BlendRecommender.of_fitted(
            [fitted[n] for n in members], [1.0 / len(members)] * len(members)
        )
        metrics = ranking_metrics(model_scorer(equal), holdout)
    candidate = {"members": equal.members, "weights": equal.weights, "metrics": metrics}
    progress.say(
        f"equal blend: {metrics[holdout.variant].get(SELECTION_METRIC, -1.0):.4f}"
        f" (best pair {best['metrics'][holdout.variant][SELECTION_METRIC]:.4f})"
    )
    return prefer_equal_weights(best, candidate, holdout.variant, must_beat)


def _bought_again(holdout: Holdout) -> str:
    share = holdout.purchase_repeat_share
    return "" if share is None else f", {share:.0%} of holdout purchases repeat a purchase"


def prefer_equal_weights(
    pair: dict[str, Any], equal: dict[str, Any], variant: str, must_beat: float
) -> dict[str, Any]:
    """The equal-weight blend where it scores above `must_beat` (what a blend must reach to
    earn its scoring cost) and the fitted pair does not beat it by more than one standard
    error of the pair's holdout NDCG; otherwise the pair."""
    pair_score = pair["metrics"][variant].get(SELECTION_METRIC, -1.0)
    equal_score = equal["metrics"][variant].get(SELECTION_METRIC, -1.0)
    noise = pair["metrics"][variant].get(SELECTION_SE, 0.0)
    return equal if equal_score > must_beat and equal_score >= pair_score - noise else pair


def refit_published(
    published: PublishedModel, holdout: Holdout, dataset: Dataset, config: Config
) -> Scorer:
    """The published model re-fitted on the holdout's training part with the configuration it
    was built with (this run's where the manifest predates recording one), scoring in the
    holdout's id space."""
    recorded = published.manifest.get("config")
    built_with = build(Config, recorded, "") if recorded else config
    events, _ = clean_events(holdout.train_events, built_with.cleaning)
    interactions = build_interactions(events, built_with.signals)
    champion = MODEL_TYPES[published.manifest["model_type"]](**published.manifest["params"])
    fitted = fit_model(champion, interactions, dataset)
    fallback = PopularityRecommender().fit(interactions.confidence)
    train = holdout.train
    return mapped_scorer(
        fitted, fallback, interactions.user_ids, interactions.item_ids,
        train.user_ids, train.item_ids,
    )  # fmt: skip


def quality_gate(
    store: ModelStore,
    holdout: Holdout | None,
    evaluation: dict[str, Any],
    dataset: Dataset,
    config: Config,
    progress: Progress,
) -> dict[str, Any]:
    """Refuses a model worse than the published one on the same holdout.

    A published model trained on data that overlaps the holdout would be judged on what it
    has already seen; it is then re-fitted on this run's training part as it was built: its
    own type and parameters, and its own recorded cleaning and signal settings, never this
    run's (settings that weaken the new model would otherwise weaken its baseline alike).
    """
    tolerance = config.training.quality_gate_tolerance
    current = store.current_version()
    if tolerance < 0 or current is None or holdout is None:
        return {
            "checked": False,
            "reason": "disabled"
            if tolerance < 0
            else "no published model"
            if current is None
            else "no holdout",
        }
    try:
        published = PublishedModel.load(store.path(current))
    except Exception as exc:
        log.warning("published model %s cannot be loaded (%s); gate skipped", current, exc)
        return {"checked": False, "reason": f"published model {current} unreadable: {exc}"}
    seen_holdout = holdout.cut_ms is None or published.manifest.get("data_end_ms", 0) >= (
        holdout.cut_ms
    )
    if seen_holdout:
        scorer: Scorer = refit_published(published, holdout, dataset, config)
        method = (
            f"refit {published.manifest['model_type']} with the published version's "
            "parameters, cleaning and signals"
        )
    else:
        scorer = published_scorer(published, holdout.train.user_ids, holdout.train.item_ids)
        method = "published arrays"
    variant = evaluation["variant"]
    old = ranking_metrics(scorer, holdout)[variant].get(SELECTION_METRIC, 0.0)
    new = evaluation["models"][evaluation["selected"]][variant].get(SELECTION_METRIC, 0.0)
    passed = new >= old * (1.0 - tolerance)
    verdict = {
        "checked": True,
        "published_version": current,
        "method": method,
        "published": round(old, 6),
        "new": round(new, 6),
        "tolerance": tolerance,
        "passed": passed,
    }
    progress.say(
        f"quality gate: new {SELECTION_METRIC} {new:.4f} vs published {current} "
        f"{old:.4f} ({method}), tolerance {tolerance:.0%}: "
        f"{'pass' if passed else 'REFUSED'}"
    )
    if not passed:
        raise QualityGateRefused(
            f"new model {evaluation['selected']} {SELECTION_METRIC} {new:.4f} is below the "
            f"published {current} {old:.4f} by more than {tolerance:.0%}; nothing published"
        )
    return verdict
