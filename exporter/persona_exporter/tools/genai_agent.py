"""An agent instrumented with nothing but OpenTelemetry and the GenAI conventions.

It stands for the teams that already trace their agents (OpenLIT, OpenLLMetry, the
Langfuse SDK, their own spans) and do not use this package's SDK: each run is an
``invoke_agent`` span per persona (``gen_ai.agent.name``) over ``chat`` spans with usage,
exported over OTLP/HTTP like any instrumented application. In the compose stack it sends
to the collector, which fans the spans out to Langfuse and to the exporter's
``/v1/traces``; locally::

    python -m persona_exporter.tools.genai_agent --endpoint http://127.0.0.1:9464/v1/traces

The endpoint defaults to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``; headers come from
``OTEL_EXPORTER_OTLP_HEADERS`` or ``--token`` (a bearer token).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

# (persona, chatmode, model, provider, input, output, cached) per stage of one run
RUN: tuple[tuple[str, str, str, str, int, int, int], ...] = (
    ("backend-engineer", "feature-implementation", "gpt-4o", "openai", 2400, 650, 800),
    ("qa-engineer", "feature-implementation", "gpt-4o-mini", "openai", 1300, 240, 0),
    ("devops-engineer", "feature-implementation", "claude-sonnet-4", "anthropic", 900, 180,
     300),
)


def run_once(tracer: Tracer, rng: random.Random, speed: float) -> None:
    """One multi-agent run: a workflow span over an agent span per persona."""
    with tracer.start_as_current_span("invoke_workflow release", attributes={
            "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "release",
            "chatmode": RUN[0][1]}):
        for persona, chatmode, model, provider, prompt, completion, cached in RUN:
            with tracer.start_as_current_span(f"invoke_agent {persona}", attributes={
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": persona,
                    "chatmode": chatmode}):
                _chat(tracer, rng, speed, model, provider, prompt, completion, cached)
                with tracer.start_as_current_span("execute_tool run_tests", attributes={
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "run_tests"}):
                    time.sleep(0.02 / speed)


def _chat(tracer: Tracer, rng: random.Random, speed: float, model: str, provider: str,
          prompt: int, completion: int, cached: int) -> None:
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model}) as span:
        time.sleep(rng.uniform(0.2, 0.6) / speed)
        if rng.random() < 0.05:  # a provider's rate limit, now and then
            span.set_attribute("error.type", "RateLimitError")
            span.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
            return
        span.set_attributes({
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": prompt + rng.randint(0, 200),
            "gen_ai.usage.output_tokens": completion + rng.randint(0, 50),
            "gen_ai.usage.cache_read.input_tokens": cached})


def _endpoint(given: str | None) -> str:
    if given:
        return given
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9464")
    return base.rstrip("/") + "/v1/traces"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persona_exporter.tools.genai_agent",
        description="Send OpenTelemetry GenAI spans of a three-persona agent run over "
                    "OTLP/HTTP, as an application instrumented without this package's SDK.")
    parser.add_argument("--endpoint", help="OTLP/HTTP traces URL (default: from the "
                        "OTEL_EXPORTER_OTLP_* variables, else http://127.0.0.1:9464/v1/traces)")
    parser.add_argument("--token", help="bearer token for the endpoint")
    parser.add_argument("--iterations", type=int, default=1,
                        help="runs to send; 0 runs until stopped (default 1)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="divide the simulated latencies by this (default 1)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be greater than 0")
    endpoint = _endpoint(args.endpoint)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    provider = TracerProvider(resource=Resource.create({"service.name": "genai-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=endpoint, headers=headers, timeout=5)))
    tracer = provider.get_tracer("persona_exporter.tools.genai_agent")
    rng = random.Random(args.seed)  # noqa: S311 - simulated latencies, not secrets
    done = 0
    try:
        while args.iterations == 0 or done < args.iterations:
            run_once(tracer, rng, args.speed)
            done += 1
            print(f"genai-agent: run {done} sent to {endpoint}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
