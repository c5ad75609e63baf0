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
  next to export attempts, failures, duration and bytes;
- prompts and completions (:mod:`.content`) arrive beside the event, only for a backend
  that captures them, and are masked, serialised and capped here, on the export thread.

The backends come from the standard environment (:mod:`.backends`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ..catalog import TRACE_BACKENDS
from ..errors import ErrorReporter
from ..events import Event, LLMGeneration
from ..metrics.recorder import Recorder, TraceExportSeries, build_version
from .content import (
    CallContent,
    Capture,
    ContentPolicy,
    check_capture,
    check_max_chars,
    max_chars_from_env,
    resolve_capture,
)
from .otlp_env import default_resource
from .otlp_http import COUNTING_SESSIONS
from .spans import SpanResource, to_span

logger = logging.getLogger("persona_exporter")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 256
DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_SHUTDOWN_TIMEOUT = 3.0

# The instrumentation scope of every span the exporter and the SDK make; the compose
# collector keeps these out of the exporter's own OTLP receiver (they were counted as
# events already).
SCOPE_NAME = "persona_exporter"


class _Flush:
    """A marker in a worker's queue: set once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


# A queued event, alone or with the content of its call.
_Item = Event | tuple[Event, CallContent]


class _BackendWorker:
    """One backend: a bounded queue, a daemon thread, an exporter and its self-metrics.

    Every span offered ends exactly once: exported, or counted in the dropped total
    (queue full, export failed, abandoned at the deadline, left at shutdown).
    """

    def __init__(self, name: str, exporter: SpanExporter, *, series: TraceExportSeries | None,
                 errors: ErrorReporter, queue_size: int, batch_size: int, interval: float,
                 resource: Resource, scope: InstrumentationScope,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 content: ContentPolicy | None = None) -> None:
        self.name = name
        self.content = content if content is not None else ContentPolicy(name, capture=False)
        self.shutdown_timeout = shutdown_timeout
        self.exporter = exporter
        self._series = series
        self._errors = errors
        self._queue: deque[_Item | _Flush] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = interval
        self._resource = resource
        self._scope = scope
        self._wakeup = threading.Event()
        # Guards the hand-overs between producers, the worker and stop(): stopping vs
        # appending, and the batch in flight vs abandoning it.
        self._lock = threading.Lock()
        self._stopping = False
        self._failure_logged = False
        self._in_flight = 0
        self._export_started: float | None = None
        self._last_export_failed = False
        self._abandoned = False
        self._closing = False
        self._session = COUNTING_SESSIONS.get(exporter)
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"persona-exporter-{self.name}",
                                        daemon=True)
        self._thread.start()

    def after_fork_in_child(self) -> None:
        # The queue holds the parent's spans (the parent exports them) and the thread did
        # not survive the fork: start clean.
        self._lock = threading.Lock()
        self._queue.clear()
        self._wakeup = threading.Event()
        if not self._stopping:
            self._start_thread()

    # --- producer side: called on the instrumented call's thread ---

    def offer(self, event: Event, content: CallContent | None = None) -> None:
        queue = self._queue
        item: _Item = (event, content) if content is not None and self.content.capture \
            else event
        with self._lock:
            if self._stopping or len(queue) >= self._queue_size:
                full = True
            else:
                queue.append(item)
                full = False
        if full:
            self._dropped(1)
        elif len(queue) >= self._batch_size and not self._wakeup.is_set():
            self._wakeup.set()

    def request_flush(self) -> _Flush:
        marker = _Flush()
        with self._lock:
            if self._stopping or not self._thread.is_alive():
                marker.done.set()  # nothing more will be exported by this worker
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
            if self._stopping:
                self._drain()
                return

    def _drain(self) -> None:
        while True:
            batch: list[_Item] = []
            markers: list[_Flush] = []
            with self._lock:
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
            if not batch and not markers:
                return

    def _convert(self, batch: list[_Item]) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = []
        for item in batch:
            if isinstance(item, tuple):
                event, content = item
            else:
                event, content = item, None
            try:
                span = to_span(event, self._resource, self._scope)
            except Exception as exc:  # noqa: BLE001 - one bad event must not sink its batch
                self._errors.report("trace.convert", exc)
                self._dropped(1)
                continue
            if span is None:
                continue
            if content is not None:
                extra = self.content.attributes(content, isinstance(event, LLMGeneration))
                if extra:
                    span = _with_attributes(span, extra)
            spans.append(span)
        return spans

    def _export(self, batch: list[_Item]) -> None:
        spans = self._convert(batch)
        if not spans:
            return
        with self._lock:
            if self._closing:  # shutdown gave up on this backend: do not start another export
                self._dropped(len(spans))
                return
            self._in_flight = len(spans)
            self._export_started = time.monotonic()
        sent_before = self._session.sent if self._session is not None else 0
        started = time.perf_counter()
        try:
            ok = self.exporter.export(spans) is SpanExportResult.SUCCESS
        except Exception as exc:  # noqa: BLE001 - an exporter bug is an export failure
            self._errors.report(f"trace.{self.name}", exc)
            ok = False
        with self._lock:
            abandoned = self._abandoned
            self._in_flight = 0
            self._export_started = None
            self._last_export_failed = not ok
        if abandoned:  # stop() counted this batch already
            return
        self._account(len(spans), ok, time.perf_counter() - started,
                      self._session.sent - sent_before if self._session is not None else None,
                      spans)

    def _account(self, count: int, ok: bool, elapsed: float, sent: int | None,
                 spans: list[ReadableSpan] | None) -> None:
        series = self._series
        if series is not None:
            series.exports.inc()
            series.duration.observe(elapsed)
            if ok:
                series.bytes.inc(sent if sent is not None
                                 else encode_spans(spans or []).ByteSize())
            else:
                series.failures.inc()
        if not ok:
            self._dropped(count)
            if not self._failure_logged:
                self._failure_logged = True
                logger.warning(
                    "trace export to %s failed (%d spans dropped); later failures are "
                    "counted in persona_exporter_trace_export_failures_total{backend=%r} and "
                    "not logged", self.name, count, self.name)

    def _dropped(self, count: int) -> None:
        if self._series is not None and count:
            self._series.dropped.inc(count)

    # --- shutdown ---

    def stop(self, deadline: float) -> None:
        with self._lock:
            self._stopping = True  # no offer can append after this
        self._wakeup.set()
        # Let the worker export what is queued while it makes progress. An export that is
        # failing or stuck - the OTLP exporter retries a refused or 503 backend for its
        # whole timeout - is given up on early: shutting the exporter down aborts the
        # retries, so the attempt ends (and is counted) while there is still time.
        patience = min(1.0, max(0.0, deadline - time.monotonic()) / 2)
        margin = min(0.25, max(0.0, deadline - time.monotonic()) / 4)
        while self._thread.is_alive() and time.monotonic() < deadline - margin:
            self._thread.join(0.02)
            with self._lock:
                started = self._export_started
                failing = self._last_export_failed
            if failing or (started is not None and time.monotonic() - started > patience):
                break
        closer = threading.Thread(target=self._close_exporter, daemon=True)
        if self._thread.is_alive():
            with self._lock:
                self._closing = True
            closer.start()
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = 0
            while self._queue:  # each leftover taken once, whoever else is still running
                if not isinstance(self._queue.popleft(), _Flush):
                    left += 1
            in_flight = 0
            if self._thread.is_alive() and self._in_flight:
                # Still exporting at the deadline: that batch will not arrive before exit.
                self._abandoned = True
                in_flight = self._in_flight
        if in_flight and self._series is not None:
            self._series.exports.inc()
            self._series.failures.inc()
        self._dropped(left + in_flight)
        if not closer.is_alive() and closer.ident is None:
            closer.start()
        # The exporters' shutdown may itself wait for an export in flight (grpc holds a
        # lock for up to 30 s), hence its own daemon thread, waited on only till the deadline.
        closer.join(max(0.0, deadline - time.monotonic()))

    def _close_exporter(self) -> None:
        try:
            self.exporter.shutdown()
        except Exception as exc:  # noqa: BLE001
            self._errors.report(f"trace.{self.name}", exc)


def _with_attributes(span: ReadableSpan, extra: Mapping[str, Any]) -> ReadableSpan:
    """``span`` with ``extra`` attributes added. A ReadableSpan is read-only, but the ones
    :mod:`.spans` builds hold the fresh dict they were given, which nothing else refers to:
    adding to it saves a copy of the span (a few us of the export thread per span)."""
    attributes = getattr(span, "_attributes", None)
    if type(attributes) is dict:
        attributes.update(extra)
        return span
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes={**(span.attributes or {}), **extra}, events=span.events,
        links=span.links, kind=span.kind, status=span.status, start_time=span.start_time,
        end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)


# Every live worker, for the one exit hook and for fork children. Workers do not refer to
# their sink, so a sink nobody holds is collected, and its finaliser stops its workers.
_LIVE: set[_BackendWorker] = set()
_LIVE_LOCK = threading.Lock()


def _stop_workers(workers: list[_BackendWorker], timeout: float) -> None:
    with _LIVE_LOCK:
        workers = [w for w in workers if w in _LIVE]
        _LIVE.difference_update(workers)
    if not workers:
        return
    deadline = time.monotonic() + timeout
    stoppers = [threading.Thread(target=w.stop, args=(deadline,), daemon=True) for w in workers]
    for stopper in stoppers:  # backends stop in parallel, under one deadline
        stopper.start()
    for stopper in stoppers:
        stopper.join(max(0.0, deadline - time.monotonic()) + 0.05)


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        workers = list(_LIVE)
    timeout = max((w.shutdown_timeout for w in workers), default=0.0)
    _stop_workers(workers, timeout)


def _restart_after_fork() -> None:
    for worker in list(_LIVE):
        worker.after_fork_in_child()


atexit.register(_stop_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)


class TraceSink:
    """A sink that turns traced events into spans and exports them to each backend.

    ``exporters`` maps a backend name (``langfuse``, ``otlp``) to an OpenTelemetry
    ``SpanExporter``. ``recorder`` receives the per-backend self-metrics.

    Prompts and completions (:mod:`.content`): ``capture_content`` (True, False, or a
    mapping of backend name to bool; default from the environment: on for ``langfuse``,
    off for the others), ``mask`` (called as ``mask(data=value)`` on the export thread)
    and ``content_max_chars`` (per attribute; default from
    ``PERSONA_EXPORTER_TRACE_CONTENT_MAX_CHARS``, else 32768).
    """

    # Events made from received spans are not sent again as spans of ours: the spans
    # exist already (and went on through otlp_forward); a second copy with the same ids
    # would be a duplicate observation in Langfuse.
    makes_spans = True

    needs_trace_context = True

    def __init__(self, exporters: Mapping[str, SpanExporter], *, recorder: Recorder | None = None,
                 sample_rate: float = 1.0, queue_size: int = DEFAULT_QUEUE_SIZE,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 resource: Resource | None = None, capture_content: Capture = None,
                 mask: Callable[..., Any] | None = None,
                 content_max_chars: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.shutdown_timeout = shutdown_timeout
        self._recorder = recorder
        errors = recorder.errors if recorder is not None else ErrorReporter()
        self._errors = errors
        resource = SpanResource(resource or default_resource())
        scope = InstrumentationScope(SCOPE_NAME, build_version())
        self._workers = [
            _BackendWorker(name, exporter,
                           series=recorder.trace_export_series(name) if recorder else None,
                           errors=errors, queue_size=queue_size, batch_size=batch_size,
                           interval=flush_interval, resource=resource, scope=scope,
                           shutdown_timeout=shutdown_timeout)
            for name, exporter in exporters.items()
        ]
        self.wants_content = False
        self.configure_content(capture_content, mask=mask, max_chars=content_max_chars)
        with _LIVE_LOCK:
            _LIVE.update(self._workers)
        # A sink dropped without shutdown (configure() called again) stops its workers.
        self._finalizer = weakref.finalize(self, _stop_workers, list(self._workers),
                                           shutdown_timeout)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(w.name for w in self._workers)

    def configure_content(self, capture: Capture = None, *,
                          mask: Callable[..., Any] | None = None,
                          max_chars: int | None = None) -> None:
        """Set the content rules of every backend (arguments as in the constructor). Call
        it before the sink is given to a ``Telemetry``, which reads ``wants_content`` once."""
        check_capture(capture, (*TRACE_BACKENDS, *(w.name for w in self._workers)))
        limit = check_max_chars(max_chars) or max_chars_from_env()
        if mask is not None and not callable(mask):
            raise ValueError(f"mask: expected a callable, got {type(mask).__name__}")
        for worker in self._workers:
            worker.content = ContentPolicy(
                worker.name, capture=resolve_capture(worker.name, capture), mask=mask,
                max_chars=limit, truncated=self._truncated_counters(worker.name),
                errors=self._errors)
        self.wants_content = any(w.content.capture for w in self._workers)

    def _truncated_counters(self, backend: str) -> Any:
        if self._recorder is None:
            return None
        return self._recorder.instrument(
            "persona_exporter_trace_content_truncated_total").labels(backend)

    def emit(self, event: Event) -> None:
        if getattr(event, "span_id", None) is None:
            return  # not traced (unsampled, opted out) or not a span (a start, a switch)
        for worker in self._workers:
            worker.offer(event)

    def emit_content(self, event: Event, content: CallContent) -> None:
        """``emit`` with the call's prompt and completion, which go only to the backends
        that capture content (``Telemetry.emit`` calls this when ``wants_content``)."""
        if getattr(event, "span_id", None) is None:
            return
        for worker in self._workers:
            worker.offer(event, content)

    def flush(self, timeout: float | None = None) -> bool:
        """Export everything queued so far; False if the deadline passed first."""
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        markers = [w.request_flush() for w in self._workers]
        return all(m.done.wait(max(0.0, deadline - time.monotonic())) for m in markers)

    def shutdown(self, timeout: float | None = None) -> None:
        """Export what is queued and stop, all within ``timeout`` (default: the sink's
        shutdown timeout). Safe to call twice."""
        self._finalizer.detach()
        _stop_workers(self._workers, self.shutdown_timeout if timeout is None else timeout)


class _OncePerMessage(logging.Filter):
    """Let each distinct message template of a logger through once. The OTLP exporters log
    every failed batch; here failures are counted per backend and the first one is logged,
    so the host's logs never fill with the same line."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, str(record.msg))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
)
for _name in _EXPORTER_LOGGERS:
    logging.getLogger(_name).addFilter(_OncePerMessage())
