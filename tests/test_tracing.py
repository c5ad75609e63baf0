"""Tracing on the real wire: the OTLP exporter sends to a receiver on 127.0.0.1 and the test
decodes what arrived. Langfuse's contract (path, auth, attributes) is checked against the
real Langfuse SDK's own output; failures of the backend must never reach the caller."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from prometheus_client import CollectorRegistry

from persona_exporter import (
    Config,
    ObservableLLM,
    Telemetry,
    configure,
    stage,
    workflow,
)
from persona_exporter.sdk.handles import STATUSES
from persona_exporter.tracing.backends import langfuse_exporter
from persona_exporter.tracing.sink import TraceSink

from .conftest import sample
from .otlp_receiver import GrpcReceiver, Receiver, Span, refused_url

PUBLIC_KEY = "pk-lf-test"
SECRET_KEY = "sk-lf-very-secret-value"  # noqa: S105 - a test value
RESPONSE = {"model": "gpt-4o", "usage": {"prompt_tokens": 120, "completion_tokens": 30,
                                         "prompt_tokens_details": {"cached_tokens": 64},
                                         "completion_tokens_details": {"reasoning_tokens": 10}}}


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def fast_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL", "0.05")


@pytest.fixture
def langfuse_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    with Receiver() as receiver:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_BASE_URL", receiver.url)
        yield receiver


def run_release(tel: Telemetry) -> str:
    """Two stages under two personas, one failed generation. Returns the run id."""
    chat = ObservableLLM(lambda **_: RESPONSE, provider="openai", telemetry=tel)

    def refuse(**_: Any) -> Any:
        raise Boom("rate limited")

    failing = ObservableLLM(refuse, provider="openai", telemetry=tel)
    with workflow("package-release", chatmode="package-release", telemetry=tel) as run:
        with stage("version-bump", persona="backend-engineer"):
            chat(model="gpt-4o")
        with stage("publish", persona="devops-engineer"):
            with pytest.raises(Boom):
                failing(model="gpt-4o")
            chat(model="gpt-4o")
    return run.run_id


def by_name(spans: list[Span]) -> dict[str, list[Span]]:
    named: dict[str, list[Span]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def test_langfuse_receives_persona_attributed_traces(
        langfuse_env: Receiver, registry: CollectorRegistry, config: Config,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        tel = configure(registry=registry, config=config)
        try:
            run_id = run_release(tel)
            assert tel.flush(10)
        finally:
            tel.shutdown(2)
    spans = langfuse_env.wait_for_spans(6)
    assert len(spans) == 6

    first = langfuse_env.received[0]
    assert first.path == "/api/public/otel/v1/traces"
    credentials = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    assert first.headers["authorization"] == f"Basic {credentials}"
    assert first.headers["content-encoding"] == "gzip"
    assert first.headers["x-langfuse-ingestion-version"] == "4"
    assert first.headers["x-langfuse-public-key"] == PUBLIC_KEY

    named = by_name(spans)
    root = named["invoke_workflow package-release"][0]
    bump, publish = named["version-bump"][0], named["publish"][0]
    generations = named["chat gpt-4o"]
    assert len(generations) == 3
    # one trace: workflow -> stage -> generation
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert root.parent_span_id == ""
    assert bump.parent_span_id == publish.parent_span_id == root.span_id
    assert sorted(g.parent_span_id for g in generations) == sorted(
        [bump.span_id, publish.span_id, publish.span_id])
    # persona-as-user: the run's persona (its first stage's) on every span, each span's
    # own in its observation metadata (tests/test_trace_fidelity.py: why)
    for span in spans:
        assert span.attributes["user.id"] == "backend-engineer"
    assert json.loads(publish.attributes["langfuse.observation.metadata.persona"]) == \
        "devops-engineer"
    for generation in generations:
        stage_span = bump if generation.parent_span_id == bump.span_id else publish
        assert generation.attributes["persona"] == stage_span.attributes["persona"]
    for span in spans:
        assert span.attributes["session.id"] == run_id
    # trace-level attributes on every span, identical (Langfuse merges them per trace)
    for span in spans:
        assert span.attributes["langfuse.trace.tags"] == ["chatmode:package-release",
                                                          "workflow:package-release"]
        assert json.loads(span.attributes["langfuse.trace.metadata.chatmode"]) == \
            "package-release"
        assert json.loads(span.attributes["langfuse.trace.metadata.workflow"]) == \
            "package-release"
        assert span.attributes["langfuse.trace.name"] == "package-release"
        assert json.loads(span.attributes["langfuse.trace.metadata.run_id"]) == run_id

    ok = next(g for g in generations if g.parent_span_id == bump.span_id)
    assert ok.attributes["langfuse.observation.type"] == "generation"
    assert ok.attributes["langfuse.observation.model.name"] == "gpt-4o"
    assert json.loads(ok.attributes["langfuse.observation.usage_details"]) == {
        "input": 56, "input_cached_tokens": 64, "output": 20, "output_reasoning_tokens": 10,
        "total": 150}
    cost = json.loads(ok.attributes["langfuse.observation.cost_details"])["total"]
    assert cost == pytest.approx((56 * 2.5 + 64 * 1.25 + 30 * 10) / 1e6)
    assert ok.attributes["stage"] == "version-bump"
    assert ok.end - ok.start >= 0
    assert bump.start <= ok.start and ok.end <= bump.end + 1_000_000

    failed = [g for g in generations if g.attributes.get("error.type") == "Boom"]
    assert len(failed) == 1
    assert failed[0].attributes["langfuse.observation.level"] == "ERROR"
    assert failed[0].attributes["langfuse.observation.status_message"] == "Boom"
    assert failed[0].status_code == 2  # STATUS_CODE_ERROR
    assert bump.attributes["langfuse.observation.type"] == "agent"
    assert root.attributes["langfuse.observation.type"] == "chain"

    assert (sample(registry, "persona_exporter_trace_exports_total", backend="langfuse")
            or 0) >= 1
    assert (sample(registry, "persona_exporter_trace_export_bytes_total", backend="langfuse")
            or 0) > 0
    assert sample(registry, "persona_exporter_trace_export_failures_total",
                  backend="langfuse") == 0
    assert sample(registry, "persona_exporter_trace_spans_dropped_total",
                  backend="langfuse") == 0
    # metrics still recorded alongside the traces
    assert sample(registry, "persona_llm_requests_total", persona="devops-engineer",
                  chatmode="package-release", model="gpt-4o", provider="openai") == 2
    assert "Langfuse tracing on" in caplog.text
    assert SECRET_KEY not in caplog.text


def test_spans_carry_what_the_langfuse_sdk_itself_sends(
        langfuse_env: Receiver, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our generation carries every attribute the real SDK puts on the same generation."""
    from langfuse import Langfuse, propagate_attributes
    from opentelemetry.sdk.trace import TracerProvider

    client = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY,
                      base_url=langfuse_env.url, tracer_provider=TracerProvider())
    with propagate_attributes(user_id="backend-engineer", session_id="run-1",
                              tags=["chatmode:bug-fix"], trace_name="bug-fix"), \
            client.start_as_current_observation(name="fix", as_type="agent"), \
            client.start_as_current_observation(
                name="chat gpt-4o", as_type="generation", model="gpt-4o",
                usage_details={"input": 1, "output": 2}, cost_details={"total": 0.1}):
        pass
    client.flush()
    sdk_generation = by_name(langfuse_env.wait_for_spans(2))["chat gpt-4o"][0]

    with Receiver() as ours:
        sink = TraceSink({"langfuse": _exporter_to(ours.url, monkeypatch)},
                         flush_interval=0.05)
        tel = Telemetry(sinks=[sink], config=config)
        with workflow("bug-fix", chatmode="bug-fix", telemetry=tel), \
                stage("fix", persona="backend-engineer"):
            ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)()
        assert sink.flush(5)
        sink.shutdown(1)
        ours_by_name = by_name(ours.wait_for_spans(3))
    our_generation = ours_by_name["chat gpt-4o"][0]
    our_root = ours_by_name["invoke_workflow bug-fix"][0]
    sdk_keys = {k for k in sdk_generation.attributes if not k.startswith("langfuse.internal.")}
    trace_level = {k for k in sdk_keys if k.startswith("langfuse.trace.")}
    assert sdk_keys - trace_level <= set(our_generation.attributes)
    assert trace_level <= set(our_root.attributes)
    assert trace_level <= set(our_generation.attributes)
    assert our_generation.attributes["langfuse.observation.type"] == "generation"


