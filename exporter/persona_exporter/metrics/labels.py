"""Cardinality caps on label values.

Each label dimension (persona, model, workflow, ...) admits a configured number of
distinct values; values past the cap are recorded under :data:`catalog.OVERFLOW_VALUE`
and counted, so a runaway client (a model name with a timestamp in it, say) cannot blow
up Prometheus' memory while its traffic still shows up in the totals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from ..catalog import DIMENSIONS, OVERFLOW_VALUE


class LabelLimiter:
    """Admit at most ``caps[dimension]`` distinct values per dimension.

    >>> limiter = LabelLimiter({"persona": 1})
    >>> limiter.admit("persona", "backend-engineer"), limiter.admit("persona", "qa-engineer")
    ('backend-engineer', '__overflow__')
    """

    def __init__(
        self,
        caps: Mapping[str, int],
        *,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self._caps = {dim: caps.get(dim, 100) for dim in DIMENSIONS}
        self._seen: dict[str, set[str]] = {dim: set() for dim in DIMENSIONS}
        self._on_overflow = on_overflow
        self._lock = threading.Lock()

    def admit(self, dimension: str, value: str) -> str:
        seen = self._seen[dimension]
        if value in seen:  # the common case, no lock: set membership is atomic
            return value
        with self._lock:
            if value in seen or len(seen) < self._caps[dimension]:
                seen.add(value)
                return value
        if self._on_overflow is not None:
            self._on_overflow(dimension)
        return OVERFLOW_VALUE

    def reserve(self, dimension: str, values: Iterable[str]) -> None:
        """Admit configured values up front, so traffic never pushes them into overflow."""
        with self._lock:
            self._seen[dimension].update(values)

    def set_caps(self, caps: Mapping[str, int]) -> None:
        # Values already admitted stay admitted: their series exist and dropping them from
        # the set would only send their next recording to the overflow series.
        with self._lock:
            self._caps = {dim: caps.get(dim, 100) for dim in DIMENSIONS}

    def count(self, dimension: str) -> int:
        return len(self._seen[dimension])
