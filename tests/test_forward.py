"""Forwarding of received OTLP requests (server/forward.py) to real HTTP upstreams on
127.0.0.1: what arrives, what is retried, spooled, dropped, and that a refusing or hanging
upstream never holds up ``submit`` or ``close``."""

from __future__ import annotations

import base64
import email.utils
import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.datastructures import Headers

from persona_exporter.config import ConfigError, OtlpUpstream
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.server.forward import (
    Forwarder,
    check_upstreams,
    resolve_endpoint,
    spool_root,
)

from .conftest import free_port

SPANS = "persona_exporter_otlp_forward_spans_total"
QUEUE = "persona_exporter_otlp_forward_queue_bytes"


@dataclass
class Arrived:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Upstream:
    """A tiny OTLP/HTTP upstream. ``answers``: statuses (with headers) for the next
    requests, then 200; ``hang``: accept and never answer."""

    port: int
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    hang: bool = False
    # Close each connection after answering, without saying so (an idle keep-alive timeout).
    close_quietly: bool = False
    arrived: list[Arrived] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> Upstream:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer waits for a delayed ACK

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                upstream.arrived.append(Arrived(self.path, {k.lower(): v for k, v in
                                                            self.headers.items()},
                                                body, time.monotonic()))
                if upstream.hang:
                    upstream.released.wait(60)
                    return
                status, headers = upstream.answers.pop(0) if upstream.answers else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                self.close_connection = upstream.close_quietly

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def make(port: int | None = None, **kwargs: Any) -> Upstream:
        upstream = Upstream(port or free_port(), **kwargs).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(CollectorRegistry())


def upstream_config(url: str, name: str = "up", **kwargs: Any) -> OtlpUpstream:
    # Short backoffs so that retries happen within a test's seconds.
    settings: dict[str, Any] = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2}
    settings.update(kwargs)
    return OtlpUpstream(name=name, endpoint=url, **settings)


def count(recorder: Recorder, outcome: str, upstream: str = "up") -> float:
    value = recorder.registry.get_sample_value(SPANS, {"upstream": upstream,
                                                       "outcome": outcome})
    return value or 0.0


def queued(recorder: Recorder, upstream: str = "up") -> float:
    return recorder.registry.get_sample_value(QUEUE, {"upstream": upstream}) or 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {condition.__doc__ or condition}")
        time.sleep(0.01)


def body(n: int, size: int = 200) -> bytes:
    """A gzip body that tells requests apart (never decoded on the way: bytes are bytes)."""
    return gzip.compress(f"request {n:04d} ".encode() + os.urandom(size))


CLIENT_HEADERS = {
    "content-type": "application/x-protobuf",
    "content-encoding": "gzip",
    "x-langfuse-ingestion-version": "4",
    "x-langfuse-sdk-name": "python",
    "x-langfuse-sdk-version": "5.0.4",
    "x-langfuse-public-key": "pk-lf-client",
    "authorization": "Basic Y2xpZW50OmNyZWRz",
    "cookie": "session=1",
    "x-request-id": "abc",
}


