"""The tracing sink: events to spans to Langfuse and OTLP, off the caller's thread.

One pipeline, several backends. The SDK's events (already carrying trace and span ids)
are appended to one bounded queue per backend - that append is all an instrumented call
pays - and a worker thread per backend builds the spans (:mod:`.spans`) and exports them in
batches through the OpenTelemetry OTLP exporter. A slow or dead backend therefore delays
only its own queue: never the caller, never the other backend.

What the raw Langfuse SDK gets wrong for short-lived agent processes, and what this does:

- no flush per call; ``flush(timeout)`` and ``shutdown(timeout)`` wait at most their
  deadline, and the exit hook uses ``PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT`` (3 s), so a
  down or hanging backend never holds the process past it;
- no global TracerProvider is installed or touched; spans are built and exported here;
- the queues are bounded, and everything not delivered - queue full, export failed, left
  at shutdown - is counted in ``persona_exporter_trace_spans_dropped_total{backend}``,
  next to export attempts, failures, duration and bytes.

Configuration is the standard environment: ``LANGFUSE_PUBLIC_KEY``/``_SECRET_KEY``/
``_BASE_URL`` (or ``_HOST``)/``_TIMEOUT``/``_TRACING_ENABLED``/``_SAMPLE_RATE``/
``_OTEL_COMPRESSION`` for Langfuse; ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``,
``..._PROTOCOL`` (``http/protobuf`` or ``grpc``), ``..._HEADERS``, ``..._TIMEOUT``,
``..._COMPRESSION`` and ``OTEL_TRACES_EXPORTER=none`` for OTLP.
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .errors import ErrorReporter
from .events import Event
from .recorder import Recorder, TraceExportSeries, build_version
from .spans import to_span

logger = logging.getLogger("persona_exporter")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 256
DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_SHUTDOWN_TIMEOUT = 3.0
DEFAULT_LANGFUSE_TIMEOUT = 5.0


class CountingSession(requests.Session):
    """The HTTP session of an OTLP/HTTP exporter, counting the (compressed) bytes it posts:
    the export-volume self-metric without encoding every batch a second time."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def request(self, method: str, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        data = kwargs.get("data", args[1] if len(args) > 1 else None)
        if isinstance(data, (bytes, bytearray)):
            self.sent += len(data)
        return super().request(method, url, *args, **kwargs)


# Which exporters we built with a CountingSession (the OTLP/HTTP exporter keeps its session
# private); weak, so a discarded exporter is not kept alive.
_SESSIONS: weakref.WeakKeyDictionary[SpanExporter, CountingSession] = weakref.WeakKeyDictionary()


