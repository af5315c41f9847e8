"""Request validation: a client's mistake is InvalidArgument, said in words, before any work."""

from __future__ import annotations

import numpy as np

from recsvc.config import LimitsConfig
from recsvc.errors import InvalidArgument
from recsvc.ids import id_problem
from recsvc.serving.values import Filters


class RequestChecks:
    """The limits of `[serving.limits]`, applied to ids, lists, k and filters."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits

    def check_id(self, value: str, name: str) -> None:
        problem = id_problem(value, self.limits.max_id_length)
        if problem is not None:
            raise InvalidArgument(f"{name} {problem}")

    def check_attributes(self, attributes: tuple[tuple[str, str], ...]) -> None:
        limit = self.limits.max_id_length
        if len(attributes) > self.limits.max_list_size:
            raise InvalidArgument("too many user_attributes")
        for name, value in attributes:
            if not name or len(name) > limit or len(value) > limit:
                raise InvalidArgument(
                    f"user_attributes: names must be non-empty and names and values at most "
                    f"{limit} characters ({name[:40]!r})"
                )

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.limits.max_k}, got {k}")

    def check_list(self, values: tuple[str, ...] | list[str], name: str) -> None:
        if len(values) > self.limits.max_list_size:
            raise InvalidArgument(
                f"{name} has {len(values)} entries; at most {self.limits.max_list_size}"
            )
        for value in values:
            if len(value) > self.limits.max_id_length:
                raise InvalidArgument(f"an entry of {name} is too long")

    def check_filters(self, filters: Filters) -> None:
        for name in ("include_categories", "exclude_categories", "exclude_item_ids"):
            self.check_list(getattr(filters, name), name)
        for name in ("min_price", "max_price"):
            value = getattr(filters, name)
            if value is not None and not np.isfinite(value):
                raise InvalidArgument(f"{name} must be a finite number")
        if (
            filters.min_price is not None
            and filters.max_price is not None
            and filters.min_price > filters.max_price
        ):
            raise InvalidArgument("min_price is above max_price")
