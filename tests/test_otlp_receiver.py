"""The OTLP traces receiver as OTLP clients see it: the real OpenTelemetry SDK exporter
against the real ``persona-exporter serve``, the statuses and bodies of the OTLP/HTTP
specification (``opentelemetry-specification`` ``specification/protocol/otlp.md``), and
bodies that are broken or hostile."""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from .otlp_receiver import Receiver, refused_url
from .test_serve import TOKEN, Server, http, metric, running, wait_until

CONFIG = """
server:
  max_body_bytes: 20000
otlp:
  max_body_bytes: 200000
"""
PROTOBUF = {"Content-Type": "application/x-protobuf"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path, CONFIG, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as s:
        yield s


def _provider(endpoint: str, headers: dict[str, str],
              compression: Compression = Compression.NoCompression,
              ) -> tuple[TracerProvider, list[SpanExportResult]]:
    """A provider whose every finished span is exported at once, with the results kept."""
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, compression=compression,
                                timeout=5)
    results: list[SpanExportResult] = []
    export = exporter.export

    def recording(spans: Any) -> SpanExportResult:
        result = export(spans)
        results.append(result)
        return result

    exporter.export = recording  # type: ignore[method-assign]
    provider = TracerProvider(resource=Resource.create({"service.name": "agents"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, results


def _spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"tool-{index}"):
            pass


def test_the_sdk_exporter_is_answered_and_its_spans_are_counted(server: Server) -> None:
    provider, results = _provider(f"{server.url}/v1/traces", AUTH)
    _spans(provider, 3)
    provider.shutdown()
    assert results == [SpanExportResult.SUCCESS] * 3
    assert metric(server, "persona_exporter_otlp_spans_received_total", transport="http") == 3
    assert metric(server, "persona_exporter_otlp_spans_total", outcome="ignored") == 3


def test_gzip_bodies_are_read(server: Server) -> None:
    provider, results = _provider(f"{server.url}/v1/traces", AUTH, Compression.Gzip)
    _spans(provider, 2)
    provider.shutdown()
    assert results == [SpanExportResult.SUCCESS] * 2
    assert metric(server, "persona_exporter_otlp_spans_received_total") == 2


def test_a_wrong_token_is_refused_and_the_client_is_told(server: Server) -> None:
    provider, results = _provider(f"{server.url}/v1/traces",
                                  {"Authorization": "Bearer nope"})
    _spans(provider, 1)
    provider.shutdown()
    assert results == [SpanExportResult.FAILURE]
    assert metric(server, "persona_exporter_events_rejected_total", reason="unauthorized") == 1
    assert metric(server, "persona_exporter_otlp_spans_received_total") is None


def test_the_langfuse_path_takes_basic_auth_with_the_token_as_secret(server: Server) -> None:
    # The Langfuse SDKs send Basic base64(public_key:secret_key) to this path
    # (langfuse-python langfuse/_client/span_processor.py).
    basic = base64.b64encode(f"pk-lf-1:{TOKEN}".encode()).decode()
    provider, results = _provider(f"{server.url}/api/public/otel/v1/traces",
                                  {"Authorization": f"Basic {basic}"})
    _spans(provider, 1)
    provider.shutdown()
    wrong = base64.b64encode(b"pk-lf-1:sk-other").decode()
    status, headers, body = http("POST", f"{server.url}/api/public/otel/v1/traces",
                                 _request(1).SerializeToString(),
                                 {**PROTOBUF, "Authorization": f"Basic {wrong}"})
    assert results == [SpanExportResult.SUCCESS]
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert Status.FromString(body).code == 16  # UNAUTHENTICATED


def _request(count: int, **attributes: Any) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(count):
        span = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="s",
                               start_time_unix_nano=1, end_time_unix_nano=2)
        for key, value in attributes.items():
            span.attributes.append(KeyValue(key=key, value=value))
    return request


def _json_span(**overrides: Any) -> dict[str, Any]:
    return {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": "s",
            "kind": 3, "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000",
            "attributes": [{"key": "k", "value": {"intValue": "12"}}], **overrides}


def _json_body(*spans: dict[str, Any]) -> bytes:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                          "scopeSpans": [{"spans": list(spans)}]}]}).encode()