class _Flush:
    """A marker in a worker's queue: set once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _BackendWorker:
    """One backend: a bounded queue, a daemon thread, an exporter and its self-metrics."""

    def __init__(self, name: str, exporter: SpanExporter, *, series: TraceExportSeries | None,
                 errors: ErrorReporter, queue_size: int, batch_size: int, interval: float,
                 resource: Resource, scope: InstrumentationScope) -> None:
        self.name = name
        self.exporter = exporter
        self._series = series
        self._errors = errors
        self._queue: deque[Event | _Flush] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = interval
        self._resource = resource
        self._scope = scope
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._failure_logged = False
        self._in_flight = 0
        self._abandoned = False
        self._closing = False
        self._session = _SESSIONS.get(exporter)
        self._thread = threading.Thread(target=self._run, name=f"persona-exporter-{name}",
                                        daemon=True)
        self._thread.start()

    # --- producer side: called on the instrumented call's thread ---

    def offer(self, event: Event) -> None:
        queue = self._queue
        if len(queue) >= self._queue_size or self._stopping.is_set():
            self._dropped(1)
            return
        queue.append(event)
        if len(queue) >= self._batch_size and not self._wakeup.is_set():
            self._wakeup.set()

    def request_flush(self) -> _Flush:
        marker = _Flush()
        if not self._thread.is_alive():
            marker.done.set()
            return marker
        self._queue.append(marker)
        self._wakeup.set()
        return marker

    # --- consumer side: the worker thread ---

    def _run(self) -> None:
        while True:
            self._wakeup.wait(self._interval)
            self._wakeup.clear()
            try:
                self._drain()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive whatever happens
                self._errors.report(f"trace.{self.name}", exc)
            if self._stopping.is_set():
                self._drain()
                return

    def _drain(self) -> None:
        while self._queue:
            batch: list[Event] = []
            markers: list[_Flush] = []
            while self._queue and len(batch) < self._batch_size:
                item = self._queue.popleft()
                if isinstance(item, _Flush):
                    markers.append(item)
                else:
                    batch.append(item)
            if batch:
                self._export(batch)
            for marker in markers:
                marker.done.set()

    def _export(self, batch: list[Event]) -> None:
        spans: list[ReadableSpan] = []
        for event in batch:
            try:
                span = to_span(event, self._resource, self._scope)
            except Exception as exc:  # noqa: BLE001
                self._errors.report("trace.convert", exc)
                continue
            if span is not None:
                spans.append(span)
        if not spans:
            return
        if self._closing:  # the exporter is shutting down and would refuse the batch
            self._dropped(len(spans))
            return
        started = time.perf_counter()
        sent_before = self._session.sent if self._session is not None else 0
        self._in_flight = len(spans)
        try:
            ok = self.exporter.export(spans) is SpanExportResult.SUCCESS
        except Exception as exc:  # noqa: BLE001 - an exporter bug is an export failure
            self._errors.report(f"trace.{self.name}", exc)
            ok = False
        finally:
            self._in_flight = 0
        if self._abandoned:  # shutdown gave up on this batch and counted it as dropped
            return
        elapsed = time.perf_counter() - started
        series = self._series
        if series is not None:
            series.exports.inc()
            series.duration.observe(elapsed)
            if ok:
                series.bytes.inc(self._session.sent - sent_before if self._session is not None
                                 else encode_spans(spans).ByteSize())
            else:
                series.failures.inc()
        if not ok:
            self._dropped(len(spans))
            if not self._failure_logged:
                self._failure_logged = True
                logger.warning(
                    "trace export to %s failed (%d spans dropped); later failures are "
                    "counted in persona_exporter_trace_export_failures_total{backend=%r} and "
                    "not logged", self.name, len(spans), self.name)

    def _dropped(self, count: int) -> None:
        if self._series is not None:
            self._series.dropped.inc(count)

    # --- shutdown ---

    def stop(self, deadline: float) -> None:
        self._stopping.set()
        self._wakeup.set()
        # Let the last export run, but not into the deadline: the OTLP exporter retries a
        # refused or 503 backend for up to its whole timeout. Shutting the exporter down
        # aborts those retries, so the attempt ends (and is counted) while there is time.
        # A healthy backend takes milliseconds; a second (at most half the deadline) is
        # plenty before giving up on retries.
        patience = min(1.0, max(0.0, deadline - time.monotonic()) / 2)
        self._thread.join(patience)
        self._closing = True
        closer = threading.Thread(target=self._close_exporter, daemon=True)
        closer.start()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(1 for item in self._queue if not isinstance(item, _Flush))
        if self._thread.is_alive():
            # Still exporting at the deadline: that batch will not arrive before exit.
            self._abandoned = True
            left += self._in_flight
        if left:
            self._dropped(left)
            self._queue.clear()
        # The exporters' shutdown may itself wait for an export in flight (grpc holds a
        # lock for up to 30 s), hence its own daemon thread, waited on only till the deadline.
        closer.join(max(0.0, deadline - time.monotonic()))

    def _close_exporter(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception as exc:  # noqa: BLE001
            self._errors.report(f"trace.{self.name}", exc)


class TraceSink:
    """A sink that turns traced events into spans and exports them to each backend.

    ``exporters`` maps a backend name (``langfuse``, ``otlp``) to an OpenTelemetry
    ``SpanExporter``. ``recorder`` receives the per-backend self-metrics.
    """

    needs_trace_context = True

    def __init__(self, exporters: Mapping[str, SpanExporter], *, recorder: Recorder | None = None,
                 sample_rate: float = 1.0, queue_size: int = DEFAULT_QUEUE_SIZE,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 resource: Resource | None = None) -> None:
        self.sample_rate = sample_rate
        self.shutdown_timeout = shutdown_timeout
        errors = recorder.errors if recorder is not None else ErrorReporter()
        resource = resource or Resource.create({SERVICE_NAME: "persona-exporter"})
        scope = InstrumentationScope("persona_exporter", build_version())
        self._workers = [
            _BackendWorker(name, exporter,
                           series=recorder.trace_export_series(name) if recorder else None,
                           errors=errors, queue_size=queue_size, batch_size=batch_size,
                           interval=flush_interval, resource=resource, scope=scope)
            for name, exporter in exporters.items()
        ]
        self._shut = False
        # A weak reference: the exit hook must not keep a discarded sink alive.
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(w.name for w in self._workers)

    def emit(self, event: Event) -> None:
        if getattr(event, "span_id", None) is None:
            return  # not traced (unsampled, opted out) or not a span (a start, a switch)
        for worker in self._workers:
            worker.offer(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Export everything queued so far; False if the deadline passed first."""
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        markers = [w.request_flush() for w in self._workers]
        return all(m.done.wait(max(0.0, deadline - time.monotonic())) for m in markers)

    def shutdown(self, timeout: float | None = None) -> None:
        """Export what is queued and stop, all within ``timeout`` (default: the sink's
        shutdown timeout). Safe to call twice."""
        if self._shut:
            return
        self._shut = True
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        stoppers = [threading.Thread(target=w.stop, args=(deadline,), daemon=True)
                    for w in self._workers]
        for stopper in stoppers:  # backends stop in parallel, under one deadline
            stopper.start()
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()) + 0.05)


