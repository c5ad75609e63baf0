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

import contextlib
import contextvars
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import REMOTE_DROP_REASONS
from ..events import (
    MAX_ERROR_MESSAGE,
    Event,
    EventError,
    parse_event,
    parse_valid_events,
    short_repr,
)
from ..metrics.recorder import Recorder
from ..metrics.state import Changes, restore, take_changes, zero_state
from ..sink import Sink
from .storage import StorageError, Store, StoredBatch

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
        # A batch that stays applied although this error is answered (its state could not
        # be stored and it cannot be taken back): what it did.
        self.applied: BatchResult | None = None


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


# What a remembered answer keeps: its counts, the first errors, each cut short. That
# bounds one answer to a few KB whatever the batch held; the byte budget bounds them all.
REMEMBERED_ERRORS = 10
REMEMBERED_MESSAGE_CHARS = 200
DEFAULT_REMEMBERED_BYTES = 64 * 1024 * 1024


@dataclass
class Remembered:
    """The answer given to a batch id, the hash of the body that got it, and whether the
    state it produced is on disk yet."""

    result: BatchResult
    digest: bytes
    size: int
    durable: bool = True


class RememberedBatches:
    """The answers to the last ``capacity`` batch ids, and at most ``max_bytes`` of them,
    oldest forgotten first."""

    def __init__(self, capacity: int = DEFAULT_REMEMBERED_BATCHES,
                 max_bytes: int = DEFAULT_REMEMBERED_BYTES) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._answers: OrderedDict[str, Remembered] = OrderedDict()

    def get(self, batch_id: str) -> Remembered | None:
        return self._answers.get(batch_id)

    def remember(self, result: BatchResult, digest: bytes, *,
                 durable: bool = True) -> Remembered | None:
        if result.batch_id is None:
            return None
        kept = BatchResult(
            result.batch_id, result.accepted,
            [Rejection(r.index, r.reason, r.message[:REMEMBERED_MESSAGE_CHARS])
             for r in result.rejected[:REMEMBERED_ERRORS]],
            rejected_count=result.rejected_count if result.rejected_count is not None
            else len(result.rejected))
        size = 200 + len(kept.batch_id or "") + sum(len(r.message) + 64 for r in kept.rejected)
        entry = Remembered(kept, digest, size, durable)
        previous = self._answers.pop(result.batch_id, None)
        if previous is not None:
            self._bytes -= previous.size
        self._answers[result.batch_id] = entry
        self._bytes += size
        while len(self._answers) > self._capacity or self._bytes > self._max_bytes:
            _, dropped = self._answers.popitem(last=False)
            self._bytes -= dropped.size
        return entry

    def forget(self, batch_id: str) -> None:
        entry = self._answers.pop(batch_id, None)
        if entry is not None:
            self._bytes -= entry.size

    def restore(self, stored: StoredBatch) -> None:
        """Remember a batch from durable storage (oldest first)."""
        answer = json.loads(stored.answer)
        result = BatchResult(
            stored.batch_id, int(answer["accepted"]),
            [Rejection(int(e["index"]), str(e["reason"]), str(e["message"]))
             for e in answer["errors"]],
            rejected_count=int(answer["rejected"]))
        self.remember(result, stored.digest)

    def __len__(self) -> int:
        return len(self._answers)