def test_each_upstream_gets_the_body_unchanged_with_its_own_credentials(
        upstreams: Callable[..., Upstream], recorder: Recorder, tmp_path: Path) -> None:
    """Langfuse's OTLP path takes the body with its Content-Type/Encoding as sent, and
    x-langfuse-* select its write path (Langfuse web/src/pages/api/public/otel/v1/traces/
    index.ts); its auth is Basic base64(public:secret) (LiteLLM
    litellm/integrations/langfuse/langfuse_otel.py). The client's own Authorization goes
    only to a passthrough upstream."""
    langfuse, passthrough, collector = upstreams(), upstreams(), upstreams()
    token_file = tmp_path / "token"
    token_file.write_text("collector-token\n")
    forwarder = Forwarder.from_config([
        upstream_config(langfuse.url, "langfuse", kind="langfuse"),
        upstream_config(passthrough.url, "passthrough", kind="langfuse", auth="passthrough"),
        upstream_config(collector.url, "collector", bearer_token_file=str(token_file),
                        headers_env={"X-Scope-OrgID": "TENANT"}),
    ], recorder=recorder, spool_dir=None,
        environ={"LANGFUSE_PUBLIC_KEY": "pk-lf-1", "LANGFUSE_SECRET_KEY": "sk-lf-1",
                 "TENANT": "team-a"})
    forwarder.start()
    sent = body(1)
    # What the receiver passes: Starlette's request headers, as the client spelled them.
    client = Headers(raw=[(k.title().encode(), v.encode()) for k, v in CLIENT_HEADERS.items()])
    forwarder.submit(sent, client, spans=7)
    for name in ("langfuse", "passthrough", "collector"):
        wait_until(lambda n=name: count(recorder, "forwarded", n) == 7)  # type: ignore[misc]
    forwarder.close(2)

    for upstream in (langfuse, passthrough, collector):
        [arrived] = upstream.arrived
        assert arrived.body == sent
        assert arrived.path == "/v1/traces"
        for name in ("content-type", "content-encoding", "x-langfuse-ingestion-version",
                     "x-langfuse-sdk-name", "x-langfuse-sdk-version"):
            assert arrived.headers[name] == CLIENT_HEADERS[name]
        assert "cookie" not in arrived.headers
        assert "x-request-id" not in arrived.headers
    basic = base64.b64encode(b"pk-lf-1:sk-lf-1").decode()
    assert langfuse.arrived[0].headers["authorization"] == f"Basic {basic}"
    assert passthrough.arrived[0].headers["authorization"] == CLIENT_HEADERS["authorization"]
    assert collector.arrived[0].headers["authorization"] == "Bearer collector-token"
    assert collector.arrived[0].headers["x-scope-orgid"] == "team-a"
    for name in ("langfuse", "passthrough", "collector"):
        assert count(recorder, "retried", name) == 0
        assert queued(recorder, name) == 0


def test_a_langfuse_upstream_without_endpoint_uses_the_exporters_langfuse_host(
        upstreams: Callable[..., Upstream], recorder: Recorder) -> None:
    """The same variables as the exporter's own Langfuse tracing (tracing/backends.py):
    LANGFUSE_BASE_URL, else LANGFUSE_HOST, else Langfuse Cloud."""
    upstream = upstreams()
    config = OtlpUpstream(name="langfuse", kind="langfuse")
    keys = {"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk"}
    forwarder = Forwarder.from_config(
        [config], recorder=recorder, spool_dir=None,
        environ={**keys, "LANGFUSE_HOST": f"http://127.0.0.1:{upstream.port}/"})
    forwarder.start()
    forwarder.submit(body(1), CLIENT_HEADERS, spans=1)
    wait_until(lambda: count(recorder, "forwarded", "langfuse") == 1)
    forwarder.close(2)
    assert upstream.arrived[0].path == "/api/public/otel/v1/traces"
    assert resolve_endpoint(config, {"LANGFUSE_BASE_URL": "http://a:1",
                                     "LANGFUSE_HOST": "http://b:2"}) \
        == "http://a:1/api/public/otel/v1/traces"
    assert resolve_endpoint(config, {}) == "https://cloud.langfuse.com/api/public/otel/v1/traces"
    with pytest.raises(ConfigError, match=r"otlp_forward\[langfuse\]\.endpoint: not set, and "
                                          "LANGFUSE_HOST does not give one"):
        resolve_endpoint(config, {"LANGFUSE_HOST": "langfuse:3000"})


def test_an_upstream_that_is_the_exporter_itself_is_refused() -> None:
    config = OtlpUpstream(name="langfuse", kind="langfuse", auth="passthrough")
    with pytest.raises(ConfigError, match="is this exporter's own listener"):
        check_upstreams([config], "c.yaml", {"LANGFUSE_HOST": "http://localhost:9464"},
                        listen=("127.0.0.1", 9464))
    check_upstreams([config], "c.yaml", {"LANGFUSE_HOST": "http://localhost:3000"},
                    listen=("127.0.0.1", 9464))


