"""/metrics bodies are prometheus_client's own, byte for byte, in both formats.

The LLM-call families write their lines from each series' state (``metrics/exposition``,
``metrics/llm_series``); the reference is prometheus_client's ``generate_latest``
(``prometheus_client/exposition.py``) and OpenMetrics ``generate_latest``
(``prometheus_client/openmetrics/exposition.py``) over the same registry, which read the
families' ``samples`` - built as the collector built them before it wrote text.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder as stock_choose_encoder
from prometheus_client.exposition import generate_latest as stock_text
from prometheus_client.openmetrics import exposition as openmetrics
from starlette.testclient import TestClient

from persona_exporter import Recorder, parse_config
from persona_exporter.events import LLMGeneration
from persona_exporter.metrics.exposition import (
    PrerenderedFamily,
    choose_encoder,
    generate_latest,
    generate_openmetrics,
)
from persona_exporter.metrics.llm_series import LLMCollector, LLMSeries
from persona_exporter.metrics.state import restore
from persona_exporter.server.http import create_app
from persona_exporter.server.ingest import Ingestor

HOSTILE = ('say "hi"', "back\\slash", "new\nline", "\\n not a newline", "ünï©ødé 🙂",
           "", "}{,=\"", "tab\tcr\r", "\\\"\n")

# Accept headers that select each encoder and escaping prometheus_client knows.
ACCEPTS = (
    "",
    "text/plain",
    "text/plain; version=0.0.4",
    "text/plain; version=1.0.0",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=dots",
    "text/plain; version=1.0.0; escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0; escaping=dots",
    "application/openmetrics-text; version=1.0.0; escaping=values",
    "application/openmetrics-text; version=2.0.0",
)


def stock_openmetrics(registry: CollectorRegistry, escaping: str = "underscores") -> bytes:
    body: bytes = openmetrics.generate_latest(  # type: ignore[no-untyped-call]
        registry, escaping=escaping)
    return body


def assert_identical(registry: CollectorRegistry) -> None:
    """Every negotiated encoding of ``registry`` as prometheus_client writes it."""
    for accept in ACCEPTS:
        ours, ours_type = choose_encoder(accept)
        theirs, their_type = stock_choose_encoder(accept)
        assert ours_type == their_type
        assert ours(registry) == theirs(registry), accept


def collector_registry() -> tuple[CollectorRegistry, LLMCollector]:
    """An LLMCollector between families of prometheus_client's own instruments, which
    write _created samples (separate gauges in the text format)."""
    registry = CollectorRegistry()
    before = Counter("before_total", 'Before "it", with a \\ and\na newline.', ["kind"],
                     registry=registry)
    before.labels('x"y').inc(3)
    collector = LLMCollector()
    registry.register(collector)
    after = Histogram("after_seconds", "After.", ["kind"], buckets=(0.1, 1.0),
                      registry=registry)
    after.labels("a\nb").observe(0.5)
    Gauge("last", "Last.", registry=registry).set(1.5)
    return registry, collector


def record(series: LLMSeries, rng: random.Random, first_chunk: bool) -> None:
    series.record(rng.randrange(10**7), rng.randrange(5000), rng.randrange(100),
                  rng.randrange(3), rng.choice((None, 0.0, rng.random() / 7, 123456.789)),
                  rng.choice((0.0, 0.01, rng.expovariate(1.0), 1e6)),
                  rng.expovariate(3.0) if first_chunk else None)


def test_empty_state_is_identical() -> None:
    registry, _ = collector_registry()
    assert_identical(registry)
    alone = CollectorRegistry()
    alone.register(LLMCollector())
    assert_identical(alone)
    assert generate_openmetrics(alone).endswith(b"# EOF\n")


def test_hostile_label_values_are_escaped_as_prometheus_client_escapes_them() -> None:
    registry, collector = collector_registry()
    rng = random.Random(1)  # noqa: S311 - reproducible test data
    for index, value in enumerate(HOSTILE):
        labels = (value, HOSTILE[-1 - index], f"model-{value}", "openai")
        record(collector.add(labels), rng, first_chunk=index % 2 == 0)
    collector.count_accepted('stage"run\n')
    assert_identical(registry)
    text = generate_latest(registry).decode()
    assert 'persona="say \\"hi\\""' in text and 'chatmode="new\\nline"' in text
    assert 'persona="back\\\\slash"' in text and "ünï©ødé 🙂" in text


def test_histograms_with_and_without_first_chunks_and_shared_by_chatmodes() -> None:
    registry, collector = collector_registry()
    rng = random.Random(2)  # noqa: S311 - reproducible test data
    # Chatmodes c0..c2 share one histogram series per (persona, model, provider); only
    # p1's calls stream.
    for persona in ("p0", "p1"):
        for chatmode in ("c0", "c1", "c2"):
            series = collector.add((persona, chatmode, "m", "openai"))
            for _ in range(5):
                record(series, rng, first_chunk=persona == "p1")
    collector.add(("p2", "c0", "m", "openai"))  # a series with no call yet
    assert_identical(registry)
    text = generate_latest(registry).decode()
    assert ('persona_llm_time_to_first_chunk_seconds_count{model="m",persona="p0",'
            'provider="openai"} 0.0\n') in text
    assert ('persona_llm_request_duration_seconds_count{model="m",persona="p1",'
            'provider="openai"} 15.0\n') in text


def test_many_series_are_identical_in_both_formats() -> None:
    registry, collector = collector_registry()
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    series = [collector.add((f"p{p}", f"c{c}", f"m{m}", "openai"))
              for p in range(25) for m in range(4) for c in range(5)]
    for one in series:
        record(one, rng, first_chunk=rng.random() < 0.5)
    assert_identical(registry)
    text = generate_latest(registry)
    assert text.count(b"\n") > 6000  # 500 series, 100 histogram series
    # A second scrape, from the kept lines, is the same body.
    assert generate_latest(registry) == text == stock_text(registry)


def test_a_series_that_changes_after_a_scrape_shows_its_new_values() -> None:
    registry, collector = collector_registry()
    rng = random.Random(4)  # noqa: S311 - reproducible test data
    series = [collector.add((f"p{i}", "c", "m", "openai")) for i in range(20)]
    for one in series:
        record(one, rng, first_chunk=True)
    first = generate_openmetrics(registry)
    series[7].record(5, 6, 0, 0, 0.25, 0.3, None)
    collector.add(("p7", "other-chatmode", "m", "openai")).record(1, 1, 0, 0, None, 2.0, 0.5)
    collector.count_accepted("stage_run")
    second = generate_openmetrics(registry)
    assert second != first
    assert second == stock_openmetrics(registry)
    assert generate_latest(registry) == stock_text(registry)
    requests = 'persona_llm_requests_total{chatmode="c",model="m",persona="p7",provider="openai"}'
    assert f"{requests} 2.0\n".encode() in second
    assert (b'persona_llm_request_duration_seconds_count{model="m",persona="p7",'
            b'provider="openai"} 3.0\n') in second


def test_a_restored_series_is_rendered_with_the_restored_numbers() -> None:
    # A failed commit puts series back to what the disk holds (server/ingest.py _revert)
    # by setting their fields: that must invalidate the kept lines too.
    registry = CollectorRegistry()
    recorder = Recorder(registry)
    recorder.emit(LLMGeneration(persona="p", chatmode="c", model="m", provider="openai",
                                input_tokens=10, output_tokens=5, duration_seconds=0.2))
    before = generate_latest(registry)
    assert b'persona_llm_tokens_total{chatmode="c",model="m",persona="p",provider="openai",' \
           b'token_type="input"} 10.0\n' in before
    buckets = [0] * 15
    buckets[3] = 2
    state = [2, [40, 20, 0, 0], 0.5, buckets, 0.15, [0] * 15, 0.0]
    assert restore(recorder, [("llm", json.dumps(["p", "c", "m", "openai"]),
                               json.dumps(state))], None) == []
    after = generate_latest(registry)
    assert after == stock_text(registry)
    assert b'token_type="input"} 40.0\n' in after
    assert b'persona_llm_requests_total{chatmode="c",model="m",persona="p",' \
           b'provider="openai"} 2.0\n' in after


def test_a_recorder_registry_is_identical_and_passes_promtool(promtool: str) -> None:
    registry = CollectorRegistry()
    config = parse_config("""