def test_langfuse_attribute_values_match_the_sdk_builders() -> None:
    """We write Langfuse's attributes with the C JSON encoder; the SDK's own builders must
    produce exactly the same values from the same inputs."""
    from langfuse._client.attributes import create_generation_attributes
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from persona_exporter.events import LLMGeneration
    from persona_exporter.tracing.spans import generation_span, usage_details

    event = LLMGeneration(
        persona="backend-engineer", chatmode="bug-fix", model="gpt-4o", provider="openai",
        input_tokens=2**53, output_tokens=300, cache_read_tokens=1024, reasoning_tokens=77,
        cost_usd=0.0123456789, duration_seconds=2.5, time_to_first_chunk_seconds=0.25,
        error_type="RateLimitError", start_time=1_800_000_000.123456, trace_id="a" * 32,
        span_id="b" * 16, metadata={"attempt": "2", "note": "naïve"})
    ours: dict[str, Any] = dict(generation_span(event, Resource.create({}),
                                                InstrumentationScope("t")).attributes or {})
    start = datetime.fromtimestamp(1_800_000_000.123456 + 0.25, UTC)
    theirs = create_generation_attributes(
        model="gpt-4o", usage_details=usage_details(event),  # type: ignore[arg-type]
        cost_details={"total": 0.0123456789},
        completion_start_time=start, level="ERROR", status_message="RateLimitError",
        metadata={"attempt": "2", "note": "naïve"})
    for key, value in theirs.items():
        if key == "langfuse.observation.completion_start_time":
            # microsecond rounding of the float start time; same format
            assert ours[key][:22] == value[:22] and ours[key].endswith('Z"')
            continue
        assert ours[key] == value, key


