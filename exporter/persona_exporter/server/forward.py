"""Forwarding of received OTLP trace requests to upstreams (``otlp_forward:`` in the config).

The receiver hands each accepted request to :meth:`Forwarder.submit` on the event loop.
The body goes on byte-identical, with its ``Content-Type`` and ``Content-Encoding`` and
Langfuse's ``x-langfuse-*`` headers (they select Langfuse's write path, see
``../shared/notes/otlp-ingest.md`` (f) and Langfuse's
``web/src/pages/api/public/otel/v1/traces/index.ts``), plus the upstream's own credentials.

Nothing here may slow ingest: ``submit`` appends to a bounded in-memory queue and returns;
each upstream has a sender thread (network) and, with ``--storage.path``, a spooler thread
(disk). Delivery follows the OTLP/HTTP specification: 429, 502, 503 and 504 and network
errors are retried with exponential backoff and jitter, at least ``Retry-After`` apart;
any other status is a permanent refusal (``failed``). While an upstream is down, or when
the memory queue passes half its bound, requests move to ``DIR/forward-spool/<upstream>/``
(one file per request, written to a temporary name and renamed), which the sender reads
back oldest first and which a restarted exporter delivers.

Bounds keep the newest requests: past ``max_queue_bytes`` (memory) or ``max_spool_bytes``
(disk) the oldest are dropped and counted. After an outage the upstream then holds
everything up to now without a gap at the recent end, which is where someone reading traces
looks; the oldest end of a long backlog is what matters least.

Counted in spans: ``persona_exporter_otlp_forward_spans_total{upstream,outcome}``
(forwarded, failed, retried: once per failed attempt that will be tried again, dropped,
spooled) and ``persona_exporter_otlp_forward_queue_bytes{upstream}`` (memory + spool).

Example::

    forwarder = Forwarder.from_config(config.otlp_forward, recorder=recorder,
                                      spool_dir=storage_path / "forward-spool")
    forwarder.start()
    forwarder.submit(body, request.headers, spans=len(spans))   # on the event loop
    forwarder.close(timeout=5)                                  # at shutdown
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import ConfigError, OtlpUpstream, http_url_problem
from ..errors import ErrorReporter
from ..metrics.recorder import Recorder, build_version

logger = logging.getLogger("persona_exporter")

SPOOL_DIR_NAME = "forward-spool"
LANGFUSE_OTLP_PATH = "/api/public/otel/v1/traces"
LANGFUSE_CLOUD = "https://cloud.langfuse.com"
# The OTLP/HTTP specification's retryable statuses (opentelemetry-proto
# docs/specification.md, "Retryable Response Codes"); every other non-2xx is permanent.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# A Retry-After is honoured up to this; a bogus "86400" must not park an upstream for a day.
MAX_RETRY_AFTER_SECONDS = 300.0
# Client headers passed on: the body's encoding, and Langfuse's SDK and write-path markers.
_PASSED_HEADERS = frozenset({"content-type", "content-encoding"})
_LANGFUSE_PREFIX = "x-langfuse-"
_MAX_PASSED_HEADERS = 32
_MAX_HEADER_VALUE = 4096
_MAX_RESPONSE_BYTES = 64 * 1024  # read to reuse the connection; past it, close it instead
_IDLE_WAIT = 1.0
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

# Spool file: magic (the format's version), a 4-byte big-endian length and that many bytes
# of JSON ({"headers": [[name, value], ...], "spans": n, "bytes": len(body)}), the body.
_SPOOL_MAGIC = b"PEFWD1\n"
_SPOOL_SUFFIX = ".req"


@dataclass
class _Request:
    body: bytes
    headers: tuple[tuple[str, str], ...]
    spans: int
    first_try: float = field(default_factory=time.monotonic)
    spool_seq: int | None = None  # set when read back from the spool

    def size(self) -> int:
        return len(self.body)


class _Counts:
    """This upstream's children of the two forward families, created once."""

    def __init__(self, recorder: Recorder, upstream: str) -> None:
        spans = recorder.instrument("persona_exporter_otlp_forward_spans_total")
        self.outcome = {o: spans.labels(upstream, o) for o in (
            "forwarded", "failed", "retried", "dropped", "spooled")}
        self.queue_bytes = recorder.instrument(
            "persona_exporter_otlp_forward_queue_bytes").labels(upstream)

    def add(self, outcome: str, spans: int) -> None:
        self.outcome[outcome].inc(spans)


