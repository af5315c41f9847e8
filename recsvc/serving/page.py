"""A whole page for one visitor in one call (RecommendPage), and a visitor's top categories or
brands (RecommendCategories), both built from the one ranking policy's lists.

A page's rows, and their order, come from `[serving.page]` per lifecycle stage. No item appears
twice on a page: each row excludes what the rows above it hold. A row with nothing to show (no
purchases to buy again, nothing viewed) is left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from recsvc.config import PageRowConfig, VariantConfig
from recsvc.errors import NotFound
from recsvc.serving.model import ServingModel
from recsvc.serving.policy import RankingPolicy
from recsvc.serving.values import Filters, PageRow

# RecommendCategories ranks categories by the visitor's list to this depth.
CATEGORY_DEPTH = 100


class Visitor(NamedTuple):
    """Who a page is for: the id the model knows them by (STRANGER once forgotten), and what
    they did and look at now."""

    user_id: str
    stage: str
    fresh: list[tuple[str, str, int]]
    context: tuple[str, ...]
    attributes: dict[str, str]
    variant: VariantConfig | None


def build_rows(
    policy: RankingPolicy,
    serving: ServingModel,
    visitor: Visitor,
    rows: list[PageRowConfig],
    filters: Filters,
    exclude_purchased: bool,
) -> tuple[PageRow, ...]:
    built = []
    shown: list[str] = []
    for row in rows:
        within = dataclasses.replace(filters, exclude_item_ids=(*filters.exclude_item_ids, *shown))
        page_row = _row(policy, serving, visitor, row, within, exclude_purchased)
        if page_row is not None and page_row.items:
            built.append(page_row)
            shown += [i.item_id for i in page_row.items]
    return tuple(built)


def _row(
    policy: RankingPolicy,
    serving: ServingModel,
    visitor: Visitor,
    row: PageRowConfig,
    filters: Filters,
    exclude_purchased: bool,
) -> PageRow | None:
    title = row.title or row.name
    if row.kind == "for_you":
        items, _, _ = policy.compute(
            serving, visitor.variant, visitor.user_id, row.k, filters, exclude_purchased,
            visitor.context, visitor.fresh, visitor.stage, visitor.attributes,
        )  # fmt: skip
        return PageRow(row.name, row.kind, title, items)
    if row.kind == "buy_again":
        bought = policy.buy_again(serving, visitor.user_id, visitor.fresh, row.k, filters)
        return PageRow(row.name, row.kind, title, bought)
    if row.kind == "because_you_viewed":
        anchor = _last_viewed(serving, visitor)
        if anchor is None:
            return None
        try:
            similar = policy.similar(serving, anchor, row.k, filters)
        except NotFound:
            return None
        return PageRow(row.name, row.kind, f"{title} {anchor}", tuple(similar.items), anchor)
    if row.kind == "bought_together":
        cart = [e[0] for e in visitor.fresh if e[1] == "cart"][-10:]
        if not cart:
            return None
        together = policy.bought_together(
            serving, cart, row.k, filters, visitor.user_id, exclude_purchased
        )
        return PageRow(row.name, row.kind, title, tuple(together.items))
    if row.kind == "trending_in_category":
        category = favourite(serving, visitor, "category")
        if not category:
            return None
        trending = policy.popular(serving, row.k, (category,), True, filters)
        return PageRow(row.name, row.kind, f"{title} {category}", tuple(trending.items), category)
    if row.kind == "new_arrivals":
        return PageRow(row.name, row.kind, title, policy.newest(serving, row.k, filters))
    trending = policy.popular(serving, row.k, (), row.kind == "trending", filters)
    return PageRow(row.name, row.kind, title, tuple(trending.items))


def _last_viewed(serving: ServingModel, visitor: Visitor) -> str | None:
    """What the visitor looked at last: the context, a fresh event, else the item they engaged
    with most before the model was trained."""
    model = serving.published
    recent = [*([e[0] for e in visitor.fresh]), *visitor.context]
    for item_id in reversed(recent):
        if model.item_index(item_id) is not None:
            return item_id
    user = model.user_index(visitor.user_id)
    if user is None:
        return None
    items, confidences = model.history_of(user)
    if not items.size:
        return None
    return str(model.item_ids[items[int(np.argmax(confidences))]])


def category_weights(serving: ServingModel, visitor: Visitor, kind: str) -> dict[str, float]:
    """The visitor's engagement per category (or brand): training history and fresh events."""
    model = serving.published
    names = model.items.categories if kind == "category" else model.items.brands
    if names is None:
        return {}
    weights: dict[str, float] = {}
    user = model.user_index(visitor.user_id)
    if user is not None:
        items, confidences = model.history_of(user)
        for name, weight in zip(names[items].tolist(), confidences.tolist(), strict=True):
            weights[name] = weights.get(name, 0.0) + weight
    recent = model.item_indices([e[0] for e in visitor.fresh] + list(visitor.context))
    for name in names[recent].tolist():
        weights[name] = weights.get(name, 0.0) + 1.0
    weights.pop("", None)
    return weights


def favourite(serving: ServingModel, visitor: Visitor, kind: str) -> str:
    weights = category_weights(serving, visitor, kind)
    return max(weights, key=lambda name: (weights[name], name)) if weights else ""


def top_categories(
    policy: RankingPolicy,
    serving: ServingModel,
    visitor: Visitor,
    kind: str,
    k: int,
    filters: Filters,
) -> list[tuple[str, float]]:
    """The categories (or brands) of the visitor's recommendations to CATEGORY_DEPTH, each
    item weighted by its rank as NDCG weighs it, as shares summing to 1."""
    model = serving.published
    names = model.items.categories if kind == "category" else model.items.brands
    if names is None:
        return []
    depth = min(CATEGORY_DEPTH, serving.n_items)
    items, _, _ = policy.compute(
        serving, visitor.variant, visitor.user_id, depth, filters, False, visitor.context,
        visitor.fresh, visitor.stage, visitor.attributes,
    )  # fmt: skip
    positions = model.item_indices([i.item_id for i in items])
    totals: dict[str, float] = {}
    for rank, name in enumerate(names[positions].tolist()):
        if name:
            totals[name] = totals.get(name, 0.0) + 1.0 / math.log2(rank + 2)
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
    return [(name, weight / whole) for name, weight in ranked]
