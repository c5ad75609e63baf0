"""The handles of a running workflow and stage: what ``with workflow(...) as run`` and
``with stage(...) as s`` give the caller, and what the ambient scope points at.

They hold a run's and a stage's state (names, run id, budget, trace ids, status) and its
small bookkeeping; the context managers that create, enter and finish them are in
:mod:`.workflow`. Kept apart so that the scope
(:mod:`.context`) can name these types without importing the context managers, which
themselves change the scope.

A traced run also holds its :class:`~..events.TraceAttributes` (what every span of the
run carries: its persona as the trace's user, its exact run id and metadata), and a run
nobody finishes is ended here, failed and marked abandoned (the end of this module).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from ..events import METADATA_MAX_ITEMS, TraceAttributes, WorkflowRun, clean_name
from .budgets import RunBudget

if TYPE_CHECKING:
    from ..tracing.content import CallContent
    from .telemetry import Telemetry

Status = Literal["succeeded", "failed", "partial"]
STATUSES: tuple[Status, ...] = ("succeeded", "failed", "partial")


# Trace tags Langfuse filters on; a value longer than the SDK's 200-character limit for
# propagated attributes stays in the metadata only.
_TAGGED_METADATA = ("job_type", "brand")
_TAG_MAX = 200
_EVENT_METADATA_VALUE_MAX = 1000  # events.Metadata: the wire schema's bound


def exact_text(value: object) -> str:
    """A caller's value as trace text, unchanged when it is a string (never cleaned like
    a metric label); anything else as its ``str``, and a value whose ``str`` raises as
    ``<unprintable T>``."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not break the run
        return f"<unprintable {type(value).__name__}>"


