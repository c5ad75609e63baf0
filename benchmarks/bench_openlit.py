"""Per-call overhead on a real (offline) OpenAI call: ours against OpenLIT's instrumentation.

    python benchmarks/bench_openlit.py

The call is the real ``openai`` client's ``chat.completions.create``, answered by an
httpx MockTransport with a canned ChatCompletion (no network, no server): the SDK's own
request building and response parsing, which both instrumentations wrap. Cases:
  bare              the client call alone
  pe metrics        ObservableLLM around it, metrics into a Recorder (persona context)
  pe metrics+trace  the same with Langfuse tracing to a local OTLP sink, drained
  openlit           openlit.init() with its defaults (traces, metrics and events as
                    logs over OTLP/HTTP to a local sink, content captured), then the
                    same client call, drained
OpenLIT patches the openai module for the whole process, so it runs in a second phase,
beside a bare call of its own (a method bound before the patch); in each phase the cases
take turns round by round, and each is the best of its rounds.
Reported: the time each adds to the bare call; the ratio ours / OpenLIT's, for
information (issue 14 sets no bar on it). Needs the `bench` extra (pip install -e
'.[bench]'); without openlit the row says why instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prometheus_client import CollectorRegistry
from tests.otlp_receiver import Receiver

from persona_exporter import ObservableLLM, Telemetry, parse_config, persona, stage, workflow
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.tracing.backends import langfuse_exporter
from persona_exporter.tracing.sink import TraceSink
from results import Row, write_json

COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_790_000_000,
    "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "content": "The endpoint returns 201 with the new id."}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200,
              "prompt_tokens_details": {"cached_tokens": 64},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}
MESSAGES = [{"role": "system", "content": "You are a backend engineer. Answer briefly."},
            {"role": "user", "content": "Which status code does POST /payments return?"}]
CONFIG = parse_config("models: {gpt-4o: {provider: openai, input: 2.5, output: 10}}")


def openai_client() -> Any:
    import httpx
    import openai

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=COMPLETION)

    # Any: the bench extra pins openai<3 (openlit's bound), whose http_client is an httpx
    # Client; the dev install may hold openai 3, typed against another client class.
    client: Any = openai.OpenAI
    return client(api_key="sk-bench", base_url="http://127.0.0.1:9/v1", max_retries=0,
                  http_client=httpx.Client(transport=httpx.MockTransport(answer)))


Case = tuple[Callable[[], Any], Callable[[], Any]]  # the call, and its drain


def interleaved_best_us(cases: dict[str, Case], number: int, rounds: int) -> dict[str, float]:
    """Per case, the best of ``rounds`` mean per-call times, the cases taking turns round
    by round (a load spike on this shared machine then hits them all alike); each round
    ends with the case's drain (a flush), so export work left on background threads is
    paid inside the measurement."""
    best = dict.fromkeys(cases, float("inf"))
    for fn, _ in cases.values():
        fn()
    for _ in range(rounds):
        for name, (fn, drain) in cases.items():
            started = time.perf_counter()
            for _ in range(number):
                fn()
            drain()
            best[name] = min(best[name], (time.perf_counter() - started) / number * 1e6)
    return best


def ours(create: Callable[..., Any], url: str | None) -> tuple[Callable[[], Any], Any, Any]:
    """Our wrapper around ``create``: metrics only, or with Langfuse tracing to ``url``."""
    recorder = Recorder(CollectorRegistry(), config=CONFIG)
    sinks = []
    if url:
        os.environ.update(LANGFUSE_PUBLIC_KEY="pk-lf-bench",
                          LANGFUSE_SECRET_KEY="sk-lf-bench",  # noqa: S106 - a local sink
                          LANGFUSE_BASE_URL=url)
        sinks = [TraceSink({"langfuse": langfuse_exporter()},  # type: ignore[dict-item]
                           recorder=recorder, queue_size=1_000_000)]
    telemetry = Telemetry(recorder=recorder, config=CONFIG, sinks=sinks)
    wrapped = ObservableLLM(create, provider="openai", telemetry=telemetry)
    return ((lambda: wrapped(model="gpt-4o", messages=MESSAGES)),
            (lambda: sinks[0].flush(120)) if sinks else (lambda: None), sinks)


class CatchAll:
    """An OTLP/HTTP sink for all three signals OpenLIT sends by default (traces, metrics and
    its events as logs): answers 200 at once, counts the spans it decodes."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/v1/traces"):
                    request = ExportTraceServiceRequest.FromString(body)
                    sink.spans += sum(len(scope.spans) for rs in request.resource_spans
                                      for scope in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def shutdown_openlit() -> None:
    """Flushes and stops OpenLIT's global providers while its sink still listens."""
    from opentelemetry import _logs, metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                     _logs.get_logger_provider()):
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def openlit_case(client: Any, url: str) -> tuple[Callable[[], Any], Any, str]:
    """OpenLIT's instrumentation of the same call, or why it cannot run here."""
    try:
        import openlit
    except ImportError as exc:
        return (lambda: None), None, f"not measured: openlit is not installed ({exc}); " \
            "install the bench extra: pip install -e '.[bench]'"
    # Its prices, from a local file: by default init() fetches them from GitHub, which this
    # machine cannot reach (openlit/__helpers.py, fetch_pricing_info). Per 1k tokens.
    prices = {"promptPrice": 0.0025, "completionPrice": 0.01, "cacheReadPrice": 0.00125}
    pricing = Path(tempfile.mkdtemp()) / "pricing.json"
    pricing.write_text(json.dumps({"chat": {"gpt-4o": prices, "gpt-4o-2024-08-06": prices}}))
    openlit.init(otlp_endpoint=url, application_name="bench", environment="bench",
                 pricing_json=str(pricing))
    from opentelemetry import metrics, trace

    def drain() -> None:
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        provider = metrics.get_meter_provider()
        if hasattr(provider, "force_flush"):
            provider.force_flush()

    # Looked up after init(): OpenLIT wraps the class's method, so a bound method taken
    # before (as the other cases use) would bypass it.
    return (lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES)), \
        drain, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="write the rows here for benchmarks/run.py")
    args = parser.parse_args()
    client = openai_client()
    create = client.chat.completions.create
    openlit_sink = CatchAll()
    with Receiver() as langfuse_sink, \
            workflow("bench", chatmode="bug-fix"), stage("call", persona="backend-engineer"), \
            persona("backend-engineer", chatmode="bug-fix"):
        metrics_only, _, _ = ours(create, None)
        traced, drain_ours, sinks = ours(create, langfuse_sink.url)
        bare: Case = (lambda: create(model="gpt-4o", messages=MESSAGES), lambda: None)
        results = interleaved_best_us({"bare": bare, "pe metrics": (metrics_only, lambda: None),
                                       "pe metrics+trace": (traced, drain_ours)},
                                      args.number, args.rounds)
        for sink in sinks:
            sink.shutdown(5)
        # Second phase, OpenLIT patched in: ``create`` was bound before, so it stays bare.
        fn, drain, why = openlit_case(client, openlit_sink.url)
        if not why:
            second = interleaved_best_us({"bare": bare, "openlit": (fn, drain)},
                                         args.number, args.rounds)
            shutdown_openlit()
            print(f"openlit: {openlit_sink.spans} spans reached its OTLP sink")
    openlit_sink.close()
    print(f"{'case':<18}{'us/call':>9}{'added us':>10}")
    for name, value in results.items():
        print(f"{name:<18}{value:>9.1f}{value - results['bare']:>10.1f}")
    theirs = None
    if not why:
        theirs = second["openlit"] - second["bare"]
        print(f"{'bare (2nd phase)':<18}{second['bare']:>9.1f}\n"
              f"{'openlit':<18}{second['openlit']:>9.1f}{theirs:>10.1f}")
    peer = "OpenLIT, same call"
    rows = [Row("openai call, bare (MockTransport)", results["bare"], "us/call", note=why),
            Row("openai call, pe metrics", results["pe metrics"] - results["bare"],
                "us added", peer, theirs),
            Row("openai call, pe metrics+trace", results["pe metrics+trace"] - results["bare"],
                "us added", peer, theirs)]
    write_json(args.json, "openlit", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
