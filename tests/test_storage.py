"""Durable ingest: what the exporter acknowledged survives kill -9, counted once.

Real processes on 127.0.0.1: ``persona-exporter serve --storage.path DIR`` killed and
restarted on the same port and directory, fed by the SDK's remote sink or raw requests.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from persona_exporter import Telemetry
from persona_exporter.events import LLMGeneration
from persona_exporter.sdk.remote import RemoteSink
from persona_exporter.server.ingest import BatchResult, Rejection, RememberedBatches
from persona_exporter.server.serve import resolve_settings

from .conftest import free_port
from .test_serve import CLI, GEN, Server, http, metric, post, wait_serving, wait_until

CONFIG = """
personas:
  qa-engineer: {tokens: {24h: 500000000}}
server:
  max_events_per_batch: 1000
"""


class Exporter:
    """One exporter's port and state directory, started and killed at will."""

    def __init__(self, tmp_path: Path, config: str = CONFIG) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage = tmp_path / "state"
        self.config = tmp_path / "persona-exporter.yaml"
        self.config.write_text(config)
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[str] = []

    def start(self, *extra: str, storage: bool = True) -> subprocess.Popen[str]:
        args = [*CLI, "serve", "--web.listen-address", f"127.0.0.1:{self.port}",
                "--config.file", str(self.config), *extra]
        if storage:
            args += ["--storage.path", str(self.storage)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        wait_serving(self.proc, self.url)
        return self.proc

    def kill(self, sig: int = signal.SIGKILL) -> str:
        assert self.proc is not None
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        self.logs.append(err)
        return err

    @property
    def server(self) -> Server:
        assert self.proc is not None
        return Server(self.url, self.proc, self.config)

    def requests(self) -> float | None:
        return metric(self.server, "persona_llm_requests_total")


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    e = Exporter(tmp_path)
    yield e
    if e.proc is not None and e.proc.poll() is None:
        e.kill()


def generation(i: int) -> LLMGeneration:
    return LLMGeneration(persona="qa-engineer", chatmode="bug-fix", model="gpt-4o",
                         provider="openai", input_tokens=100 + i % 7, output_tokens=10 + i % 3,
                         duration_seconds=0.01 * (i % 50))


def test_acknowledged_events_survive_three_kill_9s_and_retries_count_once(
        exporter: Exporter, tmp_path: Path) -> None:
    exporter.start()
    sink = RemoteSink(exporter.url, spool_dir=tmp_path / "spool", batch_size=100,
                      queue_size=100_000, flush_interval=0.05, request_timeout=2)
    telemetry = Telemetry(sinks=[sink])
    sent = 20_000
    tokens = 0
    kills = 0

    def killer() -> None:
        nonlocal kills
        for _ in range(3):
            time.sleep(1.5)
            exporter.kill()
            kills += 1
            time.sleep(0.3)
            exporter.start()

    thread = threading.Thread(target=killer)
    thread.start()
    for i in range(sent):
        event = generation(i)
        tokens += event.input_tokens + event.output_tokens
        telemetry.emit(event)
        if i % 100 == 99:
            time.sleep(0.03)  # ~3,000 events/s: the stream outlasts the three kills
    thread.join()
    assert kills == 3
    # What went to the spool during the outages is delivered from there.
    wait_until(lambda: (exporter.requests() or 0) >= sent, timeout=90)
    sink.shutdown(10)
    assert exporter.requests() == sent  # 0 lost, 0 twice
    counted = [metric(exporter.server, "persona_llm_tokens_total", token_type=token_type)
               for token_type in ("input", "output")]
    assert sum(c or 0 for c in counted) == tokens
    exporter.kill(signal.SIGTERM)
    # each restart after a kill said what it recovered
    assert sum("recovered after an unclean stop" in log for log in exporter.logs) == 3


def _raw_post(url: str, body: bytes) -> socket.socket:
    """Send a batch and do not read the answer: the client dies before it hears back."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_a_batch_applied_just_before_the_kill_and_retried_counts_once(
        exporter: Exporter) -> None:
    exporter.start()
    body = json.dumps({"batch_id": "before-the-kill", "events": [GEN] * 5}).encode()
    sock = _raw_post(exporter.url, body)
    wait_until(lambda: exporter.requests() == 5)
    exporter.kill()
    sock.close()
    exporter.start()
    assert exporter.requests() == 5  # applied, so kept: it was committed before the answer
    status, _, raw = http("POST", f"{exporter.url}/v1/events", body,
                          {"Content-Type": "application/json"})
    assert (status, json.loads(raw)["duplicate"]) == (200, True)
    assert exporter.requests() == 5
    # The same id with other events is a client bug, not a retry: refused, named.
    other = json.dumps({"batch_id": "before-the-kill", "events": [GEN] * 6}).encode()
    status, _, raw = http("POST", f"{exporter.url}/v1/events", other,
                          {"Content-Type": "application/json"})
    assert status == 409 and "before-the-kill" in json.loads(raw)["error"]
    assert metric(exporter.server, "persona_exporter_events_rejected_total",
                  reason="batch_id_conflict") == 1
    assert exporter.requests() == 5


def test_a_clean_stop_keeps_everything_and_says_nothing_of_recovery(
        exporter: Exporter) -> None:
    exporter.start()
    for i in range(10):
        assert post(exporter.server, {"batch_id": f"b{i}", "events": [GEN] * 3})[0] == 200
    post(exporter.server, {"batch_id": "bad", "events": [{**GEN, "input_tokens": -1}]})
    before = http("GET", f"{exporter.url}/metrics")[2].decode().splitlines()
    assert exporter.kill(signal.SIGTERM).count("storage:") >= 1
    exporter.start()
    after = http("GET", f"{exporter.url}/metrics")[2].decode().splitlines()
    kept = [line for line in before if line.startswith(("persona_llm", "persona_exporter_events"))]
    assert kept and all(line in after for line in kept)  # no reset, rejections included
    assert json.loads(http("GET", f"{exporter.url}/readyz")[2])["storage"] == str(
        exporter.storage)
    exporter.kill(signal.SIGTERM)
    assert not any("unclean stop" in log for log in exporter.logs)


def test_a_torn_log_tail_is_rolled_back_and_retries_make_the_totals_exact(
        exporter: Exporter) -> None:
    exporter.start()
    batches = [json.dumps({"batch_id": f"t{i}", "events": [GEN] * 10}).encode()
               for i in range(50)]
    for body in batches:
        http("POST", f"{exporter.url}/v1/events", body, {"Content-Type": "application/json"})
    exporter.kill()
    wal = exporter.storage / "state.db-wal"
    size = wal.stat().st_size
    assert size > 8192, "the kill left a write-ahead log to tear"
    os.truncate(wal, size - 3000)  # the machine died mid-write
    exporter.start()
    assert "recovered after an unclean stop" in exporter.kill(signal.SIGTERM)
    exporter.start()
    kept = exporter.requests() or 0
    assert 0 <= kept <= 500 and kept % 10 == 0  # whole batches only
    # The client never heard back for what was torn off; it retries everything.
    answers = [json.loads(http("POST", f"{exporter.url}/v1/events", body,
                               {"Content-Type": "application/json"})[2]) for body in batches]
    assert sum(a["duplicate"] for a in answers) == kept // 10
    assert exporter.requests() == 500


def test_a_damaged_state_file_is_moved_aside_and_the_exporter_starts_from_zero(
        exporter: Exporter) -> None:
    exporter.storage.mkdir()
    (exporter.storage / "state.db").write_bytes(b"this is not a database" * 100)
    exporter.start()
    assert post(exporter.server, [GEN])[0] == 200
    err = exporter.kill(signal.SIGTERM)
    assert "is unreadable" in err and "starting from zero" in err
    moved = [p.name for p in exporter.storage.iterdir() if ".broken-" in p.name]
    assert len(moved) == 1 and moved[0].startswith("state.db.broken-")
    assert (exporter.storage / moved[0]).read_bytes().startswith(b"this is not a database")


def test_a_state_file_of_a_newer_version_is_kept_aside_not_overwritten(
        exporter: Exporter) -> None:
    exporter.start()
    assert post(exporter.server, {"batch_id": "v", "events": [GEN]})[0] == 200
    exporter.kill(signal.SIGTERM)
    db = sqlite3.connect(exporter.storage / "state.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    exporter.start()
    assert exporter.requests() in (None, 0.0)
    err = exporter.kill(signal.SIGTERM)
    assert "written by a newer persona-exporter (format 99 > 1)" in err


def test_a_second_exporter_on_the_same_directory_is_refused(
        exporter: Exporter, tmp_path: Path) -> None:
    exporter.start()
    second = subprocess.run(
        [*CLI, "serve", "--web.listen-address", f"127.0.0.1:{free_port()}",
         "--storage.path", str(exporter.storage)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "another persona-exporter uses this directory" in second.stderr


def test_without_storage_the_exporter_says_once_that_it_keeps_memory_only(
        exporter: Exporter) -> None:
    exporter.start(storage=False)
    assert json.loads(http("GET", f"{exporter.url}/readyz")[2])["storage"] == "memory"
    err = exporter.kill(signal.SIGTERM)
    assert err.count("kept in memory only") == 1


def test_a_failed_commit_answers_503_applies_nothing_and_the_retry_counts_once(
        exporter: Exporter) -> None:
    exporter.start()
    # Python ignores SIGXFSZ, so past the file size limit a write fails with EFBIG: the
    # exporter sees what a full disk looks like.
    pid = exporter.proc.pid if exporter.proc else 0
    limit = (exporter.storage / "state.db-wal").stat().st_size + 20_000
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def batch(i: int) -> dict[str, object]:
        return {"batch_id": f"f{i}", "events": [{**GEN, "persona": f"p{i}"}] * 5}

    statuses = []
    for i in range(200):
        statuses.append(post(exporter.server, batch(i))[0])
        if statuses[-1] == 503:
            break
    assert statuses[-1] == 503, "the size limit was never reached"
    failed = len(statuses) - 1
    # 503 means not applied: no scrape sees what a restart would take back
    assert exporter.requests() == 5 * failed
    status, result = post(exporter.server, batch(failed))
    assert status == 503 and "could not be stored" in result["error"]
    assert exporter.requests() == 5 * failed
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    again = post(exporter.server, batch(failed))
    assert again[0] == 200 and again[1]["accepted"] == 5
    assert post(exporter.server, batch(failed))[1]["duplicate"]
    total = exporter.requests()
    exporter.kill()
    exporter.start()
    assert exporter.requests() == total == 5 * (failed + 1)


def test_requests_refused_whole_are_kept_across_a_restart(exporter: Exporter) -> None:
    exporter.start()
    for _ in range(3):
        assert http("POST", f"{exporter.url}/v1/events", b"{not json",
                    {"Content-Type": "application/json"})[0] == 400
    exporter.kill(signal.SIGTERM)  # no batch came after them: saved at the stop
    exporter.start()
    assert metric(exporter.server, "persona_exporter_events_rejected_total",
                  reason="malformed_body") == 3


def test_disk_use_grows_with_series_not_with_traffic(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, CONFIG + "  remembered_batches: 100\n")
    exporter.start()
    try:
        def size() -> int:
            return sum(p.stat().st_size for p in exporter.storage.iterdir())

        def send(first: int, count: int) -> None:
            for i in range(first, first + count):
                http("POST", f"{exporter.url}/v1/events",
                     json.dumps({"batch_id": f"d{i}", "events": [GEN] * 20}).encode(),
                     {"Content-Type": "application/json"})

        send(0, 600)
        exporter.kill(signal.SIGTERM)  # checkpoints the log into the database
        steady = size()
        exporter.start()
        send(600, 1200)  # twice the traffic again, the same series
        exporter.kill(signal.SIGTERM)
        assert size() <= steady * 1.1, (steady, size())
        db = sqlite3.connect(exporter.storage / "state.db")
        try:
            remembered = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            series = db.execute("SELECT COUNT(*) FROM series").fetchone()[0]
        finally:
            db.close()
        assert remembered <= 110  # the cap, pruned every tenth of it
        assert 0 < series < 20
    finally:
        if exporter.proc is not None and exporter.proc.poll() is None:
            exporter.kill()


def test_remembered_answers_are_bounded_in_bytes_as_well_as_count() -> None:
    # 120 batches of 1 MB with 74,000 unknown keys each once grew the process by 300 MB.
    remembered = RememberedBatches(capacity=100_000, max_bytes=100_000)
    for i in range(1000):
        errors = [Rejection(j, "invalid_event", "unknown key " + "k" * 5000) for j in range(500)]
        remembered.remember(BatchResult(f"b{i}", rejected=errors), b"digest")
    assert 10 < len(remembered) < 40
    assert remembered.get("b0") is None  # the oldest went first
    newest = remembered.get("b999")
    assert newest is not None
    assert newest.result.rejected_count == 500  # the count stays whole
    assert len(newest.result.rejected) == 10
    assert all(len(r.message) == 200 for r in newest.result.rejected)


def test_the_storage_path_comes_from_the_flag_then_the_environment_then_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_EXPORTER_STORAGE_PATH", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("server: {storage_path: /from/config, storage_fsync: true}\n")
    assert resolve_settings(None, config).storage_path == Path("/from/config")
    assert resolve_settings(None, config).storage_fsync is True
    monkeypatch.setenv("PERSONA_EXPORTER_STORAGE_PATH", "/from/env")
    assert resolve_settings(None, config).storage_path == Path("/from/env")
    flagged = resolve_settings(None, config, storage_path=Path("/from/flag"),
                               storage_fsync=False)
    assert (flagged.storage_path, flagged.storage_fsync) == (Path("/from/flag"), False)
    monkeypatch.delenv("PERSONA_EXPORTER_STORAGE_PATH")
    assert resolve_settings(None, None).storage_path is None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_huge_bad_batches_under_new_ids_do_not_grow_the_process(exporter: Exporter) -> None:
    # 120 one-megabyte batches, each one event with 74,000 unknown keys, once grew the
    # process by 300 MB: every 1.8 MB error was remembered with its batch id.
    exporter.start()
    event = {**GEN, **{f"k{i:05d}": 1 for i in range(74_000)}}
    assert exporter.proc is not None

    def send(i: int) -> None:
        body = json.dumps({"batch_id": f"huge-{i}", "events": [event]}).encode()
        assert 900_000 < len(body) <= 1_048_576  # just under the default body limit
        status, _, raw = http("POST", f"{exporter.url}/v1/events", body,
                              {"Content-Type": "application/json"})
        assert status == 422 and len(raw) < 1000, (status, len(raw))

    for i in range(10):  # the allocator's and the parser's own working set first
        send(i)
    before = rss_bytes(exporter.proc.pid)
    for i in range(10, 130):
        send(i)
    grown = rss_bytes(exporter.proc.pid) - before
    assert grown < 40_000_000, f"the process grew by {grown:,} bytes"


def test_a_state_file_that_cannot_be_opened_now_is_left_alone_and_the_start_refused(
        exporter: Exporter) -> None:
    # not damaged, just unusable at the moment (here: a directory in its place); moving it
    # aside would throw away a good state for a passing I/O error
    (exporter.storage / "state.db").mkdir(parents=True)
    result = subprocess.run(
        [*CLI, "serve", "--web.listen-address", f"127.0.0.1:{exporter.port}",
         "--storage.path", str(exporter.storage)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot open" in result.stderr and "left as it is" in result.stderr
    assert sorted(p.name for p in exporter.storage.iterdir()) == ["lock", "state.db"]
