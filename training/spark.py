"""The Spark engine of `recsvc train --engine spark`: Spark reads and validates the event log, and
Spark's ALS (`pyspark.ml.recommendation.ALS`, implicit preferences) fits every ALS model of the
run; the rest of the job (cleaning rules, holdout, quality gate, profiles, publish) is the same
code as the local engine, so the published directory is the same format and the server cannot
tell the difference.

Spark reads Parquet from any URL it can (a local path, `hdfs://`, `s3a://` with the connector
on the classpath) in the data contract, maps columns and event names by `[data.events]`,
rejects rows with a reason (written as Parquet beside the other rejects), drops exact duplicates,
and hands the clean events to the driver as Arrow. What stays on the driver is one pass of
numpy over the clean events (interaction matrix, profiles): 6 columns, about 40 bytes per event.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsvc.config import Config, DataConfig
from recsvc.errors import BadInput
from recsvc.events import EVENTS_SCHEMA
from recsvc.ids import CONTROL_CHARACTER
from recsvc.models import ALSRecommender, Recommender
from recsvc.models.base import check_user_items, model_class
from recsvc.training.ingest import MAX_ID_LENGTH, Dataset, IngestReport, load_job_inputs
from recsvc.training.inputs import TrainInputs

# Numbers below this are epoch seconds, at or above it milliseconds (the year 5138 in seconds).
SECONDS_LIMIT = 100_000_000_000


def spark_session(master: str, checkpoint_dir: str) -> Any:
    """The active session, or a new one on `master` (e.g. local[2], yarn, spark://host:7077),
    with a checkpoint directory: ALS ignores its checkpoint interval without one, and its
    lineage then grows until serialising a task overflows the stack."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession() or (
        SparkSession.builder.master(master)
        .appName("recsvc-train")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    if session.sparkContext.getCheckpointDir() is None:
        if not checkpoint_dir:
            checkpoint_dir = tempfile.mkdtemp(prefix="recsvc-spark-checkpoints-")
            atexit.register(shutil.rmtree, checkpoint_dir, ignore_errors=True)
        session.sparkContext.setCheckpointDir(checkpoint_dir)
    return session


INFINITY = float("inf")


def read_events(
    url: str,
    config: DataConfig,
    rejects_dir: Path,
    master: str,
    checkpoint_dir: str = "",
    catalogue: pa.Table | None = None,
    max_id_length: int = MAX_ID_LENGTH,
) -> tuple[pa.Table, IngestReport]:
    """Clean events in the contract's columns; rejected rows go to rejects_dir with a reason.
    The rules and reasons are the local ingest's (training/ingest.py); with a catalogue, an
    event of an item it lacks is rejected as there."""
    from pyspark.sql import functions as F  # noqa: N812 (Spark's usual name)

    started = time.perf_counter()
    session = spark_session(master, checkpoint_dir)
    cols = config.events.columns
    raw = session.read.parquet(url)
    missing = [
        c for c in (cols.user_id, cols.item_id, cols.event, cols.timestamp) if c not in raw.columns
    ]
    if missing:
        raise BadInput(f"{url}: required column(s) {', '.join(missing)} missing")
    mapping = config.events.names.source_to_event()
    event_map = F.create_map([F.lit(x) for pair in mapping.items() for x in pair])
    stamp = raw[cols.timestamp]
    kind = dict(raw.dtypes)[cols.timestamp]
    if kind.startswith("timestamp"):
        millis = F.unix_millis(stamp)
    elif kind == "string":
        millis = F.unix_millis(F.to_timestamp(stamp))
    else:
        number = stamp.cast("double")
        millis = F.when(number < SECONDS_LIMIT, number * 1000).otherwise(number).cast("long")
    has = set(raw.columns)
    quantity = raw[cols.quantity].cast("double") if cols.quantity in has else F.lit(1.0)
    price = raw[cols.price].cast("double") if cols.price in has else F.lit(None).cast("double")
    table = raw.select(
        raw[cols.user_id].cast("string").alias("user_id"),
        raw[cols.item_id].cast("string").alias("item_id"),
        event_map[raw[cols.event].cast("string")].alias("event"),
        raw[cols.event].cast("string").alias("source_event"),
        millis.alias("timestamp_ms"),
        F.coalesce(quantity, F.lit(1.0)).alias("quantity"),
        price.alias("price"),
    )
    if catalogue is not None:
        known = session.createDataFrame(
            pa.table(
                {
                    "item_id": catalogue.column("item_id"),
                    "in_catalogue": pa.array([True] * catalogue.num_rows),
                }
            )
        )
        table = table.join(F.broadcast(known), on="item_id", how="left")
    else:
        table = table.withColumn("in_catalogue", F.lit(True))
    future = int(time.time() * 1000 + config.max_future_hours * 3_600_000)

    def bad_id(name: str) -> Any:
        return (F.length(name) > max_id_length) | F.col(name).rlike(CONTROL_CHARACTER)

    reason = (
        F.when(F.col("user_id").isNull() | (F.col("user_id") == ""), "missing_user_id")
        .when(F.col("item_id").isNull() | (F.col("item_id") == ""), "missing_item_id")
        .when(bad_id("user_id") | bad_id("item_id"), "bad_id")
        .when(F.col("event").isNull(), "unknown_event")
        .when(F.col("timestamp_ms").isNull() | (F.col("timestamp_ms") < 0), "bad_timestamp")
        .when(F.col("timestamp_ms") > future, "future_timestamp")
        .when(
            ~(
                (F.col("quantity") > 0)
                & (F.col("quantity") < INFINITY)
                & (F.col("quantity") == F.floor("quantity"))
            ),
            "bad_quantity",
        )
        .when((F.col("price") < 0) | (F.col("price") >= INFINITY) | F.isnan("price"), "bad_price")
        .when(F.col("in_catalogue").isNull(), "unknown_item")
    )
    checked = table.withColumn("reason", reason).cache()
    counts = {r["reason"]: r["count"] for r in checked.groupBy("reason").count().collect()}
    rows_read = sum(counts.values())
    rejected = {k: v for k, v in counts.items() if k is not None}
    if rejected:
        checked.filter(F.col("reason").isNotNull()).write.mode("overwrite").parquet(
            str(rejects_dir / "events.rejects.parquet")
        )
    valid = checked.filter(F.col("reason").isNull() & (F.col("event") != "ignore"))
    ignored = {
        r["source_event"]: r["count"]
        for r in checked.filter(F.col("reason").isNull() & (F.col("event") == "ignore"))
        .groupBy("source_event")
        .count()
        .collect()
    }
    clean = valid.select(*EVENTS_SCHEMA.names).dropDuplicates()
    events = clean.toArrow().cast(EVENTS_SCHEMA)
    checked.unpersist()
    report = IngestReport(
        source=url,
        rows_read=rows_read,
        accepted=events.num_rows,
        rejected=Counter(rejected),
        ignored=Counter(ignored),
        rejects_path=str(rejects_dir / "events.rejects.parquet") if rejected else None,
    )
    report.duplicates_dropped = (
        rows_read - report.rejected_total - sum(ignored.values()) - events.num_rows
    )
    report.seconds = time.perf_counter() - started
    return events, report


class SparkALSRecommender(ALSRecommender):
    """ALS fitted by Spark MLlib, published as an ordinary ALS model (same arrays, same type).

    Spark scales the regularisation by each user's and item's number of ratings (ALS-WR);
    the published `regularization` is the one Spark used, so a real-time fold-in with it is
    close to, not exactly, Spark's own solution."""

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from pyspark.ml.recommendation import ALS
        from pyspark.sql import SparkSession

        matrix = check_user_items(user_items).tocoo()
        session = SparkSession.getActiveSession()
        if session is None:
            raise RuntimeError("no active Spark session: the spark engine starts one first")
        triplets = pa.table(
            {
                "user": pa.array(matrix.row.astype(np.int32)),
                "item": pa.array(matrix.col.astype(np.int32)),
                "confidence": pa.array(matrix.data.astype(np.float32)),
            }
        )
        frame = session.createDataFrame(triplets)
        fitted = ALS(
            rank=self.factors,
            maxIter=self.iterations,
            regParam=self.regularization,
            alpha=self.alpha,
            implicitPrefs=True,
            userCol="user",
            itemCol="item",
            ratingCol="confidence",
            seed=self.random_state,
            coldStartStrategy="drop",
        ).fit(frame)
        users = np.zeros((matrix.shape[0], self.factors), dtype=np.float32)
        items = np.zeros((matrix.shape[1], self.factors), dtype=np.float32)
        for target, factors in ((users, fitted.userFactors), (items, fitted.itemFactors)):
            table = factors.toArrow()
            rows = table.column("id").to_numpy()
            target[rows] = np.stack(table.column("features").to_pylist()).astype(np.float32)
        return self._keep_factors(users, items)


class SparkEngine:
    """The Spark engine (see training/engines.py): Parquet events read by Spark from a path or
    a cluster URL, ALS fitted by MLlib; catalogue and users files are read locally."""

    def prepare(self, config: Config) -> Config:
        """ALS is the model Spark trains; BadInput, saying what to install, where pyspark or
        Java is missing."""
        try:
            import pyspark  # noqa: F401
        except ImportError as exc:
            raise BadInput(
                "the spark engine needs pyspark: pip install 'recsvc[spark]' "
                "(and a Java 17 runtime)"
            ) from exc
        if shutil.which("java") is None:
            raise BadInput("the spark engine needs a Java 17 runtime: java is not on PATH")
        if config.model.type not in ("auto", "als"):
            raise BadInput(f"the spark engine trains ALS; model.type is {config.model.type!r}")
        model = dataclasses.replace(config.model, type="als", blend=False)
        return dataclasses.replace(config, model=model)

    def events_location(self, value: str) -> Path | str:
        return value  # a cluster URL (hdfs://...) must reach Spark as written: Path folds "//"

    def read(self, inputs: TrainInputs, config: Config, rejects_dir: Path) -> Dataset:
        dataset = load_job_inputs(None, inputs.items, inputs.users, config, rejects_dir)
        if inputs.events is None:
            return dataset
        events, report = read_events(
            str(inputs.events),
            config.data,
            rejects_dir,
            config.training.spark_master,
            config.training.spark_checkpoint_dir,
            dataset.items,
            config.serving.limits.max_id_length,
        )
        return dataclasses.replace(dataset, events=events, reports=[report, *dataset.reports])

    def model_class(self, name: str) -> type[Recommender]:
        """MLlib fits ALS; the non-personal fallbacks are fitted locally, as on any engine."""
        return SparkALSRecommender if name == "als" else model_class(name)
