"""The real ``persona-exporter serve`` under hostile clients: slow and idle connections,
gzip bombs, clients that vanish mid-body, and a big scrape beside full-speed ingest.
Every attack targets 127.0.0.1, is bounded in count and time, and stops by itself."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from persona_exporter.metrics.recorder import Recorder
from persona_exporter.server.http import create_app
from persona_exporter.server.ingest import BatchError, BatchResult, Ingestor

from .test_serve import GEN, Server, http, metric, post, running, wait_until

HEALTHY = """
server:
  max_body_bytes: 20000
"""


def readyz(server: Server) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(http("GET", f"{server.url}/readyz")[2])
    return result


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes ``sock`` within ``timeout`` (without a response)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answer(sock: socket.socket, timeout: float = 0.05) -> bytes:
    """What the server has sent on ``sock`` so far (b"" when nothing)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except (TimeoutError, ConnectionResetError):
        return b""


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        assert hard == resource.RLIM_INFINITY or hard >= needed, f"ulimit -Hn {hard} < {needed}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --- slow clients ---

@contextmanager
def attackers(server: Server, idle: int, trickling: int,
              seconds: float) -> Iterator[dict[str, int]]:
    """``idle`` connections that never send a byte and ``trickling`` ones that send a
    request's headers 1 byte every 4 s, for at most ``seconds``; no reconnecting."""
    host, port = address(server)
    opened = {"idle": 0, "trickling": 0}

    async def idle_one() -> None:
        _, writer = await asyncio.open_connection(host, port)
        opened["idle"] += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            writer.close()

    async def trickle_one() -> None:
        _, writer = await asyncio.open_connection(host, port)
        opened["trickling"] += 1
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(4)
        finally:
            writer.close()

    async def attack() -> None:
        tasks = [asyncio.create_task(idle_one()) for _ in range(idle)]
        tasks += [asyncio.create_task(trickle_one()) for _ in range(trickling)]
        await asyncio.wait(tasks, timeout=seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(attack(),), daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        thread.join(seconds + 10)


def normal_client(server: Server, seconds: float) -> list[tuple[str, int, float]]:
    """A fresh connection every 0.5 s: /healthz, and a one-event batch every 4th time."""
    answers: list[tuple[str, int, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        if len(answers) % 4 == 3:
            answers.append(("post", post(server, [GEN])[0], time.perf_counter() - started))
        else:
            answers.append(("get", http("GET", f"{server.url}/healthz")[0],
                            time.perf_counter() - started))
        time.sleep(0.5)
    return answers


def test_a_thousand_idle_and_trickling_connections_do_not_deny_a_normal_client(
        tmp_path: Path) -> None:
    # uvicorn's limit_concurrency=1000 answered every request 503 under this attack.
    ensure_fd_limit(2 * 1000 + 512)
    with running(tmp_path, HEALTHY) as server, \
            attackers(server, idle=1000, trickling=1000, seconds=22) as opened:
        wait_until(lambda: opened["idle"] + opened["trickling"] >= 1950, timeout=15)
        answers = normal_client(server, seconds=14)
        stats = readyz(server)["connections"]
        accepted = metric(server, "persona_exporter_events_accepted_total")
    print(f"{opened} attackers; normal client: {len(answers)} answers, statuses "
          f"{sorted({status for _, status, _ in answers})}, max "
          f"{max(latency for _, _, latency in answers) * 1e3:.0f} ms; server: {stats}")
    assert [status for _, status, _ in answers] == [200] * len(answers)
    assert len(answers) >= 20
    assert max(latency for _, _, latency in answers) < 2.0
    assert accepted == sum(1 for kind, _, _ in answers if kind == "post")
    # The connections that sent no complete headers within 10 s were closed by the server.
    assert stats["header_timeouts"] >= 1900


def test_the_connection_cap_evicts_the_longest_idle_never_a_request_in_flight(
        tmp_path: Path) -> None:
    config = HEALTHY + "  max_connections: 50\n  header_timeout_seconds: 30\n"
    with running(tmp_path, config) as server:
        host, port = address(server)
        body = json.dumps([GEN]).encode()
        uploading = socket.create_connection((host, port))  # headers in, body half-way
        uploading.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                          + body[:10])
        time.sleep(0.3)
        idle = [socket.create_connection((host, port)) for _ in range(200)]
        try:
            assert http("GET", f"{server.url}/healthz")[0] == 200
            # The oldest idle connections made room; the newest are still open.
            assert closed_by_server(idle[0], 5)
            assert not closed_by_server(idle[-1], 0.2)
            uploading.sendall(body[10:])
            uploading.settimeout(10)
            assert uploading.recv(4096).startswith(b"HTTP/1.1 200 ")
            assert metric(server, "persona_exporter_events_accepted_total") == 1
            assert readyz(server)["connections"]["evicted"] >= 150
        finally:
            for sock in [uploading, *idle]:
                sock.close()


def test_trickled_headers_and_idle_keep_alive_are_cut_at_their_deadlines(
        tmp_path: Path) -> None:
    config = HEALTHY + "  header_timeout_seconds: 1.5\n  keepalive_timeout_seconds: 1\n"
    with running(tmp_path, config) as server:
        host, port = address(server)
        # 1 byte every 0.25 s: each byte is progress, but the deadline does not move.
        trickler = socket.create_connection((host, port))
        started = time.monotonic()
        closed_at = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic() - started
                break
            if closed_by_server(trickler, 0.25):
                closed_at = time.monotonic() - started
                break
        trickler.close()
        assert closed_at is not None and 1.2 < closed_at < 4
        # After a response, a silent keep-alive connection closes after its own timeout.
        kept = socket.create_connection((host, port))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        response = b""
        while not response.endswith(b"\r\n\r\nok\n"):
            response += kept.recv(4096)
        assert response.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert closed_by_server(kept, 5)
        assert 0.7 < time.monotonic() - started < 3
        kept.close()
        assert readyz(server)["connections"]["header_timeouts"] >= 1


# --- work off the event loop ---

BIG = """
limits: {persona: 5000, chatmode: 100, model: 100, series: 10000}
server:
  max_events_per_batch: 1000
"""

PROBE = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
latencies = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/healthz")
    assert connection.getresponse().read() == b"ok\\n"
    connection.close()
    latencies.append(time.perf_counter() - started)
    time.sleep(0.05)
print(json.dumps(latencies))
"""


def fill(server: Server, combinations: int) -> None:
    events = [{**GEN, "persona": f"p{i // 5}", "chatmode": f"c{i % 5}"}
              for i in range(combinations)]
    for start in range(0, len(events), 1000):
        assert post(server, events[start:start + 1000])[0] == 200


def test_healthz_answers_within_100ms_during_a_100k_series_scrape_and_full_speed_ingest(
        tmp_path: Path) -> None:
    with running(tmp_path, BIG) as server:
        fill(server, 8000)
        _, _, exposition = http("GET", f"{server.url}/metrics")
        samples = sum(1 for line in exposition.splitlines() if line and line[:1] != b"#")
        assert samples >= 100_000, samples  # a 100k-series scrape (a family cap may cut it)
        stop = threading.Event()
        scrapes: list[float] = []
        posted: list[int] = []
        batch = json.dumps([{**GEN, "persona": f"p{i % 50}"} for i in range(100)]).encode()

        def scrape() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                assert http("GET", f"{server.url}/metrics")[0] == 200
                scrapes.append(time.perf_counter() - started)

        def ingest() -> None:
            while not stop.is_set():
                status, _, _ = http("POST", f"{server.url}/v1/events", batch,
                                    {"Content-Type": "application/json"})
                posted.append(status)

        load = [threading.Thread(target=scrape), threading.Thread(target=ingest)]
        for thread in load:
            thread.start()
        try:
            time.sleep(0.5)
            probe = subprocess.run([sys.executable, "-c", PROBE, server.url.rsplit(":", 1)[1],
                                    "12"], capture_output=True, text=True, timeout=60,
                                   check=True)
        finally:
            stop.set()
            for thread in load:
                thread.join(60)
        latencies = sorted(json.loads(probe.stdout))
        assert len(scrapes) >= 3 and posted.count(200) == len(posted) >= 20
        p99 = latencies[int(len(latencies) * 0.99)]
        print(f"/healthz p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, p99 "
              f"{p99 * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms over {len(latencies)} "
              f"probes; {samples} samples, {len(scrapes)} scrapes (mean "
              f"{sum(scrapes) / len(scrapes):.2f} s), {len(posted)} batches")
        assert p99 < 0.100, (f"/healthz p99 {p99 * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f}"
                             f" ms over {len(latencies)} probes; scrapes {scrapes}")
        assert metric(server, "persona_exporter_events_accepted_total",
                      type="llm_generation") == 8000 + 100 * len(posted)


def test_a_scrape_sees_every_event_acknowledged_before_it_arrived(tmp_path: Path) -> None:
    # Scrapes that queue behind a render share the next one, never one begun before them.
    with running(tmp_path, BIG) as server:
        fill(server, 500)  # renders take long enough for scrapes to pile up
        acked = [0]
        stop = threading.Event()
        pattern = re.compile(rb'^persona_exporter_events_accepted_total\{type="llm_generation"\}'
                             rb" (\S+)$", re.MULTILINE)
        behind: list[tuple[int, float]] = []
        shared = [0]

        def ingest() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                assert post(server, {"batch_id": f"b{n}", "events": [GEN] * 10})[0] == 200
                acked[0] += 10

        def scrape() -> None:
            while not stop.is_set():
                before = acked[0]
                body = http("GET", f"{server.url}/metrics")[2]
                match = pattern.search(body)
                assert match is not None
                seen = float(match.group(1)) - 500
                shared[0] += 1
                if seen < before:
                    behind.append((before, seen))

        threads = [threading.Thread(target=ingest)] + [
            threading.Thread(target=scrape) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(6)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert behind == [] and shared[0] >= 8 and acked[0] >= 100


def test_a_full_ingest_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    config = BIG + "  max_queued_batches: 1\n"
    with running(tmp_path, config) as server:
        body = json.dumps([{**GEN, "persona": f"p{i % 100}"} for i in range(1000)]).encode()
        answers: list[tuple[int, dict[str, str]]] = []

        def send() -> None:
            for _ in range(3):
                status, headers, _ = http("POST", f"{server.url}/v1/events", body,
                                          {"Content-Type": "application/json"})
                answers.append((status, headers))

        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        busy = [headers for status, headers in answers if status == 503]
        assert {status for status, _ in answers} == {200, 503} and busy
        assert all({k.lower(): v for k, v in headers.items()}.get("retry-after") == "1"
                   for headers in busy)
        applied = sum(1 for status, _ in answers if status == 200)
        assert metric(server, "persona_exporter_events_accepted_total") == 1000 * applied


# --- bodies ---

def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def post_raw(server: Server, body: bytes, **headers: str) -> tuple[int, dict[str, str], Any]:
    status, response_headers, raw = http("POST", f"{server.url}/v1/events", body,
                                         {"Content-Type": "application/json", **headers})
    return status, response_headers, json.loads(raw)


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert match is not None
    return int(match.group(1))


def test_gzip_bodies_are_accepted_and_the_limit_holds_after_decompression(
        tmp_path: Path) -> None:
    with running(tmp_path, HEALTHY) as server:
        batch = json.dumps([GEN, GEN]).encode()
        status, _, result = post_raw(server, gz(batch), **{"Content-Encoding": "gzip"})
        assert (status, result["accepted"]) == (200, 2)
        # two gzip members, one after the other, are one body (as gzip -d reads them)
        ndjson = json.dumps(GEN).encode() + b"\n"
        status, _, result = post_raw(server, gz(ndjson) + gz(ndjson),
                                     **{"Content-Encoding": "x-gzip",
                                        "Content-Type": "application/x-ndjson"})
        assert (status, result["accepted"]) == (200, 2)
        # A bomb: 15 KB on the wire, 15 MB inflated, refused at 20,000 bytes.
        bomb = gz(b" " * 15_000_000)
        assert len(bomb) < 20_000
        before = rss_kib(server.proc.pid)
        for _ in range(5):
            status, headers, result = post_raw(server, bomb, **{"Content-Encoding": "gzip"})
            assert status == 413 and "once decompressed" in result["error"]
            assert "20000" in result["error"]
        assert rss_kib(server.proc.pid) - before < 10_000
        status, headers, result = post_raw(server, batch, **{"Content-Encoding": "br"})
        assert status == 415 and "'br'" in result["error"]
        assert {k.lower(): v for k, v in headers.items()}["accept-encoding"] == "gzip"
        for broken in (b"not gzip at all", gz(batch)[:-12]):
            status, _, result = post_raw(server, broken, **{"Content-Encoding": "gzip"})
            assert status == 400 and "not valid gzip" in result["error"]
        assert metric(server, "persona_exporter_events_accepted_total") == 4
        assert metric(server, "persona_exporter_events_rejected_total",
                      reason="body_too_large") == 5
        assert metric(server, "persona_exporter_events_rejected_total",
                      reason="unsupported_media_type") == 1


def test_a_client_gone_mid_body_is_one_warning_and_nothing_applied(tmp_path: Path) -> None:
    with running(tmp_path, HEALTHY) as server:
        body = json.dumps([GEN] * 5).encode()
        for _ in range(3):
            sock = socket.create_connection(address(server))
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                         + body[: len(body) // 2])
            time.sleep(0.2)
            sock.close()
        assert post(server, [GEN])[0] == 200
        assert metric(server, "persona_exporter_events_accepted_total") == 1
        code, err = server.stop()
    assert code == 0
    assert "Traceback" not in err and "Exception" not in err
    warnings = [line for line in err.splitlines() if "went away" in line]
    assert len(warnings) == 3 and all("nothing applied" in line for line in warnings)


def test_reloads_run_between_batches_during_full_speed_ingest(tmp_path: Path) -> None:
    with running(tmp_path, BIG) as server:
        stop = threading.Event()
        acked = [0]

        def ingest() -> None:
            while not stop.is_set():
                assert post(server, [GEN] * 100)[0] == 200
                acked[0] += 100

        thread = threading.Thread(target=ingest)
        thread.start()
        try:
            for n in range(1, 6):
                time.sleep(0.3)
                server.proc.send_signal(signal.SIGHUP)
                wait_until(lambda n=n: readyz(server)["reloads"] == n)  # type: ignore[misc]
        finally:
            stop.set()
            thread.join(30)
        ready = readyz(server)
        assert ready["last_reload_error"] is None and server.proc.poll() is None
        assert metric(server, "persona_exporter_events_accepted_total") == acked[0] > 0


def test_bodies_still_arriving_are_bounded_in_bytes(tmp_path: Path) -> None:
    # 64 x max_body_bytes (20,000 here) may be held by unfinished bodies; beyond, 503.
    with running(tmp_path, HEALTHY) as server:
        slow = []
        for _ in range(70):
            sock = socket.create_connection(address(server))
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 20000\r\n\r\n"
                         + b" " * 19_000)
            slow.append(sock)
        try:
            time.sleep(1)
            body = json.dumps([GEN] * 50).encode()
            assert 7_000 < len(body) < 20_000
            status, headers, _ = http("POST", f"{server.url}/v1/events", body,
                                      {"Content-Type": "application/json"})
            assert status == 503
            assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
            assert sum(1 for sock in slow if answer(sock).startswith(b"HTTP/1.1 503 ")) >= 3
        finally:
            for sock in slow:
                sock.close()
        wait_until(lambda: post(server, [GEN] * 50)[0] == 200)
        assert metric(server, "persona_exporter_events_accepted_total") == 50


class _StoreSays(Ingestor):
    """An ingestor whose store answers ``status``, as the durable one may (409, 503)."""

    def __init__(self, status: int) -> None:
        super().__init__(Recorder(CollectorRegistry()))
        self.status = status

    def ingest(self, body: bytes, *, ndjson: bool = False,
               batch_id: str | None = None) -> BatchResult:
        raise BatchError(self.status, "malformed_body", f"the store says {self.status}")


@pytest.mark.parametrize(("status", "retry_after"), [(503, "1"), (409, None), (413, None)])
def test_a_batch_error_status_passes_through_with_retry_after_on_503(
        status: int, retry_after: str | None) -> None:
    app = create_app(registry=CollectorRegistry(), ingestor=_StoreSays(status))
    with TestClient(app) as client:
        response = client.post("/v1/events", content=json.dumps([GEN]),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json() == {"error": f"the store says {status}"}
    assert response.headers.get("retry-after") == retry_after


def test_a_small_batch_is_applied_on_the_loop_only_when_nothing_waits_on_the_thread() -> None:
    from persona_exporter.server.workers import Workers

    async def scenario() -> None:
        workers = Workers(inline_bytes=100)
        order: list[str] = []
        release = threading.Event()

        def slow() -> str:
            release.wait(5)
            order.append("slow")
            return threading.current_thread().name

        def small() -> str:
            order.append("small")
            return threading.current_thread().name

        # idle: a small body is applied here, a big one on the ingest thread
        assert await workers.ingest(small, 10) == threading.current_thread().name
        assert (await workers.ingest(small, 101)).startswith("persona-ingest")
        order.clear()
        # a small body behind queued work waits its turn on the thread: order is kept
        big = asyncio.ensure_future(workers.ingest(slow, 1000))
        await asyncio.sleep(0.05)
        behind = asyncio.ensure_future(workers.ingest(small, 10))
        await asyncio.sleep(0.05)
        assert order == []
        release.set()
        await big
        assert (await behind).startswith("persona-ingest")
        assert order == ["slow", "small"]
        # so does one behind a reload
        order.clear()
        release.clear()
        workers.submit(lambda: order.append(str(slow())))
        behind = asyncio.ensure_future(workers.ingest(small, 10))
        await asyncio.sleep(0.05)
        assert order == []
        release.set()
        await behind
        assert order[0] == "slow" and order[-1] == "small"
        workers.close()

    asyncio.run(scenario())