def test_a_refusing_upstream_gets_everything_from_the_spool_when_it_is_back(
        upstreams: Callable[..., Upstream], recorder: Recorder, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    config = upstream_config(f"http://127.0.0.1:{port}/v1/traces")
    forwarder = Forwarder.from_config([config], recorder=recorder,
                                      spool_dir=spool_root(tmp_path))
    forwarder.start()
    bodies = [body(n) for n in range(5)]
    for n, sent in enumerate(bodies):
        forwarder.submit(sent, CLIENT_HEADERS, spans=n + 1)
    wait_until(lambda: count(recorder, "spooled") == 15)
    spool = tmp_path / "forward-spool" / "up"
    assert len(list(spool.glob("*.req"))) == 5
    assert count(recorder, "retried") >= 1
    assert queued(recorder) >= sum(len(b) for b in bodies)

    upstream = upstreams(port)
    wait_until(lambda: count(recorder, "forwarded") == 15)
    forwarder.close(2)
    assert sorted(a.body for a in upstream.arrived) == sorted(bodies)
    assert all(a.headers["content-encoding"] == "gzip" for a in upstream.arrived)
    assert count(recorder, "dropped") == count(recorder, "failed") == 0
    assert queued(recorder) == 0
    assert list(spool.glob("*.req")) == []


def test_503_with_retry_after_is_retried_no_sooner_than_it_says(
        upstreams: Callable[..., Upstream], recorder: Recorder) -> None:
    """OTLP/HTTP: 429/502/503/504 are retryable, honouring Retry-After
    (opentelemetry-proto docs/specification.md, "Retryable Response Codes")."""
    upstream = upstreams(answers=[(503, {"Retry-After": "1"})])
    forwarder = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder,
                                      spool_dir=None)
    forwarder.start()
    sent = body(1)
    forwarder.submit(sent, CLIENT_HEADERS, spans=3)
    wait_until(lambda: count(recorder, "forwarded") == 3)
    forwarder.close(2)
    first, second = upstream.arrived
    assert first.body == second.body == sent
    assert second.at - first.at >= 0.9  # backoff alone would be <= 0.2 s
    assert count(recorder, "retried") == 3
    assert count(recorder, "failed") == count(recorder, "dropped") == 0


@pytest.mark.parametrize("status", [400, 401, 500])
def test_a_permanent_refusal_is_counted_as_failed_and_not_retried(
        upstreams: Callable[..., Upstream], recorder: Recorder, tmp_path: Path,
        status: int) -> None:
    """Every status but 429/502/503/504 is permanent in OTLP/HTTP, 500 included."""
    upstream = upstreams(answers=[(status, {})])
    forwarder = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder,
                                      spool_dir=spool_root(tmp_path))
    forwarder.start()
    forwarder.submit(body(1), CLIENT_HEADERS, spans=4)
    wait_until(lambda: count(recorder, "failed") == 4)
    time.sleep(0.5)  # more than two backoffs: a retry would have arrived by now
    forwarder.close(2)
    assert len(upstream.arrived) == 1
    assert count(recorder, "retried") == count(recorder, "forwarded") == 0
    assert count(recorder, "spooled") == 0
    assert list((tmp_path / "forward-spool" / "up").glob("*.req")) == []


def test_a_connection_the_upstream_closed_while_idle_is_replaced_not_retried(
        upstreams: Callable[..., Upstream], recorder: Recorder) -> None:
    upstream = upstreams(close_quietly=True)
    forwarder = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder,
                                      spool_dir=None)
    forwarder.start()
    for n in range(3):
        forwarder.submit(body(n), CLIENT_HEADERS, spans=1)
        wait_until(lambda n=n: count(recorder, "forwarded") == n + 1)  # type: ignore[misc]
        time.sleep(0.1)  # the upstream has closed the connection by now
    forwarder.close(2)
    assert len(upstream.arrived) == 3
    assert count(recorder, "retried") == 0