def _shutdown_at_exit(ref: weakref.ReferenceType[TraceSink]) -> None:
    sink = ref()
    if sink is not None:
        sink.shutdown()


# --- configuration from the environment ---

def _env_float(name: str, default: float, *, low: float, high: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= low and (high is None or value <= high)):
        limit = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        logger.warning("%s=%r is not a number %s; using %g", name, raw, limit, default)
        return default
    return value


def langfuse_exporter() -> SpanExporter | None:
    """The Langfuse OTLP/HTTP exporter from ``LANGFUSE_*``, or None (with one log line
    saying why) when Langfuse is not configured."""
    if os.environ.get("LANGFUSE_TRACING_ENABLED", "true").strip().lower() == "false":
        logger.info("Langfuse tracing is off: LANGFUSE_TRACING_ENABLED=false")
        return None
    public_key = os.environ.get("LANGFUSE_PUBLIC_KEY", "").strip()
    secret_key = os.environ.get("LANGFUSE_SECRET_KEY", "").strip()
    if not public_key or not secret_key:
        missing = [n for n, v in (("LANGFUSE_PUBLIC_KEY", public_key),
                                  ("LANGFUSE_SECRET_KEY", secret_key)) if not v]
        log = logger.info if len(missing) == 2 else logger.warning
        log("Langfuse tracing is off: %s %s not set", " and ".join(missing),
            "are" if len(missing) == 2 else "is")
        return None

    from langfuse._version import __version__ as langfuse_version
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base_url = (os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
                or "https://cloud.langfuse.com").strip().rstrip("/")
    credentials = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
    # The headers the Langfuse SDK itself sends; ingestion version 4 is the v4 server's.
    headers = {
        "Authorization": f"Basic {credentials}",
        "x-langfuse-sdk-name": "python",
        "x-langfuse-sdk-version": langfuse_version,
        "x-langfuse-public-key": public_key,
        "x-langfuse-ingestion-version": "4",
    }
    compression = (Compression.NoCompression
                   if os.environ.get("LANGFUSE_OTEL_COMPRESSION", "").strip().lower() == "none"
                   else Compression.Gzip)
    timeout = _env_float("LANGFUSE_TIMEOUT", DEFAULT_LANGFUSE_TIMEOUT, low=0.001)
    logger.info("Langfuse tracing on: sending to %s", base_url)
    session = CountingSession()
    exporter = OTLPSpanExporter(endpoint=f"{base_url}/api/public/otel/v1/traces",
                                headers=headers, timeout=timeout, compression=compression,
                                session=session)
    _SESSIONS[exporter] = session
    return exporter


def otlp_exporter() -> SpanExporter | None:
    """The OTLP exporter the standard ``OTEL_*`` variables describe, or None."""
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if not endpoint:
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        exporter = GrpcExporter()
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
        session = CountingSession()
        exporter = HttpExporter(session=session)
        _SESSIONS[exporter] = session
    else:
        logger.warning("OTLP tracing is off: protocol %r is not supported "
                       "(use http/protobuf or grpc)", protocol)
        return None
    logger.info("OTLP tracing on: %s over %s", endpoint, protocol)
    result: SpanExporter = exporter
    return result


def tracing_from_env(recorder: Recorder | None = None) -> TraceSink | None:
    """A TraceSink for the backends the environment configures, or None when none is."""
    exporters = {name: exporter for name, exporter in (("langfuse", langfuse_exporter()),
                                                       ("otlp", otlp_exporter()))
                 if exporter is not None}
    if not exporters:
        return None
    sample_rate = _env_float("LANGFUSE_SAMPLE_RATE", 1.0, low=0.0, high=1.0)
    return TraceSink(
        exporters, recorder=recorder, sample_rate=sample_rate,
        queue_size=int(_env_float("PERSONA_EXPORTER_TRACE_QUEUE_SIZE", DEFAULT_QUEUE_SIZE,
                                  low=1)),
        flush_interval=_env_float("PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL",
                                  DEFAULT_FLUSH_INTERVAL, low=0.001),
        shutdown_timeout=_env_float("PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT",
                                    DEFAULT_SHUTDOWN_TIMEOUT, low=0.0))
