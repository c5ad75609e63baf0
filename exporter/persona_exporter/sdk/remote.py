"""The remote sink: the SDK ships its events to a running ``persona-exporter serve``.

For processes Prometheus cannot scrape (a CLI run, a CI job, an IDE extension). Events are
appended to a bounded queue - all the caller pays - and a background thread posts them in
batches to ``POST /v1/events``. Each batch has an id that stays the same through retries
(exponential backoff, on connection errors and 5xx), so the exporter counts it once however
often it arrives. With a spool directory, batches that cannot be delivered - the exporter
is down, or the process is exiting - are written there and delivered by this or a later
process, oldest first. What can be neither delivered nor spooled is counted in
``persona_exporter_remote_events_dropped_total{reason}``.

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
import threading
import time
import uuid
import weakref
from collections import deque
from pathlib import Path
from typing import Any

import requests

from ..events import Event, event_to_dict
from ..metrics.recorder import Recorder

logger = logging.getLogger("persona_exporter")

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
# A claim on a spool file older than this belongs to a process that died while sending.
STALE_CLAIM_SECONDS = 300.0

_SINKS: weakref.WeakSet[RemoteSink] = weakref.WeakSet()


class RemoteSink:
    """Post events to an exporter's ``/v1/events``, batched, retried, optionally spooled."""

    def __init__(self, url: str, *, token: str | None = None, recorder: Recorder | None = None,
                 spool_dir: str | Path | None = None, batch_size: int = 100,
                 queue_size: int = 10_000, flush_interval: float = 1.0,
                 request_timeout: float = 5.0, retries: int = 3,
                 shutdown_timeout: float = 3.0, trace_context: bool = False,
                 sample_rate: float = 1.0) -> None:
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
        self._spool = Path(spool_dir) if spool_dir else None
        if self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)
        self._batch_size = batch_size
        self._queue_size = queue_size
        self._interval = flush_interval
        self._timeout = request_timeout
        self._retries = retries
        self._queue: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._session = requests.Session()
        self._logged: set[str] = set()
        self._undelivered = 0  # batches spooled or dropped, for flush() to report
        self._batches = (recorder.instrument("persona_exporter_remote_batches_total")
                         if recorder is not None else None)
        self._drops = (recorder.instrument("persona_exporter_remote_events_dropped_total")
                       if recorder is not None else None)
        self._start_thread()
        _SINKS.add(self)  # the one exit hook and the fork hook find it here

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="persona-exporter-remote",
                                        daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # The parent's queue is the parent's to deliver, and its thread did not survive.
        self._lock = threading.Lock()
        self._queue.clear()
        self._wakeup = threading.Event()
        self._session = requests.Session()
        if not self._stopping:
            self._start_thread()

    # --- the caller's side ---

    def emit(self, event: Event) -> None:
        with self._lock:
            if self._stopping or len(self._queue) >= self._queue_size:
                full = True
            else:
                self._queue.append(event)
                full = False
        if full:
            self._dropped(1, "queue_full")
        elif len(self._queue) >= self._batch_size and not self._wakeup.is_set():
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
                    return self._undelivered == undelivered
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
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            in_flight = self._in_flight if self._thread.is_alive() else None
        if in_flight is not None:
            # Still being sent at the deadline: keep it too. If the send does land after
            # all, the exporter counts the batch id once.
            self._spool_or_drop(in_flight)
        if left:  # the thread ran out of time: keep them on disk if we can
            self._spool_or_drop(self._batch(left))

    # --- the worker ---

    _sending = False
    _in_flight: dict[str, Any] | None = None
    _deadline = float("inf")

    def _run(self) -> None:
        first = True
        while True:
            if not first:
                self._wakeup.wait(self._interval)
                self._wakeup.clear()
            first = False
            try:
                self._drain()
                if not self._stopping:
                    self._deliver_spool()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                self._log_once("worker", f"remote sink error: {type(exc).__name__}: {exc}")
            if self._stopping:
                return

    def _drain(self) -> None:
        while True:
            with self._lock:
                events = [self._queue.popleft()
                          for _ in range(min(self._batch_size, len(self._queue)))]
                self._sending = bool(events)
            try:
                if not events:
                    return
                batch = self._in_flight = self._batch(events)
                delivered = self._send(batch)
                with self._lock:
                    self._in_flight = None
                if delivered:
                    self._count("sent")
                else:
                    self._spool_or_drop(batch)
            finally:
                with self._lock:
                    self._sending = False
                    self._in_flight = None

    @staticmethod
    def _batch(events: list[Event]) -> dict[str, Any]:
        return {"batch_id": uuid.uuid4().hex, "events": [event_to_dict(e) for e in events]}

    def _send(self, batch: dict[str, Any]) -> bool:
        """Post with retries; True once the exporter has the batch (2xx, or 422: its valid
        events applied and the rest will never be accepted)."""
        body = json.dumps(batch).encode()
        delay = 0.2
        for attempt in range(self._retries + 1):
            timeout = self._timeout
            if self._stopping:  # exiting: one attempt, within what is left of the deadline
                timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
            try:
                response = self._session.post(self.url, data=body, headers=self._headers,
                                              timeout=timeout)
            except requests.RequestException as exc:
                self._log_once("connect", f"cannot reach the exporter at {self.url}: "
                                          f"{type(exc).__name__}")
            else:
                if response.status_code < 300 or response.status_code == 422:
                    return True
                if response.status_code not in RETRYABLE:  # 400, 401, 413, 415: no retry
                    self._log_once(f"http{response.status_code}",
                                   f"the exporter refused a batch: HTTP "
                                   f"{response.status_code}")
                    self._dropped(len(batch["events"]), f"http_{response.status_code}")
                    return True  # handled: retrying or spooling cannot help
            if attempt == self._retries or self._stopping:
                return False
            time.sleep(delay)
            delay *= 2
        return False

    # --- the spool ---

    def _spool_or_drop(self, batch: dict[str, Any]) -> None:
        self._undelivered += 1
        if self._spool is None:
            self._dropped(len(batch["events"]), "undeliverable")
            return
        path = self._spool / f"{time.time_ns():020d}-{batch['batch_id']}.json"
        try:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(batch), encoding="utf-8")
            os.replace(temporary, path)  # atomic: a reader never sees half a batch
            self._count("spooled")
        except OSError as exc:
            self._log_once("spool", f"cannot write to the spool {self._spool}: {exc.strerror}")
            self._dropped(len(batch["events"]), "spool_failed")

    def _deliver_spool(self) -> None:
        if self._spool is None:
            return
        self._reclaim_stale_claims()
        for path in sorted(self._spool.glob("*.json")):
            # Claim the file first: an atomic rename succeeds for one process only, so two
            # processes never both send a batch (which two replicas would count twice).
            claimed = path.with_name(f"{path.name}.sending-{os.getpid()}")
            try:
                os.rename(path, claimed)
            except OSError:
                continue  # another process claimed it
            batch = self._read_spooled(claimed)
            if batch is None:
                continue
            if not self._send(batch):
                os.replace(claimed, path)  # give it back; try again later
                return
            claimed.unlink(missing_ok=True)
            self._count("delivered_from_spool")

    def _read_spooled(self, path: Path) -> dict[str, Any] | None:
        """A spooled batch, or None after moving a corrupt file aside (and counting it)."""
        try:
            batch = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            batch = None
        if (isinstance(batch, dict) and isinstance(batch.get("batch_id"), str)
                and isinstance(batch.get("events"), list)):
            return batch
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

    def _dropped(self, count: int, reason: str) -> None:
        if self._drops is not None:
            self._drops.labels(reason).inc(count)

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning("%s (logged once)", message)


def _shutdown_all_at_exit() -> None:
    for sink in list(_SINKS):
        sink.shutdown()


atexit.register(_shutdown_all_at_exit)


def _restart_after_fork() -> None:
    for sink in list(_SINKS):
        sink._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)