def test_a_hanging_upstream_never_holds_submit_or_close_and_a_restart_delivers_the_spool(
        upstreams: Callable[..., Upstream], recorder: Recorder, tmp_path: Path) -> None:
    hanging = upstreams(hang=True)
    # The read timeout is longer than the test: only close() can free the sender.
    config = upstream_config(hanging.url, timeout_seconds=60)
    forwarder = Forwarder.from_config([config], recorder=recorder,
                                      spool_dir=spool_root(tmp_path))
    forwarder.start()
    first = body(0)
    forwarder.submit(first, CLIENT_HEADERS, spans=1)
    wait_until(lambda: len(hanging.arrived) == 1)  # the sender now waits on the upstream

    bodies = [body(n) for n in range(1, 201)]
    started = time.monotonic()
    for sent in bodies:
        forwarder.submit(sent, CLIENT_HEADERS, spans=1)
    submitting = time.monotonic() - started
    assert submitting < 1.0, f"200 submits took {submitting:.3f} s"

    started = time.monotonic()
    forwarder.close(2)
    closing = time.monotonic() - started
    assert closing < 3.0, f"close(2) took {closing:.3f} s"
    assert count(recorder, "spooled") == 201
    assert count(recorder, "dropped") == count(recorder, "forwarded") == 0
    assert len(list((tmp_path / "forward-spool" / "up").glob("*.req"))) == 201

    # A new process on the same storage delivers what this one spooled.
    hanging.stop()
    working = upstreams()
    recorder2 = Recorder(CollectorRegistry())
    again = Forwarder.from_config([upstream_config(working.url)], recorder=recorder2,
                                  spool_dir=spool_root(tmp_path))
    assert queued(recorder2) > 0  # the spool's bytes, known before anything is sent
    again.start()
    wait_until(lambda: count(recorder2, "forwarded") == 201)
    again.close(2)
    assert sorted(a.body for a in working.arrived) == sorted([first, *bodies])
    assert all(a.headers["x-langfuse-sdk-name"] == "python" for a in working.arrived)
    assert queued(recorder2) == 0


def test_the_memory_bound_keeps_the_newest_and_counts_the_rest(
        upstreams: Callable[..., Upstream], recorder: Recorder) -> None:
    bodies = [body(n, size=300) for n in range(10)]
    size = len(bodies[0])
    upstream = upstreams()
    config = upstream_config(upstream.url, max_queue_bytes=3 * size + size // 2)
    forwarder = Forwarder.from_config([config], recorder=recorder, spool_dir=None)
    for sent in bodies:  # not started yet: everything waits in memory
        forwarder.submit(sent, CLIENT_HEADERS, spans=2)
    forwarder.submit(body(99, size=10_000), CLIENT_HEADERS, spans=5)  # larger than the bound
    assert count(recorder, "dropped") == 7 * 2 + 5
    assert queued(recorder) == 3 * size

    forwarder.start()
    wait_until(lambda: count(recorder, "forwarded") == 6)
    forwarder.close(2)
    assert [a.body for a in upstream.arrived] == bodies[7:]


def test_without_a_spool_what_cannot_be_delivered_is_counted_as_dropped(
        recorder: Recorder) -> None:
    config = upstream_config(f"http://127.0.0.1:{free_port()}/v1/traces",
                             give_up_after_seconds=0.3)
    forwarder = Forwarder.from_config([config], recorder=recorder, spool_dir=None)
    forwarder.start()
    forwarder.submit(body(1), CLIENT_HEADERS, spans=3)
    wait_until(lambda: count(recorder, "dropped") == 3)  # given up after 0.3 s
    forwarder.submit(body(2), CLIENT_HEADERS, spans=4)
    forwarder.close(0.5)  # still failing at close: nowhere to keep it
    assert count(recorder, "dropped") == 7
    assert count(recorder, "retried") >= 2
    assert count(recorder, "forwarded") == count(recorder, "spooled") == 0
    assert queued(recorder) == 0


def test_the_spool_bound_keeps_the_newest(upstreams: Callable[..., Upstream],
                                          recorder: Recorder, tmp_path: Path) -> None:
    bodies = [body(n, size=1000) for n in range(10)]
    config = upstream_config(f"http://127.0.0.1:{free_port()}/v1/traces",
                             max_spool_bytes=3 * len(bodies[0]) + 1000)
    forwarder = Forwarder.from_config([config], recorder=recorder,
                                      spool_dir=spool_root(tmp_path))
    for sent in bodies:
        forwarder.submit(sent, CLIENT_HEADERS, spans=1)
    forwarder.close(2)  # never started: close spools the memory queue, within the bound
    assert count(recorder, "spooled") == 10
    assert count(recorder, "dropped") == 7
    assert len(list((tmp_path / "forward-spool" / "up").glob("*.req"))) == 3

    upstream = upstreams()
    recorder2 = Recorder(CollectorRegistry())
    again = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder2,
                                  spool_dir=spool_root(tmp_path))
    again.start()
    wait_until(lambda: count(recorder2, "forwarded") == 3)
    again.close(2)
    assert [a.body for a in upstream.arrived] == bodies[7:]  # in order, oldest first


