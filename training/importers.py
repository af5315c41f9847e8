"""`recsvc data import`: public datasets into the data contract (events, items, users CSV).

Each importer reads one source layout (see ../shared/data/README.md), maps it onto the contract's
events (user_id, item_id, event view|cart|purchase, timestamp, quantity, price) and, where the
source has them, items and users. Source rows that the mapping leaves out (a cancellation, a
stray timestamp) are never dropped silently: each goes to `import.excluded.csv` with its file,
line and reason, and `import.json` records the counts and every mapping choice.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsvc.errors import BadInput

EXCLUDED_FILE = "import.excluded.csv"
REPORT_FILE = "import.json"
MOVIELENS_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# Ratings at or above this are read as a strong positive ("purchase"), below it as a weak one.
MOVIELENS_LIKED = 4.0


@dataclass
class ImportResult:
    """What one import wrote and what it left out, by reason."""

    format: str
    source: Path
    out: Path
    written: dict[str, int] = field(default_factory=dict)
    excluded: Counter[str] = field(default_factory=Counter)
    mapping: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        wrote = ", ".join(f"{name} {rows:,} rows" for name, rows in self.written.items())
        left = ", ".join(f"{reason} {n:,}" for reason, n in sorted(self.excluded.items()))
        line = f"{self.format}: wrote {wrote} to {self.out}"
        if self.excluded:
            line += f"; excluded {sum(self.excluded.values()):,} source rows ({left})"
            line += f", listed in {self.out / EXCLUDED_FILE}"
        return line + f"; {self.seconds:.1f} s"


class ExcludedRows:
    """Streams (file, line, reason) of every source row the mapping leaves out."""

    def __init__(self, path: Path, result: ImportResult) -> None:
        self._handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        self._writer = csv.writer(self._handle)
        self._writer.writerow(["file", "line", "reason"])
        self._result = result

    def add(self, source: Path, lines: np.ndarray, reason: str) -> None:
        if lines.size == 0:
            return
        self._result.excluded[reason] += int(lines.size)
        name = source.name
        self._writer.writerows((name, int(line), reason) for line in lines)

    def close(self) -> None:
        self._handle.close()


def import_dataset(fmt: str, source: Path, out: Path) -> ImportResult:
    """Imports `source` (a file or the dataset's folder) of format `fmt` into `out`."""
    if fmt not in IMPORTERS:
        raise BadInput(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    if not source.exists():
        raise BadInput(f"source {source} does not exist")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    result = ImportResult(fmt, source, out)
    excluded = ExcludedRows(out / EXCLUDED_FILE, result)
    try:
        IMPORTERS[fmt](source, out, result, excluded)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{fmt} source {source} is unreadable: {reason}") from exc
    finally:
        excluded.close()
    result.seconds = time.perf_counter() - started
    report = {
        "format": fmt,
        "source": str(source),
        "written": result.written,
        "excluded": dict(sorted(result.excluded.items())),
        "mapping": result.mapping,
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return result


def _find(source: Path, *names: str) -> Path:
    """`source` itself if it is a file, else the first of `names` inside it."""
    if source.is_file():
        return source
    for name in names:
        if (source / name).is_file():
            return source / name
    raise BadInput(f"{source} holds none of {', '.join(names)}")


def _read(
    path: Path,
    names: list[str] | None,
    types: dict[str, pa.DataType],
    delimiter: str = ",",
    encoding: str = "utf8",
) -> pa.Table:
    """A whole delimited file; `names` for files without a header row."""
    return pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, encoding=encoding),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char='"'),
        convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )


