"""Real instrumentations pointed at the real exporter: the OpenTelemetry Python SDK with
the GenAI conventions, the Langfuse Python SDK (the pinned version) with only its base URL
changed, and the OpenTelemetry JavaScript SDK (tests/js, JSON and protobuf) run with Node.
Each sends an agent over LLM calls whose persona is named only where that ecosystem
names it; the persona metrics must come out right."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from .test_serve import TOKEN, Server, metric, running, wait_until

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
models:
  gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}
otlp:
  hold_seconds: 20
"""
LLM = {"model": "gpt-4o", "provider": "openai"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path, CONFIG, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as s:
        yield s


def _tokens(server: Server, persona: str, token_type: str, **labels: str) -> float | None:
    return metric(server, "persona_llm_tokens_total", persona=persona, token_type=token_type,
                  **labels)


def test_opentelemetry_python_sdk_with_genai_conventions(server: Server) -> None:
    # A SimpleSpanProcessor sends each span in its own request as it ends: the LLM spans
    # arrive before the agent span that names the persona, and wait for it.
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces",
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    provider = TracerProvider(resource=Resource.create({"service.name": "agents"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("invoke_agent backend-engineer", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "backend-engineer",
            "chatmode": "feature-implementation"}):
        with tracer.start_as_current_span("chat gpt-4o", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 200,
                "gen_ai.usage.cache_read.input_tokens": 400}):
            pass
        with tracer.start_as_current_span("chat gpt-4o", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "error.type": "RateLimitError"}) as failed:
            failed.set_status(Status(StatusCode.ERROR, "429"))
        with tracer.start_as_current_span("execute_tool search", attributes={
                "gen_ai.operation.name": "execute_tool"}):
            pass
    provider.shutdown()
    labels = {"persona": "backend-engineer", "chatmode": "feature-implementation", **LLM}
    wait_until(lambda: metric(server, "persona_llm_requests_total", **labels) == 2)
    assert _tokens(server, "backend-engineer", "input") == 1000
    assert _tokens(server, "backend-engineer", "cache_read") == 400
    assert _tokens(server, "backend-engineer", "output") == 200
    assert metric(server, "persona_llm_request_failures_total",
                  error_type="RateLimitError", **labels) == 1
    # the price table: 600 input at 2.5, 400 cached at 1.25, 200 output at 10 per million
    cost = metric(server, "persona_llm_cost_usd_total", **labels)
    assert cost == pytest.approx((600 * 2.5 + 400 * 1.25 + 200 * 10) / 1e6)
    assert metric(server, "persona_exporter_otlp_persona_resolutions_total",
                  source="ancestor") == 2
    assert metric(server, "persona_exporter_otlp_spans_total", outcome="mapped") == 2
    assert metric(server, "persona_workflow_runs_total", workflow="backend-engineer",
                  status="succeeded") == 1


def test_langfuse_python_sdk_pointed_at_the_exporter(server: Server) -> None:
    from langfuse import Langfuse, observe, propagate_attributes

    # Only the base URL differs from a Langfuse setup; the secret key is the exporter's
    # token. Its own TracerProvider, so the global one of other tests is not touched.
    langfuse = Langfuse(public_key="pk-lf-persona", secret_key=TOKEN, base_url=server.url,
                        tracer_provider=TracerProvider(), flush_at=1)

    @observe(as_type="generation", name="draft-tests")
    def draft_tests() -> str:
        langfuse.update_current_generation(model="gpt-4o-mini",
                                           usage_details={"input": 50, "output": 10})
        return "ok"

    with propagate_attributes(user_id="alice@example.com", session_id="s-1",
                              metadata={"persona": "qa-engineer", "chatmode": "bug-fix"},
                              tags=["bug-fix"]), \
            langfuse.start_as_current_observation(name="triage", as_type="agent"):
        with langfuse.start_as_current_observation(
                name="llm", as_type="generation", model="gpt-4o",
                usage_details={"input": 300, "input_cached_tokens": 100, "output": 40},
                cost_details={"total": 0.25}):
            pass
        draft_tests()
    langfuse.flush()
    labels = {"persona": "qa-engineer", "chatmode": "bug-fix"}
    wait_until(lambda: metric(server, "persona_llm_requests_total", **labels) == 2)
    # Langfuse's usage keys are disjoint: input 300 + cache reads 100 is 400 prompt tokens
    assert _tokens(server, "qa-engineer", "input", model="gpt-4o") == 400
    assert _tokens(server, "qa-engineer", "cache_read", model="gpt-4o") == 100
    assert _tokens(server, "qa-engineer", "output", model="gpt-4o-mini") == 10
    # the span's own cost wins over the price table
    assert metric(server, "persona_llm_cost_usd_total", model="gpt-4o", **labels) == 0.25
    # the human user is not the persona unless configured
    assert metric(server, "persona_llm_requests_total", persona="alice@example.com") is None


def test_langfuse_persona_as_user_when_configured(tmp_path: Path) -> None:
    from langfuse import Langfuse, propagate_attributes

    config = CONFIG + "  persona: {attributes: [user.id], resource_attributes: []}\n"
    with running(tmp_path, config, env={"PERSONA_EXPORTER_TOKEN": TOKEN}) as server:
        langfuse = Langfuse(public_key="pk-lf-user", secret_key=TOKEN, base_url=server.url,
                            tracer_provider=TracerProvider())
        with propagate_attributes(user_id="devops-engineer"), \
                langfuse.start_as_current_observation(
                    name="llm", as_type="generation", model="gpt-4o",
                    usage_details={"input": 7, "output": 3}):
            pass
        langfuse.flush()
        wait_until(lambda: metric(server, "persona_llm_requests_total",
                                  persona="devops-engineer") == 1)
        assert metric(server, "persona_exporter_otlp_persona_resolutions_total",
                      source="span") == 1


@pytest.mark.parametrize("protocol", ["json", "protobuf"])
def test_opentelemetry_javascript_sdk(server: Server, protocol: str) -> None:
    done = subprocess.run(["node", str(ROOT / "tests" / "js" / "send_spans.mjs"),
                           f"{server.url}/v1/traces", protocol, TOKEN],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["results"] == [0, 0, 0]  # ExportResultCode.SUCCESS
    labels = {"persona": "backend-engineer", "chatmode": "feature-implementation", **LLM}
    wait_until(lambda: metric(server, "persona_llm_requests_total", **labels) == 2)
    assert _tokens(server, "backend-engineer", "input") == 1200
    assert _tokens(server, "backend-engineer", "cache_read") == 200
    assert metric(server, "persona_llm_request_failures_total",
                  error_type="RateLimitError", **labels) == 1
    assert metric(server, "persona_llm_request_duration_seconds_count",
                  persona="backend-engineer") == 2


def test_the_stacks_genai_agent_becomes_a_workflow_with_three_personas(server: Server) -> None:
    # The compose stack's genai-agent: OpenTelemetry GenAI spans only, a workflow span over
    # an agent span per persona, sent with a BatchSpanProcessor.
    subprocess.run([sys.executable, "-m", "persona_exporter.tools.genai_agent",
                    "--endpoint", f"{server.url}/v1/traces", "--token", TOKEN,
                    "--iterations", "2", "--speed", "50", "--seed", "3"],
                   check=True, timeout=60, capture_output=True)
    wait_until(lambda: metric(server, "persona_workflow_runs_total", workflow="release") == 2)
    for persona in ("backend-engineer", "qa-engineer", "devops-engineer"):
        assert metric(server, "persona_stage_runs_total", workflow="release",
                      persona=persona) == 2, persona
        assert (metric(server, "persona_llm_requests_total", persona=persona,
                       chatmode="feature-implementation") or 0) == 2, persona
    assert metric(server, "persona_switches_total", workflow="release",
                  from_persona="backend-engineer", to_persona="qa-engineer") == 2
    assert metric(server, "persona_switches_total", workflow="release",
                  from_persona="qa-engineer", to_persona="devops-engineer") == 2
