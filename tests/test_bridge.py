"""The OTLP metrics bridge builds its data points from aggregates at export time.

The reference is the bridge as it was (tests/stock_bridge.py: one SDK ``record``/``add``
per event). Both export the same events over real OTLP/HTTP to a local receiver, and the
decoded requests must carry the same data points: names, units, descriptions, attributes,
counts, sums, buckets, bounds, min/max, temporality, and the same start-time rules
(opentelemetry-sdk ``sdk/metrics/_internal/aggregation.py`` and
``_view_instrument_match.py``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData
from prometheus_client import CollectorRegistry

from persona_exporter import Recorder, parse_config
from persona_exporter.events import LLMGeneration, StageRun
from persona_exporter.server.bridge import CARDINALITY_LIMIT, MetricsBridge

from .otlp_receiver import Receiver, refused_url, value
from .stock_bridge import StockMetricsBridge

BUDGETS = """
personas:
  qa-engineer: {tokens: {24h: 5000, 1h: 800}, cost_usd: {24h: 2.5}}
  backend-engineer: {cost_usd: {7d: 10}}
"""
# A SIGHUP between the two exports: one budget changes, one persona goes, one comes.
BUDGETS_RELOADED = """
personas:
  qa-engineer: {tokens: {24h: 6000}}
  data-analyst: {tokens: {24h: 100}, cost_usd: {30d: 1.25}}
