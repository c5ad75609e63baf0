"""Exporter ingest throughput, and /metrics rendering against generate_latest.

    python benchmarks/bench_ingest.py

1. Starts ``persona-exporter serve`` (one process: one core for the server) and posts
   batches of 100 events from a client process over keep-alive connections. Reports
   events/s, memory only and with ``--storage.path`` (durable state; the ratio of the two
   is measured in the same run), then with the OTLP bridge on (to a local OTLP receiver).
2. The durable state's size on disk per 10,000 series.
3. Builds a registry with about 10,000 series and times the exporter's /metrics body
   against prometheus_client's generate_latest on the same content.

Bars: at least 50,000 events/s with batches of 100, bridge off, memory only (issue 4) and
with --storage.path (issue 11).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BAR = 50_000
BATCH = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def batch_body(index: int) -> bytes:
    events = [{"type": "llm_generation", "persona": f"persona-{i % 8}", "chatmode": "bug-fix",
               "model": ("gpt-4o", "claude-sonnet-4")[i % 2], "provider": "openai",
               "input_tokens": 100 + i, "output_tokens": 20, "duration_seconds": 0.25}
              for i in range(BATCH)]
    return json.dumps({"batch_id": f"b-{index}", "events": events}).encode()


def client(port: int, seconds: float, results: multiprocessing.Queue[int]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = 0
    index = os.getpid() * 1_000_000
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        index += 1
        connection.request("POST", "/v1/events", body=batch_body(index),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            sent += BATCH
    results.put(sent)


def start(port: int, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "persona_exporter", "--log.level",
                             "warning", "serve", "--web.listen-address", f"127.0.0.1:{port}",
                             *args], env={**os.environ, **env})
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return proc


def measure(env: dict[str, str], seconds: float, clients: int, *args: str) -> float:
    port = free_port()
    proc = start(port, env, *args)
    try:
        results: multiprocessing.Queue[int] = multiprocessing.Queue()
        started = time.monotonic()
        workers = [multiprocessing.Process(target=client, args=(port, seconds, results))
                   for _ in range(clients)]
        for worker in workers:
            worker.start()
        total = sum(results.get() for _ in workers)
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.join()
        return total / elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def state_size_per_10k_series() -> int:
    """Bytes on disk of the durable state holding 10,000 LLM-call series (and their
    remembered batch ids), after a clean stop."""
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_text("limits: {persona: 100, chatmode: 10, model: 10, series: 10000}\n")
        port = free_port()
        proc = start(port, {}, "--config.file", str(config), "--storage.path",
                     f"{directory}/state")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for batch in range(100):
                events = [{"type": "llm_generation", "persona": f"persona-{batch}",
                           "chatmode": f"chatmode-{i // 10}", "model": f"model-{i % 10}",
                           "provider": "openai", "input_tokens": 100, "output_tokens": 20,
                           "duration_seconds": 0.25} for i in range(100)]
                connection.request("POST", "/v1/events", headers={
                    "Content-Type": "application/json"}, body=json.dumps(
                    {"batch_id": f"s-{batch}", "events": events}).encode())
                response = connection.getresponse()
                response.read()
                assert response.status == 200, response.status
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        return sum(p.stat().st_size for p in Path(directory, "state").iterdir())


def render_comparison() -> tuple[float, float, int]:
    from prometheus_client import CollectorRegistry, generate_latest

    from persona_exporter import Recorder, parse_config
    from persona_exporter.events import LLMGeneration

    registry = CollectorRegistry()
    # 800 LLM-call series: over the default series cap of 500, so raised.
    recorder = Recorder(registry, config=parse_config("limits: {series: 1000}"))
    for p in range(40):
        for m in range(4):
            for c in range(5):
                recorder.emit(LLMGeneration(persona=f"p{p}", chatmode=f"c{c}", model=f"m{m}",
                                            provider="openai", input_tokens=5, output_tokens=5,
                                            duration_seconds=0.3, time_to_first_chunk_seconds=0.1))
    series = sum(len(f.samples) for f in registry.collect())
    runs = 5
    started = time.perf_counter()
    for _ in range(runs):
        body = generate_latest(registry)
    ours = (time.perf_counter() - started) / runs
    # The same content through prometheus_client's own instruments, for comparison.
    from prometheus_client import Counter, Histogram

    plain = CollectorRegistry()
    requests = Counter("r_total", "r", ["persona", "chatmode", "model"], registry=plain)
    tokens = Counter("t_total", "t", ["persona", "chatmode", "model", "type"], registry=plain)
    cost = Counter("c_total", "c", ["persona", "chatmode", "model"], registry=plain)
    duration = Histogram("d_seconds", "d", ["persona", "model"], registry=plain,
                         buckets=[0.01 * 2**i for i in range(14)])
    first_chunk = Histogram("f_seconds", "f", ["persona", "model"], registry=plain,
                            buckets=[0.01 * 2**i for i in range(14)])
    for p in range(40):
        for m in range(4):
            for c in range(5):
                requests.labels(f"p{p}", f"c{c}", f"m{m}").inc()
                cost.labels(f"p{p}", f"c{c}", f"m{m}").inc()
                for t in ("input", "output", "cache_read", "reasoning"):
                    tokens.labels(f"p{p}", f"c{c}", f"m{m}", t).inc(5)
                duration.labels(f"p{p}", f"m{m}").observe(0.3)
                first_chunk.labels(f"p{p}", f"m{m}").observe(0.1)
    started = time.perf_counter()
    for _ in range(runs):
        generate_latest(plain)
    theirs = (time.perf_counter() - started) / runs
    assert body
    return ours, theirs, series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    off = measure({}, args.seconds, args.clients)
    print(f"ingest, bridge off: {off:,.0f} events/s ({args.clients} clients, batches of {BATCH})")
    with tempfile.TemporaryDirectory() as state:
        durable = measure({}, args.seconds, args.clients, "--storage.path", state)
    print(f"ingest, --storage.path: {durable:,.0f} events/s ({durable / off:.2f}x memory only)")
    size = state_size_per_10k_series()
    print(f"durable state: {size / 1e6:.1f} MB on disk per 10,000 series")
    from tests.otlp_receiver import Receiver

    with Receiver() as receiver:
        on = measure({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}, args.seconds, args.clients)
    print(f"ingest, OTLP bridge on: {on:,.0f} events/s (metrics bridge; events carry no "
          "trace ids, so no spans)")
    ours, theirs, series = render_comparison()
    print(f"/metrics with {series:,} series: {ours * 1000:.1f} ms "
          f"(prometheus_client instruments, similar content: {theirs * 1000:.1f} ms)")
    ok = off >= BAR
    print(f"bar {BAR:,} events/s: {'PASS' if ok else 'FAIL'}")
    durable_ok = durable >= BAR
    print(f"bar {BAR:,} events/s with --storage.path: {'PASS' if durable_ok else 'FAIL'}")
    return 0 if ok and durable_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