class WorkflowHandle:
    """A running workflow: its name, run id, budget, trace ids and final status.

    ``run_id`` is the cleaned id (a valid name, for metrics and events); ``run_id_exact``
    the caller's, which the trace carries byte for byte (its session and metadata), as it
    does every value of ``metadata``.
    """

    def __init__(self, name: str, chatmode: str, run_id: str, budget: RunBudget,
                 telemetry: Telemetry, persona: str | None = None,
                 metadata: Mapping[str, str] | None = None,
                 run_id_exact: str | None = None) -> None:
        self.name = name
        self.chatmode = chatmode
        self.run_id = run_id
        self.run_id_exact = run_id if run_id_exact is None else run_id_exact
        self.budget = budget
        self.telemetry = telemetry
        self.persona = persona if persona != "unknown" else None
        self._trace: TraceAttributes | None = None
        self._metadata: dict[str, str] | None = None
        self.metadata = metadata  # the setter copies it, exactly
        # The root observation's input/output for the backends that capture content
        # (finalize_trace's status and artifacts), handed over with the final event.
        self.content: CallContent | None = None
        self.status: Status | None = None
        self.failed_stages = 0
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.finished = False
        self._start = time.perf_counter()
        self._wall_start = time.time()
        self._last_persona: str | None = None
        self._lock = threading.Lock()

    @property
    def metadata(self) -> dict[str, str] | None:
        """The run's metadata, exact (governance ids among them). Assigning it replaces
        it, and the trace attributes of the spans emitted from then on follow."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: Mapping[str, object] | None) -> None:
        self._metadata = ({exact_text(k): exact_text(v) for k, v in value.items()}
                          if value else None)
        self._trace = None

    @property
    def trace_attributes(self) -> TraceAttributes:
        """The trace-level attributes every span of this run carries (built once per
        change: the run persona becoming known, new metadata)."""
        trace = self._trace
        if trace is None:
            trace = self._trace = self._build_trace()
        return trace

    def _build_trace(self) -> TraceAttributes:
        metadata = dict(self._metadata or {})
        tags = []
        if self.chatmode != "none":
            tags.append(f"chatmode:{self.chatmode}")
            metadata.setdefault("chatmode", self.chatmode)
        tags.append(f"workflow:{self.name}")
        metadata.setdefault("workflow", self.name)
        for key in _TAGGED_METADATA:
            value = metadata.get(key)
            if value and len(value) <= _TAG_MAX:
                tags.append(f"{key}:{value}")
        if self.persona:
            metadata["persona"] = self.persona  # the run's: the trace's user
        metadata["run_id"] = self.run_id_exact  # the caller's, whatever a copy says
        return TraceAttributes(user=self.persona, session=self.run_id_exact, name=self.name,
                               tags=tuple(tags), metadata=tuple(metadata.items()))

    def final_event(self, status: Status, *, abandon: bool = False) -> WorkflowRun:
        """The run's closing event (its root span when traced); ``abandon`` marks a run
        nobody finished."""
        if abandon:  # first: a run with a full metadata table keeps the mark
            self.metadata = {"abandoned": "true", **(self._metadata or {})}
        event = WorkflowRun(
            workflow=self.name, chatmode=self.chatmode, status=status,
            duration_seconds=time.perf_counter() - self._start, tokens=self.budget.used,
            token_allocation=self.budget.allocation, budget_overrun=self.budget.overrun,
            persona=self.persona, run_id=self.run_id, start_time=self._wall_start,
            trace_id=self.trace_id, span_id=self.span_id, metadata=self.event_metadata())
        if self.trace_id is not None:
            event.trace = self.trace_attributes
        return event

    def __del__(self) -> None:
        # A traced run collected unfinished: its root span must still go out. Not emitted
        # from here: handed over (see the end of this module).
        try:
            if not self.finished and self.trace_id is not None:
                self.finished = True
                self.status = "failed"
                hand_over_final_event(self.telemetry, self.final_event("failed", abandon=True))
        except Exception:  # noqa: BLE001, S110 - a finaliser has nobody to raise to
            pass

    def event_metadata(self) -> dict[str, str] | None:
        """The metadata as an event may carry it (the wire's bounds: names as keys, at
        most 1000 characters a value, 32 entries); the trace has the exact values."""
        if not self._metadata:
            return None
        return {clean_name(k): v[:_EVENT_METADATA_VALUE_MAX]
                for k, v in list(self._metadata.items())[:METADATA_MAX_ITEMS]}

    @property
    def tokens(self) -> int:
        return self.budget.used

    @property
    def remaining(self) -> int | None:
        return self.budget.remaining

    @property
    def traced(self) -> bool:
        return self.trace_id is not None

    def attribute_to(self, persona: str) -> None:
        """Attribute the run to ``persona`` (the trace's user) if it has none yet."""
        with self._lock:
            if self.persona is None and persona != "unknown":
                self.persona = persona
                self._trace = None  # the trace-level attributes carry the user: rebuild

    def _switch_to(self, persona: str) -> str | None:
        """Record that a stage starts under ``persona``; return the previous stage's persona
        when it differs (a persona switch)."""
        with self._lock:
            previous, self._last_persona = self._last_persona, persona
            if self.persona is None and persona != "unknown":
                self.persona = persona  # the run is attributed to its first persona
                self._trace = None
        return previous if previous is not None and previous != persona else None

    def _stage_failed(self) -> None:
        with self._lock:
            self.failed_stages += 1


class StageHandle:
    """A running stage: its persona and the tokens its LLM calls used."""

    __slots__ = ("_lock", "chatmode", "content", "metadata", "name", "parent", "persona",
                 "run", "span_id", "status", "tokens")

    def __init__(self, name: str, persona: str, chatmode: str, run: WorkflowHandle | None,
                 metadata: Mapping[str, str] | None = None,
                 parent: StageHandle | None = None) -> None:
        self.name = name
        self.persona = persona
        self.chatmode = chatmode
        self.run = run
        # The enclosing stage of the same run: a nested step is a child span of it.
        self.parent = parent
        # The stage's input/output for the backends that capture content (trace_function's
        # capture_args/capture_result), handed over with its event, never on it.
        self.content: CallContent | None = None
        self.metadata = dict(metadata) if metadata else None
        self.status: Status | None = None
        self.tokens = 0
        self.span_id: str | None = None
        self._lock = threading.Lock()

    def consume(self, tokens: int) -> None:
        with self._lock:
            self.tokens += tokens
        if self.run is not None:
            self.run.budget.consume(tokens)

    @property
    def parent_span_id(self) -> str | None:
        """The span this stage's span hangs under: its enclosing stage's, else the run's."""
        if self.parent is not None and self.parent.span_id is not None:
            return self.parent.span_id
        return self.run.span_id if self.run is not None else None

    @property
    def remaining(self) -> int | None:
        """Tokens left in the workflow run's allocation (None without one)."""
        return self.run.remaining if self.run is not None else None


# --- traced runs started and never finished still end their trace -------------------
# A run nobody finishes (start_run or trace_pipeline_execution without its finish, a
# pipeline that raised before finalize_trace) would leave its trace without a root span,
# so without its name and governance ids in Langfuse. Two ways out:
# - garbage collected: WorkflowHandle.__del__ builds the final event but does not emit it
#   (a collection can run inside any allocation, even one made while a sink holds its
#   lock); it hands it to a SimpleQueue, whose put is reentrant-safe, emitted at the next
#   run's start or finish, or at exit;
# - still alive at exit: finished by an exit hook registered at the first traced run, so
#   after the tracing sink's own hook, hence run before it (atexit runs the last
#   registered first): the root spans are queued before the sink's workers drain and stop.

_PENDING: queue.SimpleQueue[tuple[Telemetry, WorkflowRun]] = queue.SimpleQueue()
_LIVE: weakref.WeakSet[WorkflowHandle] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_hook: list[Callable[[WorkflowHandle], None]] = []


def track_unfinished(run: WorkflowHandle, finish: Callable[[WorkflowHandle], None]) -> None:
    """Watch a traced run until it finishes; ``finish`` ends it at exit if it has not."""
    with _LIVE_LOCK:
        if not _hook:
            _hook.append(finish)
            atexit.register(_at_exit)
        _LIVE.add(run)


def untrack_finished(run: WorkflowHandle) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(run)


def hand_over_final_event(telemetry: Telemetry, event: WorkflowRun) -> None:
    """From a finaliser: queue a collected run's final event for a safe moment."""
    _PENDING.put((telemetry, event))


def emit_handed_over() -> None:
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
    emit_handed_over()
