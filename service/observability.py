"""Prometheus metrics and structured (JSON) logs for the server."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latency buckets from 0.5 ms to 2.5 s: a recommender call lives in the low milliseconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """Requests and latency per RPC and status, fallbacks, events recorded, model version."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "recsvc_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsvc_request_seconds",
            "Time in the handler, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "recsvc_fallbacks",
            "Recommend calls answered with non-personal items (unknown user or variant)",
            registry=self.registry,
        )
        self.events = Counter(
            "recsvc_events_recorded", "Events stored by RecordEvents", registry=self.registry
        )
        self.model = Gauge(
            "recsvc_model_info",
            "1 for the model version being served",
            ["version", "model_type"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.model_loaded_at = Gauge(
            "recsvc_model_loaded_timestamp_seconds",
            "When the serving model was swapped in",
            registry=self.registry,
        )

    def observe(self, method: str, code: str, seconds: float, response: Any) -> None:
        # Looking a labelled child up costs more than updating it: keep them.
        children = self._children.get((method, code))
        if children is None:
            children = (self.requests.labels(method, code), self.latency.labels(method, code))
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)
        if response is None:
            return
        if method == "Recommend" and getattr(response, "fallback", False):
            self.fallbacks.inc()
        elif method == "RecordEvents":
            self.events.inc(getattr(response, "recorded", 0))

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
        }
        message = record.getMessage()
        if record.name == "recsvc.access" and message.startswith("{"):
            entry.update(json.loads(message))
        else:
            entry["message"] = message
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)