def spool_root(storage_path: Path) -> Path:
    """Where forwarding spools under ``--storage.path DIR``."""
    return storage_path / SPOOL_DIR_NAME


# --- credentials -------------------------------------------------------------------------


def credential_headers(upstream: OtlpUpstream,
                       environ: Mapping[str, str]) -> dict[str, str]:
    """The headers carrying this upstream's own credentials. Raises ConfigError naming the
    key and the variable (never its value) when one is missing."""
    where = f"otlp_forward[{upstream.name}]"
    if upstream.auth == "passthrough":
        return {}
    headers: dict[str, str] = {}
    if upstream.kind == "langfuse":
        public = _env(environ, upstream.public_key_env, f"{where}.public_key_env")
        secret = _env(environ, upstream.secret_key_env, f"{where}.secret_key_env")
        pair = base64.b64encode(f"{public}:{secret}".encode()).decode("ascii")
        headers["authorization"] = f"Basic {pair}"
    elif upstream.bearer_token_env is not None:
        token = _env(environ, upstream.bearer_token_env, f"{where}.bearer_token_env")
        headers["authorization"] = f"Bearer {token}"
    elif upstream.bearer_token_file is not None:
        token = _read_token(upstream.bearer_token_file, f"{where}.bearer_token_file")
        headers["authorization"] = f"Bearer {token}"
    for header, variable in upstream.headers_env.items():
        headers[header.lower()] = _env(environ, variable, f"{where}.headers_env.{header}")
    return headers


def resolve_endpoint(upstream: OtlpUpstream, environ: Mapping[str, str]) -> str:
    """The URL requests go to. A langfuse upstream without ``endpoint`` takes the host the
    exporter's own Langfuse tracing uses (tracing/backends.py): LANGFUSE_BASE_URL, else
    LANGFUSE_HOST, else Langfuse Cloud. Raises ConfigError naming the variable."""
    if upstream.endpoint is not None:
        return upstream.endpoint
    variable = next((v for v in ("LANGFUSE_BASE_URL", "LANGFUSE_HOST")
                     if environ.get(v, "").strip()), None)
    base = environ[variable].strip() if variable else LANGFUSE_CLOUD
    endpoint = base.rstrip("/") + LANGFUSE_OTLP_PATH
    problem = http_url_problem(endpoint)
    if problem is not None:
        raise ConfigError(f"otlp_forward[{upstream.name}].endpoint: not set, and {variable} "
                          f"does not give one: {problem}")
    return endpoint


def _forwards_to_itself(endpoint: str, listen: tuple[str, int]) -> bool:
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", listen[0]}  # noqa: S104
    return port == listen[1] and (url.hostname or "") in local


def _env(environ: Mapping[str, str], variable: str, key: str) -> str:
    value = environ.get(variable, "").strip()
    if not value:
        raise ConfigError(f"{key}: the environment variable {variable} is not set")
    _check_header_value(value, f"{key}: {variable}")
    return value


