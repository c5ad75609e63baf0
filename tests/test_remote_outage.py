"""The remote sink through exporter outages: a circuit breaker spools at once, the spool is
drained in order, nothing is lost or counted twice, and what is lost anyway is reported to
the exporter. Real ``persona-exporter serve`` processes on 127.0.0.1, killed and restarted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import Telemetry
from persona_exporter.catalog import REMOTE_DROP_REASONS
from persona_exporter.events import LLMGeneration
from persona_exporter.sdk.remote import RemoteSink

from .conftest import free_port, sample
from .otlp_receiver import Receiver, refused_url
from .test_remote import send
from .test_serve import CLI, Server, metric, post, running, wait_serving, wait_until

LLM = {"persona": "qa-engineer", "chatmode": "none", "model": "gpt-4o", "provider": "openai"}


def generation(n: int) -> LLMGeneration:
    # Token counts vary, so a batch counted twice or lost shows in the sum too.
    return LLMGeneration(persona="qa-engineer", chatmode="none", model="gpt-4o",
                         provider="openai", input_tokens=1 + n % 50, output_tokens=1,
                         duration_seconds=0.1)


def tokens_of(first: int, last: int) -> int:
    return sum(1 + n % 50 for n in range(first, last))


@contextmanager
def exporter_on(directory: Path, port: int) -> Iterator[Server]:
    """``persona-exporter serve`` on a given port (a restart must come back on the same
    one), stopped at the end unless the test killed it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "persona-exporter.yaml"
    config.write_text("")
    proc = subprocess.Popen([*CLI, "serve", "--web.listen-address", f"127.0.0.1:{port}",
                             "--config.file", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Server(f"http://127.0.0.1:{port}", proc, config)
    wait_serving(proc, server.url)
    try:
        yield server
    finally:
        if proc.poll() is None:
            server.stop()
        else:
            proc.communicate()


class Generator(threading.Thread):
    """Emits generations at a steady rate until stopped; can pause between two events."""

    def __init__(self, remote: RemoteSink, rate: float = 1000.0) -> None:
        super().__init__(daemon=True)
        self.remote = remote
        self.rate = rate
        self.emitted = 0
        self.worst = 0.0  # the longest emit() took, in seconds
        self._go = threading.Event()
        self._go.set()
        self._paused = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        started, base = time.monotonic(), 0
        while not self._halt.is_set():
            if not self._go.is_set():
                self._paused.set()
                self._go.wait()
                started, base = time.monotonic(), self.emitted
                continue
            due = base + int((time.monotonic() - started) * self.rate)
            while self.emitted < due:
                event = generation(self.emitted)
                began = time.perf_counter()
                self.remote.emit(event)
                self.worst = max(self.worst, time.perf_counter() - began)
                self.emitted += 1
            time.sleep(0.005)

    def pause(self) -> int:
        self._paused.clear()
        self._go.clear()
        assert self._paused.wait(5)
        return self.emitted

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> int:
        self._halt.set()
        self._go.set()
        self.join(5)
        return self.emitted


def dropped(registry: CollectorRegistry) -> dict[str, float]:
    counts = {reason: sample(registry, "persona_exporter_remote_events_dropped_total",
                             reason=reason) or 0.0 for reason in REMOTE_DROP_REASONS}
    return {reason: count for reason, count in counts.items() if count}


def spooled_files(spool: Path, pattern: str = "*.json") -> list[Path]:
    return sorted(spool.glob(pattern))


def spooled_batches(spool: Path) -> list[Path]:
    """The spool's batches, including one a probe has claimed this instant."""
    return sorted(spool.glob("*.json*"))


def batch_id_of(path: Path) -> str:
    return path.name.split("-")[1].split(".")[0]


def test_a_60_second_outage_at_1000_events_per_second_loses_nothing(tmp_path: Path) -> None:
    """The exporter is killed (SIGKILL) while events flow at 1,000/s, stays down 60 s and
    comes back on the same port. The exporter keeps its counters in memory, so the check is
    per process: the first one counted exactly what was sent before the kill (the stream
    pauses for the moment of the kill), the restarted one exactly what was sent after it -
    60,000+ events through the spool - none missing, none twice."""
    port = free_port()
    spool = tmp_path / "spool"
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    remote = RemoteSink(f"http://127.0.0.1:{port}", recorder=base.recorder, spool_dir=spool,
                        shutdown_timeout=10, probe_interval_max=2.0)
    generator = Generator(remote)
    with exporter_on(tmp_path / "first", port) as first:
        generator.start()
        time.sleep(2)
        before = generator.pause()
        assert remote.flush(10)
        assert metric(first, "persona_llm_requests_total", **LLM) == before
        assert metric(first, "persona_llm_tokens_total", token_type="input") == tokens_of(
            0, before)
        first.proc.kill()  # SIGKILL
        first.proc.wait(10)
        generator.resume()
        time.sleep(60)
    # During the outage every batch went to the spool and none was dropped.
    assert len(spooled_files(spool)) >= 500
    assert dropped(registry) == {}
    sent_before_restart = sample(registry, "persona_exporter_remote_batches_total",
                                 outcome="sent")
    with exporter_on(tmp_path / "second", port) as second:
        wait_until(lambda: not spooled_files(spool), timeout=60)  # drained under traffic
        time.sleep(1)  # then straight to the exporter again (checked below: "sent" grows)
        total = generator.stop()
        remote.flush(10)
        wait_until(lambda: not spooled_files(spool), timeout=10)
        assert remote.flush(10)
        assert metric(second, "persona_llm_requests_total", **LLM) == total - before
        assert metric(second, "persona_llm_tokens_total", token_type="input") == tokens_of(
            before, total)
        assert metric(second, "persona_exporter_remote_events_dropped_total") is None
        remote.shutdown()
    assert total - before >= 60_000
    assert dropped(registry) == {}
    spooled = sample(registry, "persona_exporter_remote_batches_total", outcome="spooled")
    assert sample(registry, "persona_exporter_remote_batches_total",
                  outcome="delivered_from_spool") == spooled
    assert (sample(registry, "persona_exporter_remote_batches_total", outcome="sent") or 0) > (
        sent_before_restart or 0)
    assert not list(spool.iterdir())  # no claim, no temporary file, no corrupt file left
    assert generator.worst < 0.25  # emit() never waited for the exporter or the disk


class Gate:
    """An HTTP endpoint on 127.0.0.1 that answers every POST with ``status`` and records
    each request's status and body. With ``old=True`` it refuses a batch with a drop report
    as an exporter from before them does."""

    def __init__(self, status: int, *, old: bool = False) -> None:
        self.status = status
        self.old = old
        self.requests: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with gate._lock:
                    status = gate.status
                    reply = b'{"accepted": 0}'
                    if status == 200 and gate.old and b'"dropped"' in body:
                        status, reply = 400, (b'{"error": "unknown batch field(s) '
                                              b'[\'dropped\']; expected batch_id, events"}')
                    gate.requests.append((status, body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answered(self, status: int) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(body) for code, body in self.requests if code == status]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_the_circuit_opens_once_probes_and_drains_the_spool_in_order(tmp_path: Path) -> None:
    """30 batches meet a 503: the sink tries a few probes, not 30 batches times retries; all
    of them are spooled; when the endpoint recovers it gets them oldest first, each once,
    with the same bytes as the first try, and then the sink sends directly again."""
    spool = tmp_path / "spool"
    gate = Gate(503)
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    remote = RemoteSink(gate.url, recorder=base.recorder, spool_dir=spool,
                        flush_interval=0.05, probe_interval_max=1.0)
    try:
        for n in range(3000):
            remote.emit(generation(n))
        assert remote.flush(5) is False  # spooled, not delivered
        time.sleep(1.5)
        assert 1 <= len(gate.requests) <= 8  # the first batch (and a retry), then probes
        assert sum(len(json.loads(p.read_bytes())["events"])
                   for p in spooled_batches(spool)) == 3000
        order = [batch_id_of(p) for p in spooled_batches(spool)]
        refused = {json.loads(body)["batch_id"]: body for _, body in gate.requests}

        gate.status = 200
        wait_until(lambda: not spooled_files(spool), timeout=15)
        delivered = gate.answered(200)
        assert [b["batch_id"] for b in delivered] == order  # oldest first, each once
        assert sum(len(b["events"]) for b in delivered) == 3000
        assert [n["input_tokens"] for b in delivered for n in b["events"]] == [
            1 + n % 50 for n in range(3000)]  # events in the order emitted
        with gate._lock:
            again = {json.loads(body)["batch_id"]: body for code, body in gate.requests
                     if code == 200}
        assert all(again[batch_id] == body for batch_id, body in refused.items())

        for n in range(100):  # the circuit is closed: straight to the endpoint
            remote.emit(generation(n))
        assert remote.flush(5) is True
        assert not spooled_files(spool)
    finally:
        remote.shutdown(2)
        gate.close()
    assert dropped(registry) == {}


def test_an_exporter_from_before_drop_reports_still_gets_every_event() -> None:
    """An older exporter answers 400 to the "dropped" field: the events go again without
    it (not one is lost to the report), and no later batch carries one."""
    gate = Gate(503, old=True)
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    remote = RemoteSink(gate.url, recorder=base.recorder, queue_size=200, retries=0,
                        flush_interval=0.05, probe_interval_max=0.5)
    try:
        for n in range(1000):
            remote.emit(generation(n))
        wait_until(lambda: dropped(registry).get("queue_full", 0) >= 600)
        lost = dropped(registry)["queue_full"]
        gate.status = 200
        wait_until(lambda: sum(len(b["events"]) for b in gate.answered(200)) == 1000 - lost)
        for n in range(100):
            remote.emit(generation(n))
        assert remote.flush(5)
        assert sum(len(b["events"]) for b in gate.answered(200)) == 1100 - lost
        assert len(gate.answered(400)) == 1  # the first report, once
        assert not any("dropped" in b for b in gate.answered(200))
    finally:
        remote.shutdown(2)
        gate.close()
    assert dropped(registry) == {"queue_full": lost}


@pytest.mark.parametrize(("spooling", "reason"), [(False, "queue_full"), (True, "spool_full")])
def test_events_lost_in_an_outage_are_reported_to_the_exporter(tmp_path: Path, spooling: bool,
                                                               reason: str) -> None:
    """Without a spool the queue overflows; with a small spool the spool fills. Either way
    the exporter, once back, counts exactly the events it got plus the ones reported lost."""
    port = free_port()
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    # Room in the spool for about four batches of 100 events (some 21 KB each).
    remote = RemoteSink(f"http://127.0.0.1:{port}", recorder=base.recorder, queue_size=300,
                        spool_dir=tmp_path / "spool" if spooling else None, retries=0,
                        spool_max_bytes=100_000, flush_interval=0.05, probe_interval_max=0.5)
    try:
        for start in range(0, 2000, 100):
            for n in range(start, start + 100):
                remote.emit(generation(n))
            if spooling:  # a steady stream: the spool, not the queue, is what fills
                remote.flush(5)
        wait_until(lambda: sum(dropped(registry).values()) >= 1000)
        with exporter_on(tmp_path / "exporter", port) as server:
            lost = dropped(registry)
            assert set(lost) == {reason}
            wait_until(lambda: (metric(server, "persona_llm_requests_total", **LLM) or 0)
                       + (metric(server, "persona_exporter_remote_events_dropped_total") or 0)
                       == 2000, timeout=15)
            assert metric(server, "persona_exporter_remote_events_dropped_total",
                          reason=reason) == lost[reason]
            assert metric(server, "persona_llm_requests_total", **LLM) == 2000 - lost[reason]
    finally:
        remote.shutdown(2)


@pytest.mark.parametrize("case", ["a file", "under a file", "not writable"])
def test_an_unusable_spool_directory_means_no_spool_and_one_warning(
        tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    spool = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "spool",
             # Root writes through any mode bits, so this is a directory no one can write to.
             "not writable": Path("/proc/self")}[case]
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    with caplog.at_level(logging.WARNING, logger="persona_exporter"):
        remote = RemoteSink(refused_url(), recorder=base.recorder, spool_dir=spool, retries=0,
                            queue_size=100, flush_interval=0.01)
        for n in range(300):
            remote.emit(generation(n))
        remote.shutdown(2)
    warnings = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("remote sink: the spool directory")]
    assert len(warnings) == 1 and str(spool) in warnings[0]
    assert sum(sample(registry, "persona_exporter_internal_errors_total",
                      component="remote.spool", kind=kind) or 0
               for kind in ("FileExistsError", "NotADirectoryError", "FileNotFoundError",
                            "PermissionError", "OSError")) == 1
    assert dropped(registry) == {"spool_unusable": 300}  # what a spool would have kept
    assert (tmp_path / "file").read_text() == ""


def test_stale_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    stale, fresh = spool / "00000000000000000001-a.tmp", spool / "00000000000000000002-b.tmp"
    stale.write_text('{"batch_id": "a", "ev')
    fresh.write_text('{"batch_id": "b", "ev')  # maybe another live process's write
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    remote = RemoteSink(refused_url(), spool_dir=spool, flush_interval=10)
    remote.shutdown(1)
    assert not stale.exists()
    assert fresh.exists()


FULL_DISK = """
import json, resource, sys
from prometheus_client import CollectorRegistry
from persona_exporter import Telemetry
from persona_exporter.events import LLMGeneration
from persona_exporter.sdk.remote import RemoteSink

# Every file this process writes stops at 4 KiB: a batch of 100 events (about 20 KiB) fails
# half-written, as on a full disk (EFBIG here, ENOSPC there: the same OSError path).
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
registry = CollectorRegistry()
remote = RemoteSink(sys.argv[1], recorder=Telemetry(registry=registry).recorder,
                    spool_dir=sys.argv[2], retries=0)
for n in range(500):
    remote.emit(LLMGeneration(persona="qa-engineer", model="gpt-4o", provider="openai",
                              input_tokens=1, duration_seconds=0.1))
remote.shutdown(5)
print(json.dumps(registry.get_sample_value("persona_exporter_remote_events_dropped_total",
                                           {"reason": "spool_failed"})))
"""


def test_a_full_disk_leaves_no_temporary_file_and_the_loss_is_reported(tmp_path: Path) -> None:
    """RLIMIT_FSIZE in a child process makes every spool write fail midway, as a full disk
    does, without root tricks (it binds root too; Python ignores SIGXFSZ, so the write
    fails with EFBIG). The batches are lost - counted, no *.tmp left - and the small
    report of the loss is spooled, for a later process to deliver to the exporter."""
    spool = tmp_path / "spool"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK), refused_url(),
                             str(spool)], capture_output=True, text=True, timeout=60,
                            check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 500
    assert result.stderr.count("cannot write to the spool") == 1  # logged once
    assert not spooled_files(spool, "*.tmp")
    reports = [json.loads(p.read_bytes()) for p in spooled_files(spool)]
    assert reports and all(r["events"] == [] for r in reports)
    assert sum(r["dropped"]["spool_failed"] for r in reports) == 500
    with running(tmp_path, config="") as server:
        assert send(server.url, spool, 0).returncode == 0  # a later process delivers it
        assert metric(server, "persona_exporter_remote_events_dropped_total",
                      reason="spool_failed") == 500


