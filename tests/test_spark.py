"""`recsvc train --engine spark`: Spark (local[2]) reads Parquet events, rejects bad rows with
their reason, fits ALS with MLlib, and publishes a model the server serves like any other."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2
from helpers import skip_for_missing
from test_server_e2e import RECSVC, start_server
from test_training import preferred_share

from recsvc.modelstore import ModelStore
from recsvc.published import PublishedModel
from recsvc.training.sample_shop import SampleShop
from recsvc.v1 import recommender_pb2 as pb

if importlib.util.find_spec("pyspark") is None or shutil.which("java") is None:
    skip_for_missing(
        "java",
        "the spark engine needs pyspark (make install) and a Java runtime (java on PATH)",
        module_level=True,
    )


@pytest.fixture(scope="module")
def spark_trained(shop_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample shop's events as a Parquet dataset plus four bad rows, trained by the CLI."""
    work = tmp_path_factory.mktemp("spark")
    events = pa_csv.read_csv(shop_dir / "events.csv")
    stamps = events.column("timestamp").slice(0, 4).combine_chunks().to_pylist()
    stamps[2] = stamps[2].replace(year=1960)  # before 1970: the contract's bad_timestamp
    bad = pa.table(
        {
            "user_id": ["u0001", "", "u0002", "u0003"],
            "item_id": ["i0001", "i0002", "i0003", "not-in-the-catalogue"],
            "event": ["click", "view", "view", "view"],
            "timestamp": pa.array(stamps, events.schema.field("timestamp").type),
            "quantity": pa.array([1, 1, 1, 1], events.schema.field("quantity").type),
            "price": pa.array([None] * 4, pa.float64()),
        }
    )
    dataset = work / "events"
    dataset.mkdir()
    pq.write_table(events, dataset / "part-0.parquet")
    pq.write_table(bad, dataset / "part-1.parquet")
    config = work / "job.toml"
    config.write_text("[profiles]\ncoldstart = false\n")
    models = work / "models"
    result = subprocess.run(
        [
            RECSVC,
            "train",
            "--engine",
            "spark",
            "--spark-master",
            "local[2]",
            "--events",
            f"file://{dataset}",  # a URL, passed to Spark as written
            "--items",
            str(shop_dir / "items.csv"),
            "--users",
            str(shop_dir / "users.csv"),
            "--model-dir",
            str(models),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return models


def test_spark_rejects_bad_rows_with_their_reason(spark_trained: Path) -> None:
    store = ModelStore(spark_trained)
    manifest = json.loads((store.path(store.current_version()) / "manifest.json").read_text())
    events = manifest["ingest"][0]
    reasons = ["bad_timestamp", "missing_user_id", "unknown_event", "unknown_item"]
    assert events["rejected"] == dict.fromkeys(reasons, 1)  # as the local ingest rejects them
    rejects = pq.read_table(spark_trained / "rejects" / "events.rejects.parquet")
    assert sorted(rejects.column("reason").to_pylist()) == reasons
    assert manifest["config"]["training"]["engine"] == "spark"


def test_spark_trained_als_recovers_the_planted_preferences(
    spark_trained: Path, shop: SampleShop
) -> None:
    store = ModelStore(spark_trained)
    model = PublishedModel.load(store.path(store.current_version()))
    assert model.manifest["model_type"] == "als"
    personal = preferred_share(model, shop, personal=True)
    popular = preferred_share(model, shop, personal=False)
    assert personal >= 0.7, personal
    assert personal >= popular + 0.35, (personal, popular)


def test_the_server_serves_a_spark_trained_model(spark_trained: Path, tmp_path: Path) -> None:
    # Visitors the model lacks are folded into Spark's factors, not followed by the session
    # model, so that the fold-in is what is checked.
    fold_in = tmp_path / "fold-in.toml"
    fold_in.write_text('[serving]\nsession_scoring = "model"\n')
    running = start_server(spark_trained, "--config", str(fold_in))
    try:
        running.wait_for_health(health_pb2.HealthCheckResponse.SERVING)
        info = running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.model_type == "als"
        listed = running.stub.Recommend(pb.RecommendRequest(user_id="u0001", k=10), timeout=10)
        assert not listed.fallback and len(listed.items) == 10
        # Real-time fold-in works on Spark's factors as on implicit's.
        running.stub.RecordEvents(
            pb.RecordEventsRequest(
                events=[pb.Event(user_id="brand-new", item_id="i0001", event="purchase")]
            ),
            timeout=10,
        )
        fresh = running.stub.Recommend(pb.RecommendRequest(user_id="brand-new", k=5), timeout=10)
        assert not fresh.fallback and fresh.strategy == "personal"
    finally:
        code, output = running.stop()
    assert code == 0, output
