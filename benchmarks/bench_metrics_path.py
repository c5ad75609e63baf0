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

The bar (issue 14): with a real openai response object (a case whose name says "openai"),
the metrics path adds at most 1.0x what the plain client adds, measured in the same run.
``--json PATH`` writes every case's row for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
CONFIG = parse_config("""
personas: {backend-engineer: {tokens: {24h: 1000000}}}
models: {gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}}
""")


def llm(*, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    return RESPONSE


def per_call_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Median over ``repeat`` rounds of the mean per-call time, in microseconds."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(rounds)


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

    disabled = ObservableLLM(llm, provider="openai", telemetry=Telemetry())
    telemetry = Telemetry(registry=CollectorRegistry(), config=CONFIG)
    instrumented = ObservableLLM(llm, provider="openai", telemetry=telemetry)

    cases: dict[str, Callable[[], Any]] = {
        "bare": lambda: llm(model="gpt-4o", messages=messages),
        "plain client": plain,
        "disabled": lambda: disabled(model="gpt-4o", messages=messages),
        "persona-exporter": lambda: instrumented(model="gpt-4o", messages=messages),
    }
    results: dict[str, float] = {}
    with persona("backend-engineer", chatmode="feature-implementation"):
        for _ in range(2):  # interleave the cases twice, keep the better of each
            for name, fn in cases.items():
                fn()
                value = per_call_us(fn, args.number, args.repeat)
                results[name] = min(results.get(name, value), value)

    bare = results["bare"]
    plain_added = results["plain client"] - bare
    print(f"{'case':<18}{'us/call':>9}{'added us':>10}{'x bare':>8}{'x plain added':>15}")
    for name, value in results.items():
        added = value - bare
        print(f"{name:<18}{value:>9.2f}{added:>10.2f}{value / bare:>8.1f}"
              f"{added / plain_added if name != 'bare' else 0:>15.2f}")
    rows = json_rows(results)
    write_json(args.json, "metrics path", rows)
    for row in rows:
        if row.bar and row.figure is not None and row.peer_figure:
            ratio = row.figure / row.peer_figure
            print(f"\n{row.name}: {ratio:.2f}x what the plain client adds (bar {row.bar})")
    return 0 if passed(rows) else 1


def json_rows(results: dict[str, float]) -> list[Row]:
    """Every case's added time against the plain client's; the bar on the cases with a real
    openai response ("openai" in the name; bare and plain variants are information), a
    failed row if there is none."""
    bare = results["bare"]
    plain = results["plain client"] - bare
    peer = "plain prometheus_client"
    rows = [Row("metrics path, bare call", bare, "us/call")]
    barred = []
    for name, value in results.items():
        if name in ("bare", "plain client"):
            continue
        if name.startswith(("bare", "plain")):
            rows.append(Row(f"metrics path, {name}", value - bare, "us added"))
            continue
        bar = BAR if "openai" in name.lower() else ""
        barred += [name] if bar else []
        rows.append(Row(f"metrics path, {name}", value - bare, "us added", peer, plain, bar))
    if not barred:
        rows.append(Row("metrics path, real openai response", None, "us added", peer, plain,
                        BAR, "not measured: no case with a real openai response object"))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