def _read_token(path: str, key: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{key}: {path} is empty")
    _check_header_value(token, f"{key}: {path}")
    return token


def _check_header_value(value: str, where: str) -> None:
    # never quoted: it is a secret, even when malformed
    if not all(" " <= c <= "~" for c in value):
        raise ConfigError(f"{where}: the value must be printable ASCII on one line")


def check_upstreams(upstreams: Sequence[OtlpUpstream], source: object,
                    environ: Mapping[str, str] | None = None, *,
                    listen: tuple[str, int] | None = None) -> None:
    """What ``serve`` and ``check-config`` refuse beyond the file's own shape: a
    credential that is not in the environment (or its file), an endpoint from the
    environment that is no URL, and an upstream that is this exporter's own listener
    (``listen``), which would forward every request to itself for ever."""
    env = os.environ if environ is None else environ
    for upstream in upstreams:
        try:
            endpoint = resolve_endpoint(upstream, env)
            credential_headers(upstream, env)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        if listen is not None and _forwards_to_itself(endpoint, listen):
            raise ConfigError(f"{source}: otlp_forward[{upstream.name}].endpoint: {endpoint} "
                              f"is this exporter's own listener; it would receive what it "
                              "forwards (on the application side LANGFUSE_HOST points at the "
                              "exporter, on the exporter's side at Langfuse)")


def describe_upstreams(upstreams: Sequence[OtlpUpstream],
                       environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per upstream for ``check-config``: where, and where its credentials come
    from (names of variables, never values)."""
    env = os.environ if environ is None else environ
    lines = []
    for u in upstreams:
        if u.auth == "passthrough":
            auth = "the client's Authorization (passthrough)"
        elif u.kind == "langfuse":
            auth = f"Basic from {u.public_key_env}/{u.secret_key_env}"
        elif u.bearer_token_env or u.bearer_token_file:
            auth = f"Bearer from {u.bearer_token_env or u.bearer_token_file}"
        else:
            auth = "none"
        extra = f", headers from {', '.join(u.headers_env.values())}" if u.headers_env else ""
        endpoint = resolve_endpoint(u, env)
        lines.append(f"otlp_forward {u.name}: {u.kind} {endpoint}, auth: {auth}{extra}")
    return lines


# --- the spool ---------------------------------------------------------------------------


class _Spool:
    """Requests on disk, one file each, named by a sequence number so that the listing is
    the order. Bounded by bytes; the oldest go first (see the module docstring)."""

    def __init__(self, directory: Path, max_bytes: int, counts: _Counts,
                 errors: ErrorReporter) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._counts = counts
        self._errors = errors
        self._lock = threading.Lock()
        self._entries: deque[tuple[int, int, int]] = deque()  # (seq, bytes, spans)
        self._in_flight: int | None = None
        self.bytes = 0
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._recover()
        self._next_seq = self._entries[-1][0] + 1 if self._entries else 1

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SPOOL_SUFFIX}"

    def _recover(self) -> None:
        """Index what a previous process left; a file cut short by a crash before its
        rename has a temporary name and is removed."""
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
            elif path.suffix == _SPOOL_SUFFIX and path.stem.isdigit():
                found.append((int(path.stem), path))
        for seq, path in sorted(found):
            try:
                with path.open("rb") as f:
                    _, spans, body_size = _read_meta(f)
                    header_size = f.tell()
                size = path.stat().st_size
                if size != header_size + body_size:  # cut short: never send half a body
                    raise ValueError(f"{size - header_size} of {body_size} bytes")
            except (OSError, ValueError) as error:
                self._errors.report("forward", f"spool_unreadable_{type(error).__name__}")
                path.unlink(missing_ok=True)
                continue
            self._entries.append((seq, size, spans))
            self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, request: _Request) -> bool:
        """Write ``request``; False when it cannot be kept (counted as dropped)."""
        meta = json.dumps({"headers": request.headers, "spans": request.spans,
                           "bytes": len(request.body)}).encode()
        data = b"".join((_SPOOL_MAGIC, struct.pack(">I", len(meta)), meta, request.body))
        if len(data) > self.max_bytes:
            self._counts.add("dropped", request.spans)
            return False
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
        tmp = self.directory / f".tmp-{seq}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path(seq))
        except OSError as error:
            tmp.unlink(missing_ok=True)
            self._errors.report("forward", error)
            self._counts.add("dropped", request.spans)
            return False
        evicted = []
        with self._lock:
            self._entries.append((seq, len(data), request.spans))
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                victim = next((e for e in self._entries if e[0] != self._in_flight), None)
                if victim is None or victim[0] == seq:
                    break
                self._entries.remove(victim)
                self.bytes -= victim[1]
                evicted.append(victim)
        for victim_seq, _, spans in evicted:
            self._path(victim_seq).unlink(missing_ok=True)
            self._counts.add("dropped", spans)
        self._counts.add("spooled", request.spans)
        return True

    def head(self) -> _Request | None:
        """The oldest request, marked in flight (not evicted while being sent)."""
        while True:
            with self._lock:
                if not self._entries:
                    return None
                seq, _, spans = self._entries[0]
                self._in_flight = seq
            try:
                with self._path(seq).open("rb") as f:
                    headers, _, size = _read_meta(f)
                    body = f.read()
                if len(body) != size:  # cut short (a power loss before the data was synced)
                    raise ValueError(f"{len(body)} of {size} bytes")
                return _Request(body, headers, spans, spool_seq=seq)
            except (OSError, ValueError) as error:
                self._errors.report("forward", f"spool_unreadable_{type(error).__name__}")
                self.remove(seq)
                self._counts.add("dropped", spans)

    def remove(self, seq: int) -> None:
        with self._lock:
            for entry in self._entries:
                if entry[0] == seq:
                    self._entries.remove(entry)
                    self.bytes -= entry[1]
                    break
            if self._in_flight == seq:
                self._in_flight = None
        self._path(seq).unlink(missing_ok=True)

    def release(self) -> None:
        with self._lock:
            self._in_flight = None


def _read_meta(f: Any) -> tuple[tuple[tuple[str, str], ...], int, int]:
    """(headers, spans, body bytes) of a spool file, leaving ``f`` at the body."""
    if f.read(len(_SPOOL_MAGIC)) != _SPOOL_MAGIC:
        raise ValueError("not a spool file of this format")
    try:
        (length,) = struct.unpack(">I", f.read(4))
        meta = json.loads(f.read(length))
        headers = tuple((str(k), str(v)) for k, v in meta["headers"])
        return headers, int(meta["spans"]), int(meta["bytes"])
    except (struct.error, TypeError, KeyError) as error:
        raise ValueError(f"a damaged spool file: {error!r}") from None


# --- one upstream ------------------------------------------------------------------------


class _Upstream:
    """The queue, the spool and the threads of one upstream."""

    def __init__(self, config: OtlpUpstream, endpoint: str, credentials: Mapping[str, str],
                 recorder: Recorder, spool_dir: Path | None) -> None:
        self.config = config
        self.name = config.name
        self._credentials = dict(credentials)
        self._counts = _Counts(recorder, config.name)
        self._errors = recorder.errors
        self._queue: deque[_Request] = deque()
        self._queue_bytes = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._down = False          # the last attempt failed and will be retried
        self._stopped = False       # close() has taken what was left in memory
        self._busy = False          # the sender holds a request
        self._conn: http.client.HTTPConnection | None = None
        self._conn_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._random = random.Random()  # noqa: S311 - jitter, not a secret
        url = urlsplit(endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._spool: _Spool | None = None
        if spool_dir is not None:
            try:
                self._spool = _Spool(spool_dir / config.name, config.max_spool_bytes,
                                     self._counts, self._errors)
            except OSError as error:  # a spool we cannot create: memory only, said once
                self._errors.report("forward", error)
        self._update_gauge()

    # -- the event loop's side: O(1), never blocks on anything but a short lock --

    def submit(self, request: _Request) -> None:
        dropped = 0
        with self._cond:
            if self._stop.is_set() or request.size() > self.config.max_queue_bytes:
                dropped = request.spans
            else:
                self._queue.append(request)
                self._queue_bytes += request.size()
                while self._queue_bytes > self.config.max_queue_bytes:
                    oldest = self._queue.popleft()
                    self._queue_bytes -= oldest.size()
                    dropped += oldest.spans
                self._cond.notify_all()
        if dropped:
            self._counts.add("dropped", dropped)
        self._update_gauge()

    # -- threads --

    def start(self) -> None:
        if self._threads:
            return
        self._threads.append(threading.Thread(target=self._send_loop, daemon=True,
                                              name=f"persona-forward-{self.name}"))
        if self._spool is not None:
            self._threads.append(threading.Thread(target=self._spool_loop, daemon=True,
                                                  name=f"persona-spool-{self.name}"))
        for thread in self._threads:
            thread.start()

    def _take(self) -> _Request | None:
        """The next request to send: the spool's oldest first (it is older than memory)."""
        if self._spool is not None:
            request = self._spool.head()
            if request is not None:
                return request
        with self._cond:
            if not self._queue:
                self._cond.wait(_IDLE_WAIT)
                return None
            request = self._queue.popleft()
            self._queue_bytes -= request.size()
            self._busy = True
            return request

    def _send_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            request = None
            try:
                request = self._take()
                if request is None:
                    continue
                retry_after = self._deliver(request)
            except Exception as error:  # noqa: BLE001 - the sender must outlive any bug
                self._errors.report("forward", error)
                if self._spool is not None:
                    self._spool.release()
                if request is not None:  # a bug must not lose it without a count
                    self._counts.add("dropped", request.spans)
                retry_after = 0.0  # back off: the same request may fail the same way
            with self._cond:
                self._busy = False
                self._down = retry_after is not None
                self._cond.notify_all()
            self._update_gauge()
            if retry_after is None:
                failures = 0
                continue
            failures += 1
            self._stop.wait(self._backoff(failures, retry_after))

    def _deliver(self, request: _Request) -> float | None:
        """Send once and settle the outcome; the seconds to wait before the next attempt
        when it is to be retried, else None."""
        status, retry_after, problem = self._post(request)
        spool = self._spool
        if status is not None and 200 <= status < 300:
            self._finish(request, "forwarded")
            return None
        if status is not None and status not in RETRYABLE_STATUSES:
            self._errors.report("forward", f"{self.name}_http_{status}")
            self._finish(request, "failed")
            return None
        self._errors.report("forward", problem or f"{self.name}_http_{status}")
        if spool is None and \
                time.monotonic() - request.first_try > self.config.give_up_after_seconds:
            self._counts.add("dropped", request.spans)
            return retry_after
        self._counts.add("retried", request.spans)
        if spool is None:
            self._requeue(request)
        elif request.spool_seq is not None:
            spool.release()
        else:
            spool.append(request)   # durable from now on; sent again from there
        return retry_after

    def _finish(self, request: _Request, outcome: str) -> None:
        if request.spool_seq is not None and self._spool is not None:
            self._spool.remove(request.spool_seq)
        self._counts.add(outcome, request.spans)

    def _requeue(self, request: _Request) -> None:
        """Memory only: the request goes back to the front, within the queue's bound."""
        dropped = 0
        with self._cond:
            if self._stopped:  # close() has settled the queue already: count it here
                dropped = request.spans
            else:
                self._queue.appendleft(request)
                self._queue_bytes += request.size()
            while self._queue_bytes > self.config.max_queue_bytes:
                oldest = self._queue.popleft()
                self._queue_bytes -= oldest.size()
                dropped += oldest.spans
        if dropped:
            self._counts.add("dropped", dropped)

    def _backoff(self, failures: int, retry_after: float) -> float:
        """Exponential, with equal jitter (so synchronised exporters spread out), and never
        shorter than the upstream's Retry-After."""
        ceiling = min(self.config.backoff_max_seconds,
                      self.config.backoff_initial_seconds * 2 ** min(failures - 1, 30))
        delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)
        return float(max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS)))

    def _post(self, request: _Request) -> tuple[int | None, float, str | None]:
        """(status or None, Retry-After seconds, the kind of a network error)."""
        headers = dict(request.headers)
        headers.update(self._credentials)
        headers["user-agent"] = f"persona-exporter/{build_version()}"
        for _ in range(2):
            with self._conn_lock:
                reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request("POST", self._target, body=request.body, headers=headers)
                response = conn.getresponse()
                response.read(_MAX_RESPONSE_BYTES)
                # Reused only when the upstream keeps it open and its answer was read
                # whole (http.client would otherwise reopen it without the read timeout).
                if response.will_close or not response.isclosed():
                    self._drop_connection()
                return response.status, _retry_after(response.getheader("retry-after")), None
            except _STALE_CONNECTION:
                self._drop_connection()
                # An idle keep-alive connection the upstream closed: once more on a new one.
                if not reused or self._stop.is_set():
                    return None, 0.0, f"{self.name}_connection_lost"
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                return None, 0.0, f"{self.name}_{type(error).__name__}"
        return None, 0.0, f"{self.name}_connection_lost"

    def _connection(self) -> http.client.HTTPConnection:
        with self._conn_lock:
            conn = self._conn
        if conn is not None:
            return conn
        timeout = self.config.connect_timeout_seconds
        conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                            context=ssl.create_default_context())
                if self._https else
                http.client.HTTPConnection(self._host, self._port, timeout=timeout))
        conn.connect()
        # Past the connect, each read and write has its own (longer) bound: an upstream
        # that accepts and never answers costs this sender that long, nothing more.
        if conn.sock is not None:
            conn.sock.settimeout(self.config.timeout_seconds)
        with self._conn_lock:
            self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _abort_connection(self) -> None:
        """Wake a sender blocked on a hanging upstream (at close)."""
        with self._conn_lock:
            conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _spool_loop(self) -> None:
        """Move memory to disk while the upstream is down, or when memory passes half its
        bound, so that a burst or an outage is neither dropped nor lost in a restart."""
        spool = self._spool
        assert spool is not None  # noqa: S101 - started only with a spool
        while not self._stop.is_set():
            with self._cond:
                if not self._must_spool():
                    self._cond.wait(_IDLE_WAIT)
                    continue
                request = self._queue.popleft()
                self._queue_bytes -= request.size()
            try:
                spool.append(request)
            except Exception as error:  # noqa: BLE001 - the spooler must outlive any bug
                self._errors.report("forward", error)
                self._counts.add("dropped", request.spans)
            self._update_gauge()

    def _must_spool(self) -> bool:
        return bool(self._queue) and (
            self._down or self._queue_bytes > self.config.max_queue_bytes // 2)

    # -- shutdown --

    def drain(self, deadline: float) -> None:
        """Wait until memory is delivered, the upstream is down, or the deadline."""
        with self._cond:
            while (self._queue or self._busy) and not self._down and self._threads:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))

    def stop(self, deadline: float) -> None:
        """Stop the threads, then keep what is left in memory in the spool (or count it
        as dropped)."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        self._abort_connection()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopped = True
            left = list(self._queue)
            self._queue.clear()
            self._queue_bytes = 0
        for request in left:
            # Past the deadline too: a local write of at most max_queue_bytes beats a loss.
            if self._spool is not None:
                self._spool.append(request)
            else:
                self._counts.add("dropped", request.spans)
        self._drop_connection()
        self._update_gauge()

    def _update_gauge(self) -> None:
        spooled = self._spool.bytes if self._spool is not None else 0
        self._counts.queue_bytes.set(self._queue_bytes + spooled)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent
    or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": isdigit alone takes any Unicode digit
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return 0.0


def forwarded_headers(headers: Mapping[str, str], *,
                      passthrough: bool) -> tuple[tuple[str, str], ...]:
    """The client headers an upstream receives: the body's type and encoding, Langfuse's
    ``x-langfuse-*``, and the client's Authorization only for a passthrough upstream."""
    kept = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in _PASSED_HEADERS or lower.startswith(_LANGFUSE_PREFIX) \
                or (passthrough and lower == "authorization"):
            if len(value) <= _MAX_HEADER_VALUE:
                kept.append((lower, value))
            if len(kept) >= _MAX_PASSED_HEADERS:
                break
    return tuple(kept)


