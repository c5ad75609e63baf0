"""Errors inside the instrumentation: counted, logged once per kind, never raised.

Observability is secondary to the application it watches: a broken sink or a strange
response object must not surface in the caller. Every such error is counted in
``persona_exporter_internal_errors_total{component,kind}`` and logged the first time
its (component, kind) pair is seen, so a fault that repeats on every call cannot flood the
host's logs.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

logger = logging.getLogger("persona_exporter")

_MAX_MESSAGE = 200
_MAX_LOGGED = 1000  # (component, kind[, subject]) pairs remembered as already logged


class _CounterFamily(Protocol):
    def labels(self, *values: str) -> _Incrementable: ...


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class ErrorReporter:
    """Count and log-once errors caught by the instrumentation."""

    def __init__(self, counter: _CounterFamily | None = None) -> None:
        self._counter = counter
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def report(self, component: str, error: BaseException | str) -> None:
        try:
            kind = error if isinstance(error, str) else type(error).__name__
            if self._counter is not None:
                self._counter.labels(component, kind).inc()
            key = (component, kind)
            with self._lock:
                first = key not in self._logged
                self._logged.add(key)
            if first:
                detail = "" if isinstance(error, str) else f": {str(error)[:_MAX_MESSAGE]}"
                logger.warning(
                    "persona-exporter %s error %s%s (logged once; later ones are counted in "
                    "persona_exporter_internal_errors_total)",
                    component,
                    kind,
                    detail,
                )
        except Exception:  # noqa: BLE001, S110 - the reporter of last resort must not raise
            pass

    def note(self, component: str, kind: str, subject: str, message: str) -> None:
        """Count (component, kind) like :meth:`report`, and log ``message`` the first time
        ``subject`` (e.g. a model) comes with it; past the first subjects, only counted."""
        try:
            if self._counter is not None:
                self._counter.labels(component, kind).inc()
            key = (component, f"{kind}\0{subject}")
            with self._lock:
                first = key not in self._logged and len(self._logged) < _MAX_LOGGED
                if first:
                    self._logged.add(key)
            if first:
                logger.warning('%s (each is counted in persona_exporter_internal_errors_total'
                               '{component="%s",kind="%s"})', message, component, kind)
        except Exception:  # noqa: BLE001, S110 - the reporter of last resort must not raise
            pass