class Ingestor:
    """Validate and apply batches of events to a recorder and any other sinks, and keep
    the result in ``store`` when one is given."""

    def __init__(self, recorder: Recorder, *, sinks: Sequence[Sink] = (),
                 max_events: int = DEFAULT_MAX_EVENTS,
                 remembered: RememberedBatches | None = None,
                 store: Store | None = None) -> None:
        self.recorder = recorder
        self._sinks = tuple(sinks)
        self._metric_sinks = tuple(s for s in sinks if not getattr(s, "makes_spans", False))
        self.max_events = max_events
        self._remembered = remembered or RememberedBatches()
        self._store = store
        if store is not None:
            recorder.track_changes()
            for stored in store.restore_into(recorder):
                try:
                    self._remembered.restore(stored)
                except (ValueError, KeyError, TypeError) as error:
                    recorder.errors.report("storage", f"UnreadableBatch:{type(error).__name__}")
        # Check-then-apply of a batch id must be atomic, or two retries racing each other
        # would both apply; it also keeps the commits in the order of the batches.
        self._lock = threading.Lock()
        # Set by the OTLP receiver: the held spans changed since the last commit, stored
        # with it.
        self.held_changes: Callable[[], tuple[list[tuple[str, str]], list[str]]] | None = None
        self._ahead_of_disk = False  # the memory holds applied batches the disk has not

    def ingest(self, body: bytes, *, ndjson: bool = False,
               batch_id: str | None = None) -> BatchResult:
        """Apply a batch; raise BatchError when the request as a whole is unusable (409: its
        id came before with other content; 503: its state could not be stored)."""
        try:
            events, batch_id, dropped = self._parse(body, ndjson, batch_id)
        except BatchError as error:
            self.recorder.reject(error.reason)
            raise
        if len(events) > self.max_events:
            self.recorder.reject("too_many_events")
            raise BatchError(413, "too_many_events",
                             f"{len(events)} events in one batch; at most {self.max_events}")
        # The body's hash tells a retry (the same bytes) from an id reused for other events.
        digest = hashlib.blake2b(body, digest_size=16).digest() if batch_id is not None else b""

        def apply() -> BatchResult:
            result = self._apply(events, batch_id)
            # the client's own drop report, counted once with its batch (and stored with it)
            _count_remote_drops(self.recorder, dropped)
            return result

        return self.apply_batch(batch_id, digest, apply)

    def apply_batch(self, batch_id: str | None, digest: bytes,
                    apply: Callable[[], BatchResult], *,
                    revertible: bool = True) -> BatchResult:
        """Run ``apply`` (which changes the recorder) once per batch id, and store what it
        changed with the id and its answer; a batch id seen before gets its first answer.
        The OTLP receiver (``otlp``) comes in here too, with the hash of its body as id.

        When the state cannot be stored, a ``revertible`` batch is taken back (503: not
        applied); another stays applied in memory and its retry (same id, same body) is
        acknowledged once a later write catches up: the OTLP receiver's per-trace state
        cannot be taken back, and a retry must not find its spans already seen."""
        with self._lock:
            if batch_id is not None:
                seen = self._remembered.get(batch_id)
                if seen is not None:
                    return self._answer_again(seen, digest)
            result = apply()
            entry = self._remembered.remember(result, digest)
            if self._store is not None:
                try:
                    self._commit(self._store, entry, revertible=revertible)
                except BatchError as error:
                    # applied in memory (not revertible): the caller still has to act on it
                    error.applied = None if revertible else result
                    raise
        return result

    def run_locked(self, task: Callable[[], None]) -> None:
        """Run ``task`` (which changes the recorder outside any batch, e.g. releasing held
        spans) between two batches, and store what it changed."""
        with self._lock:
            task()
            if self._store is not None:
                # a failure is counted, and the next commit carries the rows along
                with contextlib.suppress(BatchError):
                    self._commit(self._store, None)

    def emit(self, events: Sequence[Event], *, from_spans: bool = False,
             validated: bool = False) -> None:
        """Apply valid events to the recorder and every sink (a sink's fault never fails
        ingest); ``from_spans``: events made from received spans skip the sinks that make
        spans (``makes_spans``), which would send them a second time; ``validated``: the
        events are parse_event's, as they came (not changed since), so the recorder need
        not check their numbers again."""
        sinks = self._sinks if not from_spans else self._metric_sinks
        record = self.recorder.emit_validated if validated else self.recorder.emit
        for event in events:
            record(event)
            for sink in sinks:
                try:
                    sink.emit(event)
                except Exception as exc:  # noqa: BLE001 - a bridge fault never fails ingest
                    self.recorder.errors.report(f"sink.{type(sink).__name__}", exc)

    def _answer_again(self, seen: Remembered, digest: bytes) -> BatchResult:
        first = seen.result
        if seen.digest != digest:
            self.recorder.reject("batch_id_conflict")
            raise BatchError(409, "batch_id_conflict",
                             f"batch id {first.batch_id!r} was applied before with other "
                             "content; a retry must send the same body, and new events need "
                             "a new id")
        if not seen.durable:  # applied, not yet stored: acknowledge only once it is
            self._flush()
            seen.durable = True
        return BatchResult(first.batch_id, first.accepted, first.rejected, duplicate=True,
                           rejected_count=first.rejected_count)

    def _commit(self, store: Store, entry: Remembered | None, *,
                revertible: bool = True) -> None:
        batch = None
        if entry is not None:
            batch = StoredBatch(entry.result.batch_id or "", entry.digest,
                                json.dumps(entry.result.to_json(), separators=(",", ":")))
        changes = self._changes()
        try:
            store.commit(changes, batch)
            self._ahead_of_disk = False
        except StorageError as error:
            self.recorder.errors.report("storage", "CommitFailed")
            # Taking a batch back puts its series to what the disk holds: not while the
            # memory holds an earlier batch the disk has not, which that would lose.
            if revertible and not self._ahead_of_disk and self._revert(store, changes, entry):
                raise BatchError(503, "storage_unavailable",
                                 f"the batch could not be stored ({error}), so it was not "
                                 "applied; retry it") from None
            # The disk cannot even be read (or the batch cannot be taken back): memory
            # stays ahead of it, and the batch is acknowledged (as a duplicate) only once a
            # later write catches up.
            self._ahead_of_disk = True
            if entry is not None:
                entry.durable = False
            raise BatchError(503, "storage_unavailable",
                             f"the batch was applied but could not be stored ({error}); "
                             "retry it with the same body") from None

    def _changes(self) -> Changes:
        changes = take_changes(self.recorder)
        if self.held_changes is not None:
            changes.held, changes.released = self.held_changes()
        return changes

    def _revert(self, store: Store, changes: Changes, entry: Remembered | None) -> bool:
        """Put the series a failed commit touched back to what the disk holds, so the
        503 means "not applied": a scrape never saw a count that a restart would take
        back (Prometheus would read that as a counter reset). False when the disk cannot
        be read either."""
        keys = [(kind, labels) for kind, labels, _ in changes.rows]
        try:
            committed, scalars = store.committed(keys)
        except StorageError:
            return False
        restore(self.recorder, [(kind, labels, committed.get((kind, labels))
                                 or zero_state(kind)) for kind, labels in keys],
                scalars)
        store.discard_pending()
        if entry is not None and entry.result.batch_id is not None:
            self._remembered.forget(entry.result.batch_id)
        return True

    def save_state(self) -> None:
        """Store what changed outside batches (whole requests refused: 401, 413, ...);
        run periodically and at stop. Never raises."""
        if self._store is None:
            return
        with self._lock:
            try:
                self._store.commit(self._changes(), None)
                self._ahead_of_disk = False
            except StorageError:
                self.recorder.errors.report("storage", "CommitFailed")
        self._store.checkpoint()

    def _flush(self) -> None:
        if self._store is None:
            return
        try:
            self._store.flush()
        except StorageError as error:
            raise BatchError(503, "storage_unavailable",
                             f"the state could not be stored ({error}); retry later") from None

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
        # The whole batch at once; one by one only when some event is invalid, so each
        # error is named as before and the valid ones are kept.
        parsed = parse_valid_events(items)
        if parsed is not None:
            self.emit(parsed, validated=True)
            result.accepted = len(parsed)
            return result
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
        self.emit(valid, validated=True)
        result.accepted = len(valid)
        return result


