"""/metrics rendering at 10k and 100k series: the exporter's encoders against
prometheus_client's generate_latest on the same registry, text and OpenMetrics.

    python benchmarks/bench_render.py [--rounds 5] [--sizes 40,400]

The registry is a Recorder's (every catalog family) with personas x 4 models x 5
chatmodes LLM-call series: 40 personas make about 10,000 series, 400 about 100,000.
prometheus_client's figure is the body as it wrote it before (every sample formatted by
``sample_line``). The exporter's figures: the first scrape (label prefixes escaped, every
line written), a scrape after 1% of the series changed (the usual case: lines kept for
the rest), and after all of them changed. Best of ``--rounds``; prints figures only (no
bar: the machine is shared, ``make bench`` compares).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as stock_text
from prometheus_client.openmetrics import exposition as openmetrics

from persona_exporter import Recorder, parse_config
from persona_exporter.events import LLMGeneration
from persona_exporter.metrics.exposition import (
    generate_latest,
    generate_openmetrics,
)


def build(personas: int) -> tuple[CollectorRegistry, Recorder, int]:
    registry = CollectorRegistry()
    cap = personas * 20 + 10
    recorder = Recorder(registry, config=parse_config(
        f"limits: {{series: {cap}, persona: {personas + 10}}}"))
    for p in range(personas):
        for m in range(4):
            for c in range(5):
                recorder.emit(LLMGeneration(
                    persona=f"p{p}", chatmode=f"c{c}", model=f"m{m}", provider="openai",
                    input_tokens=5 + p, output_tokens=5, cost_usd=0.0123,
                    duration_seconds=0.3, time_to_first_chunk_seconds=0.1))
    series = sum(len(f.samples) for f in registry.collect())
    return registry, recorder, series


def best(rounds: int, prepare: Callable[[], None], render: Callable[[], bytes]) -> float:
    times = []
    for _ in range(rounds):
        prepare()
        started = time.perf_counter()
        render()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def stock_openmetrics(registry: CollectorRegistry) -> bytes:
    body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    return body


def measure(personas: int, rounds: int) -> None:
    registry, recorder, series = build(personas)
    llm = list(recorder._llm.values())
    rng = random.Random(1)

    def nothing() -> None:
        pass

    def forget() -> None:
        # A fresh process: no prefixes, no kept lines.
        collector = recorder._llm_collector
        collector._histograms.clear()
        collector._grouped = 0

    def one_percent() -> None:
        for s in rng.sample(llm, max(1, len(llm) // 100)):
            s.record(1, 1, 0, 0, 0.01, 0.5, None)

    def every() -> None:
        for s in llm:
            s.record(1, 1, 0, 0, 0.01, 0.5, None)

    for name, ours, theirs in (
            ("text", partial(generate_latest, registry), partial(stock_text, registry)),
            ("OpenMetrics", partial(generate_openmetrics, registry),
             partial(stock_openmetrics, registry))):
        before = best(max(1, rounds // 2), nothing, theirs)
        first = best(rounds, forget, ours)
        changed = best(rounds, one_percent, ours)
        unchanged = best(rounds, nothing, ours)
        everything = best(rounds, every, ours)
        print(f"{series:>7,} series, {name:<11}: prometheus_client {before:7.1f} ms | "
              f"ours: 1% changed {changed:6.1f} ms ({changed / before:.3f}x), "
              f"unchanged {unchanged:6.1f} ms, all changed {everything:6.1f} ms "
              f"({everything / before:.3f}x), first scrape {first:6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="40,400", help="personas per registry")
    args = parser.parse_args()
    for personas in (int(p) for p in args.sizes.split(",")):
        measure(personas, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
