"""``workflow(...)`` and ``stage(...)``: multi-stage agent runs, timed and budgeted.

    with workflow("package-release", chatmode="package-release") as run:
        with stage("version-bump", persona="backend-engineer") as s:
            llm("Update version to 1.2.0")
        print(s.tokens, run.remaining)          # 850 4150

A workflow emits ``WorkflowStart`` on entry and ``WorkflowRun`` on exit; a stage emits
``StageRun``, and ``PersonaSwitch`` when its persona differs from the previous stage's in
the same run. Status comes from how the block ends: an exception means ``failed`` (and is
re-raised untouched); a workflow whose stages failed but which itself completed is
``partial``; ``handle.status = ...`` overrides. Both work with ``with`` and ``async with``.

When a tracing sink is configured, a run is sampled at its start (``trace=False`` opts one
run out) and its events carry trace and span ids assigned here, before the spans exist:
the tracing sink builds finished spans from them later, off the caller's thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

from ..events import PersonaSwitch, StageRun, WorkflowStart, clean_name
from .budgets import RunBudget
from .context import SCOPE, ScopeChange
from .handles import (
    STATUSES,
    StageHandle,
    Status,
    WorkflowHandle,
    emit_handed_over,
    exact_text,
    track_unfinished,
    untrack_finished,
)
from .telemetry import Telemetry, get_telemetry
from .trace_ids import new_span_id, new_trace_id, sampled


def start_run(name: str, *, chatmode: str | None = None, persona: str | None = None,
              run_id: str | None = None, telemetry: Telemetry | None = None,
              metadata: Mapping[str, str] | None = None, trace: bool = True,
              sample: bool = True) -> WorkflowHandle:
    """Start a workflow run without entering its scope (``workflow`` is the usual way);
    finish it with :func:`finish_run`. ``trace=False`` opts the run out of tracing;
    ``sample=False`` traces it whatever the sample rate (the caller sampled already)."""
    scope = SCOPE.get()
    tel = telemetry or scope.telemetry or get_telemetry()
    chatmode = clean_name(chatmode, "none") if chatmode is not None else (scope.chatmode or "none")
    persona = clean_name(persona) if persona is not None else scope.persona
    # The metric label gets a cleaned run id; the trace keeps the caller's, exactly.
    exact = exact_text(run_id) if run_id is not None else None
    run = WorkflowHandle(clean_name(name), chatmode,
                         clean_name(run_id) if run_id is not None else new_trace_id(),
                         RunBudget(tel.config.allocation(chatmode)), tel, persona, metadata,
                         run_id_exact=exact)
    try:
        emit_handed_over()
        if trace and tel.needs_trace_context and (not sample or sampled(tel)):
            run.trace_id, run.span_id = new_trace_id(), new_span_id()
            track_unfinished(run, _abandon)
        tel.emit(WorkflowStart(workflow=run.name, chatmode=chatmode, run_id=run.run_id,
                               start_time=run._wall_start))
    except Exception as err:  # noqa: BLE001 - never raise into the caller
        tel.errors.report("workflow", err)
    return run


def _abandon(run: WorkflowHandle) -> None:
    finish_run(run, failed=True, abandon=True)


def finish_run(run: WorkflowHandle, *, failed: bool = False,
               status: Status | None = None, abandon: bool = False) -> None:
    """End a run once (later calls do nothing). ``failed`` wins; then ``status``, then
    ``run.status``; else ``partial`` when stages failed, or ``succeeded``."""
    if run.finished:
        return
    run.finished = True
    try:
        emit_handed_over()
        final: Status
        if failed:
            final = "failed"
        elif status in STATUSES:
            final = status
        elif run.status in STATUSES:
            final = run.status
        else:
            final = "partial" if run.failed_stages else "succeeded"
        run.status = final
        run.telemetry.emit(run.final_event(final, abandon=abandon), run.content)
        if run.trace_id is not None:
            untrack_finished(run)
    except Exception as err:  # noqa: BLE001
        run.telemetry.errors.report("workflow", err)


class workflow:  # noqa: N801 - a context manager used like contextlib's
    def __init__(self, name: str, *, chatmode: str | None = None, persona: str | None = None,
                 run_id: str | None = None, telemetry: Telemetry | None = None,
                 metadata: Mapping[str, str] | None = None, trace: bool = True) -> None:
        self._args = (name, chatmode, persona, run_id, telemetry, metadata, trace)

    def __enter__(self) -> WorkflowHandle:
        name, chatmode, persona, run_id, telemetry, metadata, trace = self._args
        self._run = run = start_run(name, chatmode=chatmode, persona=persona, run_id=run_id,
                                    telemetry=telemetry, metadata=metadata, trace=trace)
        self._scope = ScopeChange(run=run, stage=None, telemetry=run.telemetry,
                                  chatmode=run.chatmode, persona=run.persona)
        self._scope.__enter__()
        return run

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._scope.__exit__(exc_type, exc, tb)
        finish_run(self._run, failed=exc_type is not None)

    async def __aenter__(self) -> WorkflowHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class stage:  # noqa: N801
    """A stage of the current workflow run (or of ``run`` when given explicitly)."""

    def __init__(self, name: str, *, persona: str | None = None, chatmode: str | None = None,
                 run: WorkflowHandle | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self._name = clean_name(name)
        self._persona = clean_name(persona) if persona is not None else None
        self._chatmode = clean_name(chatmode, "none") if chatmode is not None else None
        self._run = run
        self._metadata = metadata

    def __enter__(self) -> StageHandle:
        scope = SCOPE.get()
        run = self._run or scope.run
        tel = run.telemetry if run is not None else (scope.telemetry or get_telemetry())
        self._telemetry = tel
        persona = self._persona or scope.persona or (run.persona if run else None) or "unknown"
        chatmode = self._chatmode or (run.chatmode if run else None) or scope.chatmode or "none"
        enclosing = scope.stage if scope.stage is not None and scope.stage.run is run else None
        self._handle = handle = StageHandle(self._name, persona, chatmode, run, self._metadata,
                                            parent=enclosing)
        try:
            if run is not None:
                if run.traced:
                    handle.span_id = new_span_id()
                previous = run._switch_to(persona)
                if previous is not None:
                    tel.emit(PersonaSwitch(workflow=run.name, from_persona=previous,
                                           to_persona=persona, run_id=run.run_id))
        except Exception as err:  # noqa: BLE001
            tel.errors.report("stage", err)
        self._scope = ScopeChange(stage=handle, persona=persona, chatmode=chatmode, run=run,
                                  telemetry=tel)
        self._scope.__enter__()
        self._wall_start = time.time()
        self._start = time.perf_counter()
        return handle

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        duration = time.perf_counter() - self._start
        self._scope.__exit__(exc_type, exc, tb)
        handle, run, tel = self._handle, self._handle.run, self._telemetry
        try:
            status: Status
            if exc_type is not None:
                status = "failed"
            elif handle.status in STATUSES:
                status = handle.status
            else:
                status = "succeeded"
            handle.status = status
            if status == "failed" and run is not None:
                run._stage_failed()
            event = StageRun(
                workflow=run.name if run is not None else "none", stage=handle.name,
                persona=handle.persona, chatmode=handle.chatmode, status=status,
                duration_seconds=duration, tokens=handle.tokens,
                run_id=run.run_id if run is not None else None, start_time=self._wall_start,
                trace_id=run.trace_id if run is not None else None, span_id=handle.span_id,
                parent_span_id=handle.parent_span_id, metadata=handle.metadata)
            if run is not None and run.trace_id is not None:
                event.trace = run.trace_attributes
            tel.emit(event, handle.content)
        except Exception as err:  # noqa: BLE001
            tel.errors.report("stage", err)

    async def __aenter__(self) -> StageHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
