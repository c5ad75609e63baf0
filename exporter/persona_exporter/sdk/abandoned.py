"""Traced runs started and never finished still end their trace: failed, marked abandoned.

A run nobody finishes (``start_run`` or ``trace_pipeline_execution`` without its finish,
a pipeline that raised before ``finalize_trace``) would leave its trace without a root
span, so without its name and governance ids in Langfuse. Two ways out:

- garbage collected: the handle's finaliser builds the run's final event but does not
  emit it - a collection can run inside any allocation, even one made while a sink holds
  its lock - it hands it to a ``SimpleQueue`` (whose ``put`` is safe there, reentrant),
  emitted at the next run's start or finish, or at exit;
- still alive at exit: finished from an exit hook registered at the first traced run, so
  after the tracing sink's own hook and therefore run before it (atexit runs the last
  registered first): the root spans are queued before the sink's workers drain and stop.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..events import WorkflowRun
    from .handles import WorkflowHandle
    from .telemetry import Telemetry

ABANDONED = "abandoned: never finished"

_PENDING: queue.SimpleQueue[tuple[Telemetry, WorkflowRun]] = queue.SimpleQueue()
_LIVE: weakref.WeakSet[WorkflowHandle] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_hook: list[Callable[[WorkflowHandle], None]] = []


def track(run: WorkflowHandle, finish: Callable[[WorkflowHandle], None]) -> None:
    """Watch a traced run until it finishes; ``finish`` ends it at exit if it has not."""
    with _LIVE_LOCK:
        if not _hook:
            _hook.append(finish)
            atexit.register(_at_exit)
        _LIVE.add(run)


def untrack(run: WorkflowHandle) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(run)


def hand_over(telemetry: Telemetry, event: WorkflowRun) -> None:
    """From a finaliser: queue a collected run's final event for a safe moment."""
    _PENDING.put((telemetry, event))


def drain() -> None:
    """Emit the final events of runs collected since the last call (from a safe place)."""
    while True:
        try:
            telemetry, event = _PENDING.get_nowait()
        except queue.Empty:
            return
        try:
            telemetry.emit(event)
        except Exception as err:  # noqa: BLE001 - never raise into the caller
            telemetry.errors.report("workflow", err)


def _at_exit() -> None:
    with _LIVE_LOCK:
        runs = list(_LIVE)
    for run in runs:
        if not run.finished:
            _hook[0](run)
    drain()