def _exporter_to(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("LANGFUSE_BASE_URL", url)
    return langfuse_exporter()


def test_otlp_http_spans_follow_the_genai_conventions(
        monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry, config: Config) -> None:
    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-token=abc123")
        tel = configure(registry=registry, config=config)
        try:
            run_release(tel)
            assert tel.flush(10)
        finally:
            tel.shutdown(2)
        spans = receiver.wait_for_spans(6)
        assert receiver.received[0].path == "/v1/traces"
        assert receiver.received[0].headers["x-collector-token"] == "abc123"
    named = by_name(spans)
    root = named["invoke_workflow package-release"][0]
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["gen_ai.workflow.name"] == "package-release"
    assert root.resource["service.name"] == "persona-exporter"
    assert root.scope == "persona_exporter"
    publish = named["publish"][0]
    assert publish.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert publish.attributes["gen_ai.agent.name"] == "devops-engineer"
    for generation in named["chat gpt-4o"]:
        assert generation.kind == 3  # SPAN_KIND_CLIENT
        attributes = generation.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4o"
        assert attributes["persona"] in ("backend-engineer", "devops-engineer")
        assert attributes["chatmode"] == "package-release"
        if "error.type" not in attributes:
            assert attributes["gen_ai.usage.input_tokens"] == 120
            assert attributes["gen_ai.usage.output_tokens"] == 30
            assert attributes["gen_ai.usage.cache_read.input_tokens"] == 64
            assert attributes["gen_ai.usage.reasoning.output_tokens"] == 10
    assert sample(registry, "persona_exporter_trace_exports_total", backend="otlp") >= 1  # type: ignore[operator]


def test_otlp_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = GrpcReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        tel = configure(registry=CollectorRegistry())
        try:
            run_release(tel)
            assert tel.flush(10)
        finally:
            tel.shutdown(2)
        assert {s.name for s in receiver.spans} == {"invoke_workflow package-release",
                                                    "version-bump", "publish", "chat gpt-4o"}
    finally:
        receiver.close()


def test_both_backends_get_the_same_spans(langfuse_env: Receiver,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver() as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp.url}/v1/traces")
        tel = configure(registry=CollectorRegistry())
        try:
            run_release(tel)
            assert tel.flush(10)
        finally:
            tel.shutdown(2)
        ids = sorted(s.span_id for s in otlp.wait_for_spans(6))
    assert ids == sorted(s.span_id for s in langfuse_env.wait_for_spans(6))
    assert len(ids) == 6


def test_the_global_tracer_provider_is_left_alone(langfuse_env: Receiver) -> None:
    before = otel_trace.get_tracer_provider()
    tel = configure(registry=CollectorRegistry())
    try:
        run_release(tel)
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert otel_trace.get_tracer_provider() is before
    assert type(before).__name__ == "ProxyTracerProvider"


def test_without_keys_tracing_is_off_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="persona_exporter"):
        tel = configure(registry=CollectorRegistry())
    assert not tel.needs_trace_context
    assert [r.getMessage() for r in caplog.records] == [
        "Langfuse tracing is off: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are not set"]
    caplog.clear()
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
    with caplog.at_level(logging.INFO, logger="persona_exporter"):
        configure(registry=CollectorRegistry())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Langfuse tracing is off: LANGFUSE_SECRET_KEY is not set")]
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")
    assert not configure(registry=CollectorRegistry()).needs_trace_context


