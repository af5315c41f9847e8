"""The Prometheus metrics as a scrape reads them: counts, latency buckets and sums per RPC."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recsvc.service.observability import LATENCY_BUCKETS, Metrics


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_calls_are_counted_and_bucketed_by_method_and_status() -> None:
    metrics = Metrics()
    # A latency on a bucket's bound counts in that bucket (Prometheus buckets are "le").
    for seconds in (0.0001, LATENCY_BUCKETS[0], 0.004, 99.0):
        metrics.observe("Recommend", "OK", seconds)
        metrics.fallbacks += 1
    metrics.observe("Recommend", "INVALID_ARGUMENT", 0.002)
    metrics.observe("RecordEvents", "OK", 0.001)
    metrics.events += 3
    samples = scrape(metrics)

    def ok(name: str, **extra: str) -> float:
        labels = {"method": "Recommend", "code": "OK", **extra}
        return samples[(name, tuple(sorted(labels.items())))]

    assert ok("recsvc_requests_total") == 4
    assert ok("recsvc_request_seconds_count") == 4
    assert ok("recsvc_request_seconds_sum") == 0.0001 + LATENCY_BUCKETS[0] + 0.004 + 99.0
    assert ok("recsvc_request_seconds_bucket", le=str(LATENCY_BUCKETS[0])) == 2
    assert ok("recsvc_request_seconds_bucket", le="0.003") == 2
    assert ok("recsvc_request_seconds_bucket", le="0.005") == 3
    assert ok("recsvc_request_seconds_bucket", le="2.5") == 3
    assert ok("recsvc_request_seconds_bucket", le="+Inf") == 4
    failed = (("code", "INVALID_ARGUMENT"), ("method", "Recommend"))
    assert samples[("recsvc_requests_total", failed)] == 1
    assert samples[("recsvc_fallbacks_total", ())] == 4
    assert samples[("recsvc_events_recorded_total", ())] == 3
