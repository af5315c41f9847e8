"""Typed configuration, read from one TOML file whose shipped copy documents every default."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from recsvc.errors import BadInput

DEFAULT_CONFIG_PATH = Path(__file__).with_name("recsvc.toml")

EventName = Literal["view", "cart", "purchase"]
EVENT_NAMES: tuple[EventName, ...] = ("view", "cart", "purchase")

T = TypeVar("T")


@dataclass(frozen=True)
class EventColumns:
    user_id: str = "user_id"
    item_id: str = "item_id"
    event: str = "event"
    timestamp: str = "timestamp"
    quantity: str = "quantity"
    price: str = "price"


@dataclass(frozen=True)
class EventNames:
    view: list[str] = field(default_factory=lambda: ["view"])
    cart: list[str] = field(default_factory=lambda: ["cart"])
    purchase: list[str] = field(default_factory=lambda: ["purchase"])
    ignore: list[str] = field(default_factory=list)

    def source_to_event(self) -> dict[str, str]:
        """Maps each source value to its contract event, or to "ignore"."""
        mapping: dict[str, str] = {}
        for target in (*EVENT_NAMES, "ignore"):
            for value in getattr(self, target):
                if value in mapping:
                    raise BadInput(
                        f"event value {value!r} is mapped to both {mapping[value]} and {target}"
                    )
                mapping[value] = target
        return mapping


@dataclass(frozen=True)
class EventsSource:
    columns: EventColumns = field(default_factory=EventColumns)
    names: EventNames = field(default_factory=EventNames)


@dataclass(frozen=True)
class ItemColumns:
    item_id: str = "item_id"
    category: str = "category"
    brand: str = "brand"
    price: str = "price"
    available: str = "available"
    tags: str = "tags"


@dataclass(frozen=True)
class ItemsSource:
    columns: ItemColumns = field(default_factory=ItemColumns)


@dataclass(frozen=True)
class UserColumns:
    user_id: str = "user_id"


@dataclass(frozen=True)
class UsersSource:
    columns: UserColumns = field(default_factory=UserColumns)


@dataclass(frozen=True)
class DataConfig:
    max_future_hours: float = 24.0
    events: EventsSource = field(default_factory=EventsSource)
    items: ItemsSource = field(default_factory=ItemsSource)
    users: UsersSource = field(default_factory=UsersSource)


@dataclass(frozen=True)
class SignalsConfig:
    view: float = 1.0
    cart: float = 4.0
    purchase: float = 8.0
    scaling: Literal["log", "bm25", "none"] = "log"
    half_life_days: float = 0.0
    trending_half_life_days: float = 7.0
    history_half_life: float = 20.0

    def weight(self, event: str) -> float:
        return float(getattr(self, event))


def history_decay(newer: np.ndarray, half_life: float) -> np.ndarray:
    """The factor on an event of a user's history that `newer` later moments (distinct
    timestamps) of the same user follow: halved every `half_life` of them, 1 where it is 0.
    Training weights the matrix with it and serving its fresh events, so the two agree."""
    newer = np.asarray(newer, dtype=np.float64)
    return np.exp2(-newer / half_life) if half_life > 0 else np.ones_like(newer)


@dataclass(frozen=True)
class CleaningConfig:
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    max_events_per_user_day: float = 1000.0


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 42
    validation_share: float = 0.15
    holdout_user_last_n: int = 0
    min_holdout_users: int = 200
    keep_versions: int = 5
    quality_gate_tolerance: float = 0.05
    tune_budget_s: float = 30.0
    tune_trials: int = 30
    engine: Literal["local", "spark"] = "local"
    spark_master: str = "local[2]"
    spark_checkpoint_dir: str = ""


@dataclass(frozen=True)
class ALSConfig:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 8.0
    iterations: int = 15


@dataclass(frozen=True)
class BPRConfig:
    factors: int = 64
    learning_rate: float = 0.05
    regularization: float = 0.01
    iterations: int = 100


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbours: int = 100
    weighting: Literal["cosine", "bm25"] = "bm25"
    repeat_weight: float = 1.0


@dataclass(frozen=True)
class RP3BetaConfig:
    neighbours: int = 100
    alpha: float = 0.6
    beta: float = 0.4
    repeat_weight: float = 0.0


@dataclass(frozen=True)
class EASEConfig:
    l2: float = 200.0
    max_items: int = 20_000
    form: Literal["auto", "primal", "dual"] = "auto"
    repeat_weight: float = 1.0


@dataclass(frozen=True)
class LightFMConfig:
    factors: int = 64
    loss: Literal["warp", "bpr", "logistic"] = "warp"
    learning_rate: float = 0.05
    epochs: int = 30


@dataclass(frozen=True)
class TogetherConfig:
    """Bought-together complements, mined from baskets: a user's purchases at one moment (an
    order), or within `window_minutes` of the previous one."""

    window_minutes: float = 0.0
    min_support: int = 2
    min_lift: float = 1.0
    max_basket_items: int = 100
    neighbours: int = 50


@dataclass(frozen=True)
class SessionsConfig:
    """The session model: which item follows which within a visit (sequential rules)."""

    gap_minutes: float = 30.0
    steps: int = 3
    backward_weight: float = 0.5
    neighbours: int = 100


ModelType = Literal[
    "auto", "als", "bpr", "itemknn", "rp3beta", "ease", "lightfm", "popularity", "trending"
]


@dataclass(frozen=True)
class ModelConfig:
    type: ModelType = "auto"
    candidates: list[ModelType] = field(default_factory=lambda: ["als", "itemknn", "ease"])
    blend: bool = True
    ann_min_items: int = 100_000
    ann_target_recall: float = 0.95
    als: ALSConfig = field(default_factory=ALSConfig)
    bpr: BPRConfig = field(default_factory=BPRConfig)
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    rp3beta: RP3BetaConfig = field(default_factory=RP3BetaConfig)
    ease: EASEConfig = field(default_factory=EASEConfig)
    lightfm: LightFMConfig = field(default_factory=LightFMConfig)
    together: TogetherConfig = field(default_factory=TogetherConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)


@dataclass(frozen=True)
class ProfilesConfig:
    """Customer profiles, lifecycle stages and segments, built by every training run."""

    new_days: float = 14.0
    at_risk_days: float = 30.0
    churned_days: float = 60.0
    reactivated_gap_days: float = 30.0
    top_tags: int = 5
    clusters: int = 8
    coldstart: bool = True
    coldstart_epochs: int = 10


@dataclass(frozen=True)
class MarketingConfig:
    """Precision marketing models fitted by every training run."""

    churn_horizon_days: float = 30.0


@dataclass(frozen=True)
class InputsConfig:
    """Paths for a scheduled job; relative ones are relative to the config file. "" = unset."""

    events: str = ""
    items: str = ""
    users: str = ""
    model_dir: str = ""
    event_store: str = ""


@dataclass(frozen=True)
class RulesConfig:
    """Business rules applied to every list the server returns."""

    drop_unavailable: bool = True
    max_per_category: int = 0
    new_item_days: float = 14.0
    boost_new: float = 0.0
    promoted_tag: str = "promoted"
    boost_promoted: float = 0.0


@dataclass(frozen=True)
class LimitsConfig:
    max_id_length: int = 256
    max_list_size: int = 1000
    max_k: int = 500
    max_events_per_call: int = 1000
    max_message_bytes: int = 4 * 1024 * 1024
    max_audience: int = 100_000


@dataclass(frozen=True)
class VariantConfig:
    name: str = ""
    weight: float = 1.0
    strategy: Literal["model", "popular", "trending"] = "model"
    model_version: str = ""


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = ""
    salt: str = ""
    variants: list[VariantConfig] = field(default_factory=list)


Strategy = Literal["auto", "personal", "repurchase", "blend", "trending", "popular"]


@dataclass(frozen=True)
class LifecycleConfig:
    """Which strategy serves Recommend for a user in each lifecycle stage; "auto" serves what
    the training run chose for that stage on its validation split (see the model's manifest)."""

    new: Strategy = "auto"
    active: Strategy = "auto"
    reactivated: Strategy = "auto"
    at_risk: Strategy = "auto"
    churned: Strategy = "auto"

    def strategy(self, stage: str) -> Strategy:
        return getattr(self, stage)


RowKind = Literal[
    "for_you",
    "buy_again",
    "because_you_viewed",
    "bought_together",
    "trending_in_category",
    "new_arrivals",
    "trending",
    "popular",
]


@dataclass(frozen=True)
class PageRowConfig:
    name: str = ""
    kind: RowKind = "for_you"
    k: int = 10
    title: str = ""


def _default_rows() -> list[PageRowConfig]:
    return [
        PageRowConfig("for_you", "for_you", 10, "Recommended for you"),
        PageRowConfig("bought_together", "bought_together", 10, "Goes with your cart"),
        PageRowConfig("buy_again", "buy_again", 10, "Buy again"),
        PageRowConfig("because_you_viewed", "because_you_viewed", 10, "Because you viewed"),
        PageRowConfig("trending_in_category", "trending_in_category", 10, "Trending in"),
        PageRowConfig("new_arrivals", "new_arrivals", 10, "New arrivals"),
    ]


@dataclass(frozen=True)
class PageStagesConfig:
    """Row names per lifecycle stage, in page order; empty: every row, in [[rows]] order."""

    new: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    at_risk: list[str] = field(default_factory=list)
    churned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PageConfig:
    rows: list[PageRowConfig] = field(default_factory=_default_rows)
    stages: PageStagesConfig = field(default_factory=PageStagesConfig)

    def rows_for(self, stage: str) -> list[PageRowConfig]:
        names = getattr(self.stages, stage, None) or [r.name for r in self.rows]
        by_name = {r.name: r for r in self.rows}
        return [by_name[n] for n in names]


@dataclass(frozen=True)
class ChannelConfig:
    """A channel a campaign can reach customers by, and the users-file column of their opt-in."""

    name: str
    opt_in_column: str


def _default_channels() -> list[ChannelConfig]:
    return [
        ChannelConfig("push", "push_opt_in"),
        ChannelConfig("email", "email_opt_in"),
        ChannelConfig("sms", "sms_opt_in"),
    ]


@dataclass(frozen=True)
class CampaignsConfig:
    """Reach planning for campaigns (`recsvc campaign`, CreateCampaign)."""

    channels: list[ChannelConfig] = field(default_factory=_default_channels)
    max_per_customer: int = 2
    frequency_days: float = 7.0
    default_send_hour: int = 10


@dataclass(frozen=True)
class ServingConfig:
    event_store: str = ""
    event_store_timeout_s: float = 1.0
    realtime_events_per_user: int = 200
    realtime_users: int = 200_000
    cache_size: int = 50_000
    api_keys_file: str = ""
    profile_clock: Literal["events", "wall"] = "events"
    audience_propensity_weight: float = 1.0
    session_scoring: Literal["auto", "session", "model"] = "auto"
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    experiments: list[ExperimentConfig] = field(default_factory=list)
    page: PageConfig = field(default_factory=PageConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)


@dataclass(frozen=True)
class Config:
    inputs: InputsConfig = field(default_factory=InputsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    marketing: MarketingConfig = field(default_factory=MarketingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)


def load_config(path: Path | None = None) -> Config:
    """Reads a TOML config; keys left out keep their defaults. Raises BadInput on any problem."""
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config {path} is not valid TOML: {exc}") from exc
    config = build(Config, raw, "")
    base = Path(path).resolve().parent
    resolved = {
        name: str(base / value) if value and name != "event_store" else value
        for name, value in dataclasses.asdict(config.inputs).items()
    }
    serving = config.serving
    if serving.api_keys_file:
        serving = dataclasses.replace(serving, api_keys_file=str(base / serving.api_keys_file))
    _check_experiments(serving.experiments)
    _check_page(serving.page)
    _check_campaigns(serving.campaigns)
    return dataclasses.replace(config, inputs=InputsConfig(**resolved), serving=serving)


def _check_page(page: PageConfig) -> None:
    names = [r.name for r in page.rows]
    if "" in names or len(set(names)) != len(names):
        raise BadInput("config: every serving.page.rows entry needs a unique name")
    for row in page.rows:
        if not 1 <= row.k <= 100:
            raise BadInput(f"config: serving.page.rows {row.name}: k must be 1..100")
    for stage in dataclasses.fields(page.stages):
        for name in getattr(page.stages, stage.name):
            if name not in names:
                raise BadInput(f"config: serving.page.stages.{stage.name} names no row {name!r}")


def _check_campaigns(campaigns: CampaignsConfig) -> None:
    names = [c.name for c in campaigns.channels]
    if len(set(names)) != len(names) or not all(names):
        raise BadInput("config: every serving.campaigns.channels entry needs a unique name")
    if campaigns.max_per_customer < 0 or campaigns.frequency_days < 0:
        raise BadInput("config: serving.campaigns frequency cap values must not be negative")
    if not 0 <= campaigns.default_send_hour <= 23:
        raise BadInput("config: serving.campaigns.default_send_hour must be 0..23")


def _check_experiments(experiments: list[ExperimentConfig]) -> None:
    names = [e.name for e in experiments]
    for experiment in experiments:
        where = f"serving.experiments {experiment.name or '(unnamed)'}"
        if not experiment.name or names.count(experiment.name) > 1:
            raise BadInput(f"config: {where}: every experiment needs a unique name")
        if len(experiment.variants) < 2:
            raise BadInput(f"config: {where}: needs at least two variants")
        variant_names = [v.name for v in experiment.variants]
        if "" in variant_names or len(set(variant_names)) != len(variant_names):
            raise BadInput(f"config: {where}: every variant needs a unique name")
        if any(v.weight < 0 for v in experiment.variants) or not any(
            v.weight > 0 for v in experiment.variants
        ):
            raise BadInput(f"config: {where}: weights must be >= 0 and not all 0")


def build(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """Builds dataclass `cls` from a parsed TOML table, checking names and types."""
    if not isinstance(raw, dict):
        raise BadInput(f"config: [{where or 'root'}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BadInput(f"config: unknown key {'.'.join(filter(None, [where, unknown[0]]))}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, ".".join(filter(None, [where, name])))
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise BadInput(f"config: {where} must be one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise BadInput(f"config: {where} must be a list")
        if dataclasses.is_dataclass(item_type):
            return [build(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [_coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported config type at {where}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise BadInput(f"config: {where} must be {hint.__name__}, got {type(value).__name__}")


def dump_config(config: Config, header: str = "") -> str:
    """The TOML text of `config`, every key written; load_config reads it back unchanged."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _dump_table(config, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _dump_table(table: Any, where: str, lines: list[str], array: bool = False) -> None:
    scalars, tables, arrays = [], [], []
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            arrays.append((f.name, value))
        else:
            scalars.append((f.name, value))
    if array:
        lines += ["", f"[[{where}]]"]
    elif scalars and where:
        lines += ["", f"[{where}]"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in scalars]
    for name, value in tables:
        _dump_table(value, f"{where}.{name}" if where else name, lines)
    for name, elements in arrays:
        for element in elements:
            _dump_table(element, f"{where}.{name}" if where else name, lines, array=True)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
