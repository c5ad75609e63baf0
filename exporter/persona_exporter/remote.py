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
"""

from __future__ import annotations

import atexit
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

from .events import Event, event_to_dict
from .recorder import Recorder

logger = logging.getLogger("persona_exporter")

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class RemoteSink:
    """Post events to an exporter's ``/v1/events``, batched, retried, optionally spooled."""

    def __init__(self, url: str, *, token: str | None = None, recorder: Recorder | None = None,
                 spool_dir: str | Path | None = None, batch_size: int = 100,
                 queue_size: int = 10_000, flush_interval: float = 1.0,
                 request_timeout: float = 5.0, retries: int = 3,
                 shutdown_timeout: float = 3.0) -> None:
        self.url = url.rstrip("/") + "/v1/events"
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
        metrics = recorder._metrics if recorder is not None else None
        self._batches = metrics["persona_exporter_remote_batches_total"] if metrics else None
        self._drops = metrics["persona_exporter_remote_events_dropped_total"] if metrics else None
        self._thread = threading.Thread(target=self._run, name="persona-exporter-remote",
                                        daemon=True)
        self._thread.start()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

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
        """Send what is queued now; False if it could not all be delivered in time."""
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        self._wakeup.set()
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._sending:
                    return True
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
        self._deliver_spool()
        while True:
            self._wakeup.wait(self._interval)
            self._wakeup.clear()
            try:
                self._drain()
                if not self._stopping:
                    self._deliver_spool()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                self._log_once("worker", f"remote sink error: {exc}")
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
        for path in sorted(self._spool.glob("*.json")):
            try:
                batch = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # another process took it, or it is not ours
            if not self._send(batch):
                return  # the exporter is still away; try again later
            path.unlink(missing_ok=True)
            self._count("delivered_from_spool")

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


def _shutdown_at_exit(ref: weakref.ReferenceType[RemoteSink]) -> None:
    sink = ref()
    if sink is not None:
        sink.shutdown()
