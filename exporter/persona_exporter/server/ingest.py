"""Batch ingest: the exporter's ``POST /v1/events``, without the HTTP.

A batch is a JSON object ``{"batch_id": "...", "events": [...]}`` (the SDK's remote sink
may add ``"dropped": {"<reason>": <count>}``, the events it lost since, counted here in
``persona_exporter_remote_events_dropped_total``), a bare JSON array of
events, or NDJSON (one event per line; the batch id then comes from the
``Idempotency-Key`` header). Every event is validated on its own: valid ones are applied,
invalid ones are reported by index with the reason, and one bad event never costs the
others. A batch id that was already applied is acknowledged with the first answer and
applied no second time, so clients can retry safely; the memory of ids is bounded.

Rejections are counted in ``persona_exporter_events_rejected_total{reason}``.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import REMOTE_DROP_REASONS
from ..events import Event, EventError, parse_event
from ..metrics.recorder import Recorder
from ..sink import Sink

DEFAULT_MAX_EVENTS = 1000
DEFAULT_REMEMBERED_BATCHES = 100_000
BATCH_ID_MAX_LENGTH = 128
# A client reports its drops since its last delivered batch; more than this in one report
# is not a count but garbage.
REMOTE_DROPS_MAX = 1_000_000_000


class BatchError(ValueError):
    """The request as a whole is unusable; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class Rejection:
    index: int
    reason: str
    message: str


@dataclass
class BatchResult:
    batch_id: str | None
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicate: bool = False
    rejected_count: int | None = None  # when ``rejected`` was cut short (a remembered answer)

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "accepted": self.accepted,
            "rejected": self.rejected_count if self.rejected_count is not None
            else len(self.rejected),
            "duplicate": self.duplicate,
            "errors": [{"index": r.index, "reason": r.reason, "message": r.message}
                       for r in self.rejected],
        }


REMEMBERED_ERRORS = 100


class RememberedBatches:
    """The answers to the last ``capacity`` batch ids, oldest forgotten first. An answer
    keeps its counts and at most REMEMBERED_ERRORS errors, so memory is bounded in bytes,
    not only in entries."""

    def __init__(self, capacity: int = DEFAULT_REMEMBERED_BATCHES) -> None:
        self._capacity = capacity
        self._answers: OrderedDict[str, BatchResult] = OrderedDict()

    def get(self, batch_id: str) -> BatchResult | None:
        return self._answers.get(batch_id)

    def remember(self, result: BatchResult) -> None:
        if result.batch_id is None:
            return
        self._answers[result.batch_id] = BatchResult(
            result.batch_id, result.accepted, result.rejected[:REMEMBERED_ERRORS],
            rejected_count=len(result.rejected))
        while len(self._answers) > self._capacity:
            self._answers.popitem(last=False)


class Ingestor:
    """Validate and apply batches of events to a recorder and any other sinks."""

    def __init__(self, recorder: Recorder, *, sinks: Sequence[Sink] = (),
                 max_events: int = DEFAULT_MAX_EVENTS,
                 remembered: RememberedBatches | None = None) -> None:
        self.recorder = recorder
        self._sinks = tuple(sinks)
        self.max_events = max_events
        self._remembered = remembered or RememberedBatches()
        # Check-then-apply of a batch id must be atomic, or two retries racing each other
        # would both apply.
        self._lock = threading.Lock()

    def ingest(self, body: bytes, *, ndjson: bool = False,
               batch_id: str | None = None) -> BatchResult:
        """Apply a batch; raise BatchError when the request as a whole is unusable."""
        try:
            events, batch_id, dropped = self._parse(body, ndjson, batch_id)
        except BatchError as error:
            self.recorder.reject(error.reason)
            raise
        if len(events) > self.max_events:
            self.recorder.reject("too_many_events")
            raise BatchError(413, "too_many_events",
                             f"{len(events)} events in one batch; at most {self.max_events}")
        with self._lock:
            if batch_id is not None:
                seen = self._remembered.get(batch_id)
                if seen is not None:
                    return BatchResult(batch_id, seen.accepted, seen.rejected, duplicate=True,
                                       rejected_count=seen.rejected_count)
            result = self._apply(events, batch_id)
            _count_remote_drops(self.recorder, dropped)
            self._remembered.remember(result)
        return result

    def _parse(self, body: bytes, ndjson: bool,
               batch_id: str | None) -> tuple[list[Any], str | None, dict[str, int]]:
        if ndjson:
            return _parse_ndjson(body), _check_batch_id(batch_id), {}
        events, body_batch_id, dropped = _parse_json(body)
        if batch_id is not None and body_batch_id is not None and batch_id != body_batch_id:
            raise BatchError(400, "malformed_body",
                             "the Idempotency-Key header and batch_id disagree")
        return (events, _check_batch_id(batch_id if batch_id is not None else body_batch_id),
                dropped)

    def _apply(self, items: list[Any], batch_id: str | None) -> BatchResult:
        result = BatchResult(batch_id)
        valid: list[Event] = []
        for index, item in enumerate(items):
            if isinstance(item, _Undecodable):
                result.rejected.append(Rejection(index, "invalid_event", item.message))
                continue
            try:
                valid.append(parse_event(item))
            except EventError as error:
                reason = "unknown_event_type" if error.unknown_type else "invalid_event"
                result.rejected.append(Rejection(index, reason, str(error)))
        for rejection in result.rejected:
            self.recorder.reject(rejection.reason)
        for event in valid:
            self.recorder.emit(event)
            for sink in self._sinks:
                try:
                    sink.emit(event)
                except Exception as exc:  # noqa: BLE001 - a bridge fault never fails ingest
                    self.recorder.errors.report(f"sink.{type(sink).__name__}", exc)
        result.accepted = len(valid)
        return result


