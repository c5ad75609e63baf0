"""Cost of genai/traces.py (the per-trace state) per span, without decoding.

    python benchmarks/bench_genai_traces.py [--mapping standin|trivial|real]

Builds traces of 8 spans (a root, an agent, four tool/HTTP spans, two chat spans: 1 in 4
an LLM span), sends them in end order (children first) in batches of 512, and times
``Traces.add`` (plus one ``expire`` per batch, as the server's timer would). Two shapes:
the persona on every span (Langfuse ``propagate_attributes``: nothing held), and the
persona on the root only (every LLM span held until its root arrives).

Budget (issue 12's 30,000 spans/s on one core with decoding): about 10 us per non-LLM span
and 25 us per LLM span, the mapping included; i.e. about 14 us per span on average.
``--mapping trivial`` isolates this module's own cost; ``standin`` uses the tests' small
stand-in; ``real`` genai/mapping.py (once it is implemented).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import genai_standin

from persona_exporter.config import Otlp
from persona_exporter.genai import mapping
from persona_exporter.genai.mapping import Call, Role
from persona_exporter.genai.span import Span
from persona_exporter.genai.traces import Traces

BATCH = 512
START = 1_780_000_000_000_000_000


def build(traces: int, persona_everywhere: bool) -> list[Span]:
    spans: list[Span] = []
    resource = {"service.name": "agent-app"}
    for n in range(traces):
        trace_id = f"{n + 1:032x}"
        ids = [f"{n * 8 + k + 1:016x}" for k in range(8)]
        root, agent = ids[0], ids[1]
        persona = {"langfuse.trace.metadata.persona": "backend"} if persona_everywhere else {}
        base = START + n * 1000
        chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 20, "gen_ai.response.id": f"r{n}",
                "server.address": "api.openai.com", **persona}
        tool = {"http.method": "GET", "http.url": "https://example.com/x",
                "http.status_code": 200, **persona}
        children = [
            (ids[2], agent, "GET /x", tool), (ids[3], agent, "chat gpt-4o", chat),
            (ids[4], agent, "GET /y", tool), (ids[5], agent, "tool search", tool),
            (ids[6], agent, "chat gpt-4o", {**chat, "gen_ai.response.id": f"s{n}"}),
            (ids[7], agent, "GET /z", tool),
        ]
        for span_id, parent, name, attributes in children:
            spans.append(Span(trace_id, span_id, parent, name, 1, base, base + 10,
                              attributes=attributes, resource=resource))
        spans.append(Span(trace_id, agent, root, "invoke_agent coder", 1, base, base + 20,
                          attributes={"gen_ai.operation.name": "invoke_agent",
                                      "gen_ai.agent.name": "coder", **persona},
                          resource=resource))
        spans.append(Span(trace_id, root, None, "POST /run", 2, base, base + 30,
                          attributes={"persona.name": "backend", "http.method": "POST"},
                          resource=resource))
    return spans


def trivial_classify(span: Span) -> Role:
    return Role.LLM if span.name.startswith("chat") else Role.OTHER


_CALL = Call(model="gpt-4o", provider="openai", input_tokens=100, output_tokens=20,
             has_usage=True)


def trivial_read_call(span: Span, role: Role | None = None) -> Call | None:
    return _CALL if span.name.startswith("chat") else None


def run(spans: list[Span], kind: str) -> tuple[float, int, int]:
    if kind == "trivial":
        classify, read_call = trivial_classify, trivial_read_call
    elif kind == "standin":
        classify, read_call = genai_standin.classify, genai_standin.read_call
    else:
        classify, read_call = mapping.classify, mapping.read_call
    best = float("inf")
    for _ in range(3):  # the best of three: the machine is shared
        traces = Traces(Otlp(), classify=classify, read_call=read_call)
        events = 0
        began = time.process_time()
        for i in range(0, len(spans), BATCH):
            result = traces.add(spans[i:i + BATCH])
            events += len(result.events)
            events += len(traces.expire().events)
        best = min(best, time.process_time() - began)
    return best, events, traces.held


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mapping", choices=("trivial", "standin", "real"), default="standin")
    parser.add_argument("--traces", type=int, default=25_000)
    args = parser.parse_args()
    for persona_everywhere in (True, False):
        spans = build(args.traces, persona_everywhere)
        elapsed, events, held = run(spans, args.mapping)
        shape = "persona on every span" if persona_everywhere else "persona on the root only"
        print(f"{args.mapping:8} {shape:26} {len(spans):7} spans {elapsed:6.2f} s "
              f"{elapsed / len(spans) * 1e6:6.2f} us/span {len(spans) / elapsed:9.0f} spans/s "
              f"({events} events, {held} held at the end)")
    # memory per remembered span: the state of 25,000 traces (200,000 spans)
    spans = build(args.traces, False)
    tracemalloc.start()
    traces = Traces(Otlp(), classify=trivial_classify, read_call=trivial_read_call)
    # children only (roots withheld): everything is remembered and the LLM spans held
    children = [s for s in spans if s.parent_span_id is not None
                and not s.name.startswith("invoke_agent")]
    before = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(children), BATCH):
        traces.add(children[i:i + BATCH])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"memory: {used / len(children):.0f} bytes per remembered span "
          f"({traces.held} held of {len(children)}; span objects themselves excluded)")


if __name__ == "__main__":
    main()