@dataclass
class _Undecodable:
    """An NDJSON line that is not JSON: rejected by index like an invalid event."""

    message: str


def _parse_json(body: bytes) -> tuple[list[Any], str | None, dict[str, int]]:
    try:
        data = _decode(body)
    except (ValueError, RecursionError) as error:
        raise BatchError(400, "malformed_body", f"the body is not valid JSON: {error}") from None
    if isinstance(data, _DuplicateKeys):
        raise BatchError(400, "malformed_body",
                         f"duplicate key {short_repr(data.key)} in the batch object")
    if isinstance(data, list):
        return _mark_duplicates(data), None, {}
    if isinstance(data, dict):
        unknown = set(data) - {"batch_id", "events", "dropped"}
        if unknown:
            names = ", ".join(short_repr(name, limit=24) for name in sorted(unknown)[:3])
            raise BatchError(400, "malformed_body",
                             f"{len(unknown)} unknown batch field(s): {names}; expected "
                             "batch_id, events, dropped")
        events = data.get("events")
        if not isinstance(events, list):
            raise BatchError(400, "malformed_body", "'events' must be an array of events")
        batch_id = data.get("batch_id")
        if batch_id is not None and not isinstance(batch_id, str):
            raise BatchError(400, "malformed_body", "'batch_id' must be a string")
        return _mark_duplicates(events), batch_id, _check_dropped(data.get("dropped"))
    raise BatchError(400, "malformed_body",
                     'expected a JSON object {"batch_id": ..., "events": [...]} or an array')