def test_sampling_and_per_run_opt_out(langfuse_env: Receiver, monkeypatch: pytest.MonkeyPatch,
                                      registry: CollectorRegistry) -> None:
    tel = configure(registry=registry)
    try:
        with workflow("skipped", telemetry=tel, trace=False), stage("s", persona="qa"):
            ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)()
        with workflow("kept", telemetry=tel), stage("s", persona="qa"):
            ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)()
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert {s.attributes.get("langfuse.trace.name") for s in langfuse_env.wait_for_spans(3)
            if s.parent_span_id == ""} == {"kept"}
    assert sample(registry, "persona_workflow_runs_total", workflow="skipped",
                  status="succeeded") == 1  # metrics do not depend on tracing

    monkeypatch.setenv("LANGFUSE_SAMPLE_RATE", "0")
    before = len(langfuse_env.spans)
    tel = configure(registry=CollectorRegistry())
    try:
        for _ in range(20):
            with workflow("unsampled", telemetry=tel), stage("s", persona="qa"):
                ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)()
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert len(langfuse_env.spans) == before


# --- failure behaviour ---

FAILURES = ["refused", "503", "401", "hang"]


def failing_backend(mode: str) -> Receiver | None:
    if mode == "refused":
        return None
    if mode == "hang":
        return Receiver(hang=True)
    return Receiver(status=int(mode))


