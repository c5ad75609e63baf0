"""GET /metrics at 10k and 100k series, against Prometheus Pushgateway serving the same series.

    python benchmarks/bench_exposition.py [--series 10000 100000] [--rounds 5]

For each size: starts ``persona-exporter serve`` (one process), feeds it LLM-call events
through /v1/events until its /metrics holds about N series (sample lines, the unit
Prometheus counts), then times a scrape, GET /metrics to the last byte, best of rounds, in
the text format and in OpenMetrics (what Prometheus negotiates); before each scrape 1% of
the series change (as between two scrapes of a busy exporter), outside the timing. The
same series (our body, less the process_/python_ families every exporter has of its own)
are PUT to a fresh Pushgateway, whose GET /metrics is timed the same way: the Go peer a
user would put in front of short-lived jobs instead of us. Also printed, for information:
prometheus_client's generate_latest of a plain registry of its own instruments holding the
same series (in process, no HTTP), and the resident memory each process grew by per
series.

Bars (issue 14): at 10k series, text and OpenMetrics at most 0.35x Pushgateway's scrape;
at 100k series at most 0.5x.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import start
from results import (
    PUSHGATEWAY_MISSING,
    Row,
    best_get_seconds,
    free_port,
    passed,
    pushgateway,
    pushgateway_binary,
    rss_bytes,
    write_json,
)

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
BARS = {10_000: "<= 0.35", 100_000: "<= 0.5"}
MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-sonnet-4", "anthropic"),
          ("o3-mini", "openai"))
CHATMODES = 5
BATCHES = itertools.count(100)
OWN_FAMILIES = ("process_", "python_")  # every exporter's own; the Pushgateway has its own


def events(personas: range) -> list[dict[str, Any]]:
    """Every (persona, chatmode, model) combination of ``personas``: one call each."""
    return [{"type": "llm_generation", "persona": f"persona-{p}", "chatmode": f"mode-{c}",
             "model": model, "provider": provider, "input_tokens": 100 + p % 50,
             "output_tokens": 20, "cache_read_tokens": 10, "duration_seconds": 0.25 + c / 10,
             "time_to_first_chunk_seconds": 0.1}
            for p in personas for c in range(CHATMODES) for model, provider in MODELS]


def post(port: int, batch: list[dict[str, Any]], index: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for offset in range(0, len(batch), 1000):
        connection.request("POST", "/v1/events", headers={"Content-Type": "application/json"},
                           body=json.dumps({"batch_id": f"x-{index}-{offset}",
                                            "events": batch[offset:offset + 1000]}).encode())
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"/v1/events: {response.status} {body[:300]!r}")
    connection.close()


def sample_lines(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def without_own_families(body: bytes) -> bytes:
    keep, out = True, []
    for line in body.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            keep = not line[7:].startswith(tuple(f.encode() for f in OWN_FAMILIES))
        if keep:
            out.append(line)
    return b"".join(out)


def feed(port: int, target: int) -> tuple[int, int]:
    """Feeds personas until /metrics holds about ``target`` series; the count reached and
    the personas fed."""
    _, body = best_get_seconds(port, "/metrics", 1)
    base = sample_lines(body)
    probe = 10
    post(port, events(range(probe)), 0)
    _, body = best_get_seconds(port, "/metrics", 1)
    per_persona = (sample_lines(body) - base) / probe
    personas = max(probe, math.ceil((target - base) / per_persona))
    post(port, events(range(probe, personas)), 1)
    _, body = best_get_seconds(port, "/metrics", 1)
    return sample_lines(body), personas


def best_scrape_after_changes(port: int, personas: int, rounds: int,
                              headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Best of ``rounds`` scrapes, each after calls to 1% of the personas' series (outside
    the timing): between two scrapes of a real exporter some series change, most do not,
    and a scrape that only repeats the previous one would flatter kept lines."""
    best, body = float("inf"), b""
    step = max(1, personas // 100)
    for _ in range(rounds):
        batch = next(BATCHES)  # a batch id the exporter has not seen: not a duplicate
        first = (batch * step) % personas
        post(port, events(range(first, min(personas, first + step))), batch)
        seconds, body = best_get_seconds(port, "/metrics", 1, headers)
        best = min(best, seconds)
    return best, body


def plain_registry(text: str) -> Any:
    """The same series in prometheus_client's own instruments (histograms observed at their
    bucket bounds, so bucket counts match; sums may differ)."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        disable_created_metrics,
    )
    from prometheus_client.parser import text_string_to_metric_families

    disable_created_metrics()  # type: ignore[no-untyped-call]  # as serve does
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(text):
        if family.name.startswith(OWN_FAMILIES) or not family.samples:
            continue  # an instrument with no labelled child yet would add a sample
        names = sorted({k for s in family.samples for k in s.labels if k != "le"})
        if family.type == "counter":
            counter = Counter(family.name, family.documentation, names, registry=registry)
            for s in family.samples:
                if s.name.endswith("_total"):
                    (counter.labels(**s.labels) if names else counter).inc(s.value)
        elif family.type == "gauge":
            gauge = Gauge(family.name, family.documentation, names, registry=registry)
            for s in family.samples:
                (gauge.labels(**s.labels) if names else gauge).set(s.value)
        elif family.type == "histogram":
            bounds = sorted({float(s.labels["le"]) for s in family.samples
                             if s.name.endswith("_bucket")})
            if len(bounds) < 2:
                continue  # a histogram with no series yet
            histogram = Histogram(family.name, family.documentation, names,
                                  registry=registry, buckets=bounds)
            cumulative: dict[tuple[str, ...], list[tuple[float, float]]] = {}
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    key = tuple(s.labels[n] for n in names)
                    cumulative.setdefault(key, []).append((float(s.labels["le"]), s.value))
            for key, pairs in cumulative.items():
                child = histogram.labels(*key) if names else histogram
                below = 0.0
                for bound, count in sorted(pairs):
                    for _ in range(int(count - below)):
                        child.observe(bound if math.isfinite(bound) else 1e12)
                    below = count
    return registry


def generate_latest_seconds(text: str, rounds: int) -> tuple[float, float, int]:
    from prometheus_client import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_om

    registry = plain_registry(text)
    best_text = best_om = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        body = generate_latest(registry)
        best_text = min(best_text, time.perf_counter() - started)
        started = time.perf_counter()
        generate_om(registry)  # type: ignore[no-untyped-call]
        best_om = min(best_om, time.perf_counter() - started)
    return best_text, best_om, sample_lines(body)


def measure(target: int, rounds: int) -> list[Row]:
    label = f"{target // 1000}k"
    rows: list[Row] = []
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text("limits: {persona: 1000000, chatmode: 100, model: 100, "
                          "series: 10000000}\n")
        proc = start(port, {}, "--config.file", str(config))
        try:
            time.sleep(0.5)
            rss_before = rss_bytes(proc.pid)
            series, personas = feed(port, target)
            text, body = best_scrape_after_changes(port, personas, rounds)
            om, om_body = best_scrape_after_changes(port, personas, rounds, OPENMETRICS)
            grown = rss_bytes(proc.pid) - rss_before
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{label}: {series:,} series; /metrics text {text * 1000:.1f} ms "
          f"({len(body) / 1e6:.1f} MB), OpenMetrics {om * 1000:.1f} ms "
          f"({len(om_body) / 1e6:.1f} MB); RSS +{grown / series:,.0f} bytes per series")
    assert om_body.endswith(b"# EOF\n"), "the OpenMetrics body does not end with # EOF"

    peer = f"Pushgateway, same {series:,} series"
    gateway: float | None = None
    gateway_rss: float | None = None
    note = ""
    if pushgateway_binary() is None:
        note = PUSHGATEWAY_MISSING
    else:
        with pushgateway() as (gw_port, gw_pid):
            rss_gw_before = rss_bytes(gw_pid)
            connection = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=120)
            connection.request("PUT", "/metrics/job/bench", body=without_own_families(body),
                               headers={"Content-Type": "text/plain; version=0.0.4"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"Pushgateway PUT: {response.status} {answer[:300]!r}")
            gateway, gw_body = best_get_seconds(gw_port, "/metrics", rounds)
            if sample_lines(gw_body) > series + 1000:  # its own metrics are ~100
                raise RuntimeError(f"the Pushgateway holds {sample_lines(gw_body):,} series, "
                                   f"not the {series:,} pushed: state left from elsewhere?")
            gateway_rss = (rss_bytes(gw_pid) - rss_gw_before) / series
        print(f"{label}: Pushgateway {sample_lines(gw_body):,} series (with its own); "
              f"GET /metrics {gateway * 1000:.1f} ms; RSS +{gateway_rss:,.0f} bytes per series")
    plain_text, plain_om, plain_series = generate_latest_seconds(body.decode(), rounds)
    print(f"{label}: prometheus_client generate_latest, {plain_series:,} series in its own "
          f"instruments: text {plain_text * 1000:.1f} ms, OpenMetrics {plain_om * 1000:.1f} ms")
    bar = BARS.get(target, "")
    rows += [
        Row(f"/metrics {label} series, text", text * 1000, "ms", peer, _ms(gateway), bar, note),
        Row(f"/metrics {label} series, OpenMetrics", om * 1000, "ms", peer, _ms(gateway), bar,
            note),
        Row(f"/metrics {label} text vs plain registry", text * 1000, "ms",
            "generate_latest, no HTTP", plain_text * 1000),
        Row(f"/metrics {label} OM vs plain registry", om * 1000, "ms",
            "OM generate_latest, no HTTP", plain_om * 1000),
        Row(f"RSS per series at {label}", grown / series, "bytes", "Pushgateway",
            gateway_rss, "", note),
    ]
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the rows here for benchmarks/run.py")
    args = parser.parse_args()
    rows = [row for target in args.series for row in measure(target, args.rounds)]
    write_json(args.json, "exposition", rows)
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
