"""Request checks at their exact limits: one past a limit is InvalidArgument, saying which field
and why; the limit itself passes. Small limits keep the cases readable."""

from __future__ import annotations

import math

import pytest

from recsvc.config import LimitsConfig
from recsvc.errors import InvalidArgument
from recsvc.serving.validation import RequestChecks
from recsvc.serving.values import Filters

CHECKS = RequestChecks(LimitsConfig(max_id_length=5, max_list_size=3, max_k=7))


def refused(match: str):
    return pytest.raises(InvalidArgument, match=match)


def test_ids_are_non_empty_and_at_most_the_length_limit() -> None:
    CHECKS.check_id("abcde", "user_id")
    with refused("^user_id must not be empty$"):
        CHECKS.check_id("", "user_id")
    with refused("^item_id is longer than 5 characters$"):
        CHECKS.check_id("abcdef", "item_id")


@pytest.mark.parametrize("value", ["a\x00b", "ab\n", "\tab", "a\x7f", "a\x1fb"])
def test_an_id_with_a_control_character_is_refused(value: str) -> None:
    with refused("^user_id holds a control character$"):
        CHECKS.check_id(value, "user_id")


def test_ids_may_hold_any_printable_character() -> None:
    for value in ("商品-4", "a b", "é", "x/y?z", "\u00a0"):
        CHECKS.check_id(value, "item_id")


@pytest.mark.parametrize("k", [1, 7])
def test_k_within_its_bounds_passes(k: int) -> None:
    CHECKS.check_k(k)


@pytest.mark.parametrize("k", [0, -1, 8])
def test_k_outside_its_bounds_is_refused(k: int) -> None:
    with refused(f"^k must be between 1 and 7, got {k}$"):
        CHECKS.check_k(k)


def test_lists_are_bounded_in_size_and_entry_length() -> None:
    CHECKS.check_list(["a", "b", "abcde"], "context_item_ids")
    CHECKS.check_list((), "context_item_ids")
    with refused("^context_item_ids has 4 entries; at most 3$"):
        CHECKS.check_list(["a", "b", "c", "d"], "context_item_ids")
    with refused("^an entry of categories is too long$"):
        CHECKS.check_list(["ok", "abcdef"], "categories")


def test_attributes_are_bounded_in_number_and_length() -> None:
    CHECKS.check_attributes((("age", "55+"), ("g", "abcde"), ("abcde", "x")))
    with refused("^too many user_attributes$"):
        CHECKS.check_attributes(tuple((f"a{n}", "v") for n in range(4)))
    for bad in (("", "v"), ("abcdef", "v"), ("age", "abcdef")):
        with refused(r"^user_attributes: names must be non-empty .* at most 5 characters"):
            CHECKS.check_attributes((("ok", "v"), bad))
    # The message quotes at most 40 characters of a name, however long it is.
    with pytest.raises(InvalidArgument) as refusal:
        CHECKS.check_attributes((("n" * 100, "v"),))
    assert str(refusal.value).endswith(f"at most 5 characters ({'n' * 40!r})")


@pytest.mark.parametrize("field", ["include_categories", "exclude_categories", "exclude_item_ids"])
def test_every_filter_list_is_checked(field: str) -> None:
    CHECKS.check_filters(Filters(**{field: ("a", "b", "c")}))
    with refused(f"^{field} has 4 entries; at most 3$"):
        CHECKS.check_filters(Filters(**{field: ("a", "b", "c", "d")}))
    with refused(f"^an entry of {field} is too long$"):
        CHECKS.check_filters(Filters(**{field: ("abcdef",)}))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["min_price", "max_price"])
def test_price_bounds_must_be_finite(field: str, value: float) -> None:
    with refused(f"^{field} must be a finite number$"):
        CHECKS.check_filters(Filters(**{field: value}))


def test_price_bounds_may_meet_but_not_cross() -> None:
    CHECKS.check_filters(Filters(min_price=0.0, max_price=0.0))
    CHECKS.check_filters(Filters(min_price=2.5))
    CHECKS.check_filters(Filters(max_price=-1.0))
    with refused("^min_price is above max_price$"):
        CHECKS.check_filters(Filters(min_price=3.0, max_price=2.99))