def _check_dropped(report: Any) -> dict[str, int]:
    """The optional ``dropped`` field of a batch: a known reason -> a count of events."""
    if report is None:
        return {}
    if not isinstance(report, dict):
        raise BatchError(400, "malformed_body",
                         "'dropped' must be an object mapping a reason to a count of events")
    if isinstance(report, _DuplicateKeys):
        raise BatchError(400, "malformed_body",
                         f"'dropped': duplicate key {short_repr(report.key)}")
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
            item = _decode(line)
        except (ValueError, RecursionError) as error:
            item = _Undecodable(f"line {number} is not valid JSON: {error}")
        if _DUPLICATES_SEEN.get(False):  # only then is a walk worth it
            found = _first_duplicate(item)
            if found is not None:
                item = _Undecodable(_bounded(f"line {number}: {found}"))
        items.append(item)
    return items


class _DuplicateKeys(dict[str, Any]):
    """A JSON object that named a key twice; ``key`` is the first one repeated."""

    key: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The object_pairs_hook: JSON itself allows duplicate keys and json.loads keeps the
    # last, so {"input_tokens": 1, "input_tokens": 10**6} would be read as a million
    # without a word. Marked rather than raised, so only the event holding it is refused.
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _DuplicateKeys(obj)
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    _DUPLICATES_SEEN.set(True)
    return marked


# One decoder for every request (building one per call costs more than the hook).
_DECODER = json.JSONDecoder(object_pairs_hook=_object)
_DUPLICATES_SEEN: contextvars.ContextVar[bool] = contextvars.ContextVar("_DUPLICATES_SEEN")


def _decode(data: bytes | str) -> Any:
    _DUPLICATES_SEEN.set(False)
    if isinstance(data, bytes):
        # as json.loads: UTF-8 (a BOM allowed), UTF-16 or UTF-32 by the first bytes
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _DECODER.decode(data)


def _first_duplicate(value: Any) -> str | None:
    """'path: duplicate key ...' for the first marked object in ``value``, at any depth."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _DuplicateKeys):
            return f"{path + ': ' if path else ''}duplicate key {short_repr(item.key)}"
        # reversed: the stack then pops them in document order
        if isinstance(item, dict):
            stack.extend(reversed([(_child(path, k), v) for k, v in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([(_child(path, i), v) for i, v in enumerate(item)]))
    return None


def _child(path: str, part: str | int) -> str:
    # The path quotes the client's keys: each is cut short, and so is the whole.
    if len(path) > 200:
        return path
    if isinstance(part, int):
        return f"{path}[{part}]"
    name = short_repr(part, quote=False, limit=24)
    return f"{path}.{name}" if path else name


def _mark_duplicates(events: list[Any]) -> list[Any]:
    """The events, with each one holding a duplicate key replaced by its rejection."""
    if not _DUPLICATES_SEEN.get(False):
        return events
    marked: list[Any] = []
    for item in events:
        found = _first_duplicate(item)
        marked.append(item if found is None else _Undecodable(_bounded(found)))
    return marked


def _bounded(message: str) -> str:
    return short_repr(message, quote=False, limit=MAX_ERROR_MESSAGE)


def _check_batch_id(batch_id: str | None) -> str | None:
    if batch_id is None:
        return None
    if batch_id.startswith("otlp:"):
        raise BatchError(400, "malformed_body",
                         "batch ids starting with 'otlp:' are the OTLP receiver's")
    if not batch_id or len(batch_id) > BATCH_ID_MAX_LENGTH or not batch_id.isascii() \
            or not batch_id.isprintable():
        raise BatchError(400, "malformed_body",
                         f"batch_id must be 1-{BATCH_ID_MAX_LENGTH} printable ASCII characters")
    return batch_id