def test_no_upstream_is_a_no_op(recorder: Recorder, tmp_path: Path) -> None:
    threads = threading.active_count()
    forwarder = Forwarder.from_config([], recorder=recorder, spool_dir=spool_root(tmp_path))
    forwarder.start()
    assert not forwarder.enabled
    forwarder.submit(body(1), CLIENT_HEADERS, spans=1)
    forwarder.close(1)
    forwarder.close(1)
    assert threading.active_count() == threads
    assert not (tmp_path / "forward-spool").exists()
    assert recorder.registry.get_sample_value(QUEUE, {"upstream": "up"}) is None
    Forwarder().submit(b"", {}, 0)


def test_a_missing_credential_names_the_key_and_the_variable_not_a_value() -> None:
    langfuse = upstream_config("https://cloud.langfuse.com/api/public/otel/v1/traces",
                               "lf", kind="langfuse", secret_key_env="LF_SECRET")
    with pytest.raises(ConfigError) as error:
        check_upstreams([langfuse], "c.yaml", {"LANGFUSE_PUBLIC_KEY": "pk-lf-secretish"})
    assert str(error.value) == ("c.yaml: otlp_forward[lf].secret_key_env: the environment "
                                "variable LF_SECRET is not set")
    passthrough = upstream_config("http://127.0.0.1:1/v1/traces", "lf", kind="langfuse",
                                  auth="passthrough")
    check_upstreams([passthrough], "c.yaml", {})  # needs no credential of ours


def run_check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("LANGFUSE_", "PERSONA_EXPORTER_"))}
    return subprocess.run([sys.executable, "-m", "persona_exporter", "check-config",
                           str(path)], capture_output=True, text=True, timeout=60,
                          env={**environ, **env}, check=False)