"""


def gen(persona: str, model: str = "gpt-4o", provider: str = "openai", **fields: Any
        ) -> LLMGeneration:
    values: dict[str, Any] = {"input_tokens": 100, "output_tokens": 20,
                              "duration_seconds": 0.5, **fields}
    return LLMGeneration(persona=persona, chatmode=values.pop("chatmode", "bug-fix"),
                         model=model, provider=provider, **values)


def first_round() -> list[Any]:
    return [
        gen("qa-engineer", cost_usd=0.1, time_to_first_chunk_seconds=0.2),
        gen("qa-engineer", input_tokens=3000, output_tokens=0, cost_usd=0.2,
            duration_seconds=7.5),
        gen("qa-engineer", error_type="Timeout", duration_seconds=30.0, output_tokens=0),
        gen("qa-engineer", error_type="RateLimitError", duration_seconds=0.01),
        gen("qa-engineer", chatmode="review", cost_usd=0.0),  # zero cost: no cost point
        gen("backend-engineer", "claude-sonnet-4", "anthropic", input_tokens=0,
            cost_usd=1e-7, time_to_first_chunk_seconds=0.0),
        gen("backend-engineer", "claude-sonnet-4", "anthropic", cost_usd=None,
            duration_seconds=123.4, time_to_first_chunk_seconds=99.0),
        gen("data-analyst", "gemini-2.5-pro", "gcp.gemini", error_type="Timeout",
            input_tokens=12_345_678, output_tokens=1),
        StageRun(workflow="release", stage="plan", persona="qa-engineer", status="succeeded",
                 duration_seconds=3.0),  # not an LLM call: nothing bridged
    ]


def second_round() -> list[Any]:
    return [
        gen("qa-engineer", cost_usd=0.3, time_to_first_chunk_seconds=0.05),
        gen("qa-engineer", error_type="Timeout", duration_seconds=31.0),
        gen("qa-engineer", error_type="APIConnectionError", duration_seconds=0.2),
        gen("qa-engineer", chatmode="review", cost_usd=0.5),  # its first cost
        gen("frontend-engineer", "gpt-4o-mini", cost_usd=0.001),
    ]


Summary = dict[str, dict[str, Any]]


def summary(request: ExportMetricsServiceRequest) -> Summary:
    """Everything in one export but the timestamps, keyed by metric name."""
    out: Summary = {}
    for rm in request.resource_metrics:
        resource = {a.key: value(a.value) for a in rm.resource.attributes}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                points: dict[frozenset[tuple[str, Any]], tuple[Any, ...]] = {}
                for p in data.data_points:
                    attrs = frozenset((a.key, value(a.value)) for a in p.attributes)
                    assert attrs not in points
                    if kind == "histogram":
                        points[attrs] = (p.count, p.sum, tuple(p.bucket_counts),
                                         tuple(p.explicit_bounds), p.HasField("min"), p.min,
                                         p.HasField("max"), p.max, len(p.exemplars), p.flags)
                    else:
                        which = p.WhichOneof("value")
                        points[attrs] = (which, getattr(p, which), len(p.exemplars), p.flags)
                assert m.name not in out
                out[m.name] = {
                    "unit": m.unit, "description": m.description, "kind": kind,
                    "temporality": getattr(data, "aggregation_temporality", None),
                    "monotonic": getattr(data, "is_monotonic", None), "points": points,
                    "scope": (sm.scope.name, sm.scope.version, sm.schema_url),
                    "resource": (resource, rm.schema_url)}
    return out


def times(request: ExportMetricsServiceRequest
          ) -> dict[tuple[str, frozenset[tuple[str, Any]]], tuple[int, int]]:
    return {(m.name, frozenset((a.key, value(a.value)) for a in p.attributes)):
            (p.start_time_unix_nano, p.time_unix_nano)
            for rm in request.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics for p in getattr(m, m.WhichOneof("data")).data_points}


def start_rules(first: ExportMetricsServiceRequest, second: ExportMetricsServiceRequest
                ) -> dict[tuple[str, frozenset[tuple[str, Any]]], tuple[bool, ...]]:
    """How each point's start time relates to the exports, as facts that hold whichever
    clock read them: kept from the first export, equal to the first export's time, before
    it, absent (gauges)."""
    before, after = times(first), times(second)
    export_time = max(t for _, t in before.values())
    return {key: (start == before.get(key, (None,))[0], start == export_time,
                  0 < start < export_time, start == 0, start <= now)
            for key, (start, now) in after.items()}


def same_time_per_export(request: ExportMetricsServiceRequest) -> bool:
    return len({now for _, now in times(request).values()}) == 1


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
         ) -> Iterator[tuple[Any, ...]]:
    """The stock and the new bridge, each to its own receiver, under the temporality
    preference the test is parametrised with."""
    preference = getattr(request, "param", None)
    if preference is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    with Receiver() as old_rx, Receiver() as new_rx:
        old_recorder = Recorder(CollectorRegistry(), config=parse_config(BUDGETS))
        new_recorder = Recorder(CollectorRegistry(), config=parse_config(BUDGETS))
        old = StockMetricsBridge(OTLPMetricExporter(endpoint=f"{old_rx.url}/v1/metrics"),
                                 old_recorder, export_interval_millis=math.inf)
        new = MetricsBridge(OTLPMetricExporter(endpoint=f"{new_rx.url}/v1/metrics"),
                            new_recorder, export_interval_millis=math.inf)
        yield old, new, old_rx, new_rx, old_recorder, new_recorder
        old.shutdown(2)
        new.shutdown(2)


def run_both(pair: tuple[Any, ...], events: list[Any]) -> None:
    old, new, *_ = pair
    for event in events:
        old.emit(event)
        new.emit(event)
    assert old.flush(5) and new.flush(5)


TEMPORALITIES = ["cumulative", "delta", "lowmemory"]


@pytest.mark.parametrize("pair", TEMPORALITIES, indirect=True)
def test_the_same_data_points_as_the_stock_bridge_across_two_exports(
        pair: tuple[Any, ...], request: pytest.FixtureRequest) -> None:
    _, _, old_rx, new_rx, old_recorder, new_recorder = pair
    preference = request.node.callspec.params["pair"]
    run_both(pair, first_round())
    for recorder in (old_recorder, new_recorder):
        recorder.apply_config(parse_config(BUDGETS_RELOADED))
    run_both(pair, second_round())
    assert len(old_rx.metrics) == len(new_rx.metrics) == 2
    for old_request, new_request in zip(old_rx.metrics, new_rx.metrics, strict=True):
        assert summary(new_request) == summary(old_request)
        assert same_time_per_export(new_request)
    assert start_rules(*new_rx.metrics) == start_rules(*old_rx.metrics)

    first, second = (summary(r) for r in new_rx.metrics)
    delta = preference != "cumulative"
    tokens = first["gen_ai.client.token.usage"]
    assert tokens["unit"] == "{token}" and tokens["kind"] == "histogram"
    assert tokens["temporality"] == (1 if delta else 2)  # AGGREGATION_TEMPORALITY_DELTA = 1
    qa = {("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
          ("gen_ai.request.model", "gpt-4o"), ("persona", "qa-engineer"),
          ("chatmode", "bug-fix")}
    inputs = tokens["points"][frozenset({*qa, ("gen_ai.token.type", "input")})]
    assert inputs[:2] == (4, 3300)  # the failed calls' tokens count as well
    durations = first["gen_ai.client.operation.duration"]["points"]
    assert durations[frozenset({*qa, ("error.type", "Timeout")})][:2] == (1, 30.0)
    assert durations[frozenset(qa)][:2] == (2, 8.0)
    cost = first["persona.llm.cost"]
    assert cost["monotonic"] and cost["unit"] == "USD"
    assert frozenset({*qa - {("chatmode", "bug-fix")}, ("chatmode", "review")}) \
        not in cost["points"]  # a zero cost adds nothing, as Counter.add(0) was never called
    budgets = {dict(attrs)["window"]: point[1]
               for attrs, point in first["persona.token.budget"]["points"].items()}
    assert budgets == {"24h": 5000, "1h": 800}
    reloaded = {tuple(sorted(dict(attrs).values())): point[1]
                for attrs, point in second["persona.token.budget"]["points"].items()}
    assert reloaded == {("24h", "qa-engineer"): 6000, ("24h", "data-analyst"): 100}
    inputs = second["gen_ai.client.token.usage"]["points"][
        frozenset({*qa, ("gen_ai.token.type", "input")})]
    assert inputs[:2] == ((3, 300) if delta else (7, 3600))
    anthropic = frozenset({("gen_ai.operation.name", "chat"),
                           ("gen_ai.provider.name", "anthropic"),
                           ("gen_ai.request.model", "claude-sonnet-4"),
                           ("persona", "backend-engineer"), ("chatmode", "bug-fix")})
    # idle in the second interval: kept by cumulative, left out by delta
    assert (anthropic in second["gen_ai.client.operation.time_to_first_chunk"]["points"]) \
        is not delta


@pytest.mark.parametrize("pair", ["cumulative", "delta"], indirect=True)
def test_past_the_cardinality_limit_both_overflow_alike(pair: tuple[Any, ...]) -> None:
    # Two token points per label tuple: the token histogram overflows at half the limit.
    many = [gen(f"persona-{i}", cost_usd=0.01) for i in range(CARDINALITY_LIMIT // 2 + 30)]
    run_both(pair, many)
    run_both(pair, [gen(f"late-{i}") for i in range(40)] + many[:5])
    _, _, old_rx, new_rx, *_ = pair
    for old_request, new_request in zip(old_rx.metrics, new_rx.metrics, strict=True):
        new = summary(new_request)
        assert new == summary(old_request)
    overflow = frozenset({("otel.metric.overflow", True)})
    first = summary(new_rx.metrics[0])
    assert first["gen_ai.client.token.usage"]["points"][overflow][0] == 60
    assert overflow not in first["persona.llm.cost"]["points"]


def test_a_failed_export_is_counted_and_never_reaches_emit() -> None:
    registry = CollectorRegistry()
    recorder = Recorder(registry, config=parse_config(BUDGETS))
    with Receiver(status=401) as refusing:
        bridge = MetricsBridge(OTLPMetricExporter(endpoint=f"{refusing.url}/v1/metrics",
                                                  timeout=2),
                               recorder, export_interval_millis=math.inf)
        bridge.emit(gen("qa-engineer"))
        assert bridge.flush(5) is False
        bridge.emit(gen("qa-engineer"))
        bridge.shutdown(2)
    assert registry.get_sample_value("persona_exporter_otlp_metric_exports_total") == 1
    assert registry.get_sample_value("persona_exporter_otlp_metric_export_failures_total") == 1


class RaisingExporter(OTLPMetricExporter):
    """An exporter with a bug: export raises instead of returning a result."""

    def export(self, metrics_data: MetricsData, timeout_millis: float | None = 10_000,
               **kwargs: Any) -> MetricExportResult:
        raise RuntimeError("exporter bug")


def test_an_exporter_that_raises_is_counted_on_the_export_thread() -> None:
    registry = CollectorRegistry()
    recorder = Recorder(registry, config=parse_config(""))
    bridge = MetricsBridge(RaisingExporter(endpoint=f"{refused_url()}/v1/metrics"), recorder,
                           export_interval_millis=50)
    deadline = time.monotonic() + 10
    while (registry.get_sample_value("persona_exporter_otlp_metric_export_failures_total")
           or 0) < 2 and time.monotonic() < deadline:
        bridge.emit(gen("qa-engineer"))  # never raises, whatever the export thread meets
        time.sleep(0.01)
    bridge.shutdown(2)
    failures = registry.get_sample_value("persona_exporter_otlp_metric_export_failures_total")
    assert failures is not None and failures >= 2
    assert registry.get_sample_value("persona_exporter_internal_errors_total",
                                     {"component": "bridge.metrics",
                                      "kind": "RuntimeError"}) == failures


def test_periodic_exports_and_a_last_one_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    registry = CollectorRegistry()
    with Receiver() as receiver:
        bridge = MetricsBridge(OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics"),
                               Recorder(registry, config=parse_config("")))
        bridge.emit(gen("qa-engineer"))
        deadline = time.monotonic() + 10
        while len(receiver.metrics) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.metrics) >= 2  # idle intervals repeat the cumulative totals
        bridge.emit(gen("qa-engineer", input_tokens=5))
        bridge.shutdown(5)
        bridge.shutdown(5)  # a second call does nothing
        assert bridge.flush(1) is False
        exports = len(receiver.metrics)
        time.sleep(0.3)
        assert len(receiver.metrics) == exports  # the thread is gone
        last = summary(receiver.metrics[-1])["gen_ai.client.token.usage"]["points"]
        starts = {times(r)[("gen_ai.client.token.usage", key)][0]
                  for r in receiver.metrics for key in last
                  if dict(key)["gen_ai.token.type"] == "input"}
    inputs = [p for attrs, p in last.items() if dict(attrs)["gen_ai.token.type"] == "input"]
    assert [p[:2] for p in inputs] == [(2, 105)]
    assert len(starts) == 1  # a cumulative series keeps its start time
    assert registry.get_sample_value("persona_exporter_otlp_metric_exports_total") == exports


class GrpcMetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """OTLP/gRPC metrics on 127.0.0.1, recording each request."""

    def __init__(self) -> None:
        import grpc

        self.requests: list[ExportMetricsServiceRequest] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self, self._server)
        self.url = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC API
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def close(self) -> None:
        self._server.stop(0)


def test_the_grpc_exporter_sends_the_same_data_points() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter,
    )

    receiver = GrpcMetricsReceiver()
    try:
        with Receiver() as http_receiver:
            bridges = [MetricsBridge(exporter, Recorder(CollectorRegistry(),
                                                        config=parse_config(BUDGETS)),
                                     export_interval_millis=math.inf)
                       for exporter in (GrpcMetricExporter(endpoint=receiver.url, insecure=True),
                                        OTLPMetricExporter(
                                            endpoint=f"{http_receiver.url}/v1/metrics"))]
            for event in first_round():
                for bridge in bridges:
                    bridge.emit(event)
            assert all(bridge.flush(5) for bridge in bridges)
            for bridge in bridges:
                bridge.shutdown(2)
            assert len(receiver.requests) == len(http_receiver.metrics) == 1
            assert summary(receiver.requests[0]) == summary(http_receiver.metrics[0])
    finally:
        receiver.close()


@pytest.mark.parametrize("raw", ["0", "-5", "soon"])
def test_a_bad_export_interval_is_reported_and_the_default_used(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str) -> None:
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", raw)
    with Receiver() as receiver:
        bridge = MetricsBridge(OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics"),
                               Recorder(CollectorRegistry(), config=parse_config("")))
        bridge.emit(gen("qa-engineer"))
        time.sleep(0.2)
        assert receiver.metrics == []  # not an export per millisecond: 60 s, the default
        bridge.shutdown(5)
        assert len(receiver.metrics) == 1  # the last export at shutdown
    assert "OTEL_METRIC_EXPORT_INTERVAL" in caplog.text and "60000" in caplog.text


class KeepingExporter(OTLPMetricExporter):
    """Keeps what it is given instead of sending it: the test reads hundreds of exports
    taken while another thread emits, which a receiver would decode too slowly."""

    def __init__(self) -> None:
        super().__init__(endpoint=f"{refused_url()}/v1/metrics")
        self.kept: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float | None = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.kept.append(metrics_data)
        return MetricExportResult.SUCCESS


def test_no_point_starts_after_the_time_it_is_exported_with() -> None:
    # A collection reads its time, then takes the points under the lock emit holds: a
    # point emit creates while the collection waits must not start after that time (the
    # OTLP data model's interval is (start, time]).
    exporter = KeepingExporter()
    bridge = MetricsBridge(exporter, Recorder(CollectorRegistry(), config=parse_config("")),
                           export_interval_millis=math.inf)
    events = [gen(f"persona-{i}") for i in range(CARDINALITY_LIMIT)]
    done = threading.Event()

    def emit() -> None:
        for event in events:  # each a new attribute set: a new point with its start
            bridge.emit(event)
            time.sleep(0.0001)  # spread over many collections
        done.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    emitter = threading.Thread(target=emit)
    try:
        emitter.start()
        while not done.is_set():
            bridge.flush(1)
    finally:
        emitter.join()
        sys.setswitchinterval(switch)
    bridge.flush(1)
    bridge.shutdown(1)
    points = [(p.start_time_unix_nano, p.time_unix_nano) for data in exporter.kept
              for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics for p in m.data.data_points]
    assert len(exporter.kept) > 20 and len(points) > 3 * CARDINALITY_LIMIT
    assert [p for p in points if p[0] is not None and p[0] > p[1]] == []
