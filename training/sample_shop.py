"""Generates the embedded sample shop: a synthetic e-commerce log with planted structure.

What is planted, so that tests can check a model recovers it:
- each user prefers one to three categories, drawn from their attributes (age band and gender
  shift the odds), and most of their sessions browse those categories;
- item popularity follows a power law inside each category;
- a funnel turns views into carts and carts into purchases; consumable categories are bought
  again (repeat purchases);
- users sign up over the period, and some stop coming back (churn), so recency varies;
- marketing consent: push, email and SMS opt-in columns in the users file;
- campaign responses on demand (`campaign_response`): a known conversion rate, and a known
  extra rate for the treated, to check that a campaign report recovers it;
- complements: each item has one complement in a paired category (COMPLEMENT_PAIRS, the item of
  the same popularity rank there), added to the same order in 30% of the purchases of the item
  (`complements()` names them, for bought-together tests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from recsvc.campaigns import Campaign
from recsvc.errors import BadInput
from recsvc.events import StoredEvent

log = logging.getLogger(__name__)

CATEGORIES = (
    "electronics",
    "books",
    "beauty",
    "home",
    "toys",
    "grocery",
    "fashion",
    "sports",
    "garden",
    "pets",
    "baby",
    "office",
)
# Categories whose items complement each other's (a purchase in one often brings one from the
# other into the same order).
COMPLEMENT_PAIRS = (
    ("electronics", "office"),
    ("books", "home"),
    ("beauty", "fashion"),
    ("toys", "baby"),
    ("grocery", "pets"),
    ("sports", "garden"),
)
CONSUMABLE = frozenset({"beauty", "grocery", "pets", "baby"})
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("f", "m", "x")
REGIONS = ("north", "south", "east", "west", "central")
TAG_WORDS = ("eco", "bestseller", "gift", "premium", "budget")
# Per age band, categories made more likely (x3) as a user's favourites: cold-start signal.
AGE_AFFINITY = {
    "18-24": ("electronics", "fashion", "sports"),
    "25-34": ("fashion", "beauty", "baby"),
    "35-44": ("home", "toys", "baby"),
    "45-54": ("home", "garden", "books"),
    "55+": ("garden", "books", "grocery"),
}
GENDER_AFFINITY = {"f": ("beauty", "fashion"), "m": ("electronics", "sports"), "x": ("books",)}
SECONDS_PER_DAY = 86_400
# Shares of customers who opted in to each channel's marketing messages.
OPT_IN_SHARES = {"push_opt_in": 0.55, "email_opt_in": 0.7, "sms_opt_in": 0.3}
START_EPOCH = 1_788_220_800  # 2026-09-01T00:00:00Z


@dataclass(frozen=True)
class ShopSpec:
    n_users: int = 2_000
    n_items: int = 1_000
    weeks: int = 8
    brands_per_category: int = 5
    sessions_per_user: float = 12.0  # mean; activity is log-normal across users
    preferred_share: float = 0.85  # share of sessions spent in the user's preferred categories
    churn_share: float = 0.25  # users who stop coming back before the end
    # A ratings-like log instead of a shop's (as MovieLens): every item a user touches is one
    # purchase, none twice, and each user is active for a few days, then gone.
    ratings: bool = False
    complement_share: float = 0.3  # purchases that bring the item's complement into the order


@dataclass
class SampleShop:
    events: pa.Table
    items: pa.Table
    users: pa.Table
    preferred_categories: dict[str, tuple[str, ...]]
    complements: dict[str, str] = field(default_factory=dict)  # item -> its planted complement

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("events", "items", "users"):
            pa_csv.write_csv(
                getattr(self, name),
                directory / f"{name}.csv",
                pa_csv.WriteOptions(quoting_style="needed"),
            )


def generate_shop(seed: int, spec: ShopSpec | None = None) -> SampleShop:
    spec = spec or ShopSpec()
    if spec.n_items < len(CATEGORIES) or spec.n_users < 1 or spec.weeks < 1:
        raise BadInput(
            f"the sample shop needs at least {len(CATEGORIES)} items, one user and one week"
        )
    rng = np.random.default_rng(seed)
    items, item_category, item_weight, item_price = _items(rng, spec)
    users, preferred = _users(rng, spec)
    events = _events(rng, spec, users, preferred, item_category, item_weight, item_price)
    # From a stream of their own, so that adding them left every event as it was.
    users = _with_opt_ins(users, np.random.default_rng([seed, 1]))
    user_ids = users.column("user_id").to_pylist()
    planted = {
        uid: tuple(CATEGORIES[c] for c in prefs)
        for uid, prefs in zip(user_ids, preferred, strict=True)
    }
    item_names = items.column("item_id").to_pylist()
    pairs = _complements(item_category, item_weight)
    complements = {item_names[i]: item_names[j] for i, j in enumerate(pairs.tolist())}
    return SampleShop(events, items, users, planted, complements)


def _complements(item_category: np.ndarray, item_weight: np.ndarray) -> np.ndarray:
    """Per item, its complement: the item of the same popularity rank in the paired category
    (the last one where the paired category has fewer items)."""
    complement = np.arange(item_category.size)
    ranked = []
    for c in range(len(CATEGORIES)):
        members = np.flatnonzero(item_category == c)
        ranked.append(members[np.argsort(-item_weight[members], kind="stable")])
    for a, b in COMPLEMENT_PAIRS:
        first, second = ranked[CATEGORIES.index(a)], ranked[CATEGORIES.index(b)]
        for one, other in ((first, second), (second, first)):
            if other.size:
                complement[one] = other[np.minimum(np.arange(one.size), other.size - 1)]
    return complement


def _ids(prefix: str, n: int) -> list[str]:
    width = len(str(n))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _items(rng: np.random.Generator, spec: ShopSpec):
    n = spec.n_items
    # Uneven category sizes, as in a real catalogue, but never an empty category.
    sizes = rng.dirichlet(np.full(len(CATEGORIES), 4.0))
    category = rng.choice(len(CATEGORIES), size=n, p=sizes)
    category[rng.choice(n, size=len(CATEGORIES), replace=False)] = np.arange(len(CATEGORIES))
    # Power-law popularity within each category (rank^-1.1 over a random order).
    weight = np.empty(n)
    for c in range(len(CATEGORIES)):
        members = np.flatnonzero(category == c)
        ranks = rng.permutation(members.size) + 1
        weight[members] = ranks**-1.1
    brand_slot = rng.integers(0, spec.brands_per_category, size=n)
    base_price = np.exp(rng.normal(2.5, 0.4, size=len(CATEGORIES)))
    price = np.round(base_price[category] * np.exp(rng.normal(0, 0.5, size=n)), 2)
    tags = [
        "|".join(sorted(rng.choice(TAG_WORDS, size=rng.integers(0, 3), replace=False)))
        for _ in range(n)
    ]
    table = pa.table(
        {
            "item_id": _ids("i", n),
            "category": [CATEGORIES[c] for c in category],
            "brand": [
                f"{CATEGORIES[c][:4]}-brand-{b + 1}"
                for c, b in zip(category, brand_slot, strict=True)
            ],
            "price": price,
            "available": rng.random(n) > 0.05,
            "tags": tags,
        }
    )
    return table, category, weight, price


def _users(rng: np.random.Generator, spec: ShopSpec):
    n = spec.n_users
    age = rng.choice(len(AGE_BANDS), size=n, p=[0.15, 0.3, 0.25, 0.18, 0.12])
    gender = rng.choice(len(GENDERS), size=n, p=[0.5, 0.45, 0.05])
    region = rng.choice(len(REGIONS), size=n)
    preferred = []
    for a, g in zip(age, gender, strict=True):
        odds = np.ones(len(CATEGORIES))
        for name in (*AGE_AFFINITY[AGE_BANDS[a]], *GENDER_AFFINITY[GENDERS[g]]):
            odds[CATEGORIES.index(name)] *= 3.0
        count = rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2])
        preferred.append(
            tuple(rng.choice(len(CATEGORIES), size=count, replace=False, p=odds / odds.sum()))
        )
    table = pa.table(
        {
            "user_id": _ids("u", n),
            "age_band": [AGE_BANDS[a] for a in age],
            "gender": [GENDERS[g] for g in gender],
            "region": [REGIONS[r] for r in region],
        }
    )
    return table, preferred


def _with_opt_ins(users: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Marketing consent per channel, the columns [serving.campaigns] maps by default."""
    for column, share in OPT_IN_SHARES.items():
        chosen = rng.random(users.num_rows) < share
        users = users.append_column(column, pa.array(np.where(chosen, "yes", "no")))
    return users