def test_json_bodies_keep_the_good_spans_and_name_the_bad_one(server: Server) -> None:
    body = _json_body(_json_span(), _json_span(spanId="xyz"),
                      _json_span(attributes=[{"key": "k", "value": {"intValue": "many"}}]),
                      _json_span())
    status, headers, raw = http("POST", f"{server.url}/v1/traces", body,
                                {"Content-Type": "application/json", **AUTH})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(raw)["partialSuccess"]
    assert answer["rejectedSpans"] == "2"
    assert "spans[1]" in answer["errorMessage"] and "spanId" in answer["errorMessage"]
    assert metric(server, "persona_exporter_otlp_spans_rejected_total",
                  reason="invalid_span") == 2
    assert metric(server, "persona_exporter_otlp_spans_received_total") == 4
    assert metric(server, "persona_exporter_otlp_spans_total", outcome="ignored") == 2


def test_a_retried_request_is_answered_again_and_counted_once(server: Server) -> None:
    body = _request(5).SerializeToString()
    for _ in range(3):
        status, _, raw = http("POST", f"{server.url}/v1/traces", body, {**PROTOBUF, **AUTH})
        assert status == 200
        assert not ExportTraceServiceResponse.FromString(raw).HasField("partial_success")
    assert metric(server, "persona_exporter_otlp_spans_received_total") == 5


def test_too_many_attributes_refuses_that_span_only(server: Server) -> None:
    request = _request(1)
    crowded = request.resource_spans[0].scope_spans[0].spans.add(
        trace_id=os.urandom(16), span_id=os.urandom(8), name="crowded")
    crowded.attributes.extend(KeyValue(key=f"k{i}", value=AnyValue(int_value=i))
                              for i in range(10_000))
    status, _, raw = http("POST", f"{server.url}/v1/traces", request.SerializeToString(),
                          {**PROTOBUF, **AUTH})
    partial = ExportTraceServiceResponse.FromString(raw).partial_success
    assert status == 200 and partial.rejected_spans == 1
    assert "10000 attributes" in partial.error_message
    assert metric(server, "persona_exporter_otlp_spans_total", outcome="ignored") == 1