@dataclass
class _Undecodable:
    """An NDJSON line that is not JSON: rejected by index like an invalid event."""

    message: str


def _parse_json(body: bytes) -> tuple[list[Any], str | None, dict[str, int]]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise BatchError(400, "malformed_body", f"the body is not valid JSON: {error}") from None
    if isinstance(data, list):
        return data, None, {}
    if isinstance(data, dict):
        unknown = set(data) - {"batch_id", "events", "dropped"}
        if unknown:
            raise BatchError(400, "malformed_body",
                             f"unknown batch field(s) {sorted(unknown)}; expected batch_id, "
                             "events, dropped")
        events = data.get("events")
        if not isinstance(events, list):
            raise BatchError(400, "malformed_body", "'events' must be an array of events")
        batch_id = data.get("batch_id")
        if batch_id is not None and not isinstance(batch_id, str):
            raise BatchError(400, "malformed_body", "'batch_id' must be a string")
        return events, batch_id, _check_dropped(data.get("dropped"))
    raise BatchError(400, "malformed_body",
                     'expected a JSON object {"batch_id": ..., "events": [...]} or an array')


def _check_dropped(report: Any) -> dict[str, int]:
    """The optional ``dropped`` field of a batch: a known reason -> a count of events."""
    if report is None:
        return {}
    if not isinstance(report, dict):
        raise BatchError(400, "malformed_body",
                         "'dropped' must be an object mapping a reason to a count of events")
    checked: dict[str, int] = {}
    for reason, count in report.items():
        if reason not in REMOTE_DROP_REASONS:
            raise BatchError(400, "malformed_body",
                             f"'dropped': unknown reason {reason[:40]!r}; expected one of "
                             f"{', '.join(REMOTE_DROP_REASONS)}")
        if type(count) is not int or not 0 <= count <= REMOTE_DROPS_MAX:
            raise BatchError(400, "malformed_body",
                             f"'dropped.{reason}' must be a whole number from 0 to "
                             f"{REMOTE_DROPS_MAX}, got {str(count)[:40]}")
        checked[reason] = count
    return checked


def _count_remote_drops(recorder: Recorder, report: dict[str, int]) -> None:
    """Count what an SDK client lost, as reported with a batch applied now (once: a
    duplicate batch never gets here)."""
    if report:
        family = recorder.instrument("persona_exporter_remote_events_dropped_total")
        for reason, count in report.items():
            family.labels(reason).inc(count)


def _parse_ndjson(body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8-sig")  # a leading BOM is allowed, as for JSON
    except UnicodeDecodeError:
        raise BatchError(400, "malformed_body", "the body is not UTF-8") from None
    items: list[Any] = []
    # Lines end at "\n" only: str.splitlines() would also split at U+2028 or U+0085, which
    # are legal inside a JSON string.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except (ValueError, RecursionError) as error:
            items.append(_Undecodable(f"line {number} is not valid JSON: {error}"))
    return items


def _check_batch_id(batch_id: str | None) -> str | None:
    if batch_id is None:
        return None
    if not batch_id or len(batch_id) > BATCH_ID_MAX_LENGTH or not batch_id.isascii() \
            or not batch_id.isprintable():
        raise BatchError(400, "malformed_body",
                         f"batch_id must be 1-{BATCH_ID_MAX_LENGTH} printable ASCII characters")
    return batch_id
