"""Reads events, items and users files into the data contract, validating every row.

A row that breaks the contract is never dropped silently: it goes to a rejects file with its
line number (CSV) or row number (Parquet), a reason code and a readable detail, and the
summary counts it. A file that cannot be used at all (unreadable, a required column missing)
raises BadInput, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recsvc.config import Config, DataConfig, LimitsConfig
from recsvc.errors import BadInput
from recsvc.events import EVENTS_SCHEMA
from recsvc.ids import CONTROL_CHARACTER

log = logging.getLogger(__name__)

# Ids longer than the server accepts ([serving.limits] max_id_length) are rejected in training
# too, so that every id a model holds can be asked for.
MAX_ID_LENGTH = LimitsConfig.max_id_length

PARQUET_SUFFIXES = (".parquet", ".pq")
# Epoch values at or above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
EPOCH_MS_THRESHOLD = 1e11
ISO_WITH_ZONE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$"
ISO_NAIVE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$"
EPOCH_NUMBER = r"^\d+(\.\d+)?$"
REPLACEMENT = "\ufffd"  # what a decoder makes of bytes that are not UTF-8
TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f"}


@dataclass
class IngestReport:
    """What happened to every row of one source file."""

    source: str
    rows_read: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates_dropped: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    rejects_path: str | None = None
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        parts = [
            f"{self.source}: {self.rows_read} rows read, {self.accepted} accepted",
            f"{self.rejected_total} rejected"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in sorted(self.rejected.items()))})"
                if self.rejected
                else ""
            ),
            f"{self.duplicates_dropped} duplicates dropped",
        ]
        if self.ignored:
            parts.append(
                f"{sum(self.ignored.values())} ignored by config "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.ignored.items()))})"
            )
        if self.seconds > 0:
            parts.append(f"{self.rows_read / self.seconds:,.0f} rows/s")
        line = "; ".join(parts)
        if self.rejects_path:
            line += f"; rejects in {self.rejects_path}"
        return line

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "duplicates_dropped": self.duplicates_dropped,
            "ignored": dict(sorted(self.ignored.items())),
            "rejects_path": self.rejects_path,
        }


@dataclass
class RawTable:
    """A source file read as it is, with the file position of every row."""

    path: Path
    table: pa.Table
    positions: np.ndarray  # 1-based line (CSV) or row (Parquet) number of each table row
    malformed: list[tuple[int, str, str]]  # (line, detail, text) of rows that could not be split
    position_word: str  # "line" or "row"

    def checks(self) -> RowChecks:
        """The row checks of this table, starting with `bad_encoding`: a row holding U+FFFD,
        which is what bytes that are not UTF-8 became on reading (and no real id holds)."""
        checks = RowChecks(self.table.num_rows)
        for name, column in zip(self.table.column_names, self.table.columns, strict=True):
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                checks.reject(
                    pc.match_substring(column, REPLACEMENT).to_numpy(zero_copy_only=False),
                    "bad_encoding",
                    f"{name} holds bytes that are not UTF-8 (shown as {REPLACEMENT})",
                )
        return checks


class RowChecks:
    """Collects the first failing reason of each row, computed column-wise."""

    def __init__(self, n_rows: int) -> None:
        self.code = np.zeros(n_rows, dtype=np.int16)
        self.reasons: list[str] = [""]
        self._detail_parts: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def reject(
        self,
        mask: np.ndarray,
        reason: str,
        detail: Callable[[np.ndarray], np.ndarray | list[str]] | str,
    ) -> None:
        """Marks rows in `mask` that are still clean with `reason`; `detail` explains each."""
        rows = np.flatnonzero(np.asarray(mask, dtype=bool) & (self.code == 0))
        if rows.size == 0:
            return
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.code[rows] = self.reasons.index(reason)
        texts = (
            np.full(rows.size, detail, dtype=object)
            if isinstance(detail, str)
            else (np.asarray(detail(rows), dtype=object))
        )
        self._detail_parts.append((rows, texts))

    def rejected_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices, reason per row, detail per row), in row order."""
        if not self._detail_parts:
            empty = np.empty(0, dtype=object)
            return np.empty(0, dtype=np.int64), empty, empty
        rows = np.concatenate([r for r, _ in self._detail_parts])
        details = np.concatenate([d for _, d in self._detail_parts])
        order = np.argsort(rows, kind="stable")
        rows, details = rows[order], details[order]
        reasons = np.asarray(self.reasons, dtype=object)[self.code[rows]]
        return rows, reasons, details


