"""What the serving core takes and gives: filters, scored items, lists, events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

REASON_PERSONAL = "personal"
REASON_POPULAR = "popular"
REASON_TRENDING = "trending"
REASON_HYBRID = "hybrid"
REASON_REPURCHASE = "repurchase"
REASON_UNKNOWN = "unknown"  # RankItems: an id the model does not know, kept in place at the end
REASON_NEW = "new"
REASON_SESSION = "session"  # the session model followed the visit (items: "viewed_after:<id>")


@dataclass(frozen=True)
class Filters:
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()
    available_only: bool = False
    min_price: float | None = None
    max_price: float | None = None


NO_FILTERS = Filters()


class ScoredItem(NamedTuple):
    """A tuple of atoms, which the garbage collector stops tracking: tens of thousands of cached
    lists then add nothing to each full collection's pause."""

    item_id: str
    score: float
    reason: str


class Recommendations(NamedTuple):
    # Recommend returns the cached tuple itself, the same object while the list is reused.
    items: Sequence[ScoredItem]
    model_version: str
    fallback: bool = False
    variant: str = ""  # "experiment/variant", empty when no experiment runs
    recommendation_id: str = ""
    strategy: str = ""  # personal, hybrid, repurchase, trending, popular or fallback
    lifecycle_stage: str = ""


class RankedItems(NamedTuple):
    """RankItems' answer: the candidates the model knows, best first, then the unknown ids in
    their given order; those that filters or exclusions leave out are named apart."""

    items: tuple[ScoredItem, ...]
    unknown_item_ids: tuple[str, ...]
    left_out_item_ids: tuple[str, ...]
    model_version: str
    variant: str = ""
    recommendation_id: str = ""
    strategy: str = ""
    lifecycle_stage: str = ""


class PageRow(NamedTuple):
    name: str
    kind: str
    title: str
    items: tuple[ScoredItem, ...]
    anchor: str = ""  # the item or category the row is about ("because you viewed X")


class Page(NamedTuple):
    rows: tuple[PageRow, ...]
    model_version: str
    variant: str = ""
    recommendation_id: str = ""
    lifecycle_stage: str = ""


class ListEntry(NamedTuple):
    """A cached Recommend list and the lifecycle stage it was chosen for, which holds while
    the profile clock stays in [since_ms, until_ms)."""

    items: tuple[ScoredItem, ...]
    fallback: bool
    strategy: str
    stage: str
    since_ms: int
    until_ms: int


class EventInput(NamedTuple):
    """One event of a RecordEvents call (a tuple: cheap to make for every event)."""

    user_id: str
    item_id: str
    event: str
    timestamp_ms: int = 0  # 0: now
    quantity: float = 1.0
    price: float | None = None
    recommendation_id: str = ""
