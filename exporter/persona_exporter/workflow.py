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
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType
from typing import Literal

from .budgets import RunBudget
from .context import SCOPE, ScopeChange
from .events import PersonaSwitch, StageRun, WorkflowRun, WorkflowStart, clean_name
from .telemetry import Telemetry, get_telemetry

Status = Literal["succeeded", "failed", "partial"]
_STATUSES = ("succeeded", "failed", "partial")


def _new_id(nbytes: int) -> str:
    return os.urandom(nbytes).hex()


class WorkflowHandle:
    """A running workflow: its name, run id, budget and final status."""

    def __init__(self, name: str, chatmode: str, run_id: str, budget: RunBudget,
                 telemetry: Telemetry) -> None:
        self.name = name
        self.chatmode = chatmode
        self.run_id = run_id
        self.budget = budget
        self.telemetry = telemetry
        self.status: Status | None = None
        self.failed_stages = 0
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self._last_persona: str | None = None
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        return self.budget.used

    @property
    def remaining(self) -> int | None:
        return self.budget.remaining

    def _switch_to(self, persona: str) -> str | None:
        """Record that a stage starts under ``persona``; return the previous stage's persona
        when it differs (a persona switch)."""
        with self._lock:
            previous, self._last_persona = self._last_persona, persona
        return previous if previous is not None and previous != persona else None

    def _stage_failed(self) -> None:
        with self._lock:
            self.failed_stages += 1


class StageHandle:
    """A running stage: its persona and the tokens its LLM calls used."""

    __slots__ = ("name", "persona", "chatmode", "run", "status", "tokens", "span_id", "_lock")

    def __init__(self, name: str, persona: str, chatmode: str, run: WorkflowHandle | None) -> None:
        self.name = name
        self.persona = persona
        self.chatmode = chatmode
        self.run = run
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
    def remaining(self) -> int | None:
        """Tokens left in the workflow run's allocation (None without one)."""
        return self.run.remaining if self.run is not None else None


class workflow:  # noqa: N801 - a context manager used like contextlib's
    def __init__(self, name: str, *, chatmode: str | None = None, persona: str | None = None,
                 run_id: str | None = None, telemetry: Telemetry | None = None) -> None:
        self._name = clean_name(name)
        self._chatmode = clean_name(chatmode, "none") if chatmode is not None else None
        self._persona = clean_name(persona) if persona is not None else None
        self._run_id = clean_name(run_id) if run_id is not None else None
        self._telemetry = telemetry

    def __enter__(self) -> WorkflowHandle:
        scope = SCOPE.get()
        tel = self._telemetry or scope.telemetry or get_telemetry()
        chatmode = self._chatmode or scope.chatmode or "none"
        self._handle = run = WorkflowHandle(
            self._name, chatmode, self._run_id or _new_id(16),
            RunBudget(tel.config.allocation(chatmode)), tel)
        if tel.needs_trace_context:
            run.trace_id, run.span_id = _new_id(16), _new_id(8)
        self._wall_start = time.time()
        tel.emit(WorkflowStart(workflow=run.name, chatmode=chatmode, run_id=run.run_id,
                               start_time=self._wall_start))
        self._scope = ScopeChange(run=run, stage=None, telemetry=tel, chatmode=chatmode,
                                  persona=self._persona or scope.persona)
        self._scope.__enter__()
        self._start = time.perf_counter()
        return run

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        duration = time.perf_counter() - self._start
        self._scope.__exit__(exc_type, exc, tb)
        run = self._handle
        try:
            status: Status
            if exc_type is not None:
                status = "failed"
            elif run.status in _STATUSES:
                status = run.status
            else:
                status = "partial" if run.failed_stages else "succeeded"
            run.status = status
            run.telemetry.emit(WorkflowRun(
                workflow=run.name, chatmode=run.chatmode, status=status,
                duration_seconds=duration, tokens=run.budget.used,
                token_allocation=run.budget.allocation, budget_overrun=run.budget.overrun,
                run_id=run.run_id, start_time=self._wall_start, trace_id=run.trace_id,
                span_id=run.span_id))
        except Exception as err:  # noqa: BLE001 - never raise into the caller
            run.telemetry.errors.report("workflow", err)

    async def __aenter__(self) -> WorkflowHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class stage:  # noqa: N801
    def __init__(self, name: str, *, persona: str | None = None,
                 chatmode: str | None = None) -> None:
        self._name = clean_name(name)
        self._persona = clean_name(persona) if persona is not None else None
        self._chatmode = clean_name(chatmode, "none") if chatmode is not None else None

    def __enter__(self) -> StageHandle:
        scope = SCOPE.get()
        run = scope.run
        tel = scope.telemetry or get_telemetry()
        self._telemetry = tel
        persona = self._persona or scope.persona or "unknown"
        chatmode = self._chatmode or scope.chatmode or "none"
        self._handle = handle = StageHandle(self._name, persona, chatmode, run)
        try:
            if tel.needs_trace_context:
                handle.span_id = _new_id(8)
            if run is not None:
                previous = run._switch_to(persona)
                if previous is not None:
                    tel.emit(PersonaSwitch(workflow=run.name, from_persona=previous,
                                           to_persona=persona, run_id=run.run_id))
        except Exception as err:  # noqa: BLE001
            tel.errors.report("stage", err)
        self._scope = ScopeChange(stage=handle, persona=persona, chatmode=chatmode)
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
            elif handle.status in _STATUSES:
                status = handle.status
            else:
                status = "succeeded"
            handle.status = status
            if status == "failed" and run is not None:
                run._stage_failed()
            tel.emit(StageRun(
                workflow=run.name if run is not None else "none", stage=handle.name,
                persona=handle.persona, chatmode=handle.chatmode, status=status,
                duration_seconds=duration, tokens=handle.tokens,
                run_id=run.run_id if run is not None else None, start_time=self._wall_start,
                trace_id=run.trace_id if run is not None else None, span_id=handle.span_id,
                parent_span_id=run.span_id if run is not None else None))
        except Exception as err:  # noqa: BLE001
            tel.errors.report("stage", err)

    async def __aenter__(self) -> StageHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)
