"""The item graphs training mines (bought together, the session model), their format, and the
training run's choice between the session model and the fold-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import events_table

from recsvc.config import SessionsConfig, TogetherConfig
from recsvc.itemgraph import ItemGraph
from recsvc.training.itemgraphs import mine_bought_together, mine_sessions, visits
from recsvc.training.pipeline import TrainResult

MINUTE = 60_000


ITEMS = np.array(["a", "b", "c", "d", "e"])


def _edges(graph: ItemGraph, item: str) -> dict[str, float]:
    ids, weights = graph.neighbours(int(np.searchsorted(ITEMS, item)))
    return dict(zip(ITEMS[ids].tolist(), weights.tolist(), strict=True))


def test_bought_together_keeps_pairs_above_support_and_lift_ranked_by_confidence() -> None:
    rows = []
    # a and b share three orders; a and c one; e is in every order (a bestseller).
    for n, extra in enumerate(["b", "b", "b", "c", "d"]):
        stamp = n * 1000 * MINUTE
        rows += [(f"u{n}", "a", "purchase", stamp), (f"u{n}", extra, "purchase", stamp)]
        rows += [(f"u{n}", "e", "purchase", stamp)]
    rows += [("u9", "d", "purchase", 0), ("u9", "e", "purchase", 0)]
    rows += [("u0", "c", "view", 0)]  # views are not baskets
    rows += [("u8", "a", "purchase", 0), ("u8", "b", "purchase", 1)]  # two orders, no pair
    config = TogetherConfig(min_support=2, min_lift=1.0)
    graph, summary = mine_bought_together(events_table(rows), ITEMS, config)
    assert summary["baskets"] == 6
    # b is always bought with a and with e: confidence 1 each (e's lift is only 1).
    assert _edges(graph, "b") == {"a": 1.0, "e": 1.0}
    strict, _ = mine_bought_together(events_table(rows), ITEMS, TogetherConfig(min_lift=1.1))
    assert _edges(strict, "a") == {"b": pytest.approx(0.6)}, "a-c has support 1; e has lift 1"
    assert _edges(strict, "c") == {}
    # Within a window, purchases a minute apart are one basket.
    windowed, _ = mine_bought_together(
        events_table([("u", "a", "purchase", 0), ("u", "b", "purchase", MINUTE)] * 2),
        ITEMS,
        TogetherConfig(window_minutes=5, min_support=1),
    )
    assert set(_edges(windowed, "a")) == {"b"}


def test_the_session_model_points_forward_by_distance_and_back_more_weakly() -> None:
    clicks = ["a", "a", "b", "c", "d"]  # the repeated click on a is one step
    rows = [("u", item, "view", n * MINUTE) for n, item in enumerate(clicks)]
    rows += [("u", "e", "view", 10 * 60 * MINUTE)]  # ten hours later: another visit
    config = SessionsConfig(gap_minutes=30, steps=2, backward_weight=0.5)
    graph, summary = mine_sessions(events_table(rows), ITEMS, config)
    assert summary["sessions"] == 2
    assert _edges(graph, "a") == {"b": 1.0, "c": 0.5}
    assert _edges(graph, "c") == {"d": 1.0, "b": 0.5, "a": 0.25}
    assert _edges(graph, "e") == {} and "e" not in _edges(graph, "d")
    items, session = visits(events_table(rows), ITEMS, config)
    assert ITEMS[items].tolist() == ["a", "b", "c", "d", "e"]
    assert session.tolist() == [1, 1, 1, 1, 2]


def test_a_graph_saves_loads_and_spreads(tmp_path: Path) -> None:
    graph, _ = mine_sessions(
        events_table([("u", "a", "view", 0), ("u", "b", "view", 1), ("u", "c", "view", 2)]),
        ITEMS,
        SessionsConfig(steps=1, backward_weight=0.0),
    )
    graph.save(tmp_path / "g")
    loaded = ItemGraph.load(tmp_path / "g", ITEMS.size)
    assert loaded.n_edges == graph.n_edges == 2
    spread = loaded.spread(np.array([1, 0]), np.array([1.0, 0.5], dtype=np.float32))
    assert ITEMS[spread.items].tolist() == ["b", "c"]
    assert spread.scores.tolist() == [0.5, 1.0]
    assert ITEMS[spread.sources].tolist() == ["a", "b"]
    assert ItemGraph.load(tmp_path / "absent", ITEMS.size).n_edges == 0, "an older model"
    with pytest.raises(ValueError, match="does not match"):
        ItemGraph.load(tmp_path / "g", ITEMS.size + 1)


def test_the_training_run_chooses_the_session_model_on_its_evidence(trained: TrainResult):
    manifest = trained.manifest
    choice = manifest["evaluation"]["sessions"]
    evidence = choice["evidence"]
    assert evidence["points"] > 500
    # The sample shop's visits browse one category at a time: what follows is predictable.
    assert evidence["hit@10 session"] > evidence["hit@10 model"]
    assert manifest["serving"]["session_model"] is choice["session_model"] is True
    graphs = manifest["item_graphs"]
    assert graphs["together"]["items_with_complements"] > 300
    assert graphs["sessions"]["sessions"] > 10_000