personas:
  backend-engineer: {tokens: {24h: 100000}, cost_usd: {30d: 50}}
chatmodes:
  bug-fix: {tokens_per_run: 1000}
models:
  gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}
""")
    recorder = Recorder(registry, config=config)
    for index in range(30):
        recorder.emit(LLMGeneration(
            persona=("backend-engineer", "qa-engineer")[index % 2], chatmode="bug-fix",
            model="gpt-4o", provider="openai", input_tokens=1000 * index,
            output_tokens=index, cache_read_tokens=index // 2, duration_seconds=index / 7,
            time_to_first_chunk_seconds=index / 50 if index % 3 else None,
            error_type="rate_limit" if index == 4 else None))
    assert_identical(registry)
    lint = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                          capture_output=True, timeout=30, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


def test_hostile_text_passes_promtool(promtool: str) -> None:
    registry, collector = collector_registry()
    rng = random.Random(5)  # noqa: S311 - reproducible test data
    for value in HOSTILE:
        record(collector.add((value, value, value, value)), rng, first_chunk=True)
    lint = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                          capture_output=True, timeout=30, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


def test_samples_read_the_usual_way_match_the_lines() -> None:
    registry, collector = collector_registry()
    collector.add(("p", "c", "m", "openai")).record(3, 4, 1, 0, 0.5, 0.3, 0.05)
    families = {f.name: f for f in registry.collect()}
    assert isinstance(families["persona_llm_requests"], PrerenderedFamily)
    assert registry.get_sample_value("persona_llm_tokens_total", {
        "persona": "p", "chatmode": "c", "model": "m", "provider": "openai",
        "token_type": "output"}) == 4
    assert registry.get_sample_value("persona_exporter_events_accepted_total",
                                     {"type": "llm_generation"}) == 1


def test_the_metrics_route_negotiates_and_serves_the_same_bytes() -> None:
    registry = CollectorRegistry()
    recorder = Recorder(registry)
    recorder.emit(LLMGeneration(persona="p", chatmode='c"\\', model="m", provider="openai",
                                input_tokens=1, output_tokens=2, duration_seconds=0.5))
    app = create_app(registry=registry, ingestor=Ingestor(recorder))
    with TestClient(app) as client:
        for accept in ("", "application/openmetrics-text; version=1.0.0",
                       "text/plain; version=1.0.0; escaping=allow-utf-8"):
            response = client.get("/metrics", headers={"Accept": accept})
            encoder, content_type = stock_choose_encoder(accept)
            assert response.status_code == 200
            assert response.headers["content-type"] == content_type
            assert response.content == encoder(registry), accept


# Any text UTF-8 can carry (a lone surrogate cannot be encoded by either writer).
labels = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tuples=st.lists(st.tuples(labels, labels, labels, labels), min_size=0, max_size=8,
                       unique=True),
       seed=st.integers(0, 2**32 - 1), scrape_between=st.booleans())
def test_any_labels_and_numbers_render_as_prometheus_client_renders_them(
        tuples: list[tuple[str, str, str, str]], seed: int, scrape_between: bool) -> None:
    registry, collector = collector_registry()
    # The same calls on a collector never scraped before: its samples cannot come from
    # lines kept by an earlier scrape.
    twin_registry = CollectorRegistry()
    twin = LLMCollector()
    twin_registry.register(twin)
    series = [(collector.add(t), twin.add(t)) for t in tuples]
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    for pair in series:
        for _ in range(rng.randrange(3)):
            record_both(pair, rng, first_chunk=rng.random() < 0.5)
    if scrape_between:
        generate_latest(registry)
        for pair in series[::2]:
            record_both(pair, rng, first_chunk=True)
    assert generate_latest(registry) == stock_text(registry)
    assert generate_openmetrics(registry) == stock_openmetrics(registry)
    llm_part = generate_openmetrics(registry).split(b"# HELP after_seconds ")[0]
    assert llm_part.endswith(stock_openmetrics(twin_registry).removesuffix(b"# EOF\n"))


def record_both(pair: tuple[LLMSeries, LLMSeries], rng: random.Random,
                first_chunk: bool) -> None:
    state = rng.getstate()
    record(pair[0], rng, first_chunk)
    rng.setstate(state)
    record(pair[1], rng, first_chunk)


@pytest.mark.parametrize("escaping", ["underscores", "allow-utf-8", "dots", "values"])
def test_every_escaping_scheme_matches(escaping: str) -> None:
    registry, collector = collector_registry()
    collector.add(("p", "c", "m", "o")).record(1, 2, 3, 4, 0.1, 0.2, 0.3)
    assert generate_latest(registry, escaping) == stock_text(registry, escaping)
    assert generate_openmetrics(registry, escaping) == stock_openmetrics(registry, escaping)


def test_scrapes_during_writes_lose_no_update() -> None:
    # Lines are kept by version, read without the series' lock: a write that lands
    # during a scrape must show in the next one.
    registry, collector = collector_registry()
    series = [collector.add((f"p{i % 7}", f"c{i}", "m", "openai")) for i in range(40)]
    writes = 100_000
    done = threading.Event()

    def write() -> None:
        rng = random.Random(6)  # noqa: S311 - reproducible test data
        for _ in range(writes):
            rng.choice(series).record(1, 2, 0, 0, 0.5, 0.25, 0.125)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    scrapes = 0
    while not done.is_set() or scrapes < 3:
        body = generate_openmetrics(registry)
        assert body.endswith(b"# EOF\n")
        scrapes += 1
    writer.join()
    assert registry.get_sample_value("persona_exporter_events_accepted_total",
                                     {"type": "llm_generation"}) == writes
    text = generate_latest(registry).decode()
    assert text == stock_text(registry).decode()
    requests = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("persona_llm_requests_total{")]
    durations = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("persona_llm_request_duration_seconds_count{")]
    assert sum(requests) == sum(durations) == writes


def test_concurrent_scrapes_while_series_are_added_count_each_series_once() -> None:
    # Several threads collect at once (prometheus_client's start_http_server serves each
    # scrape on its own thread, and get_sample_value collects too). A scrape that took the
    # series list before another scrape added a new series to its histogram must not make
    # a later scrape add that series a second time.
    registry = CollectorRegistry()
    collector = LLMCollector()
    registry.register(collector)
    stop = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as much as the GIL allows

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(registry)

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    try:
        for thread in scrapers:
            thread.start()
        for index in range(600):
            time.sleep(0.0005)
            collector.add(("p", f"c{index}", "m", "openai")).record(1, 1, 0, 0, None, 0.1, None)
    finally:
        stop.set()
        for thread in scrapers:
            thread.join()
        sys.setswitchinterval(switch)
    text = generate_latest(registry)
    assert text == stock_text(registry)
    assert (b'persona_llm_request_duration_seconds_count{model="m",persona="p",'
            b'provider="openai"} 600.0\n') in text