@pytest.mark.parametrize("mode", FAILURES)
def test_a_failing_backend_never_reaches_the_caller(
        mode: str, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry,
        caplog: pytest.LogCaptureFixture) -> None:
    backend = failing_backend(mode)
    try:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_BASE_URL", backend.url if backend else refused_url())
        monkeypatch.setenv("LANGFUSE_TIMEOUT", "1")
        monkeypatch.setenv("PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT", "1")
        with caplog.at_level(logging.WARNING, logger="persona_exporter"):
            tel = configure(registry=registry)
            llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", provider="openai",
                                telemetry=tel)
            durations = []
            with workflow("w", telemetry=tel), stage("s", persona="qa-engineer"):
                for _ in range(300):
                    started = time.perf_counter()
                    llm()
                    durations.append(time.perf_counter() - started)
                    time.sleep(0.001)  # let the workers run and fail meanwhile
            if mode != "hang":  # wait for the backend to have failed at least once
                deadline = time.monotonic() + 10
                while (time.monotonic() < deadline and not sample(
                        registry, "persona_exporter_trace_export_failures_total",
                        backend="langfuse")):
                    time.sleep(0.05)
            started = time.monotonic()
            tel.shutdown()
            shutdown_took = time.monotonic() - started
    finally:
        if backend is not None:
            backend.close()
    durations.sort()
    # Generous bounds: the exact figures are the benchmark's. The point is that no call
    # waits for the backend (which takes up to 1 s per attempt here).
    assert durations[int(len(durations) * 0.99)] < 0.005
    assert durations[-1] < 0.1
    assert shutdown_took < 1.5
    exports = sample(registry, "persona_exporter_trace_exports_total", backend="langfuse") or 0
    failures = sample(registry, "persona_exporter_trace_export_failures_total",
                      backend="langfuse") or 0
    dropped = sample(registry, "persona_exporter_trace_spans_dropped_total",
                     backend="langfuse") or 0
    assert dropped >= 1
    assert failures <= exports
    if mode != "hang":
        assert failures >= 1
        warnings = [r.getMessage() for r in caplog.records
                    if "trace export to langfuse failed" in r.getMessage()]
        assert len(warnings) == 1  # logged once, whatever the number of failures
    assert sample(registry, "persona_llm_requests_total", persona="qa-engineer",
                  chatmode="none", model="gpt-4o", provider="openai") == 300
    assert SECRET_KEY not in caplog.text


def test_a_full_queue_drops_and_counts(registry: CollectorRegistry,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver(hang=True) as backend:
        monkeypatch.setenv("LANGFUSE_TIMEOUT", "1")
        recorder_tel = Telemetry(registry=registry)
        assert recorder_tel.recorder is not None
        sink = TraceSink({"langfuse": _exporter_to(backend.url, monkeypatch)},
                         recorder=recorder_tel.recorder,
                         queue_size=50, batch_size=10, flush_interval=0.01)
        tel = Telemetry(recorder=recorder_tel.recorder, sinks=[sink])
        llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)
        for _ in range(500):
            llm()  # each outside a workflow: its own trace, one span
        sink.shutdown(0.5)
    dropped = sample(registry, "persona_exporter_trace_spans_dropped_total",
                     backend="langfuse") or 0
    assert dropped >= 440  # 500 offered, at most 50 queued plus one batch in flight


def test_the_process_exits_within_the_deadline_when_the_backend_hangs() -> None:
    with Receiver(hang=True) as backend:
        script = textwrap.dedent(f"""
            import os, time
            os.environ.update(LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY="sk",
                              LANGFUSE_BASE_URL="{backend.url}", LANGFUSE_TIMEOUT="30",
                              PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT="1")
            from prometheus_client import CollectorRegistry
            import persona_exporter as pe
            tel = pe.configure(registry=CollectorRegistry())
            llm = pe.ObservableLLM(lambda: {{"usage": {{"prompt_tokens": 1}}}}, model="m")
            with pe.workflow("w"), pe.stage("s", persona="p"):
                for _ in range(1000):
                    llm()
            print("done", flush=True)
        """)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=60, check=False)
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    # The exporter would wait 30 s for the hanging backend; the exit hook waits 1 s.
    assert took < 8, f"exit took {took:.1f} s"


