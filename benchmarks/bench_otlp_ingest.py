"""OTLP traces receiver throughput: spans/s that ``persona-exporter serve`` ingests.

    python benchmarks/bench_otlp_ingest.py

One server process (one core: Python runs it on one), fed by client processes over
keep-alive connections with OTLP/HTTP protobuf requests of 512 spans, as the
OpenTelemetry SDKs' BatchSpanProcessor sends them. Each trace is an ``invoke_agent`` span
naming the persona over two ``chat`` spans with usage and five tool spans, so one span in
four is an LLM call whose persona comes from its ancestor. Every request is new (new ids:
a repeated body would be answered from the batch-id memory without work).

Measured side by side in one run: forwarding off; forwarding on, to a local OTLP upstream
that answers at once; and where the time goes in-process (decoding, the per-trace state).
The OpenTelemetry Collector cannot run here (no binary reaches this machine's registries),
so its figure is not measured.

No bar: there is no peer to measure in the same run (the Collector), and an absolute
figure (issue 12 asked 30,000 spans/s with forwarding off) flips on a shared machine; it is
printed for information. ``--json PATH`` writes the rows for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import drive_each, start  # the same server start as the events'
from results import Row, free_port, write_json

ISSUE_12_SPANS_PER_S = 30_000
SPANS_PER_REQUEST = 512
SPANS_PER_TRACE = 8
PERSONAS = ("backend-engineer", "frontend-engineer", "qa-engineer", "devops-engineer")


def request_body(seed: int) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def kv(key: str, value: str | int) -> KeyValue:
        any_value = AnyValue(int_value=value) if isinstance(value, int) \
            else AnyValue(string_value=value)
        return KeyValue(key=key, value=any_value)

    rng = os.urandom
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([kv("service.name", "agents"),
                                               kv("telemetry.sdk.language", "python")])
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "opentelemetry.instrumentation.openai_v2"
    start = 1_790_000_000_000_000_000 + seed
    for trace in range(SPANS_PER_REQUEST // SPANS_PER_TRACE):
        trace_id, root_id = rng(16), rng(8)
        persona = PERSONAS[(seed + trace) % len(PERSONAS)]
        # Children first: spans are exported as they end, the root last.
        for child in range(SPANS_PER_TRACE - 1):
            span = scope.spans.add(trace_id=trace_id, span_id=rng(8), parent_span_id=root_id,
                                   start_time_unix_nano=start + child * 1000,
                                   end_time_unix_nano=start + child * 1000 + 900_000_000)
            if child < 2:
                span.name, span.kind = "chat gpt-4o", 3
                span.attributes.extend([
                    kv("gen_ai.operation.name", "chat"), kv("gen_ai.provider.name", "openai"),
                    kv("gen_ai.request.model", "gpt-4o"),
                    kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
                    kv("gen_ai.response.id", f"chatcmpl-{rng(6).hex()}"),
                    kv("gen_ai.usage.input_tokens", 1200 + child),
                    kv("gen_ai.usage.output_tokens", 300),
                    kv("gen_ai.usage.cache_read.input_tokens", 200),
                    kv("server.address", "api.openai.com"), kv("server.port", 443)])
            else:
                span.name = "execute_tool search"
                span.attributes.extend([
                    kv("gen_ai.operation.name", "execute_tool"),
                    kv("gen_ai.tool.name", "search"), kv("gen_ai.tool.call.id", rng(6).hex()),
                    kv("gen_ai.tool.type", "function")])
        root = scope.spans.add(trace_id=trace_id, span_id=root_id, name=f"invoke_agent {persona}",
                               start_time_unix_nano=start, end_time_unix_nano=start + 2 * 10**9)
        root.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"),
                                kv("gen_ai.agent.name", persona),
                                kv("chatmode", "feature-implementation")])
    return bytes(request.SerializeToString())


def client(port: int, bodies: list[bytes], results: multiprocessing.Queue[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = 0
    for body in bodies:
        connection.request("POST", "/v1/traces", body=body,
                           headers={"Content-Type": "application/x-protobuf"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            sent += SPANS_PER_REQUEST
    results.put(sent)


def measure(bodies: list[bytes], clients: int, config: str = "") -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        config_path = Path(directory) / "config.yaml"
        config_path.write_text(config)
        proc = start(port, {}, "--config.file", str(config_path))
        try:
            return drive_each(client, [(port, bodies[i::clients]) for i in range(clients)])
        finally:
            proc.terminate()
            proc.wait(10)


def in_process(bodies: list[bytes]) -> tuple[float, float]:
    """Microseconds per span: decoding, then the per-trace state (mapping included)."""
    from persona_exporter.config import Otlp
    from persona_exporter.genai.decode import decode_protobuf
    from persona_exporter.genai.traces import Traces
    from persona_exporter.server.otlp import read_keys

    sample = bodies[:40]
    spans = len(sample) * SPANS_PER_REQUEST
    keys = read_keys(Otlp())
    started = time.perf_counter()
    decoded = [decode_protobuf(body, keys).spans for body in sample]
    decode = (time.perf_counter() - started) / spans
    traces = Traces(Otlp())
    started = time.perf_counter()
    for batch in decoded:
        traces.add(batch)
    state = (time.perf_counter() - started) / spans
    return decode * 1e6, state * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400,
                        help="requests of 512 spans per measurement (default 400)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--json", help="write the rows here for benchmarks/run.py")
    args = parser.parse_args()
    bodies = [request_body(seed) for seed in range(args.requests)]
    print(f"{len(bodies)} requests of {SPANS_PER_REQUEST} spans "
          f"({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB each, protobuf), "
          f"1 span in 4 an LLM call")
    decode, state = in_process(bodies)
    print(f"in-process: decode {decode:.1f} us/span, per-trace state and mapping "
          f"{state:.1f} us/span")
    off = measure(bodies, args.clients)
    print(f"OTLP ingest, forwarding off: {off:,.0f} spans/s ({args.clients} clients)")
    from tests.otlp_receiver import Receiver

    with Receiver() as upstream:
        forwarding = (f"otlp_forward:\n  - name: collector\n    kind: otlp\n"
                      f"    endpoint: {upstream.url}/v1/traces\n")
        fresh = [request_body(seed + 10**6) for seed in range(args.requests)]
        on = measure(fresh, args.clients, forwarding)
        forwarded = sum(len(list(r.request.resource_spans)) for r in upstream.received)
    print(f"OTLP ingest, forwarding on: {on:,.0f} spans/s ({on / off:.2f}x off; "
          f"{forwarded} requests reached the upstream by the end)")
    print("OpenTelemetry Collector: not measured (no collector binary in this machine's "
          "registries)")
    write_json(args.json, "otlp ingest", [
        Row("OTLP traces ingest, forwarding off", off, "spans/s",
            note=f"issue 12 asked {ISSUE_12_SPANS_PER_S:,}; no Collector to compare here"),
        Row("OTLP traces ingest, forwarding on", on, "spans/s", "forwarding off", off),
        Row("OTLP decode, in process", decode, "us/span"),
        Row("OTLP per-trace state and mapping, in process", state, "us/span"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
