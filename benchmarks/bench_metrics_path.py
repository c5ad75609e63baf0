"""What the metrics path adds to one instrumented LLM call, in one run, side by side.

    python benchmarks/bench_metrics_path.py

Compares, on the same empty "LLM" function returning an OpenAI-shaped response:
  bare            the function alone
  plain client    the function plus three prometheus_client updates through labels()
                  (requests counter, tokens counter, duration histogram): what a
                  hand-written instrumentation typically does
  disabled        ObservableLLM with no telemetry configured (the no-op path)
  persona-exporter ObservableLLM recording into a Recorder, inside a persona context:
                  context lookup, usage extraction, cost, 4 counters, 1 histogram

and then the same with the response objects the SDKs return (issue 14), built from their
own types without a network: an ``openai`` ChatCompletion and an ``anthropic`` Message.
Each is compared with plain prometheus_client instrumentation of the same call that reads
its token counts from the same object (``plain client openai``/``anthropic``), measured
in the same run:
  plain client openai / anthropic          the three updates, counts read from the object
  persona-exporter openai / anthropic      ObservableLLM, as above

The bar (issue 14): with a real openai response object, the metrics path adds at most 1.0x
what the plain client adds reading the same object, measured in the same run.
``--json PATH`` writes every case's row for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anthropic.types import Message
from openai.types.chat import ChatCompletion
from prometheus_client import CollectorRegistry, Counter, Histogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from persona_exporter import ObservableLLM, Telemetry, parse_config, persona
from persona_exporter.catalog import GENAI_DURATION_BUCKETS
from results import Row, passed, write_json

BAR = "<= 1.0"

RESPONSE = {
    "model": "gpt-4o",
    "choices": [{"message": {"role": "assistant", "content": "ok"}}],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 80,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
# The same usage as the real SDKs' response types (model_validate: what the SDKs do with
# the JSON they receive).
OPENAI_RESPONSE = ChatCompletion.model_validate({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
    "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200,
              "prompt_tokens_details": {"cached_tokens": 64},
              "completion_tokens_details": {"reasoning_tokens": 0}},
})
ANTHROPIC_RESPONSE = Message.model_validate({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 56, "output_tokens": 80, "cache_read_input_tokens": 64,
              "cache_creation_input_tokens": 0},
})
CONFIG = parse_config("""
personas: {backend-engineer: {tokens: {24h: 1000000}}}
models:
  gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}
  claude-sonnet-4: {provider: anthropic, input: 3, output: 15, cache_read: 0.3}