def read_raw(path: Path, columns: list[str] | None, required: list[str], what: str) -> RawTable:
    """Reads `columns` (those present; None for all) of a CSV or Parquet file, CSV as text."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{what} file {path} is a directory: give the file itself")
    if not path.is_file():
        raise BadInput(f"{what} file {path} does not exist")
    try:
        if path.name.endswith(PARQUET_SUFFIXES):
            return _read_parquet(path, columns, required, what)
        return _read_csv(path, columns, required, what)
    except BadInput:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{what} file {path} is unreadable: {reason}") from exc


def _check_columns(present: list[str], required: list[str], what: str, path: Path) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise BadInput(
            f"{what} file {path} lacks required column {missing[0]!r} "
            f"(columns found: {', '.join(present) or 'none'})"
        )


def _read_csv(path: Path, columns: list[str] | None, required: list[str], what: str) -> RawTable:
    present = csv_header(path)
    _check_columns(present, required, what, path)
    wanted = [c for c in (columns or present) if c in present]
    source = path
    with contextlib.ExitStack() as stack:
        try:
            with _quiet_decode_failures():
                table, malformed = _read_csv_text(path, wanted, use_threads=True)
        except pa.ArrowInvalid as exc:
            # Bytes that are not UTF-8 fail the read (in a malformed row, with a parse error):
            # read a copy in which they are U+FFFD, so that each costs its row, not the file.
            path = stack.enter_context(_utf8_copy(path))
            try:
                table, malformed = _read_csv_text(path, wanted, use_threads=True)
            except pa.ArrowInvalid:
                raise exc from None
        if malformed:
            # Only the single-threaded reader knows the line number of a malformed row.
            table, malformed = _read_csv_text(path, wanted, use_threads=False)
    # Data starts on line 2; rows the reader skipped as malformed take their lines with them.
    n_lines = table.num_rows + len(malformed)
    positions = np.arange(2, 2 + n_lines, dtype=np.int64)
    if malformed:
        positions = np.setdiff1d(positions, [m[0] for m in malformed], assume_unique=True)
    return RawTable(source, table, positions, sorted(malformed), "line")


@contextlib.contextmanager
def _quiet_decode_failures() -> Iterator[None]:
    """pyarrow decodes a malformed row's text before calling the invalid-row handler, and
    reports a failure there as an 'unraisable' traceback before the read fails; the read is
    then retried on a UTF-8 copy, so that report is noise to the operator."""
    previous = sys.unraisablehook

    def hook(report: sys.UnraisableHookArgs) -> None:
        if report.exc_type is not UnicodeDecodeError:
            previous(report)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def _utf8_copy(path: Path) -> Iterator[Path]:
    """A temporary copy of a (maybe compressed) file with every byte sequence that is not
    UTF-8 replaced by U+FFFD, made in blocks (a multi-byte character may straddle two)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    opener = gzip.open if path.name.endswith(".gz") else open
    with tempfile.TemporaryDirectory(prefix="recsvc-utf8-") as directory:
        copy = Path(directory) / path.name.removesuffix(".gz")
        with opener(path, "rb") as source, open(copy, "wb") as target:
            while block := source.read(1 << 24):
                target.write(decoder.decode(block).encode("utf-8"))
            target.write(decoder.decode(b"", final=True).encode("utf-8"))
        yield copy


