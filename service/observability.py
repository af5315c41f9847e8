"""Prometheus metrics and structured (JSON) logs for the server."""

from __future__ import annotations

import itertools
import json
import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Latency buckets from 0.5 ms to 2.5 s: a recommender call lives in the low milliseconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
LABELS = ["method", "code"]
BUCKET_BOUNDS = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]


class _CallTally:
    """Calls of one (method, status): a count, a sum of seconds and latency bucket counts."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf


class _TallyCollector(Collector):
    """Reads the tallies at scrape time. They are plain numbers updated on the server's event
    loop: prometheus_client's own Counter and Histogram take a lock per update, 1.5 us per
    call against 0.3 us for the tallies (timeit, one process), on a hot path whose Python
    runs several times slower inside the server than in a tight loop."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        calls = list(self.metrics.calls.items())  # the loop may add a key meanwhile
        requests = CounterMetricFamily(
            "recsvc_requests", "gRPC calls by method and status code", labels=LABELS
        )
        latency = HistogramMetricFamily(
            "recsvc_request_seconds",
            "Time in the handler, by method and status code",
            labels=LABELS,
        )
        for (method, code), tally in calls:
            requests.add_metric([method, code], tally.count)
            cumulative = itertools.accumulate(tally.buckets)
            latency.add_metric(
                [method, code], list(zip(BUCKET_BOUNDS, cumulative, strict=True)), tally.seconds
            )
        yield requests
        yield latency
        yield CounterMetricFamily(
            "recsvc_fallbacks",
            "Recommend calls answered with non-personal items (unknown user or variant)",
            value=self.metrics.fallbacks,
        )
        yield CounterMetricFamily(
            "recsvc_events_recorded", "Events stored by RecordEvents", value=self.metrics.events
        )


class Metrics:
    """Requests and latency per RPC and status, fallbacks, events recorded, model version.

    `observe` runs on the event loop, for every call, and the servicer adds to `fallbacks` and
    `events` there; the rest of the process only reads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.calls: dict[tuple[str, str], _CallTally] = {}
        self.fallbacks = 0
        self.events = 0
        self.registry.register(_TallyCollector(self))
        self.model = Gauge(
            "recsvc_model_info",
            "1 for the model version being served",
            ["version", "model_type"],
            registry=self.registry,
        )
        self.model_loaded_at = Gauge(
            "recsvc_model_loaded_timestamp_seconds",
            "When the serving model was swapped in",
            registry=self.registry,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        tally = self.calls.get((method, code))
        if tally is None:
            tally = self.calls[(method, code)] = _CallTally()
        tally.count += 1
        tally.seconds += seconds
        tally.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def model_swapped(self, version: str, model_type: str) -> None:
        self.model.clear()
        self.model.labels(version, model_type).set(1)
        self.model_loaded_at.set(time.time())

    def serve_http(self, host: str, port: int) -> int:
        """Exposes /metrics; returns the bound port (0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (or the access-log fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which worker, when several share a port
        }
        message = record.getMessage()
        if record.name == "recsvc.access" and message.startswith("{"):
            entry.update(json.loads(message))
        else:
            entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)