def _events(rng, spec, users, preferred, item_category, item_weight, item_price) -> pa.Table:
    period = spec.weeks * 7 * SECONDS_PER_DAY
    by_category = [np.flatnonzero(item_category == c) for c in range(len(CATEGORIES))]
    category_p = [item_weight[m] / item_weight[m].sum() for m in by_category]
    category_mass = np.array([item_weight[m].sum() for m in by_category])
    category_mass /= category_mass.sum()
    user_ids = users.column("user_id").to_pylist()

    log = _EventRows()
    for u, uid in enumerate(user_ids):
        signup = rng.uniform(0, period * 0.7)
        leaves = (
            signup + rng.uniform(0.1, 0.8) * (period - signup)
            if rng.random() < spec.churn_share
            else period
        )
        if spec.ratings:
            leaves = signup + rng.uniform(1, 5) * SECONDS_PER_DAY
        n_sessions = max(1, int(rng.lognormal(np.log(spec.sessions_per_user) - 0.3, 0.8)))
        starts = np.sort(rng.uniform(signup, leaves, size=n_sessions))
        # Evening-heavy hour of day.
        starts = (
            (starts // SECONDS_PER_DAY) * SECONDS_PER_DAY
            + rng.choice(24, size=n_sessions, p=_HOUR_P) * 3600
            + rng.integers(0, 3600, size=n_sessions)
        )
        bought: list[int] = []
        rated: set[int] = set()
        prefs = preferred[u]
        for start in starts:
            t = float(start)
            if bought and not spec.ratings and rng.random() < 0.25:
                consumables = [i for i in bought if CATEGORIES[item_category[i]] in CONSUMABLE]
                if consumables:
                    item = int(rng.choice(consumables))
                    for event in ("view", "cart", "purchase"):
                        t += rng.uniform(5, 120)
                        log.add(
                            uid,
                            item,
                            event,
                            t,
                            int(rng.integers(1, 4)),
                        )
                    continue
            if rng.random() < spec.preferred_share:
                category = int(rng.choice(prefs))
            else:
                category = int(rng.choice(len(CATEGORIES), p=category_mass))
            members = by_category[category]
            n_views = min(members.size, int(rng.integers(1, 7)))
            viewed = rng.choice(members, size=n_views, replace=False, p=category_p[category])
            liked = category in prefs
            for item in viewed:
                t += rng.uniform(5, 300)
                if spec.ratings:
                    if int(item) not in rated:
                        rated.add(int(item))
                        log.add(uid, int(item), "purchase", t, 1)
                    continue
                log.add(uid, int(item), "view", t, 1)
                if rng.random() < (0.2 if liked else 0.06):
                    t += rng.uniform(5, 120)
                    log.add(uid, int(item), "cart", t, 1)
                    if rng.random() < 0.5:
                        t += rng.uniform(30, 600)
                        qty = (
                            int(rng.integers(1, 4))
                            if CATEGORIES[item_category[item]] in CONSUMABLE
                            else 1
                        )
                        log.add(uid, int(item), "purchase", t, qty)
                        bought.append(int(item))
    if not spec.ratings:
        # Drawn after every other event, so that planting them leaves the rest of the log as
        # it was.
        complement = _complements(item_category, item_weight)
        for n in range(len(log.events)):
            if log.events[n] == "purchase" and rng.random() < spec.complement_share:
                log.add(log.users[n], int(complement[log.items[n]]), "purchase", log.times[n], 1)
    item_names = np.asarray(_ids("i", item_category.size), dtype=object)
    items_idx = np.asarray(log.items)
    ts = (START_EPOCH + np.asarray(log.times)).astype("datetime64[s]")
    order = np.argsort(ts, kind="stable")
    events = np.asarray(log.events, dtype=object)
    price = np.where(events == "purchase", item_price[items_idx], np.nan)
    return pa.table(
        {
            "user_id": pa.array(np.asarray(log.users, dtype=object)[order]),
            "item_id": pa.array(item_names[items_idx][order]),
            "event": pa.array(events[order]),
            "timestamp": pa.array([f"{t}Z" for t in ts[order]]),
            "quantity": pa.array(np.asarray(log.quantities)[order]),
            "price": pa.array(price[order], from_pandas=True),
        }
    )


@dataclass
class _EventRows:
    users: list[str] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    quantities: list[int] = field(default_factory=list)

    def add(self, user: str, item: int, event: str, t: float, quantity: int) -> None:
        self.users.append(user)
        self.items.append(item)
        self.events.append(event)
        self.times.append(t)
        self.quantities.append(quantity)


_HOUR_WEIGHTS = np.array(
    [
        1,
        0.5,
        0.3,
        0.2,
        0.2,
        0.3,
        0.6,
        1,
        1.5,
        2,
        2,
        2.2,
        2.5,
        2.2,
        2,
        2,
        2.2,
        2.6,
        3.2,
        3.8,
        4,
        3.5,
        2.5,
        1.6,
    ]
)
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()


def campaign_response(
    campaign: Campaign,
    catalogue: tuple[np.ndarray, np.ndarray, np.ndarray],
    seed: int,
    base_rate: float,
    uplift: float,
    left_out: frozenset[str] = frozenset(),
) -> list[StoredEvent]:
    """Purchases answering a campaign, with a known effect: every member converts with
    `base_rate` within the attribution window, the treated with `base_rate + uplift` more, each
    buying one thing offered (their own recommendation, an offered item or one from the offered
    category; anything, for a campaign counting any purchase) at its catalogue price.

    `catalogue` is (item ids, categories, prices); `left_out` members (forgotten) never buy."""
    if not (0.0 <= base_rate <= 1.0 and 0.0 <= base_rate + uplift <= 1.0):
        raise BadInput("base rate and base rate + uplift must both be within 0..1")
    item_ids, categories, prices = catalogue
    rng = np.random.default_rng(seed)
    window_ms = int(campaign.window_days * SECONDS_PER_DAY * 1000)
    in_category = (
        item_ids[categories == campaign.offer_category] if campaign.offer_category else item_ids
    )
    price_of = dict(zip(item_ids.tolist(), prices.tolist(), strict=True))
    bought = []
    for user, held in zip(campaign.members, campaign.control, strict=True):
        if user in left_out or rng.random() >= base_rate + (0.0 if held else uplift):
            continue
        offered = sorted(campaign.offered(user)) if campaign.conversion == "offered" else []
        choices = offered or in_category.tolist()
        if not choices:
            continue
        item = str(choices[rng.integers(len(choices))])
        price = float(price_of.get(item, float("nan")))
        stamp = campaign.created_ms + 1 + int(rng.integers(window_ms - 1))
        bought.append(
            StoredEvent(user, item, "purchase", stamp, 1.0, price if np.isfinite(price) else None)
        )
    return bought