def _read_csv_text(
    path: Path, columns: list[str], use_threads: bool
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """`columns` of a CSV file as text, and (line, detail, text) of rows that did not split."""
    malformed: list[tuple[int, str, str]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        detail = f"expected {row.expected_columns} fields, got {row.actual_columns}"
        malformed.append((int(row.number or 0), detail, row.text))
        return "skip"

    table = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(use_threads=use_threads, block_size=1 << 24),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in columns},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, malformed


def csv_header(path: Path) -> list[str]:
    """Column names from the first line of a CSV file (compressed ones included)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        # Only the first line is decoded: a bad byte further down is one row's problem.
        first = stream.readline().decode("utf-8-sig")
    return next(csv.reader([first.rstrip("\r\n")]), [])


def _read_parquet(
    path: Path, columns: list[str] | None, required: list[str], what: str
) -> RawTable:
    present = pq.read_schema(path).names
    _check_columns(present, required, what, path)
    table = pq.read_table(path, columns=[c for c in (columns or present) if c in present])
    table = pa.table(
        [_bytes_as_text(c) if pa.types.is_binary(c.type) else c for c in table.columns],
        names=table.column_names,
    )
    positions = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return RawTable(path, table, positions, [], "row")


def _bytes_as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A binary column as text, bytes that are not UTF-8 as U+FFFD (rows then bad_encoding)."""
    values = [None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


def as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings, nulls as empty strings, surrounding spaces trimmed."""
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(column, ""))


def parse_timestamps_ms(column: pa.ChunkedArray) -> np.ndarray:
    """Epoch milliseconds for ISO-8601, epoch seconds or epoch milliseconds; NaN where unparseable.

    Timestamps written without an offset are taken as UTC.
    """
    if pa.types.is_timestamp(column.type):
        values = pc.cast(column, pa.timestamp("ms", tz=column.type.tz)).cast(pa.int64())
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        numbers = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(numbers >= EPOCH_MS_THRESHOLD, numbers, numbers * 1000.0)
    text = as_text(column)
    # Fast paths for a column written in one format, the usual case.
    for target in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
        try:
            return _cast_dates(text, target, strict=True)
        except pa.ArrowInvalid:
            pass
    out = np.full(len(text), np.nan)
    is_epoch = pc.match_substring_regex(text, EPOCH_NUMBER).to_numpy(zero_copy_only=False)
    if is_epoch.any():
        numbers = pc.cast(pc.filter(text, is_epoch), pa.float64()).to_numpy(zero_copy_only=False)
        out[is_epoch] = np.where(numbers >= EPOCH_MS_THRESHOLD, numbers, numbers * 1000.0)
    for pattern, target in (
        (ISO_WITH_ZONE, pa.timestamp("ms", tz="UTC")),
        (ISO_NAIVE, pa.timestamp("ms")),
    ):
        mask = pc.match_substring_regex(text, pattern).to_numpy(zero_copy_only=False)
        if mask.any():
            out[mask] = _cast_dates(pc.filter(text, mask), target)
    return out


def _cast_dates(text: pa.ChunkedArray, target: pa.DataType, strict: bool = False) -> np.ndarray:
    try:
        return pc.cast(text, target).cast(pa.int64()).to_numpy(zero_copy_only=False).astype(float)
    except pa.ArrowInvalid:
        if strict:
            raise
        # A well-shaped but impossible date (month 13) fails the whole cast; find it value by value.
        out = np.full(len(text), np.nan)
        for i, value in enumerate(text.to_pylist()):
            try:
                out[i] = pc.cast(pa.array([value]), target).cast(pa.int64())[0].as_py()
            except pa.ArrowInvalid:
                continue
        return out


def parse_numbers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, present): NaN and present=False for empty cells; NaN and present=True for junk."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return values, ~np.isnan(values)
    text = as_text(column)
    present = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
    numeric = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    numeric = numeric.to_numpy(zero_copy_only=False)
    values = np.full(len(text), np.nan)
    if numeric.any():
        values[numeric] = pc.cast(pc.filter(text, numeric), pa.float64()).to_numpy(
            zero_copy_only=False
        )
    return values, present


class RejectsWriter:
    """Writes the rejects of one source as CSV: line (or row), reason, detail, data as read."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def write(self, raw: RawTable, checks: RowChecks, report: IngestReport) -> None:
        rows, reasons, details = checks.rejected_rows()
        positions = raw.positions[rows].tolist() + [m[0] for m in raw.malformed]
        reasons_list = reasons.tolist() + ["malformed_row"] * len(raw.malformed)
        details_list = details.tolist() + [m[1] for m in raw.malformed]
        if raw.table.num_columns and rows.size:
            texts = [as_text(raw.table.column(i)).take(rows) for i in range(raw.table.num_columns)]
            joined = (
                pc.binary_join_element_wise(*texts, ",").to_pylist()
                if len(texts) > 1
                else (texts[0].to_pylist())
            )
        else:
            joined = []
        row_texts = joined + [m[2] for m in raw.malformed]
        report.rejected.update(reasons_list)
        if not positions or self.directory is None:
            return
        order = np.argsort(np.asarray(positions), kind="stable")
        out = pa.table(
            {
                raw.position_word: pa.array(np.asarray(positions)[order]),
                "reason": pa.array(np.asarray(reasons_list, dtype=object)[order].tolist()),
                "detail": pa.array(np.asarray(details_list, dtype=object)[order].tolist()),
                "data": pa.array(np.asarray(row_texts, dtype=object)[order].tolist()),
            }
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{raw.path.name}.rejects.csv"
        pa_csv.write_csv(out, target)
        report.rejects_path = str(target)


@dataclass
class Dataset:
    """Clean inputs of one training run, in the data contract's column names."""

    events: pa.Table  # user_id, item_id, event, timestamp_ms, quantity, price
    items: pa.Table | None  # item_id, category, brand, price, available, tags
    users: pa.Table | None  # user_id plus attribute columns
    reports: list[IngestReport]
    # Users-file columns of marketing consent ([serving.campaigns] channels): profiles keep
    # them, for reaching customers; models never learn from them.
    consent_columns: tuple[str, ...] = ()

    @property
    def modelled_users(self) -> pa.Table | None:
        """The users file without its consent columns: what the models may learn from."""
        if self.users is None:
            return None
        present = [c for c in self.consent_columns if c in self.users.column_names]
        return self.users.drop_columns(present) if present else self.users


def load_dataset(
    events_path: Path | None,
    config: DataConfig,
    items_path: Path | None = None,
    users_path: Path | None = None,
    rejects_dir: Path | None = None,
    now_ms: float | None = None,
    max_id_length: int = MAX_ID_LENGTH,
) -> Dataset:
    """Reads and validates all inputs; the catalogue, when given, vets the events' item ids."""
    writer = RejectsWriter(rejects_dir)
    reports = []
    items = None
    if items_path is not None:
        items, report = load_items(items_path, config, writer, max_id_length)
        reports.append(report)
    if events_path is not None:
        events, report = load_events(events_path, config, writer, items, now_ms, max_id_length)
        events = events.cast(EVENTS_SCHEMA)
        reports.insert(0, report)
    else:
        events = EVENTS_SCHEMA.empty_table()
    users = None
    if users_path is not None:
        users, report = load_users(users_path, config, writer, max_id_length)
        reports.append(report)
    return Dataset(events, items, users, reports)


def load_job_inputs(
    events_path: Path | None,
    items_path: Path | None,
    users_path: Path | None,
    config: Config,
    rejects_dir: Path | None,
) -> Dataset:
    """load_dataset with a whole job's config: its [data] section, the id limit every request
    is held to ([serving.limits] max_id_length) and the consent columns models leave alone."""
    dataset = load_dataset(
        events_path,
        config.data,
        items_path,
        users_path,
        rejects_dir=rejects_dir,
        max_id_length=config.serving.limits.max_id_length,
    )
    dataset.consent_columns = tuple(c.opt_in_column for c in config.serving.campaigns.channels)
    return dataset


def load_events(
    path: Path,
    config: DataConfig,
    writer: RejectsWriter,
    items: pa.Table | None = None,
    now_ms: float | None = None,
    max_id_length: int = MAX_ID_LENGTH,
) -> tuple[pa.Table, IngestReport]:
    started = time.perf_counter()
    cols = config.events.columns
    raw = read_raw(
        path,
        [cols.user_id, cols.item_id, cols.event, cols.timestamp, cols.quantity, cols.price],
        [cols.user_id, cols.item_id, cols.event, cols.timestamp],
        "events",
    )
    table, n = raw.table, raw.table.num_rows
    checks = raw.checks()
    user = as_text(table.column(cols.user_id))
    item = as_text(table.column(cols.item_id))
    checks.reject(
        pc.equal(user, "").to_numpy(zero_copy_only=False), "missing_user_id", "user_id is empty"
    )
    checks.reject(
        pc.equal(item, "").to_numpy(zero_copy_only=False), "missing_item_id", "item_id is empty"
    )
    reject_bad_ids(checks, user, "user_id", max_id_length)
    reject_bad_ids(checks, item, "item_id", max_id_length)

    source_event = as_text(table.column(cols.event))
    mapping = config.events.names.source_to_event()
    keys = pa.array(list(mapping))
    targets = pa.array([*mapping.values(), ""])
    slot = pc.fill_null(pc.index_in(source_event, value_set=keys), len(mapping))
    slot = slot.to_numpy(zero_copy_only=False).astype(np.int64)
    event = targets.take(pa.array(slot))
    is_ignored = pc.equal(event, "ignore").to_numpy(zero_copy_only=False)
    checks.reject(
        slot == len(mapping),
        "unknown_event",
        lambda r: [
            f"event {v!r} is not mapped in data.events.names" for v in _values_at(source_event, r)
        ],
    )

    ts_text = table.column(cols.timestamp)
    ts_ms = parse_timestamps_ms(ts_text)
    checks.reject(
        np.isnan(ts_ms),
        "bad_timestamp",
        lambda r: [f"cannot read timestamp {v!r}" for v in _values_at(ts_text, r)],
    )
    checks.reject(ts_ms < 0, "bad_timestamp", "timestamp is before 1970")
    now = time.time() * 1000.0 if now_ms is None else now_ms
    limit = now + config.max_future_hours * 3_600_000.0
    checks.reject(
        ts_ms > limit,
        "future_timestamp",
        f"timestamp is more than {config.max_future_hours:g} h in the future",
    )

    quantity = np.ones(n)
    if cols.quantity in table.column_names:
        values, present = parse_numbers(table.column(cols.quantity))
        quantity = np.where(present, values, 1.0)
        finite = np.where(np.isfinite(values), values, 0.5)  # 0.5: not whole, so rejected
        bad = present & ~((values > 0) & (np.mod(finite, 1) == 0))
        checks.reject(
            bad,
            "bad_quantity",
            _describe(table.column(cols.quantity), "quantity", "a positive whole number"),
        )
    price = np.full(n, np.nan)
    if cols.price in table.column_names:
        values, present = parse_numbers(table.column(cols.price))
        price = values
        checks.reject(
            present & ~((values >= 0) & np.isfinite(values)),
            "bad_price",
            _describe(table.column(cols.price), "price", "a finite number >= 0"),
        )

    if items is not None:
        known = pc.is_in(item, value_set=items.column("item_id")).to_numpy(zero_copy_only=False)
        checks.reject(~known, "unknown_item", "item_id is not in the items file")

    ignored_mask = checks.ok & is_ignored
    report = IngestReport(source=str(path), rows_read=n + len(raw.malformed))
    report.ignored.update(_values_at(source_event, np.flatnonzero(ignored_mask)))

    keep = checks.ok & ~ignored_mask
    clean = pa.table(
        {
            "user_id": user.filter(keep),
            "item_id": item.filter(keep),
            "event": event.filter(pa.array(keep)),
            "timestamp_ms": pa.array(ts_ms[keep].astype(np.int64)),
            "quantity": pa.array(quantity[keep]),
            "price": pa.array(price[keep], from_pandas=True),
        }
    )
    first_positions = raw.positions[keep]
    clean, duplicate_of = _drop_duplicates(clean)
    if duplicate_of.size:
        dup_rows = np.flatnonzero(keep)[duplicate_of[:, 0]]
        originals = first_positions[duplicate_of[:, 1]]
        mask = np.zeros(n, dtype=bool)
        mask[dup_rows] = True
        by_row = dict(zip(dup_rows.tolist(), originals.tolist(), strict=True))
        checks.reject(
            mask,
            "duplicate",
            lambda r: [f"same event as {raw.position_word} {by_row[i]}" for i in r],
        )
    writer.write(raw, checks, report)
    report.duplicates_dropped = report.rejected.pop("duplicate", 0)
    report.accepted = clean.num_rows
    report.seconds = time.perf_counter() - started
    return clean, report


def reject_bad_ids(checks: RowChecks, ids: pa.ChunkedArray, name: str, max_length: int) -> None:
    """`bad_id` for ids the server would refuse (recsvc.ids.id_problem, column-wise)."""
    too_long = pc.greater(pc.utf8_length(ids), max_length).to_numpy(zero_copy_only=False)
    checks.reject(too_long, "bad_id", f"{name} is longer than {max_length} characters")
    control = pc.match_substring_regex(ids, CONTROL_CHARACTER).to_numpy(zero_copy_only=False)
    checks.reject(
        control,
        "bad_id",
        lambda r: [f"{name} {v[:60]!r} holds a control character" for v in _values_at(ids, r)],
    )


def _values_at(column: pa.ChunkedArray, rows: np.ndarray) -> list[str]:
    return as_text(column).take(pa.array(rows, type=pa.int64())).to_pylist()


def _describe(
    column: pa.ChunkedArray, name: str, expected: str
) -> Callable[[np.ndarray], list[str]]:
    return lambda rows: [f"{name} {v!r} is not {expected}" for v in _values_at(column, rows)]


def _drop_duplicates(events: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Removes exact repeats; returns the table and (duplicate row, first row) pairs."""
    none = np.empty((0, 2), dtype=np.int64)
    if events.num_rows == 0:
        return events, none
    parts = [
        pc.dictionary_encode(events.column(c)).combine_chunks().indices.to_numpy()
        for c in ("user_id", "item_id", "event")
    ]
    # Fast path: no two rows share a hash of (user, item, event, time), so none repeats.
    with np.errstate(over="ignore"):
        mixed = np.zeros(events.num_rows, dtype=np.uint64)
        for part in (*parts, events.column("timestamp_ms").to_numpy()):
            mixed = (mixed ^ part.astype(np.uint64)) * np.uint64(0x100000001B3)
    mixed.sort()
    if not (mixed[1:] == mixed[:-1]).any():
        return events, none
    parts.append(events.column("timestamp_ms").to_numpy())
    parts.append(events.column("quantity").to_numpy())
    parts.append(np.nan_to_num(events.column("price").to_numpy(zero_copy_only=False), nan=-1.0))
    order = np.lexsort(parts[::-1])
    same_as_previous = np.ones(order.size - 1, dtype=bool)
    for part in parts:
        sorted_part = part[order]
        same_as_previous &= sorted_part[1:] == sorted_part[:-1]
    if not same_as_previous.any():
        return events, none
    # Within a run of equal rows the sort is stable, so the run's first element is the original.
    run_start = np.maximum.accumulate(
        np.where(np.r_[True, ~same_as_previous], np.arange(order.size), 0)
    )
    dup_sorted = np.flatnonzero(np.r_[False, same_as_previous])
    pairs = np.column_stack([order[dup_sorted], order[run_start[dup_sorted]]])
    keep = np.ones(events.num_rows, dtype=bool)
    keep[pairs[:, 0]] = False
    return events.filter(pa.array(keep)), pairs


def load_items(
    path: Path, config: DataConfig, writer: RejectsWriter, max_id_length: int = MAX_ID_LENGTH
) -> tuple[pa.Table, IngestReport]:
    started = time.perf_counter()
    cols = config.items.columns
    raw = read_raw(
        path,
        [cols.item_id, cols.category, cols.brand, cols.price, cols.available, cols.tags],
        [cols.item_id, cols.category],
        "items",
    )
    table, n = raw.table, raw.table.num_rows
    checks = raw.checks()
    item = as_text(table.column(cols.item_id))
    category = as_text(table.column(cols.category))
    checks.reject(
        pc.equal(item, "").to_numpy(zero_copy_only=False), "missing_item_id", "item_id is empty"
    )
    checks.reject(
        pc.equal(category, "").to_numpy(zero_copy_only=False),
        "missing_category",
        "category is empty",
    )
    reject_bad_ids(checks, item, "item_id", max_id_length)
    _reject_repeated_ids(checks, item, raw, "item_id", "duplicate_item")

    def optional_text(name: str) -> pa.ChunkedArray:
        if name in table.column_names:
            return as_text(table.column(name))
        return pa.chunked_array([pa.array([""] * n, pa.string())])

    price = np.full(n, np.nan)
    if cols.price in table.column_names:
        price, present = parse_numbers(table.column(cols.price))
        checks.reject(
            present & ~((price >= 0) & np.isfinite(price)),
            "bad_price",
            _describe(table.column(cols.price), "price", "a finite number >= 0"),
        )
    available = np.ones(n, dtype=bool)
    if cols.available in table.column_names:
        words = np.asarray(
            pc.utf8_lower(as_text(table.column(cols.available))).to_pylist(), dtype=object
        )
        is_false = np.isin(words, list(FALSE_WORDS))
        known = is_false | np.isin(words, [*TRUE_WORDS, ""])
        available = ~is_false
        checks.reject(
            ~known,
            "bad_available",
            lambda r: [f"available {v!r} is not true/false" for v in words[r]],
        )
    report = IngestReport(source=str(path), rows_read=n + len(raw.malformed))
    writer.write(raw, checks, report)
    keep = pa.array(checks.ok)
    clean = pa.table(
        {
            "item_id": item.filter(keep),
            "category": category.filter(keep),
            "brand": optional_text(cols.brand).filter(keep),
            "price": pa.array(price, from_pandas=True).filter(keep),
            "available": pa.array(available).filter(keep),
            "tags": optional_text(cols.tags).filter(keep),
        }
    )
    report.accepted = clean.num_rows
    report.seconds = time.perf_counter() - started
    return clean, report


def load_users(
    path: Path, config: DataConfig, writer: RejectsWriter, max_id_length: int = MAX_ID_LENGTH
) -> tuple[pa.Table, IngestReport]:
    started = time.perf_counter()
    id_column = config.users.columns.user_id
    raw = read_raw(path, None, [id_column], "users")
    table, n = raw.table, raw.table.num_rows
    checks = raw.checks()
    user = as_text(table.column(id_column))
    checks.reject(
        pc.equal(user, "").to_numpy(zero_copy_only=False), "missing_user_id", "user_id is empty"
    )
    reject_bad_ids(checks, user, "user_id", max_id_length)
    _reject_repeated_ids(checks, user, raw, "user_id", "duplicate_user")
    report = IngestReport(source=str(path), rows_read=n + len(raw.malformed))
    writer.write(raw, checks, report)
    keep = pa.array(checks.ok)
    columns = {"user_id": user.filter(keep)}
    for name in table.column_names:
        if name != id_column:
            columns[name] = as_text(table.column(name)).filter(keep)
    clean = pa.table(columns)
    report.accepted = clean.num_rows
    report.seconds = time.perf_counter() - started
    return clean, report


def _reject_repeated_ids(
    checks: RowChecks, ids: pa.ChunkedArray, raw: RawTable, name: str, reason: str
) -> None:
    """Rejects every later row that repeats an id already seen on a clean row."""
    codes = pc.dictionary_encode(ids).combine_chunks().indices.to_numpy()
    candidates = np.flatnonzero(checks.ok)
    _, first = np.unique(codes[candidates], return_index=True)
    repeated = np.ones(candidates.size, dtype=bool)
    repeated[first] = False
    if not repeated.any():
        return
    first_position = {int(codes[candidates[i]]): int(raw.positions[candidates[i]]) for i in first}
    mask = np.zeros(checks.code.size, dtype=bool)
    mask[candidates[repeated]] = True
    checks.reject(
        mask,
        reason,
        lambda rows: [
            f"{name} already on {raw.position_word} {first_position[int(codes[r])]}" for r in rows
        ],
    )
