"""STUB (the lead's placeholder until the helper's module lands): the per-trace state."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..config import Otlp
from ..events import Event
from .span import Span


@dataclass
class Result:
    events: list[Event] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    persona_sources: Counter[str] = field(default_factory=Counter)
    released_early: int = 0


class Traces:
    def __init__(self, config: Otlp, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.held = 0

    def add(self, spans: Iterable[Span]) -> Result:
        result = Result()
        for _ in spans:
            result.outcomes["ignored"] += 1
        return result

    def expire(self, now: float | None = None) -> Result:
        return Result()

    def reconfigure(self, config: Otlp) -> None:
        self.config = config

    def take_changes(self) -> tuple[list[tuple[str, str]], list[str]]:
        return [], []

    def restore(self, rows: Iterable[tuple[str, str]]) -> None:
        pass