def test_a_short_lived_process_delivers_its_traces_at_exit() -> None:
    with Receiver() as backend:
        script = textwrap.dedent(f"""
            import os
            os.environ.update(LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY="sk",
                              LANGFUSE_BASE_URL="{backend.url}")
            from prometheus_client import CollectorRegistry
            import persona_exporter as pe
            pe.configure(registry=CollectorRegistry())
            llm = pe.ObservableLLM(lambda: {{"usage": {{"prompt_tokens": 1}}}}, model="m")
            with pe.workflow("w"), pe.stage("s", persona="p"):
                for _ in range(50):
                    llm()
            # no flush, no shutdown: the exit hook must deliver
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        spans = backend.wait_for_spans(52, timeout=5)
    assert len(spans) == 52  # 50 generations, the stage and the workflow


# --- regressions from review: every span offered is exported or counted, once ---

def test_a_sink_dropped_without_shutdown_still_delivers_and_stops(
        langfuse_env: Receiver) -> None:
    import gc
    import threading

    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        sink = TraceSink({"langfuse": langfuse_exporter()}, flush_interval=10)  # type: ignore[dict-item]
        tel = Telemetry(sinks=[sink])
        ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)()
        del sink, tel
        gc.collect()
    assert len(langfuse_env.wait_for_spans(5)) == 5  # delivered by the finaliser
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            t.ident not in before and t.name.startswith("persona-exporter")
            for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.ident not in before and t.name.startswith("persona-exporter")]


def test_a_forked_child_exports_its_own_spans(langfuse_env: Receiver) -> None:
    tel = configure(registry=CollectorRegistry())
    try:
        ObservableLLM(lambda: RESPONSE, model="parent-model", telemetry=tel)()
        pid = os.fork()
        if pid == 0:  # the child: a new worker thread, none of the parent's queue
            code = 1
            try:
                ObservableLLM(lambda: RESPONSE, model="child-model", telemetry=tel)()
                code = 0 if tel.flush(5) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert tel.flush(5)
    finally:
        tel.shutdown(2)
    names = sorted(s.name for s in langfuse_env.wait_for_spans(2))
    assert names == ["chat child-model", "chat parent-model"]


def test_shutdown_keeps_draining_a_healthy_backlog(langfuse_env: Receiver,
                                                   registry: CollectorRegistry) -> None:
    recorder = Telemetry(registry=registry).recorder
    sink = TraceSink({"langfuse": langfuse_exporter()},  # type: ignore[dict-item]
                     recorder=recorder, batch_size=50, flush_interval=10, shutdown_timeout=10)
    tel = Telemetry(recorder=recorder, sinks=[sink])
    llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)
    for _ in range(3000):
        llm()
    sink.shutdown()
    assert len(langfuse_env.wait_for_spans(3000)) == 3000
    assert sample(registry, "persona_exporter_trace_spans_dropped_total",
                  backend="langfuse") == 0


def test_impossible_values_still_make_valid_spans(langfuse_env: Receiver) -> None:
    from persona_exporter.sdk.governance import (
        finalize_trace,
        trace_llm_call,
        trace_pipeline_execution,
    )

    tel = configure(registry=CollectorRegistry())
    try:
        trace, _ = trace_pipeline_execution("j", "r", "caption", inputs_hash="h", telemetry=tel)
        trace_llm_call(trace, model="gpt-4o", duration_seconds=float("inf"))
        trace_llm_call(trace, model="gpt-4o", duration_seconds=1e12, input_tokens=10**30,
                       cost_usd=float("nan"))
        finalize_trace(trace)
        assert tel.flush(5)
    finally:
        tel.shutdown(2)
    spans = langfuse_env.wait_for_spans(3)
    assert len(spans) == 3
    assert all(0 < s.start <= s.end for s in spans)


def test_the_otlp_exporter_logs_each_kind_of_failure_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with Receiver(status=401) as backend:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_BASE_URL", backend.url)
        with caplog.at_level(logging.WARNING):
            tel = configure(registry=CollectorRegistry())
            llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)
            try:
                for _ in range(10):
                    llm()
                    assert tel.flush(5)
            finally:
                tel.shutdown(1)
    from collections import Counter

    per_logger = Counter(r.name for r in caplog.records)
    assert all(count == 1 for count in per_logger.values()), per_logger
    assert SECRET_KEY not in caplog.text


# --- the encoder: same content as OpenTelemetry's, cheaper ---

def all_kinds_of_spans() -> list[Any]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from persona_exporter.events import LLMGeneration, Observation, StageRun, WorkflowRun
    from persona_exporter.tracing.spans import SpanResource, to_span

    resource = SpanResource(Resource.create({"service.name": "svc"}))
    scope = InstrumentationScope("persona_exporter", "1.0")
    other_scope = InstrumentationScope("other", None, "https://schema/1", {"a": 1})
    ids: dict[str, Any] = {"trace_id": "a" * 32, "run_id": "run-1"}
    events: list[Any] = [
        LLMGeneration(persona="qa", chatmode="bug-fix", model="gpt-4o", provider="openai",
                      input_tokens=i, output_tokens=2 * i, cache_read_tokens=i // 2,
                      reasoning_tokens=i // 3, cost_usd=0.5 * i if i % 3 else None,
                      duration_seconds=0.1 * i, time_to_first_chunk_seconds=0.01 if i % 2
                      else None, error_type="Boom" if i % 4 == 0 else None, stage="s",
                      workflow="w", start_time=1.8e9 + i, span_id=f"{i + 1:016x}",
                      parent_span_id="c" * 16, metadata={"i": str(i)} if i % 5 == 0 else None,
                      **ids)
        for i in range(40)]
    events += [
        StageRun(workflow="w", stage="s", persona="qa", status=status, duration_seconds=1,
                 start_time=1.8e9, span_id=f"{100 + n:016x}", parent_span_id="e" * 16, **ids)
        for n, status in enumerate(STATUSES)]
    events.append(WorkflowRun(workflow="w", chatmode="bug-fix", status="failed",
                              duration_seconds=9, persona="qa", start_time=1.8e9,
                              span_id="e" * 16, metadata={"job_id": "j"}, token_allocation=5,
                              **ids))
    events.append(Observation(kind="retrieval", name="docs", persona="qa", stage="s",
                              duration_seconds=0.5, start_time=1.8e9, span_id="f" * 16,
                              parent_span_id="c" * 16, **ids))
    spans = [to_span(e, resource, scope) for e in events]
    spans.append(to_span(events[1], Resource.create({"service.name": "another"}), other_scope))
    return spans


def test_our_encoding_parses_to_exactly_what_opentelemetry_encodes() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from persona_exporter.tracing.span_encoding import SpanEncoder

    spans = all_kinds_of_spans()
    encoder = SpanEncoder()
    for _ in range(2):  # the second time from the caches
        ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
        assert ours == encode_spans(spans)


def test_span_heads_written_directly_are_what_the_message_class_writes() -> None:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceState

    from persona_exporter.tracing.span_encoding import _span_head, _span_head_message

    def context(span_id: int, remote: bool = False, state: Any = None) -> SpanContext:
        return SpanContext(2**127 + 5, span_id, is_remote=remote, trace_state=state)

    shapes: list[dict[str, Any]] = [
        {}, {"parent": context(7)}, {"parent": context(7, remote=True)},
        {"parent": context(0)}, {"name": ""}, {"name": "ü€😀 " * 40},
        {"name": "\ud800"}, {"status": Status(StatusCode.ERROR, "Boom")},
        {"status": Status(StatusCode.ERROR)}, {"status": Status(StatusCode.OK)},
        {"status": Status(StatusCode.ERROR, "\ud800")}, {"start_time": 0},
        {"end_time": None}, {"start_time": 2**64 - 1, "end_time": 2**64 - 1},
        {"context": context(9, state=TraceState([("k", "v")]))},
        {"context": SpanContext(1, 1, is_remote=False)},
    ]
    shapes.extend({"kind": kind} for kind in SpanKind)
    for shape in shapes:
        fields: dict[str, Any] = {"name": "chat gpt-4o", "context": context(2**63 + 1),
                                  "start_time": 1_800_000_000 * 10**9,
                                  "end_time": 1_800_000_001 * 10**9, "kind": SpanKind.CLIENT,
                                  **shape}
        span = ReadableSpan(**fields)
        try:
            expected = _span_head_message(span)
        except Exception as exc:  # noqa: BLE001 - then ours must refuse it too
            with pytest.raises(type(exc)):
                _span_head(span)
            continue
        assert _span_head(span) == expected, shape

def test_usage_and_cost_json_is_what_json_dumps_writes() -> None:
    from persona_exporter.tracing.spans import _dumps

    for value in [{"input": 120, "output": 80, "total": 200}, {"input": "9007199254740993"},
                  {"total": 0.0011}, {"total": 3}, {"total": 1e300}, {"total": -0.0},
                  {"total": float("nan")}, {"total": float("inf")}, {"ü": "é\u2028"}, {}]:
        assert _dumps(value) == json.dumps(value), value
    with pytest.raises(TypeError):
        _dumps({"total": object()})

def test_the_fast_path_is_the_one_in_use_and_falls_back_for_events(
        langfuse_env: Receiver) -> None:
    from opentelemetry.sdk.trace import Event as SpanEvent
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult

    from persona_exporter.tracing.otlp_http import EncodingOTLPSpanExporter

    exporter = langfuse_exporter()
    assert isinstance(exporter, EncodingOTLPSpanExporter)
    assert exporter.fast_path  # with the pinned opentelemetry exporter
    span = all_kinds_of_spans()[0]
    with_event = ReadableSpan(name="e", context=span.context, parent=span.parent,
                              resource=span.resource, attributes=span.attributes,
                              events=[SpanEvent("x", {"k": "v"}, 1)], kind=span.kind,
                              start_time=span.start_time, end_time=span.end_time,
                              instrumentation_scope=span.instrumentation_scope)
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert exporter.export([with_event]) is SpanExportResult.SUCCESS  # the stock path
    received = {s.name: s for s in langfuse_env.wait_for_spans(2)}
    assert received["chat gpt-4o"].attributes["persona"] == "qa"
    assert "e" in received
    exporter.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(("env", "name"), [
    ({}, "persona-exporter"),
    ({"OTEL_SERVICE_NAME": "checkout-agent"}, "checkout-agent"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,deployment.environment=prod"},
     "billing"),
])
def test_the_environment_names_the_service(monkeypatch: pytest.MonkeyPatch,
                                           env: dict[str, str], name: str) -> None:
    """An application instrumented with the SDK keeps its own service name on its spans and
    bridged metrics; persona-exporter is only the default."""
    from persona_exporter.tracing.otlp_env import default_resource

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resource = default_resource()
    assert resource.attributes["service.name"] == name
    if "OTEL_RESOURCE_ATTRIBUTES" in env:
        assert resource.attributes["deployment.environment"] == "prod"


def test_attribute_pairs_written_directly_are_what_the_message_class_writes() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    from persona_exporter.tracing.span_encoding import SpanEncoder, _key_value, _value

    class Text(str):
        pass

    encoder = SpanEncoder()
    for key, value in [("k", "v"), ("", "v"), ("k", ""), ("ключ", "ü€😀"), ("k", Text("t")),
                       ("k", True), ("k", False), ("k", 0), ("k", 7), ("k", -1),
                       ("k", 127), ("k", 128), ("", 300), ("ключ", 2**40),
                       ("k", 2**63 - 1), ("k", -(2**63)), ("k", 0.0), ("k", -2.5),
                       ("k", float("inf")), ("k", ("a", "b")), ("k", [1, 2])]:
        expected = KeyValue(key=key, value=_value(value)).SerializeToString()
        assert _key_value(key, value) == expected, (key, value)
        for _ in range(2):  # as a span attribute (counts: from the key written once)
            assert encoder._attributes({key: value}) == encoder._attribute(key, value)
