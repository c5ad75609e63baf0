"""persona-exporter serve, as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from persona_exporter.catalog import CATALOG

from .conftest import free_port
from .otlp_receiver import Receiver

CLI = [sys.executable, "-m", "persona_exporter"]
TOKEN = "s3cret-ingest-token"  # noqa: S105 - a test value
GEN = {"type": "llm_generation", "persona": "qa-engineer", "chatmode": "bug-fix",
       "model": "gpt-4o", "provider": "openai", "input_tokens": 100, "output_tokens": 20,
       "duration_seconds": 0.5}
CONFIG = """
personas:
  qa-engineer: {tokens: {24h: 5000}}
server:
  max_body_bytes: 20000
  max_events_per_batch: 50
"""


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    config: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, err


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post(server: Server, payload: Any, *, content_type: str = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, _, raw = http("POST", f"{server.url}/v1/events", body,
                          {"Content-Type": content_type, **(headers or {})})
    return status, json.loads(raw)


def wait_serving(proc: subprocess.Popen[str], url: str, timeout: float = 30) -> None:
    """Until the exporter at ``url`` answers /healthz; its stderr in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http("GET", f"{url}/healthz")[0] == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the exporter did not start: {proc.communicate()[1]}")
        time.sleep(0.05)


def wait_until(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def reload_error(server: Server) -> str | None:
    error: str | None = json.loads(http("GET", f"{server.url}/readyz")[2])["last_reload_error"]
    return error


def metric(server: Server, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` matching ``labels``; None when there are none."""
    _, _, raw = http("GET", f"{server.url}/metrics")
    values = [float(s.value) for family in text_string_to_metric_families(raw.decode())
              for s in family.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


@contextmanager
def running(tmp_path: Path, config: str = CONFIG, env: dict[str, str] | None = None,
            args: tuple[str, ...] = (), global_args: tuple[str, ...] = ()) -> Iterator[Server]:
    config_path = tmp_path / "persona-exporter.yaml"
    config_path.write_text(config)
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, *global_args, "serve", "--web.listen-address", f"127.0.0.1:{port}",
         "--config.file",
         str(config_path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", proc, config_path)
    wait_serving(proc, server.url)
    try:
        yield server
    finally:
        if proc.poll() is None:
            server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as s:
        yield s


def test_endpoints(server: Server) -> None:
    status, headers, body = http("GET", f"{server.url}/")
    assert status == 200 and b'href="metrics"' in body and b'href="v1/schema"' in body
    assert http("GET", f"{server.url}/healthz")[:3:2] == (200, b"ok\n")
    status, _, body = http("GET", f"{server.url}/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, headers, body = http("GET", f"{server.url}/v1/schema")
    assert status == 200 and headers["content-type"] == "application/schema+json"
    schema = json.loads(body)
    assert {"llm_generation", "stage_run", "workflow_run"} <= set(
        json.dumps(schema).replace('"', " ").split())
    status, headers, body = http("GET", f"{server.url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {spec.name.removesuffix("_total") for spec in CATALOG} <= names
    _, headers, body = http("GET", f"{server.url}/metrics",
                            headers={"Accept": "application/openmetrics-text"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert metric(server, "persona_token_budget_tokens", persona="qa-engineer",
                  window="24h") == 5000
    assert http("GET", f"{server.url}/nope")[0] == 404
    assert http("GET", f"{server.url}/v1/events")[0] == 405


def test_accepted_events_are_in_metrics_when_the_response_arrives(server: Server) -> None:
    status, result = post(server, {"batch_id": "b-1", "events": [
        GEN, {**GEN, "error_type": "RateLimitError"},
        {"type": "persona_switch", "workflow": "w", "from_persona": "a", "to_persona": "b"}]})
    assert status == 200
    assert result == {"batch_id": "b-1", "accepted": 3, "rejected": 0, "duplicate": False,
                      "errors": []}
    labels = {"persona": "qa-engineer", "chatmode": "bug-fix", "model": "gpt-4o",
              "provider": "openai"}
    assert metric(server, "persona_llm_requests_total", **labels) == 2
    assert metric(server, "persona_llm_request_failures_total", **labels,
                  error_type="RateLimitError") == 1
    assert metric(server, "persona_exporter_events_accepted_total", type="persona_switch") == 1


def test_ndjson_with_a_broken_line_keeps_the_others(server: Server) -> None:
    body = b"\n".join([json.dumps(GEN).encode(), b"{not json", json.dumps(GEN).encode(), b""])
    status, result = post(server, body, content_type="application/x-ndjson",
                          headers={"Idempotency-Key": "nd-1"})
    assert status == 422
    assert (result["accepted"], result["rejected"]) == (2, 1)
    assert result["errors"][0]["index"] == 1
    assert "line 2 is not valid JSON" in result["errors"][0]["message"]


BAD_EVENTS = [
    ({**GEN, "input_tokens": -1}, "invalid_event", "input_tokens"),
    ({**GEN, "input_tokens": "many"}, "invalid_event", "input_tokens"),
    ({**GEN, "duration_seconds": math.nan}, "invalid_event", "finite"),
    ({**GEN, "persona": "p" * 5000}, "invalid_event", "persona"),
    ({**GEN, "persona": "développeur"}, "invalid_event", "not a valid name"),
    ({**GEN, "type": "llm_call"}, "unknown_event_type", "unknown event type 'llm_call'"),
    ({**GEN, "extra": 1}, "invalid_event", "extra: unknown field"),
    ("just a string", "invalid_event", ""),
]


@pytest.mark.parametrize(("event", "reason", "fragment"), BAD_EVENTS)
def test_a_bad_event_is_rejected_by_index_and_the_rest_applied(
        server: Server, event: Any, reason: str, fragment: str) -> None:
    status, result = post(server, [GEN, event, GEN])
    assert status == 422
    assert result["accepted"] == 2
    assert [(e["index"], e["reason"]) for e in result["errors"]] == [(1, reason)]
    assert fragment in result["errors"][0]["message"]
    assert metric(server, "persona_exporter_events_rejected_total", reason=reason) == 1
    assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 2


@pytest.mark.parametrize(("body", "content_type", "status", "reason", "fragment"), [
    (b"{not json", "application/json", 400, "malformed_body", "not valid JSON"),
    (b'{"events": 5}', "application/json", 400, "malformed_body", "'events' must be"),
    (b'{"evnts": []}', "application/json", 400, "malformed_body", "unknown batch field"),
    (b"42", "application/json", 400, "malformed_body", "expected a JSON object"),
    (json.dumps([GEN]).encode(), "text/plain", 415, "unsupported_media_type", "text/plain"),
    (json.dumps([GEN] * 51).encode(), "application/json", 413, "too_many_events", "at most 50"),
    (b"[" + b" " * 30000 + b"]", "application/json", 413, "body_too_large", "over the limit"),
])
def test_unusable_requests_get_a_clear_4xx(server: Server, body: bytes, content_type: str,
                                           status: int, reason: str, fragment: str) -> None:
    got, result = post(server, body, content_type=content_type)
    assert got == status
    assert fragment in result["error"]
    assert metric(server, "persona_exporter_events_rejected_total", reason=reason) == 1
    assert http("GET", f"{server.url}/healthz")[0] == 200


def test_a_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    chunks = (b"[" + b" " * 1000 for _ in range(30))  # no Content-Length: chunked
    connection.request("POST", "/v1/events", body=chunks,
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    connection.close()


def test_retried_batches_are_counted_once(server: Server) -> None:
    first = post(server, {"batch_id": "retry-me", "events": [GEN, GEN]})
    second = post(server, {"batch_id": "retry-me", "events": [GEN, GEN]})
    by_header = [post(server, [GEN], headers={"Idempotency-Key": "retry-hdr"}) for _ in "ab"]
    # the same id with other content is no retry: refused, and nothing applied
    reused = post(server, [GEN], headers={"Idempotency-Key": "retry-me"})
    assert first == (200, {"batch_id": "retry-me", "accepted": 2, "rejected": 0,
                           "duplicate": False, "errors": []})
    assert second[1]["duplicate"] and second[1]["accepted"] == 2
    assert [b[1]["duplicate"] for b in by_header] == [False, True]
    assert reused[0] == 409 and "'retry-me'" in reused[1]["error"]
    assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 3


def test_bearer_token_guards_ingest_and_never_leaks(tmp_path: Path) -> None:
    config = CONFIG + "  protect_metrics: true\n"
    with running(tmp_path, config, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as server:
        status, result = post(server, [GEN])
        assert status == 401 and "bearer token" in result["error"]
        assert post(server, [GEN], headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(server, [GEN], headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert post(server, [GEN], headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert http("GET", f"{server.url}/metrics")[0] == 401
        status, _, body = http("GET", f"{server.url}/metrics",
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and TOKEN.encode() not in body
        assert b'persona_exporter_events_rejected_total{reason="unauthorized"} 3.0' in body
        _, err = server.stop()
    assert TOKEN not in err


def test_sighup_reloads_budgets_without_resetting_counters(server: Server) -> None:
    post(server, [GEN])
    server.config.write_text(CONFIG.replace("24h: 5000", "24h: 9000, 7d: 40000"))
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(server, "persona_token_budget_tokens", persona="qa-engineer",
                              window="24h") == 9000)
    assert metric(server, "persona_token_budget_tokens", persona="qa-engineer",
                  window="7d") == 40000
    assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 1
    server.config.write_text("personas: {qa-engineer: {tokens: {24h: -1}}}")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reload_error(server) is not None)
    ready = json.loads(http("GET", f"{server.url}/readyz")[2])
    assert "personas.qa-engineer.tokens.24h" in ready["last_reload_error"]
    assert metric(server, "persona_token_budget_tokens", persona="qa-engineer",
                  window="24h") == 9000  # the running config stays


def test_sigterm_exits_zero(server: Server) -> None:
    post(server, [GEN])
    started = time.monotonic()
    code, err = server.stop()
    assert code == 0
    assert time.monotonic() - started < 10
    assert "stopped" in err


def test_json_logs_one_object_per_line(tmp_path: Path) -> None:
    with running(tmp_path, global_args=("--log.format", "json"),
                 env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as server:
        post(server, [GEN], headers={"Authorization": f"Bearer {TOKEN}"})
        code, err = server.stop()
    assert code == 0
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    listening = next(e for e in entries if e["message"].startswith("listening on"))
    assert listening["auth"] is True and listening["level"] == "info"
    assert listening["config_file"].endswith("persona-exporter.yaml")
    assert any(e["message"] == "stopped" for e in entries)
    assert TOKEN not in err


@pytest.mark.parametrize(("config", "env", "expected"), [
    ("personas: {qa: {tokens: {24h: 0}}}", {}, "personas.qa.tokens.24h: expected a number >= 1"),
    ("server: {listen_address: nowhere}", {}, "server.listen_address: expected HOST:PORT"),
    ("server: {token_file: /no/such/token}", {}, "server.token_file: cannot read"),
    ("", {"PERSONA_EXPORTER_WEB_LISTEN_ADDRESS": "bad"},
     "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS: expected HOST:PORT"),
])
def test_a_wrong_config_stops_start_up_naming_the_key(tmp_path: Path, config: str,
                                                      env: dict[str, str],
                                                      expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    args = ["serve", "--config.file", str(path)]
    if "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS" not in env and "listen_address" not in config:
        args += ["--web.listen-address", f"127.0.0.1:{free_port()}"]
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30,
                            env={**os.environ, **env}, check=False)
    assert result.returncode == 2
    assert expected in result.stderr


def test_traced_events_become_spans(tmp_path: Path) -> None:
    with Receiver() as receiver, running(
            tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                           "PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL": "0.05"}) as server:
        trace = {"trace_id": "1" * 32, "run_id": "run-7"}
        status, _ = post(server, [
            {**GEN, "span_id": "3" * 16, "parent_span_id": "2" * 16, "stage": "fix",
             "workflow": "bug-fix", "start_time": 1.8e9, **trace},
            {"type": "stage_run", "workflow": "bug-fix", "stage": "fix",
             "persona": "qa-engineer", "status": "succeeded", "duration_seconds": 1,
             "span_id": "2" * 16, "parent_span_id": "4" * 16, "start_time": 1.8e9, **trace},
            {"type": "workflow_run", "workflow": "bug-fix", "status": "succeeded",
             "duration_seconds": 2, "span_id": "4" * 16, "persona": "qa-engineer",
             "start_time": 1.8e9, **trace}])
        assert status == 200
        spans = {s.name: s for s in receiver.wait_for_spans(3)}
    assert set(spans) == {"chat gpt-4o", "fix", "invoke_workflow bug-fix"}
    assert spans["chat gpt-4o"].parent_span_id == "2" * 16
    assert spans["fix"].parent_span_id == "4" * 16
    # events from the wire carry no run persona on children: the root names the user
    assert spans["invoke_workflow bug-fix"].attributes["user.id"] == "qa-engineer"
    assert all(s.attributes["persona"] == "qa-engineer" for s in spans.values())


def test_a_port_in_use_is_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*CLI, "serve", "--web.listen-address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(
        ["llm_generation", "stage_run", "workflow_run", "persona_switch", "x"])},
        optional={"persona": st.text(max_size=5), "model": st.text(max_size=5),
                  "duration_seconds": st.floats(), "input_tokens": st.integers(),
                  "status": st.text(max_size=8), "workflow": st.text(max_size=5)}),
        max_size=5).map(lambda v: json.dumps(v).encode())),
    ndjson=st.booleans())
def test_fuzzed_bodies_never_get_a_5xx(fuzz_server: Server, body: bytes, ndjson: bool) -> None:
    content_type = "application/x-ndjson" if ndjson else "application/json"
    status, _, _ = http("POST", f"{fuzz_server.url}/v1/events", body,
                        {"Content-Type": content_type})
    assert status < 500


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("fuzz")) as s:
        yield s
    # the module fixture's teardown stops it; the process must have stayed up throughout


def test_fuzz_server_is_alive_after_fuzzing(fuzz_server: Server) -> None:
    assert http("GET", f"{fuzz_server.url}/healthz")[0] == 200
    assert fuzz_server.proc.poll() is None


def test_the_otlp_bridge_exports_genai_metrics(tmp_path: Path) -> None:
    with Receiver() as receiver, running(
            tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                           "OTEL_METRIC_EXPORT_INTERVAL": "200"}) as server:
        status, _ = post(server, [GEN, {**GEN, "input_tokens": 300, "error_type": "Timeout",
                                        "time_to_first_chunk_seconds": 0.1}])
        assert status == 200
        deadline = time.monotonic() + 15
        found: dict[str, Any] = {}
        while time.monotonic() < deadline and not {
                "gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= set(found):
            time.sleep(0.2)
            for request in list(receiver.metrics):
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            found[m.name] = m
        ready = json.loads(http("GET", f"{server.url}/readyz")[2])
        exported = metric(server, "persona_exporter_otlp_metric_exports_total")
    assert ready["otlp_metrics"] is True
    assert exported is not None and exported >= 1
    tokens = found["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    points = {}
    for point in tokens.histogram.data_points:
        attrs = {a.key: a.value.string_value for a in point.attributes}
        points[attrs["gen_ai.token.type"]] = (point.sum, point.count, attrs)
    assert points["input"][:2] == (400, 2) and points["output"][:2] == (40, 2)
    attrs = points["input"][2]
    assert attrs["persona"] == "qa-engineer" and attrs["chatmode"] == "bug-fix"
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert list(tokens.histogram.data_points[0].explicit_bounds)[:3] == [1.0, 4.0, 16.0]
    duration = found["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    errors = [p for p in duration.histogram.data_points
              if any(a.key == "error.type" for a in p.attributes)]
    assert len(errors) == 1 and errors[0].count == 1
    budget = found["persona.token.budget"]
    assert [(p.as_double or p.as_int) for p in budget.gauge.data_points] == [5000]


def test_a_dead_otlp_endpoint_never_slows_ingest(tmp_path: Path) -> None:
    with Receiver(hang=True) as dead, running(
            tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": dead.url,
                           "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
                           "OTEL_METRIC_EXPORT_INTERVAL": "100",
                           "PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL": "0.05",
                           "PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT": "1"}) as server:
        traced = {**GEN, "trace_id": "9" * 32, "span_id": "8" * 16, "start_time": 1.8e9}
        latencies = []
        for i in range(60):
            started = time.perf_counter()
            status, _ = post(server, {"batch_id": f"dead-{i}", "events": [traced] * 20})
            latencies.append(time.perf_counter() - started)
            assert status == 200
        latencies.sort()
        assert latencies[int(len(latencies) * 0.95)] < 0.1  # generous; the backend waits 30 s
        assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 1200
        started = time.monotonic()
        code, _ = server.stop()
        took = time.monotonic() - started
    assert code == 0
    assert took < 10


def test_ndjson_lines_end_at_newline_only(server: Server) -> None:
    # U+2028 is legal inside a JSON string; a BOM may lead; lines may end in CRLF.
    line = json.dumps({**GEN, "metadata": {"note": "a\u2028b\u0085c"}},
                      ensure_ascii=False).encode()
    body = b"\xef\xbb\xbf" + line + b"\r\n" + json.dumps(GEN).encode() + b"\r\n"
    status, result = post(server, body, content_type="application/x-ndjson")
    assert (status, result["accepted"], result["rejected"]) == (200, 2, 0)


def test_a_remembered_answer_keeps_counts_and_a_bounded_error_list(server: Server) -> None:
    bad = [{**GEN, "input_tokens": -1}] * 40
    first = post(server, {"batch_id": "many-errors", "events": [GEN, *bad]})
    again = post(server, {"batch_id": "many-errors", "events": [GEN, *bad]})
    assert first[1]["rejected"] == again[1]["rejected"] == 40
    assert again[1]["duplicate"] and again[1]["accepted"] == 1
    long_key = {**GEN, "k" * 10_000: 1}
    status, result = post(server, [long_key])
    assert status == 422 and len(json.dumps(result)) < 2000  # the client's key is not echoed


def test_a_burst_of_sighups_is_harmless(server: Server) -> None:
    for _ in range(100):
        server.proc.send_signal(signal.SIGHUP)
    for i in range(20):
        assert post(server, {"batch_id": f"hup-{i}", "events": [GEN]})[0] == 200
    assert http("GET", f"{server.url}/healthz")[0] == 200
    assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 20


def test_a_half_written_config_is_not_reloaded(server: Server) -> None:
    server.config.write_text("personas:\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reload_error(server) is not None)
    assert metric(server, "persona_token_budget_tokens", persona="qa-engineer",
                  window="24h") == 5000
    server.config.write_text("personas: {}\n")  # removing all budgets on purpose works
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(server, "persona_token_budget_tokens",
                              persona="qa-engineer") is None)


DUPLICATE = ('{"type": "llm_generation", "persona": "qa-engineer", "model": "gpt-4o", '
             '"duration_seconds": 0.5, "input_tokens": 1, %s}')


def test_duplicate_keys_reject_the_event_that_holds_them_naming_the_key(
        server: Server) -> None:
    good = json.dumps(GEN)
    events = [good, DUPLICATE % '"input_tokens": 1000000',
              DUPLICATE % '"metadata": {"note": "a", "note": "b"}', good]
    body = '{"batch_id": "dup-1", "events": [' + ", ".join(events) + "]}"
    status, result = post(server, body.encode())
    assert status == 422 and result["accepted"] == 2
    assert [(e["index"], e["reason"], e["message"]) for e in result["errors"]] == [
        (1, "invalid_event", "duplicate key 'input_tokens'"),
        (2, "invalid_event", "metadata: duplicate key 'note'")]
    assert metric(server, "persona_llm_tokens_total", token_type="input") == 200
    # the same in NDJSON: by line
    ndjson = "\n".join([good, DUPLICATE % '"model": "other"', good]).encode()
    status, result = post(server, ndjson, content_type="application/x-ndjson")
    assert status == 422 and result["accepted"] == 2
    assert result["errors"][0]["index"] == 1
    assert result["errors"][0]["message"] == "line 2: duplicate key 'model'"


def test_a_duplicate_key_deep_under_long_keys_gets_a_bounded_message(server: Server) -> None:
    deep = '{"note": 1, "note": 2}'
    for depth in range(60):
        deep = '{"%s": %s}' % (f"k{depth}-" + "x" * 100, deep)  # noqa: UP031
    line = DUPLICATE % f'"metadata": {deep}'
    status, result = post(server, f"{json.dumps(GEN)}\n{line}\n".encode(),
                          content_type="application/x-ndjson")
    assert status == 422 and result["accepted"] == 1
    message = result["errors"][0]["message"]
    assert message.startswith("line 2: metadata.k59-xxx") and len(message) <= 300


@pytest.mark.parametrize("body", [
    b'{"batch_id": "a", "events": [], "batch_id": "b"}',
    b'{"events": [], "events": []}',
])
def test_a_duplicate_key_in_the_batch_object_is_a_400(server: Server, body: bytes) -> None:
    status, result = post(server, body)
    assert status == 400
    assert "duplicate key" in result["error"] and "in the batch object" in result["error"]
    assert metric(server, "persona_exporter_events_rejected_total",
                  reason="malformed_body") == 1


def test_absurd_numbers_are_refused_and_no_series_becomes_infinite(server: Server) -> None:
    status, result = post(server, [GEN, {**GEN, "cost_usd": 1e308},
                                   {**GEN, "input_tokens": 10**13},
                                   {**GEN, "duration_seconds": 1e9}])
    assert status == 422 and result["accepted"] == 1
    assert [e["message"].split(":")[0] for e in result["errors"]] == [
        "cost_usd", "input_tokens", "duration_seconds"]
    status, _ = post(server, b'[' + json.dumps({**GEN, "cost_usd": 1}).encode()[:-1]
                     + b', "time_to_first_chunk_seconds": 1e999}]')  # JSON's inf
    assert status == 422
    _, _, raw = http("GET", f"{server.url}/metrics")
    assert b"Inf" not in raw.replace(b'le="+Inf"', b"") and b"NaN" not in raw
    schema = json.loads(http("GET", f"{server.url}/v1/schema")[2])
    published = schema["$defs"]["LLMGeneration"]["properties"]
    assert published["input_tokens"]["maximum"] == 10**12
    assert published["duration_seconds"]["maximum"] == 30 * 86_400


def test_one_huge_event_gets_a_short_error(tmp_path: Path) -> None:
    config = CONFIG.replace("max_body_bytes: 20000", "max_body_bytes: 2000000")
    with running(tmp_path, config) as server:
        event = {**GEN, **{f"unknown-key-{i:06d}": 1 for i in range(74_000)}}
        body = json.dumps({"batch_id": "huge", "events": [event]}).encode()
        assert len(body) > 1_000_000
        started = time.monotonic()
        status, result = post(server, body)
        assert status == 422
        assert time.monotonic() - started < 5
        message = result["errors"][0]["message"]
        assert len(message) <= 300 and message.startswith("74000 unknown fields: ")
        assert len(json.dumps(result)) < 1000  # was 1.8 MB
        status, result = post(server, {"events": [], **{f"k{i}": 1 for i in range(74_000)}})
        assert status == 400 and len(result["error"]) < 300


# --- signals and auth (issue 11) ---

def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (signal 1: bit 0 of SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & 1)


def _alive(url: str) -> bool:
    try:
        return http("GET", f"{url}/healthz")[0] == 200
    except OSError:
        return False


def test_sighup_at_any_moment_never_kills_the_process(tmp_path: Path) -> None:
    """SIGHUPs every few ms from the moment the handler exists: through start-up (before
    and while the port opens), while serving, and through a shutdown made long by a hung
    trace and metrics backend (the flush after the event loop closed, then Python's own
    finalisation, where it resets signal handlers to their default)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Receiver(hang=True) as dead:
        proc = subprocess.Popen(
            [*CLI, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--config.file",
             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": dead.url,
                 "OTEL_EXPORTER_OTLP_TIMEOUT": "30", "OTEL_METRIC_EXPORT_INTERVAL": "100",
                 "PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL": "0.05",
                 "PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT": "1"})
        try:
            wait_until(lambda: _catches_sighup(proc.pid) or proc.poll() is not None, 30)
            before_up = 0
            deadline = time.monotonic() + 30
            while not _alive(url):
                assert proc.poll() is None and time.monotonic() < deadline
                proc.send_signal(signal.SIGHUP)
                before_up += 1
                time.sleep(0.005)
            traced = {**GEN, "trace_id": "9" * 32, "span_id": "8" * 16, "start_time": 1.8e9}
            for i in range(5):
                proc.send_signal(signal.SIGHUP)
                assert post(Server(url, proc, config),
                            {"batch_id": f"b{i}", "events": [traced] * 10})[0] == 200
            proc.send_signal(signal.SIGTERM)
            during_shutdown = 0
            while proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)
                    during_shutdown += 1
                time.sleep(0.002)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert before_up >= 5 and during_shutdown >= 50, (before_up, during_shutdown)
    assert "stopped" in err


def test_sigterm_during_start_up_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--web.listen-address", f"127.0.0.1:{port}", "--config.file",
         str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _catches_sighup(proc.pid) or proc.poll() is not None, 30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped" in err


def _reload_counts(server: Server) -> tuple[int, int]:
    """(reloads, failed reloads) as /readyz reports them."""
    ready = json.loads(http("GET", f"{server.url}/readyz")[2])
    return ready["reloads"], ready["failed_reloads"]


def _reload_counts_differ(server: Server, before: tuple[int, int]) -> bool:
    return _reload_counts(server) != before


def _reloaded(server: Server, outcome: str, count: int) -> bool:
    return bool(json.loads(http("GET", f"{server.url}/readyz")[2])[outcome] == count)


def test_sighup_rotates_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    config = CONFIG + f"  token_file: {token_file}\n  protect_metrics: true\n"
    env = {"PERSONA_EXPORTER_TOKEN": ""}  # the file, not the environment

    def status_with(server: Server, token: str) -> tuple[int, int]:
        auth = {"Authorization": f"Bearer {token}"}
        return (post(server, [GEN], headers=auth)[0],
                http("GET", f"{server.url}/metrics", headers=auth)[0])

    with running(tmp_path, config, env=env) as server:
        assert status_with(server, "old-token") == (200, 200)
        token_file.write_text("new-token\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _reloaded(server, "reloads", 1))
        assert status_with(server, "old-token") == (401, 401)
        assert status_with(server, "new-token") == (200, 200)
        # a bad token file on reload keeps the token in force, and says why
        for failures, bad in enumerate([b"", b"two words\n", b"\xff\xfe"], 1):
            token_file.write_bytes(bad)
            server.proc.send_signal(signal.SIGHUP)
            wait_until(functools.partial(_reloaded, server, "failed_reloads", failures))
            assert "server.token_file" in (reload_error(server) or "")
            assert status_with(server, "new-token") == (200, 200)
        token_file.unlink()
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _reloaded(server, "failed_reloads", 4))
        assert "server.token_file: cannot read" in (reload_error(server) or "")
        # a reload never turns authentication off
        server.config.write_text(CONFIG)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _reloaded(server, "failed_reloads", 5))
        assert "never turns authentication off" in (reload_error(server) or "")
        assert status_with(server, "new-token") == (200, 200)
        assert post(server, [GEN])[0] == 401
        _, err = server.stop()
    assert "old-token" not in err and "new-token" not in err and "two words" not in err
    assert err.count("reload failed, keeping the running config and token") == 5
    assert err.count("ingest token reloaded: the previous one no longer works") == 1


CONFIG_CASES: dict[str, str] = {
    "plain": "personas: {qa-engineer: {tokens: {24h: 5000}}}\n",
    "token": "server: {token_file: TOKEN}\n",
    "protected": "server: {token_file: TOKEN, protect_metrics: true}\n",
    "protected-no-token": "server: {protect_metrics: true}\n",
    "missing-token": "server: {token_file: MISSING}\n",
    "empty-token": "server: {token_file: EMPTY}\n",
    "spaced-token": "server: {token_file: SPACED}\n",
    "bad-address": "server: {listen_address: 'localhost'}\n",
    "bad-port": "server: {listen_address: '127.0.0.1:70000'}\n",
    "bad-key": "personas: {qa-engineer: {tokens: {24h: 0}}}\n",
}


def _case_file(tmp_path: Path, name: str, port: int) -> Path:
    (tmp_path / "token").write_text("a-token\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "spaced").write_text("a token\n")
    text = (CONFIG_CASES[name].replace("TOKEN", str(tmp_path / "token"))
            .replace("MISSING", str(tmp_path / "missing"))
            .replace("EMPTY", str(tmp_path / "empty"))
            .replace("SPACED", str(tmp_path / "spaced")))
    if "server:" not in text:
        text += f"server: {{listen_address: '127.0.0.1:{port}'}}\n"
    elif "listen_address" not in text:
        text = text.replace("server: {", f"server: {{listen_address: '127.0.0.1:{port}', ", 1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _serve_starts(path: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Start `serve` with the file: True when it listened, False when it refused (exit 2)."""
    text = path.read_text()
    port = int(text.split("127.0.0.1:")[1].split("'")[0]) if "127.0.0.1:" in text else None
    proc = subprocess.Popen([*CLI, "serve", "--config.file", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if port is not None and _alive(f"http://127.0.0.1:{port}"):
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=15)
                return True, err
            time.sleep(0.05)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 2, err
        return False, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_check_config_accepts_exactly_what_serve_starts_with(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_EXPORTER_")}
    verdicts = {}
    for name in CONFIG_CASES:
        path = _case_file(tmp_path, name, free_port())
        check = subprocess.run([*CLI, "check-config", str(path)], capture_output=True,
                               text=True, timeout=30, env=env, check=False)
        started, err = _serve_starts(path, env)
        assert (check.returncode == 0) == started, (name, check.stderr, err)
        if not started:  # the same message, naming the same key
            assert check.stderr.strip().removeprefix("persona-exporter: ") in err, name
        verdicts[name] = started
    assert verdicts == {"plain": True, "token": True, "protected": True,
                        "protected-no-token": False, "missing-token": False,
                        "empty-token": False, "spaced-token": False, "bad-address": False,
                        "bad-port": False, "bad-key": False}
    protected = subprocess.run([*CLI, "check-config", str(tmp_path / "protected-no-token.yaml")],
                               capture_output=True, text=True, timeout=30, env=env, check=False)
    assert "server.protect_metrics: true needs a token" in protected.stderr
    # the environment's token counts, for check-config as for serve
    with_env = {**env, "PERSONA_EXPORTER_TOKEN": "t0ken"}
    ok = subprocess.run([*CLI, "check-config", str(tmp_path / "protected-no-token.yaml")],
                        capture_output=True, text=True, timeout=30, env=with_env, check=False)
    assert ok.returncode == 0 and "ingest token: PERSONA_EXPORTER_TOKEN" in ok.stdout
    assert _serve_starts(tmp_path / "protected-no-token.yaml", with_env)[0]


def test_check_config_running_config_accepts_exactly_what_a_reload_accepts(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_EXPORTER_")}
    token = tmp_path / "token"
    token.write_text("a-token\n")
    (tmp_path / "empty").write_text("")
    start = (f"personas: {{qa-engineer: {{tokens: {{24h: 5000}}}}}}\n"
             f"server: {{token_file: {token}}}\n")
    candidates = [
        ("half-written", f"personas:\nserver: {{token_file: {token}}}\n"),
        ("token removed", "personas: {qa-engineer: {tokens: {24h: 9000}}}\n"),
        ("empty token", f"personas: {{}}\nserver: {{token_file: {tmp_path / 'empty'}}}\n"),
        ("bad key", f"personas: {{qa: {{tokenz: 1}}}}\nserver: {{token_file: {token}}}\n"),
        ("budgets changed", start.replace("5000", "7000")),
        ("port changed", start.replace("server: {", "server: {listen_address: ':1', ")),
        ("none removed on purpose", f"personas: {{}}\nserver: {{token_file: {token}}}\n"),
    ]
    running_file = tmp_path / "running.yaml"
    running_file.write_text(start)
    verdicts: dict[str, tuple[bool, bool]] = {}
    with running(tmp_path, start, env={"PERSONA_EXPORTER_TOKEN": ""}) as server:
        for name, text in candidates:
            candidate = tmp_path / "candidate.yaml"
            candidate.write_text(text)
            check = subprocess.run(
                [*CLI, "check-config", str(candidate), "--running-config", str(running_file)],
                capture_output=True, text=True, timeout=30, env=env, check=False)
            before = _reload_counts(server)
            server.config.write_text(text)
            server.proc.send_signal(signal.SIGHUP)
            wait_until(functools.partial(_reload_counts_differ, server, before))
            accepted = _reload_counts(server)[0] == before[0] + 1
            verdicts[name] = (check.returncode == 0, accepted)
            if accepted:
                running_file.write_text(text)
            if name == "port changed":
                assert "server.listen_address changed: in force only after a restart" \
                    in check.stdout
    assert verdicts == {"half-written": (False, False), "token removed": (False, False),
                        "empty token": (False, False), "bad key": (False, False),
                        "budgets changed": (True, True), "port changed": (True, True),
                        "none removed on purpose": (True, True)}


def test_a_duplicate_key_in_a_drop_report_is_refused(server: Server) -> None:
    body = b'{"batch_id": "d", "events": [], "dropped": {"queue_full": 1, "queue_full": 9}}'
    status, result = post(server, body)
    assert status == 400 and "'dropped': duplicate key 'queue_full'" in result["error"]
    assert metric(server, "persona_exporter_remote_events_dropped_total",
                  reason="queue_full") in (None, 0.0)


def test_every_server_key_but_the_token_file_is_named_when_a_reload_changes_it() -> None:
    # a reload applies budgets and the token; a server key it cannot apply must be named
    from persona_exporter.config import Server as ServerSection
    from persona_exporter.server.serve import _RESTART_ONLY

    assert set(_RESTART_ONLY) == set(ServerSection.model_fields) - {"token_file"}
