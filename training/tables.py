"""Writes result tables (batch recommendations, audiences) as Parquet or CSV, by file suffix.

CSV has no list type: a list column is written as "|"-joined text, so the file opens in a
spreadsheet; Parquet keeps lists (and ids that contain "|") exact.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recsvc.errors import BadInput

SUFFIXES = (".parquet", ".csv")


def _flatten_lists(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type):
            column = pc.binary_join(column.cast(pa.list_(pa.string())), "|")
        columns.append(column)
    return pa.table(columns, names=table.column_names)


class TableWriter:
    """Appends pyarrow tables of one schema to a .parquet or .csv file."""

    def __init__(self, path: Path) -> None:
        if path.suffix not in SUFFIXES:
            raise BadInput(f"{path}: the output must end in .parquet or .csv")
        self.path = path
        self._writer: pq.ParquetWriter | pa_csv.CSVWriter | None = None

    def write(self, table: pa.Table) -> None:
        csv = self.path.suffix == ".csv"
        if csv:
            table = _flatten_lists(table)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = (
                pa_csv.CSVWriter(self.path, table.schema)
                if csv
                else pq.ParquetWriter(self.path, table.schema)
            )
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