def test_broken_and_hostile_bodies_get_4xx_and_the_process_lives(server: Server) -> None:
    good = _request(2).SerializeToString()
    nested = AnyValue(string_value="x")
    for _ in range(40):
        nested = AnyValue(array_value=ArrayValue(values=[nested]))
    deep = _request(1, deep=nested).SerializeToString()
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (good[: len(good) // 2], PROTOBUF, 400),                     # truncated
        (b"\xff" * 64, PROTOBUF, 400),                               # not protobuf
        (b'{"resourceSpans": 5}', {"Content-Type": "application/json"}, 400),
        (b"[" * 100_000, {"Content-Type": "application/json"}, 400),  # deep JSON
        (gzip.compress(b"\0" * 50_000_000), {**PROTOBUF, "Content-Encoding": "gzip"}, 413),
        (good, {"Content-Type": "text/plain"}, 415),
        (good, {**PROTOBUF, "Content-Encoding": "br"}, 415),
    ]
    for body, headers, expected in cases:
        status, answer_headers, raw = http("POST", f"{server.url}/v1/traces", body,
                                           {**headers, **AUTH})
        assert status == expected, (headers, status, raw[:200])
        if answer_headers.get("content-type") == "application/x-protobuf":
            assert Status.FromString(raw).message
    # a value nested deeper than the decoder reads is refused only when it is read, and
    # never takes the batch down: the request is accepted
    status, _, _ = http("POST", f"{server.url}/v1/traces", deep, {**PROTOBUF, **AUTH})
    assert status == 200
    assert http("GET", f"{server.url}/healthz")[0] == 200
    assert metric(server, "persona_exporter_events_rejected_total",
                  reason="malformed_body") == 4


def test_otlp_grpc_on_its_own_listener(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    from .conftest import free_port

    port = free_port()
    config = CONFIG + f"  grpc_listen_address: 127.0.0.1:{port}\n"
    with running(tmp_path, config, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as server:
        for headers in ((("authorization", f"Bearer {TOKEN}"),),
                        (("authorization", "Bearer wrong"),)):
            exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True,
                                        headers=headers, timeout=5)
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            with provider.get_tracer("t").start_as_current_span("tool"):
                pass
            provider.shutdown()
        assert metric(server, "persona_exporter_otlp_spans_received_total",
                      transport="grpc") == 1
        assert metric(server, "persona_exporter_events_rejected_total",
                      reason="unauthorized") == 1


FORWARD = CONFIG + """
otlp_forward:
  - name: collector
    endpoint: {url}/v1/traces
    bearer_token_env: UPSTREAM_TOKEN
    timeout_seconds: 30
"""


def test_forwarding_passes_the_body_on_byte_identical(tmp_path: Path) -> None:
    body = gzip.compress(_request(3).SerializeToString())
    headers = {**PROTOBUF, **AUTH, "Content-Encoding": "gzip",
               "x-langfuse-ingestion-version": "4", "Cookie": "session=private"}
    with Receiver() as upstream, running(
            tmp_path, FORWARD.format(url=upstream.url),
            env={"PERSONA_EXPORTER_TOKEN": TOKEN, "UPSTREAM_TOKEN": "up-token"}) as server:
        status, _, _ = http("POST", f"{server.url}/v1/traces", body, headers)
        assert status == 200
        upstream.wait_for_spans(3)
        [received] = upstream.received
        assert received.raw == body and received.path == "/v1/traces"
        assert received.headers["content-encoding"] == "gzip"
        assert received.headers["x-langfuse-ingestion-version"] == "4"
        # the upstream's own credentials, never the client's; no other client header
        assert received.headers["authorization"] == "Bearer up-token"
        assert "cookie" not in received.headers
        wait_until(lambda: metric(server, "persona_exporter_otlp_forward_spans_total",
                                  upstream="collector", outcome="forwarded") == 3)
        # a retry of the same request is answered again, and not forwarded again
        assert http("POST", f"{server.url}/v1/traces", body, headers)[0] == 200
        assert metric(server, "persona_exporter_otlp_spans_received_total") == 3
        assert len(upstream.received) == 1


@pytest.mark.parametrize("upstream_state", ["hanging", "refusing"])
def test_a_dead_upstream_never_slows_ingest(tmp_path: Path, upstream_state: str) -> None:
    with Receiver(hang=upstream_state == "hanging") as upstream:
        url = upstream.url if upstream_state == "hanging" else refused_url()
        with running(tmp_path, FORWARD.format(url=url),
                     env={"PERSONA_EXPORTER_TOKEN": TOKEN, "UPSTREAM_TOKEN": "t"}) as server:
            started = time.monotonic()
            for _ in range(40):
                status, _, _ = http("POST", f"{server.url}/v1/traces",
                                    _request(2).SerializeToString(), {**PROTOBUF, **AUTH})
                assert status == 200
            # Waiting on the upstream even once would take its 30 s read timeout.
            assert time.monotonic() - started < 15
            assert metric(server, "persona_exporter_otlp_spans_received_total") == 80
            assert (metric(server, "persona_exporter_otlp_forward_queue_bytes",
                           upstream="collector") or 0) > 0
            assert not metric(server, "persona_exporter_otlp_forward_spans_total",
                              upstream="collector", outcome="forwarded")


def _genai_request(trace_id: bytes, span_id: bytes, parent: bytes, name: str,
                   **attributes: Any) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    span = scope.spans.add(trace_id=trace_id, span_id=span_id, parent_span_id=parent,
                           name=name, start_time_unix_nano=1_790_000_000_000_000_000,
                           end_time_unix_nano=1_790_000_001_000_000_000)
    for key, value in attributes.items():
        any_value = AnyValue(int_value=value) if isinstance(value, int) \
            else AnyValue(string_value=value)
        span.attributes.append(KeyValue(key=key, value=any_value))
    return bytes(request.SerializeToString())


def test_a_span_acknowledged_while_it_waits_for_its_persona_survives_a_crash(
        tmp_path: Path) -> None:
    from .test_storage import Exporter

    exporter = Exporter(tmp_path, "otlp: {hold_seconds: 120}\n")
    trace_id, root_id = os.urandom(16), os.urandom(8)
    child = _genai_request(trace_id, os.urandom(8), root_id, "chat gpt-4o",
                           **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                              "gen_ai.usage.input_tokens": 70, "gen_ai.usage.output_tokens": 7})
    root = _genai_request(trace_id, root_id, b"", "invoke_agent qa-engineer",
                          **{"gen_ai.operation.name": "invoke_agent",
                             "gen_ai.agent.name": "qa-engineer"})
    try:
        exporter.start()
        assert http("POST", f"{exporter.url}/v1/traces", child, PROTOBUF)[0] == 200
        assert metric(exporter.server, "persona_exporter_otlp_held_spans") == 1
        exporter.kill()  # SIGKILL: no shutdown code runs
        exporter.start()
        assert metric(exporter.server, "persona_exporter_otlp_held_spans") == 1
        # the client's retry of the child (its answer lost in the crash) counts nothing more
        assert http("POST", f"{exporter.url}/v1/traces", child, PROTOBUF)[0] == 200
        assert http("POST", f"{exporter.url}/v1/traces", root, PROTOBUF)[0] == 200
        assert metric(exporter.server, "persona_llm_requests_total",
                      persona="qa-engineer") == 1
        assert metric(exporter.server, "persona_llm_tokens_total", persona="qa-engineer",
                      token_type="input") == 70
        assert metric(exporter.server, "persona_exporter_otlp_persona_resolutions_total",
                      source="ancestor") == 1
        assert metric(exporter.server, "persona_exporter_otlp_held_spans") == 0
    finally:
        if exporter.proc is not None and exporter.proc.poll() is None:
            exporter.kill()


def test_readyz_names_the_receivers_state(tmp_path: Path) -> None:
    with Receiver() as upstream, running(
            tmp_path, FORWARD.format(url=upstream.url),
            env={"PERSONA_EXPORTER_TOKEN": TOKEN, "UPSTREAM_TOKEN": "t"}) as server:
        child = _genai_request(os.urandom(16), os.urandom(8), os.urandom(8), "chat gpt-4o",
                               **{"gen_ai.operation.name": "chat",
                                  "gen_ai.request.model": "gpt-4o"})
        assert http("POST", f"{server.url}/v1/traces", child, {**PROTOBUF, **AUTH})[0] == 200
        details = json.loads(http("GET", f"{server.url}/readyz")[2])
        assert details["otlp"] == {"held_spans": 1, "forward": ["collector"], "grpc": None}


def test_a_request_applied_but_not_stored_is_forwarded_once_and_counted_once(
        tmp_path: Path) -> None:
    import resource

    from .test_storage import Exporter

    with Receiver() as upstream:
        exporter = Exporter(tmp_path, FORWARD.format(url=upstream.url).replace(
            "    bearer_token_env: UPSTREAM_TOKEN\n", ""))
        try:
            exporter.start()
            pid = exporter.proc.pid if exporter.proc else 0
            # Past the file size limit a write fails with EFBIG, as on a full disk.
            limit = (exporter.storage / "state.db-wal").stat().st_size + 20_000
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            for _ in range(300):
                body = _request(5, model=AnyValue(string_value=os.urandom(8).hex()))\
                    .SerializeToString()
                status = http("POST", f"{exporter.url}/v1/traces", body, PROTOBUF)[0]
                if status != 200:
                    break
            assert status == 503, "the size limit was never reached"
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
            received = metric(exporter.server, "persona_exporter_otlp_spans_received_total")
            # the client's retry: acknowledged now that the disk caught up, not re-applied
            assert http("POST", f"{exporter.url}/v1/traces", body, PROTOBUF)[0] == 200
            assert metric(exporter.server,
                          "persona_exporter_otlp_spans_received_total") == received
            wait_until(lambda: any(r.raw == body for r in upstream.received))
            time.sleep(0.5)
            assert sum(r.raw == body for r in upstream.received) == 1
        finally:
            if exporter.proc is not None and exporter.proc.poll() is None:
                exporter.kill()


def test_spans_received_are_not_sent_again_as_spans_of_the_exporter(tmp_path: Path) -> None:
    trace_id, root_id = os.urandom(16), os.urandom(8)
    chat = _genai_request(trace_id, os.urandom(8), root_id, "chat gpt-4o",
                          **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                             "persona": "qa-engineer", "gen_ai.usage.input_tokens": 3})
    event = {"type": "observation", "kind": "event", "name": "marker",
             "trace_id": os.urandom(16).hex(), "span_id": os.urandom(8).hex()}
    with Receiver() as backend, running(tmp_path, CONFIG, env={
            "PERSONA_EXPORTER_TOKEN": TOKEN,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{backend.url}/v1/traces"}) as server:
        assert http("POST", f"{server.url}/v1/traces", chat, {**PROTOBUF, **AUTH})[0] == 200
        assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 1
        status, _, _ = http("POST", f"{server.url}/v1/events", json.dumps([event]).encode(),
                            {"Content-Type": "application/json", **AUTH})
        assert status == 200
        # the event's span arrives; the received span is not sent back under its own ids
        spans = backend.wait_for_spans(1)
        time.sleep(1.5)
        assert [s.name for s in backend.spans] == ["marker"]
        assert [s.name for s in spans] == ["marker"]


def test_a_trace_body_larger_than_the_events_budget_is_taken(tmp_path: Path) -> None:
    # server.max_body_bytes 20000: 64 events bodies in flight are 1.28 MB; a trace body
    # may be larger than all of that and must not get 503 for ever.
    config = "server: {max_body_bytes: 20000}\notlp: {max_body_bytes: 3000000}\n"
    body = _request(1, prompt=AnyValue(string_value="x" * 2_000_000)).SerializeToString()
    with running(tmp_path, config, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as server:
        status, _, raw = http("POST", f"{server.url}/v1/traces", body, {**PROTOBUF, **AUTH})
        assert status == 200, raw[:200]
        assert metric(server, "persona_exporter_otlp_spans_received_total") == 1


def test_held_spans_are_recorded_at_a_stop_without_durable_state(tmp_path: Path) -> None:
    # Without --storage.path a held span cannot wait across a restart: the stop records
    # it (persona unknown: its root never came), and the OTLP bridge's last export has it.
    child = _genai_request(os.urandom(16), os.urandom(8), os.urandom(8), "chat gpt-4o",
                           **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                              "gen_ai.usage.input_tokens": 42})
    with Receiver() as collector:
        with running(tmp_path, "otlp: {hold_seconds: 300}\n",
                     env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                          "OTEL_METRIC_EXPORT_INTERVAL": "600000"}) as server:
            assert http("POST", f"{server.url}/v1/traces", child, PROTOBUF)[0] == 200
            assert metric(server, "persona_exporter_otlp_held_spans") == 1
            assert metric(server, "persona_llm_requests_total") is None
            code, _ = server.stop()
            assert code == 0
        tokens = [point for request in collector.metrics
                  for resource in request.resource_metrics for scope in resource.scope_metrics
                  for m in scope.metrics if m.name == "gen_ai.client.token.usage"
                  for point in m.histogram.data_points]
        personas = {a.value.string_value for p in tokens for a in p.attributes
                    if a.key == "persona"}
        assert personas == {"unknown"}
        assert sum(p.sum for p in tokens) == 42