def test_the_exporter_validates_and_counts_a_drop_report_once(tmp_path: Path) -> None:
    event = {"type": "llm_generation", **LLM, "duration_seconds": 0.1}
    with running(tmp_path, config="") as server:
        for report, field in [([1], "'dropped' must be an object"),
                              ({"lost": 1}, "'dropped': unknown reason 'lost'"),
                              ({"queue_full": -1}, "'dropped.queue_full'"),
                              ({"queue_full": 1.5}, "'dropped.queue_full'"),
                              ({"queue_full": True}, "'dropped.queue_full'"),
                              ({"queue_full": 10**12}, "'dropped.queue_full'")]:
            status, answer = post(server, {"batch_id": "bad", "events": [event],
                                           "dropped": report})
            assert status == 400 and field in answer["error"], (report, answer)
        assert metric(server, "persona_llm_requests_total", **LLM) is None  # nothing applied
        batch = {"batch_id": "b1", "events": [event], "dropped": {"queue_full": 7,
                                                                    "spool_full": 0}}
        for _ in range(2):  # a retry of the same batch counts nothing again
            assert post(server, batch)[0] == 200
        assert post(server, {"batch_id": "b2", "events": [], "dropped": {"refused": 3}}) == (
            200, {"batch_id": "b2", "accepted": 0, "rejected": 0, "duplicate": False,
                  "errors": []})
        assert metric(server, "persona_exporter_remote_events_dropped_total",
                      reason="queue_full") == 7
        assert metric(server, "persona_exporter_remote_events_dropped_total",
                      reason="spool_full") == 0
        assert metric(server, "persona_exporter_remote_events_dropped_total",
                      reason="refused") == 3
        assert metric(server, "persona_llm_requests_total", **LLM) == 1


def test_exit_during_an_outage_spools_at_once(tmp_path: Path) -> None:
    """Once the circuit is open, shutting down tries nothing more: the queue goes to the
    spool at once, not after one more timeout per batch."""
    spool = tmp_path / "spool"
    with Receiver(hang=True) as hanging:
        remote = RemoteSink(hanging.url, spool_dir=spool, flush_interval=0.05,
                            request_timeout=0.5, shutdown_timeout=5)
        remote.emit(generation(0))
        wait_until(lambda: spooled_files(spool))  # the first batch timed out
        for n in range(1, 1000):
            remote.emit(generation(n))
        started = time.monotonic()
        remote.shutdown()
        took = time.monotonic() - started
    assert took < 0.4
    assert sum(len(json.loads(p.read_bytes())["events"]) for p in spooled_files(spool)) == 1000


def test_every_drop_reason_the_sink_can_report_is_one_the_exporter_takes() -> None:
    from persona_exporter.sdk import remote

    assert set(remote._DROP_CAUSES) == set(REMOTE_DROP_REASONS)