# --- the forwarder -----------------------------------------------------------------------


class Forwarder:
    """Passes received OTLP requests on to the configured upstreams.

    With no upstream it is a no-op (``enabled`` is False and ``submit`` returns at once),
    so the receiver calls it unconditionally.
    """

    def __init__(self, upstreams: Sequence[_Upstream] = ()) -> None:
        self._upstreams = tuple(upstreams)
        self.enabled = bool(self._upstreams)
        self._closed = False

    @classmethod
    def from_config(cls, upstreams: Sequence[OtlpUpstream], *, recorder: Recorder,
                    spool_dir: Path | None,
                    environ: Mapping[str, str] | None = None) -> Forwarder:
        """``spool_dir``: the spool's root (:func:`spool_root` of ``--storage.path``), each
        upstream in its own subdirectory; None keeps queues in memory only. Raises
        ConfigError when a credential is missing (``check_upstreams`` says so earlier)."""
        env = os.environ if environ is None else environ
        return cls([_Upstream(u, resolve_endpoint(u, env), credential_headers(u, env),
                              recorder, spool_dir) for u in upstreams])

    def start(self) -> None:
        for upstream in self._upstreams:
            upstream.start()

    def submit(self, body: bytes, headers: Mapping[str, str], spans: int) -> None:
        """Queue ``body`` for every upstream and return: never blocks, never raises."""
        if not self.enabled:
            return
        try:
            plain = forwarded_headers(headers, passthrough=False)
            passed = None
            for upstream in self._upstreams:
                if upstream.config.auth == "passthrough":
                    passed = passed or forwarded_headers(headers, passthrough=True)
                    upstream.submit(_Request(body, passed, spans))
                else:
                    upstream.submit(_Request(body, plain, spans))
        except Exception as error:  # noqa: BLE001 - forwarding must never fail ingest
            if self._upstreams:
                self._upstreams[0]._errors.report("forward", error)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, spool the rest (or
        count it as dropped without a spool), and stop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        # Keep a slice of the deadline to stop the threads and spool what is left.
        drain_until = deadline - min(1.0, timeout / 4)
        for upstream in self._upstreams:
            upstream.drain(drain_until)
        for upstream in self._upstreams:
            upstream.stop(deadline)