""")


def llm(*, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    return RESPONSE


def llm_openai(*, model: str, messages: list[dict[str, str]]) -> ChatCompletion:
    return OPENAI_RESPONSE


def llm_anthropic(*, model: str, messages: list[dict[str, str]]) -> Message:
    return ANTHROPIC_RESPONSE


def per_call_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Best of ``repeat`` rounds of the mean per-call time, in microseconds: the machine is
    shared, and another job's burst slows some rounds of some cases, never speeds one."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number * 1e6)
    return min(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--json", help="write the rows here for benchmarks/run.py")
    args = parser.parse_args()
    messages = [{"role": "user", "content": "hi"}]

    registry = CollectorRegistry()
    requests = Counter("plain_requests_total", "r", ["persona", "model"], registry=registry)
    tokens = Counter("plain_tokens_total", "t", ["persona", "model", "type"], registry=registry)
    duration = Histogram("plain_duration_seconds", "d", ["persona", "model"], registry=registry,
                         buckets=GENAI_DURATION_BUCKETS)

    def plain() -> None:
        start = time.perf_counter()
        llm(model="gpt-4o", messages=messages)
        requests.labels("backend-engineer", "gpt-4o").inc()
        tokens.labels("backend-engineer", "gpt-4o", "input").inc(120)
        duration.labels("backend-engineer", "gpt-4o").observe(time.perf_counter() - start)

    def plain_openai() -> None:
        start = time.perf_counter()
        response = llm_openai(model="gpt-4o", messages=messages)
        requests.labels("backend-engineer", "gpt-4o").inc()
        tokens.labels("backend-engineer", "gpt-4o", "input").inc(
            response.usage.prompt_tokens if response.usage else 0)
        duration.labels("backend-engineer", "gpt-4o").observe(time.perf_counter() - start)

    def plain_anthropic() -> None:
        start = time.perf_counter()
        response = llm_anthropic(model="claude-sonnet-4", messages=messages)
        requests.labels("backend-engineer", "claude-sonnet-4").inc()
        tokens.labels("backend-engineer", "claude-sonnet-4", "input").inc(
            response.usage.input_tokens)
        duration.labels("backend-engineer", "claude-sonnet-4").observe(
            time.perf_counter() - start)

    disabled = ObservableLLM(llm, provider="openai", telemetry=Telemetry())
    telemetry = Telemetry(registry=CollectorRegistry(), config=CONFIG)
    instrumented = ObservableLLM(llm, provider="openai", telemetry=telemetry)
    instrumented_openai = ObservableLLM(llm_openai, provider="openai", telemetry=telemetry)
    instrumented_anthropic = ObservableLLM(llm_anthropic, provider="anthropic",
                                           telemetry=telemetry)

    cases: dict[str, Callable[[], Any]] = {
        "bare": lambda: llm(model="gpt-4o", messages=messages),
        "plain client": plain,
        "disabled": lambda: disabled(model="gpt-4o", messages=messages),
        "persona-exporter": lambda: instrumented(model="gpt-4o", messages=messages),
        "plain client openai": plain_openai,
        "persona-exporter openai": lambda: instrumented_openai(model="gpt-4o",
                                                               messages=messages),
        "plain client anthropic": plain_anthropic,
        "persona-exporter anthropic": lambda: instrumented_anthropic(
            model="claude-sonnet-4", messages=messages),
    }
    results: dict[str, float] = {}
    with persona("backend-engineer", chatmode="feature-implementation"):
        for _ in range(2):  # interleave the cases twice, keep the better of each
            for name, fn in cases.items():
                fn()
                value = per_call_us(fn, args.number, args.repeat)
                results[name] = min(results.get(name, value), value)

    bare = results["bare"]
    print(f"{'case':<28}{'us/call':>9}{'added us':>10}{'x bare':>8}{'x plain added':>15}")
    for name, value in results.items():
        added = value - bare
        peer_added = results[PEERS.get(name, "plain client")] - bare
        print(f"{name:<28}{value:>9.2f}{added:>10.2f}{value / bare:>8.1f}"
              f"{added / peer_added if name != 'bare' else 0:>15.2f}")
    rows = json_rows(results)
    write_json(args.json, "metrics path", rows)
    for row in rows:
        if row.bar and row.figure is not None and row.peer_figure:
            ratio = row.figure / row.peer_figure
            print(f"\n{row.name}: {ratio:.2f}x what {row.peer} adds (bar {row.bar})")
    return 0 if passed(rows) else 1


# A real response object is compared with the plain client reading the same object.
PEERS = {"persona-exporter openai": "plain client openai",
         "persona-exporter anthropic": "plain client anthropic"}


def json_rows(results: dict[str, float]) -> list[Row]:
    """Every case's added time against its plain client's; the bar on the case with a real
    openai response (the others are information), a failed row if there is none."""
    bare = results["bare"]
    rows = [Row("metrics path, bare call", bare, "us/call")]
    barred = []
    for name, value in results.items():
        if name in ("bare", "plain client"):
            continue
        if name.startswith(("bare", "plain")):
            rows.append(Row(f"metrics path, {name}", value - bare, "us added"))
            continue
        peer = PEERS.get(name, "plain client")
        bar = BAR if "openai" in name.lower() else ""
        barred += [name] if bar else []
        rows.append(Row(f"metrics path, {name}", value - bare, "us added",
                        f"prometheus_client, {peer}", results[peer] - bare, bar))
    if not barred:
        rows.append(Row("metrics path, real openai response", None, "us added",
                        "plain prometheus_client", results["plain client"] - bare, BAR,
                        "not measured: no case with a real openai response object"))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
