"""The remote sink: the SDK ships its events to a running ``persona-exporter serve``.

For processes Prometheus cannot scrape (a CLI run, a CI job, an IDE extension). Events are
appended to a bounded queue - all the caller pays - and a background thread posts them in
batches to ``POST /v1/events``. Each batch is serialised once, with an id, and every retry
and the spool send exactly those bytes, so the exporter counts it once however often it
arrives.

A circuit breaker keeps an outage cheap: the first batch that fails (connection refused, a
timeout, 401/403, 429 or 5xx) opens it. While it is open no batch is tried on its own; with a spool
directory every batch - the queued ones and each new one - goes straight to the spool, so
the queue never fills. The sink probes for recovery with the oldest spooled batch, backing
off up to ``probe_interval_max``; once one gets through it drains the spool oldest first
(new batches queue behind it on disk, in order) and then goes back to sending directly.
Without a spool the failed batch is held in memory as the probe and the queue waits behind
it until it is full. The spool outlives the process: a later process delivers it.

What is lost anyway (the queue or the spool is full, a spool write fails, there is no
spool, the exporter refuses a batch for good) is counted by reason in
``persona_exporter_remote_events_dropped_total``, logged once per reason, and reported to
the exporter in the next batch built (``"dropped": {reason: count}``), so its ``/metrics``
shows it. An unusable spool directory never raises: the sink runs without one, says so once
and counts what that costs as ``spool_unusable``.

    telemetry = Telemetry(registry=registry, sinks=[RemoteSink("http://127.0.0.1:9464",
                                                                spool_dir=".persona-spool")])

With ``trace_context=True`` the events carry trace and span ids, and an exporter with a
trace backend makes the spans (persona-as-user) from them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests

from ..events import Event, event_to_dict
from ..metrics.recorder import Recorder

logger = logging.getLogger("persona_exporter")

# Answers that open the circuit and keep the batch. 401 and 403 too: a token is fixed and
# the spool then delivered, where dropping would lose the whole outage to a typo.
RETRYABLE = frozenset({401, 403, 408, 425, 429, 500, 502, 503, 504})
# A claim on a spool file older than this belongs to a process that died while sending.
STALE_CLAIM_SECONDS = 300.0
# A temporary spool file this old belongs to a writer that died mid-write (a write takes
# milliseconds; a younger one may be another live process's, sharing the directory).
STALE_TEMPORARY_SECONDS = 60.0
DEFAULT_SPOOL_MAX_BYTES = 256 * 2**20
FIRST_PROBE_DELAY = 0.5
RETRY_DELAY = 0.2
# The exporter refuses a larger count per reason in one report; the rest waits for the next.
REPORT_MAX = 1_000_000_000

Outcome = Literal["delivered", "refused", "failed"]

_SINKS: weakref.WeakSet[RemoteSink] = weakref.WeakSet()

_DROP_CAUSES = {
    "queue_full": "the queue was full",
    "undeliverable": "the exporter did not answer and there is no spool",
    "spool_full": "the spool is full",
    "spool_failed": "a spool write failed",
    "spool_corrupt": "a spool file was corrupt",
    "spool_unusable": "the spool directory is unusable",
    "refused": "the exporter refused a batch",
}


@dataclass(frozen=True)
class _Batch:
    """A batch as it goes on the wire, built once: the exporter takes a batch id back only
    with the same content, so a retry must not re-serialise it (nor re-attach a report)."""

    batch_id: str
    body: bytes
    events: int
    dropped: dict[str, int]


class RemoteSink:
    """Post events to an exporter's ``/v1/events``, batched, retried, optionally spooled.

    ``retries`` is how many times a batch is tried again at once (not after a timeout)
    before the circuit opens; ``spool_max_bytes`` bounds the spool directory.
    """

    def __init__(self, url: str, *, token: str | None = None, recorder: Recorder | None = None,
                 spool_dir: str | Path | None = None, batch_size: int = 100,
                 queue_size: int = 10_000, flush_interval: float = 1.0,
                 request_timeout: float = 5.0, retries: int = 1,
                 shutdown_timeout: float = 3.0, trace_context: bool = False,
                 sample_rate: float = 1.0, spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
                 probe_interval_max: float = 5.0) -> None:
        if not 0.0 <= sample_rate <= 1.0:  # also refuses NaN
            raise ValueError(f"RemoteSink.sample_rate: expected a number from 0 to 1, got "
                             f"{sample_rate!r}")
        self.url = url.rstrip("/") + "/v1/events"
        # With trace_context the SDK gives the events trace and span ids (for a share
        # sample_rate of the runs), and the exporter turns them into spans for the trace
        # backends configured there: one process holds the Langfuse/OTLP credentials and
        # its trace self-metrics are scraped with the rest.
        self.needs_trace_context = trace_context
        self.sample_rate = sample_rate
        self.shutdown_timeout = shutdown_timeout
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._batch_size = max(1, batch_size)
        self._queue_size = queue_size
        self._interval = flush_interval
        self._timeout = request_timeout
        self._retries = max(0, retries)
        self._spool_max = spool_max_bytes
        self._probe_max = max(FIRST_PROBE_DELAY, probe_interval_max)
        self._queue: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._session = requests.Session()
        self._logged: set[str] = set()
        self._undelivered = 0  # batches spooled, held or dropped, for flush() to report
        self._overflow = 0  # events emit() turned away, for the worker to count
        self._unreported: dict[str, int] = {}  # drops not yet frozen into a batch
        self._held: _Batch | None = None  # without a spool: the batch that failed, the probe
        self._reports = True  # off once the exporter turns out not to take drop reports
        self._refusal = ""  # the body of the last refusal, to tell why
        self._reset_circuit()
        self._batches = (recorder.instrument("persona_exporter_remote_batches_total")
                         if recorder is not None else None)
        self._drops = (recorder.instrument("persona_exporter_remote_events_dropped_total")
                       if recorder is not None else None)
        self._errors = (recorder.instrument("persona_exporter_internal_errors_total")
                        if recorder is not None else None)
        self._spool_unusable = False
        self._spool = self._open_spool(spool_dir) if spool_dir else None
        self._spool_bytes = 0
        self._spool_pending = self._spool is not None  # files may wait there: look first
        self._last_spool_ns = 0
        self._start_thread()
        _SINKS.add(self)  # the one exit hook and the fork hook find it here

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="persona-exporter-remote",
                                        daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # The parent's queue, held batch and drop report are the parent's to deliver, and
        # its thread did not survive.
        self._lock = threading.Lock()
        self._queue.clear()
        self._held = None
        self._overflow = 0
        self._unreported = {}
        self._reset_circuit()
        self._spool_pending = self._spool is not None
        self._wakeup = threading.Event()
        self._session = requests.Session()
        if not self._stopping:
            self._start_thread()

    # --- the caller's side ---

    def emit(self, event: Event) -> None:
        with self._lock:
            if self._stopping or len(self._queue) >= self._queue_size:
                self._overflow += 1  # counted by the worker: no logging on this thread
                stopped = self._stopping
                queued = 0
            else:
                self._queue.append(event)
                stopped = False
                queued = len(self._queue)
        if stopped and not self._thread.is_alive():
            self._count_overflow()  # nobody else will
        elif queued >= self._batch_size and not self._wakeup.is_set():
            self._wakeup.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now. True only if all of it reached the exporter in time
        (False when some went to the spool, was dropped, or is still queued)."""
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        undelivered = self._undelivered
        self._wakeup.set()
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._sending:
                    return self._undelivered == undelivered and self._held is None
            time.sleep(0.01)
        return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Deliver or spool what is queued, within ``timeout``; safe to call twice."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._deadline = time.monotonic() + (self.shutdown_timeout if timeout is None
                                             else timeout)
        self._wakeup.set()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        stuck = self._thread.is_alive()
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            in_flight = self._in_flight if stuck else None
            held, self._held = self._held, None
        # Still being sent at the deadline: keep it too. If the send does land after all,
        # the exporter counts the batch id once.
        for batch in (held, in_flight):
            if batch is not None:
                self._keep(batch)
        for start in range(0, len(left), self._batch_size):  # the thread ran out of time
            self._keep(self._build(left[start:start + self._batch_size]))
        self._count_overflow()
        if self._spool is not None and self._unreported:
            self._keep(self._build([]))  # a later process reports what this one lost

    # --- the worker ---

    _sending = False
    _in_flight: _Batch | None = None
    _deadline = float("inf")

    def _run(self) -> None:
        if self._spool is not None:  # here, not in the constructor: the host's thread
            self._remove_stale_temporaries(self._spool)  # never waits for a big directory
        first = True
        while True:
            if not first:
                self._wakeup.wait(self._next_wait())
                self._wakeup.clear()
            first = False
            try:
                self._cycle()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                self._log_once("worker", f"remote sink error: {type(exc).__name__}: {exc}")
            if self._stopping:
                return

    def _next_wait(self) -> float:
        if not self._open or not self._has_backlog():
            return self._interval
        return max(0.01, min(self._interval, self._probe_at - time.monotonic()))

    def _cycle(self) -> None:
        self._count_overflow()
        if not self._stopping and self._has_backlog() and self._may_send():
            self._deliver_backlog()
        self._drain_queue()
        if self._unreported:
            self._drain_queue(report_only=True)
        self._count_overflow()

    def _drain_queue(self, *, full_only: bool = False, report_only: bool = False) -> None:
        """Batch the queue and send each batch, or spool it when the circuit is open or
        older batches wait in the spool (delivery stays in order)."""
        while True:
            if self._spool is None and self._held is not None and not self._stopping:
                return  # no spool: the queue waits in memory behind the held batch
            with self._lock:
                size = 0 if report_only else min(self._batch_size, len(self._queue))
                if full_only and size < self._batch_size:
                    return
                events = [self._queue.popleft() for _ in range(size)]
                self._sending = bool(events) or report_only
            try:
                if not events and not report_only:
                    return
                batch = self._in_flight = self._build(events)
                self._dispatch(batch)
            finally:
                with self._lock:
                    self._sending = False
                    self._in_flight = None
            if report_only:
                return

    def _build(self, events: list[Event]) -> _Batch:
        report = self._take_report()
        batch_id = uuid.uuid4().hex
        payload: dict[str, Any] = {"batch_id": batch_id,
                                   "events": [event_to_dict(e) for e in events]}
        if report:
            payload["dropped"] = report
        body = json.dumps(payload, separators=(",", ":")).encode()
        return _Batch(batch_id, body, len(events), report)

    def _dispatch(self, batch: _Batch) -> None:
        if not self._has_backlog() and self._may_send():
            attempts = 1 if self._open or self._stopping else 1 + self._retries
            batch, outcome = self._send(batch, attempts)
            if self._settle(batch, outcome):
                return
        self._keep(batch)

    def _keep(self, batch: _Batch) -> None:
        """A batch that cannot go now: to the spool, held in memory as the probe (no
        spool), or, when exiting without a spool, dropped."""
        self._undelivered += 1
        if self._spool is not None:
            self._spool_write(self._spool, batch)
        elif self._stopping or self._held is not None:
            self._drop_batch(batch, "spool_unusable" if self._spool_unusable
                             else "undeliverable")
        else:
            self._held = batch

    def _settle(self, batch: _Batch, outcome: Outcome) -> bool:
        """Account for a send; False when the batch is still to be delivered."""
        if outcome == "failed":
            self._trip()
            return False
        self._reset_circuit()
        if outcome == "delivered":
            self._count("sent")
        else:
            self._drop_batch(batch, "refused")
        return True

    def _send(self, batch: _Batch, attempts: int) -> tuple[_Batch, Outcome]:
        """Post a batch. An exporter older than drop reports refuses a batch carrying one
        (400 naming 'dropped'): rather than lose the events, they go again without it and
        no report is sent to this exporter any more. The batch sent is returned."""
        if batch.dropped and not self._reports:
            batch = _without_report(batch)
        outcome = self._post(batch, attempts)
        if (outcome == "refused" and batch.dropped and self._refusal.startswith("400 ")
                and "dropped" in self._refusal):
            self._reports = False
            with self._lock:
                self._unreported.clear()
            self._log_once("reports", "the exporter does not take drop reports (an older "
                                      "version?); sending events without them from now on")
            batch = _without_report(batch)
            outcome = self._post(batch, 1)
        return batch, outcome

    def _post(self, batch: _Batch, attempts: int) -> Outcome:
        """One batch, up to ``attempts`` times; "delivered" once the exporter has it (2xx,
        or 422: its valid events applied and the rest will never be accepted)."""
        for attempt in range(attempts):
            timeout = self._timeout
            if self._stopping:  # exiting: within what is left of the deadline
                timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
            try:
                response = self._session.post(self.url, data=batch.body, headers=self._headers,
                                              timeout=timeout)
            except requests.Timeout:
                self._log_once("timeout", f"the exporter at {self.url} did not answer within "
                                          f"{timeout:g} s")
                return "failed"  # a hanging exporter must not hold the worker twice
            except requests.RequestException as exc:
                self._log_once("connect", f"cannot reach the exporter at {self.url}: "
                                          f"{type(exc).__name__}")
            else:
                status = response.status_code
                if status < 300 or status == 422:
                    return "delivered"
                if status not in RETRYABLE:  # 400, 404, 409, 413, 415: it will not change
                    self._refusal = f"{status} {response.text[:500]}"
                    if not (status == 400 and batch.dropped):  # see _send
                        self._log_once(f"http{status}",
                                       f"the exporter refused a batch: HTTP {status}")
                    return "refused"
                self._log_once(f"http{status}", f"the exporter answered HTTP {status}")
            if attempt + 1 < attempts:
                time.sleep(RETRY_DELAY)
        return "failed"

    # --- the circuit breaker ---

    _open = False
    _probe_at = 0.0
    _probe_delay = FIRST_PROBE_DELAY

    def _reset_circuit(self) -> None:
        self._open = False
        self._probe_delay = FIRST_PROBE_DELAY

    def _trip(self) -> None:
        if not self._open:
            self._log_once("circuit", f"the exporter at {self.url} is unreachable: batches "
                           + ("go to the spool" if self._spool is not None
                              else "wait in memory") + " until it answers a probe")
        self._open = True
        # Jittered, so that many clients of one exporter do not probe it in step.
        self._probe_at = (time.monotonic()
                          + self._probe_delay * random.uniform(0.8, 1.0))  # noqa: S311
        self._probe_delay = min(self._probe_delay * 2, self._probe_max)

    def _may_send(self) -> bool:
        if self._open and self._stopping:
            return False  # exiting during an outage: spool at once, do not wait
        return not self._open or time.monotonic() >= self._probe_at

    def _has_backlog(self) -> bool:
        return self._spool_pending if self._spool is not None else self._held is not None

    def _deliver_backlog(self) -> None:
        if self._spool is not None:
            self._deliver_spool(self._spool)
            return
        held = self._held
        if held is not None and self._settle(*self._send(held, 1)):
            with self._lock:
                self._held = None

    # --- the spool ---

    def _open_spool(self, spool_dir: str | Path) -> Path | None:
        """The spool directory if this process can write there, else None (and one
        warning): a sink is never worth an exception in the host."""
        path = Path(spool_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".probe-{os.getpid()}-{uuid.uuid4().hex}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except (OSError, ValueError) as exc:
            self._spool_unusable = True
            detail = getattr(exc, "strerror", None) or str(exc)
            logger.warning("remote sink: the spool directory %s is unusable (%s); running "
                           "without a spool, so what the exporter cannot take now is dropped "
                           "and counted as reason spool_unusable", path, detail)
            if self._errors is not None:
                self._errors.labels("remote.spool", type(exc).__name__).inc()
            return None
        return path

    @staticmethod
    def _remove_stale_temporaries(spool: Path) -> None:
        for temporary in spool.glob("*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - temporary.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                    temporary.unlink()

    def _spool_write(self, spool: Path, batch: _Batch) -> None:
        size = len(batch.body)
        # A batch carrying only a drop report is let in over the limit: it is tiny, and
        # it is the record of what the limit cost.
        if batch.events and self._spool_bytes + size > self._spool_max:
            self._log_once("spool-full", f"the spool {spool} is full "
                                         f"({self._spool_max} bytes)")
            self._drop_batch(batch, "spool_full")
            return
        with self._lock:  # names sort in the order written, even if the clock steps back
            stamp = self._last_spool_ns = max(time.time_ns(), self._last_spool_ns + 1)
        path = spool / f"{stamp:020d}-{batch.batch_id}.json"
        temporary = path.with_suffix(".tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(batch.body)
            os.replace(temporary, path)  # atomic: a reader never sees half a batch
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()  # a full disk must not leave half a batch behind
            self._log_once("spool", f"cannot write to the spool {spool}: "
                                    f"{exc.strerror or exc}")
            self._drop_batch(batch, "spool_failed")
            return
        self._spool_bytes += size
        self._spool_pending = True
        self._count("spooled")

    def _deliver_spool(self, spool: Path) -> None:
        """Send the spooled batches oldest first until the spool is empty or a send fails;
        what is queued meanwhile goes to the spool behind them."""
        self._reclaim_stale_claims()
        while not self._stopping:
            paths = sorted(spool.glob("*.json"))
            self._spool_bytes = _total_size(paths)
            progress = False
            for path in paths:
                outcome = self._deliver_file(path)
                if outcome == "failed" or self._stopping:
                    return
                progress = progress or outcome != "skipped"
                self._drain_queue(full_only=True)  # a long drain must not fill the queue
            if not progress:  # empty, or every file claimed by another process
                self._spool_pending = False
                return

    def _deliver_file(self, path: Path) -> Outcome | Literal["skipped", "corrupt"]:
        # Claim the file first: an atomic rename succeeds for one process only, so two
        # processes never both send a batch (which two replicas would count twice).
        claimed = path.with_name(f"{path.name}.sending-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except OSError:
            return "skipped"  # another process claimed it
        batch = self._read_spooled(claimed)
        if batch is None:
            return "corrupt"
        batch, outcome = self._send(batch, 1)
        if outcome == "failed":
            with contextlib.suppress(OSError):
                os.replace(claimed, path)  # give it back; try again later
            self._trip()
            return outcome
        self._reset_circuit()
        claimed.unlink(missing_ok=True)
        self._spool_bytes -= len(batch.body)
        if outcome == "delivered":
            self._count("delivered_from_spool")
        else:
            self._drop_batch(batch, "refused")
        return outcome

    def _read_spooled(self, path: Path) -> _Batch | None:
        """A spooled batch with its bytes as written, or None after moving a corrupt file
        aside (and counting it)."""
        try:
            body = path.read_bytes()
            data = json.loads(body)
        except (OSError, ValueError):
            data = None
        if (isinstance(data, dict) and isinstance(data.get("batch_id"), str)
                and isinstance(data.get("events"), list)):
            report = data.get("dropped")
            return _Batch(data["batch_id"], body, len(data["events"]),
                          report if isinstance(report, dict) else {})
        bad = path.with_name(path.name.split(".sending-")[0] + ".bad")
        with contextlib.suppress(OSError):
            os.replace(path, bad)
        self._log_once("spool-corrupt", f"moved a corrupt spool file aside: {bad}")
        self._dropped(1, "spool_corrupt")
        return None

    def _reclaim_stale_claims(self) -> None:
        if self._spool is None:
            return
        for claimed in self._spool.glob("*.json.sending-*"):
            with contextlib.suppress(OSError):
                if time.time() - claimed.stat().st_mtime > STALE_CLAIM_SECONDS:
                    os.replace(claimed, claimed.with_name(claimed.name.split(".sending-")[0]))

    # --- bookkeeping ---

    def _count(self, outcome: str) -> None:
        if self._batches is not None:
            self._batches.labels(outcome).inc()

    def _count_overflow(self) -> None:
        with self._lock:
            count, self._overflow = self._overflow, 0
        self._dropped(count, "spool_unusable" if self._spool_unusable else "queue_full")

    def _drop_batch(self, batch: _Batch, reason: str) -> None:
        self._dropped(batch.events, reason)
        self._merge_report(batch.dropped)  # the report it carried is still owed

    def _dropped(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        self._merge_report({reason: count})
        if self._drops is not None:
            self._drops.labels(reason).inc(count)
        self._log_once(f"drop-{reason}", f"remote sink dropped {count} event(s): "
                       f"{_DROP_CAUSES[reason]}; later drops are counted in "
                       f"persona_exporter_remote_events_dropped_total{{reason=\"{reason}\"}} "
                       "and reported to the exporter")

    def _merge_report(self, report: dict[str, int]) -> None:
        if not self._reports:
            return
        with self._lock:
            for reason, count in report.items():
                if reason in _DROP_CAUSES and isinstance(count, int) and count > 0:
                    self._unreported[reason] = self._unreported.get(reason, 0) + count

    def _take_report(self) -> dict[str, int]:
        with self._lock:
            report = {reason: min(count, REPORT_MAX)
                      for reason, count in self._unreported.items()}
            for reason, count in report.items():
                left = self._unreported.pop(reason) - count
                if left:
                    self._unreported[reason] = left
        return report

    def _log_once(self, kind: str, message: str) -> None:
        with self._lock:
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            logger.warning("%s (logged once)", message)


def _without_report(batch: _Batch) -> _Batch:
    """The batch without its drop report, under an id derived from its own: the same batch
    stripped twice (a retry, a spooled batch sent again) is the same id and the same bytes,
    so the exporter still counts it once."""
    payload = json.loads(batch.body)
    payload.pop("dropped", None)
    payload["batch_id"] = batch_id = f"{batch.batch_id[:100]}-unreported"
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Batch(batch_id, body, batch.events, {})


def _total_size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _shutdown_all_at_exit() -> None:
    for sink in list(_SINKS):
        sink.shutdown()


atexit.register(_shutdown_all_at_exit)


def _restart_after_fork() -> None:
    for sink in list(_SINKS):
        sink._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)