def test_check_config_reports_a_missing_variable_and_a_bad_url(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("otlp_forward:\n"
                      "  - name: langfuse\n    kind: langfuse\n"
                      "    endpoint: https://cloud.langfuse.com/api/public/otel/v1/traces\n"
                      "  - name: collector\n    endpoint: http://127.0.0.1:4318/v1/traces\n")
    missing = run_check_config(config, LANGFUSE_PUBLIC_KEY="pk-lf-1")
    assert missing.returncode == 2
    assert "otlp_forward[langfuse].secret_key_env: the environment variable " \
           "LANGFUSE_SECRET_KEY is not set" in missing.stderr
    assert "pk-lf-1" not in missing.stderr

    ok = run_check_config(config, LANGFUSE_PUBLIC_KEY="pk-lf-1", LANGFUSE_SECRET_KEY="sk-1")
    assert ok.returncode == 0, ok.stderr
    assert "otlp_forward langfuse: langfuse https://cloud.langfuse.com/api/public/otel/v1/" \
           "traces, auth: Basic from LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY" in ok.stdout
    assert "sk-1" not in ok.stdout

    changed = tmp_path / "changed.yaml"
    changed.write_text(config.read_text().replace("4318", "4319"))
    reload = subprocess.run([sys.executable, "-m", "persona_exporter", "check-config",
                             str(changed), "--running-config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "LANGFUSE_PUBLIC_KEY": "p",
                                 "LANGFUSE_SECRET_KEY": "s"})
    assert reload.returncode == 0, reload.stderr
    assert "otlp_forward changed: in force only after a restart" in reload.stdout

    config.write_text("otlp_forward:\n  - {name: langfuse, kind: langfuse}\n")
    loop = run_check_config(config, LANGFUSE_PUBLIC_KEY="p", LANGFUSE_SECRET_KEY="s",
                            LANGFUSE_HOST="http://127.0.0.1:9464")
    assert loop.returncode == 2
    assert "otlp_forward[langfuse].endpoint: http://127.0.0.1:9464/api/public/otel/v1/" \
           "traces is this exporter's own listener" in loop.stderr

    config.write_text("otlp_forward:\n  - {name: c, endpoint: 'localhost:4318/v1/traces'}\n")
    bad = run_check_config(config)
    assert bad.returncode == 2
    assert f"{config}: otlp_forward.0.endpoint: 'localhost:4318/v1/traces' is not an " \
           "http(s) URL" in bad.stderr


def test_a_restart_skips_damaged_spool_files_and_delivers_the_rest(
        upstreams: Callable[..., Upstream], recorder: Recorder, tmp_path: Path) -> None:
    config = upstream_config(f"http://127.0.0.1:{free_port()}/v1/traces")
    forwarder = Forwarder.from_config([config], recorder=recorder,
                                      spool_dir=spool_root(tmp_path))
    bodies = [body(n) for n in range(3)]
    for sent in bodies:
        forwarder.submit(sent, CLIENT_HEADERS, spans=2)
    forwarder.close(2)
    spool = tmp_path / "forward-spool" / "up"
    files = sorted(spool.glob("*.req"))
    assert len(files) == 3
    # A crash mid-write leaves a temporary file; a power loss can leave a short one.
    (spool / ".tmp-99").write_bytes(b"half")
    files[1].write_bytes(files[1].read_bytes()[:-10])
    (spool / "00000000000000000099.req").write_bytes(b"not ours")

    upstream = upstreams()
    recorder2 = Recorder(CollectorRegistry())
    again = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder2,
                                  spool_dir=spool_root(tmp_path))
    again.start()
    wait_until(lambda: count(recorder2, "forwarded") == 4)
    again.close(2)
    assert [a.body for a in upstream.arrived] == [bodies[0], bodies[2]]
    assert sorted(p.name for p in spool.iterdir()) == []
    errors = recorder2.registry.get_sample_value(
        "persona_exporter_internal_errors_total",
        {"component": "forward", "kind": "spool_unreadable_ValueError"})
    assert errors == 2


def test_429_with_an_http_date_retry_after(upstreams: Callable[..., Upstream],
                                           recorder: Recorder) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # second resolution
    upstream = upstreams(answers=[(429, {"Retry-After": when})])
    forwarder = Forwarder.from_config([upstream_config(upstream.url)], recorder=recorder,
                                      spool_dir=None)
    forwarder.start()
    forwarder.submit(body(1), CLIENT_HEADERS, spans=1)
    wait_until(lambda: count(recorder, "forwarded") == 1)
    forwarder.close(2)
    first, second = upstream.arrived
    assert second.at - first.at >= 0.9
    assert count(recorder, "retried") == 1


def test_a_retry_after_that_is_not_ascii_digits_reads_as_absent() -> None:
    # http.client decodes headers as latin-1: "²" passes str.isdigit() and float() refuses it.
    from persona_exporter.server.forward import _retry_after

    assert _retry_after("²") == 0.0
    assert _retry_after("7") == 7.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("Wed, 21 Oct 99999 07:28:00 GMT") == 0.0  # unreadable