def _iso_utc(epoch_seconds: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    stamps = pc.cast(pc.cast(epoch_seconds, pa.int64()), pa.timestamp("s", tz="UTC"))
    return pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ")


def _write_events(
    out: Path,
    result: ImportResult,
    columns: dict[str, pa.Array | pa.ChunkedArray],
    name: str = "events.csv",
) -> None:
    table = pa.table(columns)
    pa_csv.write_csv(table, out / name)
    result.written[name] = table.num_rows


def _write_table(out: Path, result: ImportResult, name: str, table: pa.Table) -> None:
    pa_csv.write_csv(table, out / name)
    result.written[name] = table.num_rows


def _map_values(values: pa.ChunkedArray, mapping: dict[str, str]) -> tuple[pa.Array, np.ndarray]:
    """Mapped values and a mask of the rows whose value has no mapping."""
    keys = list(mapping)
    slot = pc.index_in(values, value_set=pa.array(keys)).to_numpy(zero_copy_only=False)
    unknown = np.isnan(slot.astype(float))
    targets = np.asarray([*mapping.values(), ""], dtype=object)
    mapped = targets[np.where(unknown, len(keys), slot).astype(np.int64)]
    return pa.array(mapped.astype(str)), unknown


def import_online_retail(
    source: Path, out: Path, result: ImportResult, excluded: ExcludedRows
) -> None:
    path = _find(source, "online_retail.csv")
    text = {c: pa.string() for c in ("InvoiceNo", "StockCode", "Description", "CustomerID")}
    table = _read(path, None, text)
    lines = np.arange(2, table.num_rows + 2)
    invoice = table.column("InvoiceNo")
    code = table.column("StockCode")
    customer = table.column("CustomerID")
    quantity = table.column("Quantity").to_numpy()
    price = table.column("UnitPrice").to_numpy()
    keep = np.ones(table.num_rows, dtype=bool)
    rules: list[tuple[str, np.ndarray]] = [
        ("missing_customer", pc.equal(customer, "").to_numpy(zero_copy_only=False)),
        ("cancellation", pc.starts_with(invoice, "C").to_numpy(zero_copy_only=False)),
        (
            "not_a_product",
            ~pc.match_substring_regex(code, r"^\d{5}[A-Za-z]*$").to_numpy(zero_copy_only=False),
        ),
        ("non_positive_quantity", quantity <= 0),
        ("non_positive_price", price <= 0),
    ]
    for reason, mask in rules:
        excluded.add(path, lines[keep & mask], reason)
        keep &= ~mask
    kept = table.filter(pa.array(keep))
    stamps = pc.cast(kept.column("InvoiceDate"), pa.timestamp("s"))
    _write_events(
        out,
        result,
        {
            "user_id": kept.column("CustomerID"),
            "item_id": pc.utf8_upper(kept.column("StockCode")),
            "event": pa.array(np.full(kept.num_rows, "purchase")),
            "timestamp": pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ"),
            "quantity": kept.column("Quantity"),
            "price": kept.column("UnitPrice"),
        },
    )
    _write_table(out, result, "items.csv", _online_retail_items(kept))
    users = kept.group_by("CustomerID", use_threads=False).aggregate([("Country", "first")])
    _write_table(
        out,
        result,
        "users.csv",
        pa.table(
            {"user_id": users.column("CustomerID"), "country": users.column("Country_first")}
        ).sort_by("user_id"),
    )
    result.mapping += [
        "every clean invoice line is a purchase event; quantity and unit price kept",
        "InvoiceDate is UK local time, written as if UTC (at most one hour off in summer)",
        "items: category is the last word of the item's description (the product type in this "
        "catalogue: HOLDER, LANTERN, BAG...), price the median unit price, no brand",
        "users: country as the only attribute",
    ]


def _online_retail_items(kept: pa.Table) -> pa.Table:
    codes = pc.utf8_upper(kept.column("StockCode"))
    grouped = (
        pa.table({"item_id": codes, "description": kept.column("Description")})
        .append_column("price", kept.column("UnitPrice"))
        .group_by("item_id")
        .aggregate([("description", "max"), ("price", "approximate_median")])
        .sort_by("item_id")
    )
    words = pc.utf8_upper(pc.utf8_trim_whitespace(grouped.column("description_max")))
    last_word = pc.extract_regex(words, r"(?P<word>[A-Z]+)[^A-Z]*$")
    category = pc.if_else(
        pc.is_valid(last_word), pc.struct_field(last_word, [0]), pa.scalar("UNKNOWN")
    )
    return pa.table(
        {
            "item_id": grouped.column("item_id"),
            "category": pc.fill_null(category, "UNKNOWN"),
            "brand": pa.array([""] * grouped.num_rows),
            "price": grouped.column("price_approximate_median"),
            "available": pa.array([True] * grouped.num_rows),
            "tags": pa.array([""] * grouped.num_rows),
        }
    )


def import_movielens(source: Path, out: Path, result: ImportResult, excluded: ExcludedRows) -> None:
    if (source / "u.data").is_file():
        ratings = _read(
            source / "u.data",
            ["user_id", "item_id", "rating", "timestamp"],
            {"user_id": pa.string(), "item_id": pa.string()},
            delimiter="\t",
        )
        items, users = _movielens_100k_items(source), _movielens_100k_users(source)
    else:
        path = _find(source, "ratings.csv")
        ratings = _read(path, None, {"userId": pa.string(), "movieId": pa.string()})
        ratings = ratings.rename_columns(["user_id", "item_id", "rating", "timestamp"])
        items, users = _movielens_latest_items(path.parent), None
    liked = pc.greater_equal(ratings.column("rating"), MOVIELENS_LIKED)
    _write_events(
        out,
        result,
        {
            "user_id": ratings.column("user_id"),
            "item_id": ratings.column("item_id"),
            "event": pc.if_else(liked, "purchase", "view"),
            "timestamp": _iso_utc(ratings.column("timestamp")),
        },
    )
    _write_table(out, result, "items.csv", items)
    if users is not None:
        _write_table(out, result, "users.csv", users)
    result.mapping += [
        f"explicit ratings become implicit events: rating >= {MOVIELENS_LIKED:g} is a "
        "'purchase' (a strong positive), a lower rating a 'view' (a weak one)",
        "items: category is the first genre listed, tags all genres; no price or brand",
        "users (100K only): age band, gender and occupation",
    ]


def _movielens_100k_items(source: Path) -> pa.Table:
    names = ["item_id", "title", "released", "video", "url", *MOVIELENS_GENRES]
    table = _read(
        source / "u.item",
        names,
        {n: pa.string() for n in names[:5]},
        delimiter="|",
        encoding="latin-1",
    )
    flags = np.column_stack([table.column(g).to_numpy() for g in MOVIELENS_GENRES]).astype(bool)
    genres = ["|".join(np.asarray(MOVIELENS_GENRES)[row]) for row in flags]
    return _genre_items(table.column("item_id"), genres)


def _movielens_latest_items(folder: Path) -> pa.Table:
    movies = _read(folder / "movies.csv", None, {"movieId": pa.string(), "genres": pa.string()})
    genres = ["" if g == "(no genres listed)" else g for g in movies.column("genres").to_pylist()]
    return _genre_items(movies.column("movieId"), genres)


def _genre_items(item_ids: pa.ChunkedArray, genres: list[str]) -> pa.Table:
    n = len(genres)
    return pa.table(
        {
            "item_id": item_ids,
            "category": [g.split("|")[0] if g else "unknown" for g in genres],
            "brand": [""] * n,
            "price": pa.nulls(n, pa.float64()),
            "available": [True] * n,
            "tags": genres,
        }
    )


def _movielens_100k_users(source: Path) -> pa.Table:
    names = ["user_id", "age", "gender", "occupation", "zip"]
    table = _read(
        source / "u.user", names, {"user_id": pa.string(), "zip": pa.string()}, delimiter="|"
    )
    age = table.column("age").to_numpy()
    edges = np.array([18, 25, 35, 45, 55, 65])
    labels = np.array(["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"])
    return pa.table(
        {
            "user_id": table.column("user_id"),
            "age_band": labels[np.searchsorted(edges, age, side="right")],
            "gender": table.column("gender"),
            "occupation": table.column("occupation"),
        }
    )


# Taobao UserBehavior: the official collection window, China local days (UTC+8).
TAOBAO_WINDOW = (1511539200, 1512316800)  # 2017-11-25 00:00 to 2017-12-04 00:00 UTC+8


def import_taobao(source: Path, out: Path, result: ImportResult, excluded: ExcludedRows) -> None:
    path = _find(source, "UserBehavior_head.csv", "UserBehavior.csv")
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    table = _read(path, names, {n: pa.string() for n in names[:4]})
    lines = np.arange(1, table.num_rows + 1)
    event, unknown = _map_values(
        table.column("behavior_type"),
        {"pv": "view", "cart": "cart", "fav": "cart", "buy": "purchase"},
    )
    stamps = table.column("timestamp").to_numpy()
    outside = (stamps < TAOBAO_WINDOW[0]) | (stamps >= TAOBAO_WINDOW[1])
    excluded.add(path, lines[unknown], "unknown_behavior")
    excluded.add(path, lines[outside & ~unknown], "outside_collection_window")
    keep = pa.array(~(unknown | outside))
    kept = table.filter(keep)
    _write_events(
        out,
        result,
        {
            "user_id": kept.column("user_id"),
            "item_id": kept.column("item_id"),
            "event": event.filter(keep),
            "timestamp": _iso_utc(kept.column("timestamp")),
        },
    )
    # An item listed under two categories (one in the head slice) keeps its first.
    first = kept.group_by("item_id", use_threads=False).aggregate([("category_id", "first")])
    n = first.num_rows
    items = pa.table(
        {
            "item_id": first.column("item_id"),
            "category": first.column("category_id_first"),
            "brand": [""] * n,
            "price": pa.nulls(n, pa.float64()),
            "available": [True] * n,
            "tags": [""] * n,
        }
    ).sort_by("item_id")
    _write_table(out, result, "items.csv", items)
    result.mapping += [
        "behavior_type pv -> view, cart -> cart, fav -> cart (intent without a purchase), "
        "buy -> purchase",
        "rows outside the official window 2017-11-25..2017-12-03 (UTC+8) are excluded",
        "items: category_id as category (an item with two categories keeps its first)",
    ]


TMALL_TYPES = {"0": "view", "1": "purchase", "2": "cart", "3": "cart"}


def import_tmall(source: Path, out: Path, result: ImportResult, excluded: ExcludedRows) -> None:
    path = _find(source, "t_alibaba_data.csv")
    table = _read(path, None, {c: pa.string() for c in ("user_id", "brand_id", "type")})
    lines = np.arange(2, table.num_rows + 2)
    event, unknown = _map_values(table.column("type"), TMALL_TYPES)
    parts = pc.extract_regex(table.column("visit_datetime"), r"^(?P<m>\d{1,2})-(?P<d>\d{1,2})$")
    bad_date = ~pc.is_valid(parts).to_numpy(zero_copy_only=False)
    excluded.add(path, lines[unknown], "unknown_type")
    excluded.add(path, lines[bad_date & ~unknown], "bad_date")
    keep = pa.array(~(unknown | bad_date))
    kept, parts = table.filter(keep), parts.filter(keep)
    month = pc.utf8_lpad(pc.struct_field(parts, [0]), 2, "0")
    day = pc.utf8_lpad(pc.struct_field(parts, [1]), 2, "0")
    # Day resolution only: every event of a day is stamped at local (UTC+8) midnight.
    stamp = pc.binary_join_element_wise("2013-", month, "-", day, "T00:00:00+08:00", "")
    _write_events(
        out,
        result,
        {
            "user_id": kept.column("user_id"),
            "item_id": kept.column("brand_id"),
            "event": event.filter(keep),
            "timestamp": stamp,
        },
    )
    result.mapping += [
        "the brand is the item; type 0 click -> view, 1 buy -> purchase, 2 collect -> cart, "
        "3 cart -> cart",
        "visit_datetime M-D is a day in 2013, stamped at 00:00 UTC+8; repeated clicks on one "
        "brand on one day are the same event and are dropped as duplicates at ingest",
        "no items file: the log has no categories",
    ]


def import_multibehavior(
    source: Path, out: Path, result: ImportResult, excluded: ExcludedRows
) -> None:
    if not source.is_dir():
        raise BadInput(f"multibehavior source {source} must be the folder with view/cart/buy.txt")
    parts = []
    for name, event in (("view.txt", "view"), ("cart.txt", "cart"), ("buy.txt", "purchase")):
        pairs = _read_pairs(source / name)
        parts.append(pairs.append_column("event", pa.array(np.full(pairs.num_rows, event))))
    events = pa.concat_tables(parts)
    # No timestamps: one instant for all, which the pipeline reads as "hold out per user".
    zero = pa.array(np.full(events.num_rows, "1970-01-01T00:00:00Z"))
    _write_events(
        out, result, {**{c: events.column(c) for c in events.column_names}, "timestamp": zero}
    )
    test = _read_pairs(source / "test.txt")
    _write_events(
        out,
        result,
        {
            "user_id": test.column("user_id"),
            "item_id": test.column("item_id"),
            "event": pa.array(np.full(test.num_rows, "purchase")),
            "timestamp": pa.array(np.full(test.num_rows, "1970-01-01T00:00:00Z")),
        },
        name="test-events.csv",
    )
    result.mapping += [
        "view.txt -> view, cart.txt -> cart, buy.txt -> purchase (buy.txt already holds "
        "valid.txt, which is therefore not read again)",
        "no timestamps: every event is stamped 1970-01-01T00:00:00Z, so training holds out "
        "a share of each user's events instead of a time cut",
        "test.txt (one held-out purchase per user) is written to test-events.csv for "
        "leave-one-out evaluation; it is not training input",
        "no items or users files: the benchmark has no attributes",
    ]


def _read_pairs(path: Path) -> pa.Table:
    if not path.is_file():
        raise BadInput(f"{path} does not exist")
    table = _read(
        path, ["user_id", "item_id"], {"user_id": pa.string(), "item_id": pa.string()}, " "
    )
    return table


IMPORTERS: dict[str, Callable[[Path, Path, ImportResult, ExcludedRows], None]] = {
    "online-retail": import_online_retail,
    "movielens": import_movielens,
    "taobao": import_taobao,
    "tmall": import_tmall,
    "multibehavior": import_multibehavior,
}
