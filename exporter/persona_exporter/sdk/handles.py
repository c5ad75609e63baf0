"""The handles of a running workflow and stage: what ``with workflow(...) as run`` and
``with stage(...) as s`` give the caller, and what the ambient scope points at.

They hold a run's and a stage's state (names, run id, budget, trace ids, status) and its
small bookkeeping; the context managers that create, enter and finish them are in
:mod:`.workflow`. Kept apart so that the scope
(:mod:`.context`) can name these types without importing the context managers, which
themselves change the scope.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from .budgets import RunBudget

if TYPE_CHECKING:
    from .telemetry import Telemetry

Status = Literal["succeeded", "failed", "partial"]
STATUSES: tuple[Status, ...] = ("succeeded", "failed", "partial")


class WorkflowHandle:
    """A running workflow: its name, run id, budget, trace ids and final status."""

    def __init__(self, name: str, chatmode: str, run_id: str, budget: RunBudget,
                 telemetry: Telemetry, persona: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.chatmode = chatmode
        self.run_id = run_id
        self.budget = budget
        self.telemetry = telemetry
        self.persona = persona
        self.metadata = dict(metadata) if metadata else None
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
    def tokens(self) -> int:
        return self.budget.used

    @property
    def remaining(self) -> int | None:
        return self.budget.remaining

    @property
    def traced(self) -> bool:
        return self.trace_id is not None

    def _switch_to(self, persona: str) -> str | None:
        """Record that a stage starts under ``persona``; return the previous stage's persona
        when it differs (a persona switch)."""
        with self._lock:
            previous, self._last_persona = self._last_persona, persona
            if self.persona is None:
                self.persona = persona  # the run is attributed to its first persona
        return previous if previous is not None and previous != persona else None

    def _stage_failed(self) -> None:
        with self._lock:
            self.failed_stages += 1


class StageHandle:
    """A running stage: its persona and the tokens its LLM calls used."""

    __slots__ = ("_lock", "chatmode", "metadata", "name", "persona", "run", "span_id",
                 "status", "tokens")

    def __init__(self, name: str, persona: str, chatmode: str, run: WorkflowHandle | None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.persona = persona
        self.chatmode = chatmode
        self.run = run
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
    def remaining(self) -> int | None:
        """Tokens left in the workflow run's allocation (None without one)."""
        return self.run.remaining if self.run is not None else None
