"""The in-process budget ledger of one workflow run.

A chatmode allocates a number of tokens (input + output) per workflow run; the ledger
answers "how much is left" while the run goes on - the first seed prints ``Budget
remaining: 4150`` after an 850-token stage of a 5000-token allocation - and says whether
the run overran, which the workflow's final event carries to the overrun counter.

Persona budgets over time windows are not tracked here: they are limits exported as
gauges, and utilisation is computed in PromQL, which stays right with several exporters.
"""

from __future__ import annotations

import threading


class RunBudget:
    """Tokens used by one workflow run against its chatmode's allocation.

    >>> budget = RunBudget(5000)
    >>> budget.consume(850)
    >>> budget.remaining, budget.overrun
    (4150, False)
    """

    __slots__ = ("allocation", "_used", "_lock")

    def __init__(self, allocation: int | None) -> None:
        self.allocation = allocation
        self._used = 0
        self._lock = threading.Lock()  # generations of one run may finish on several threads

    def consume(self, tokens: int) -> None:
        with self._lock:
            self._used += tokens

    @property
    def used(self) -> int:
        return self._used

    @property
    def remaining(self) -> int | None:
        """Tokens left, negative once overrun; None when the chatmode has no allocation."""
        return None if self.allocation is None else self.allocation - self._used

    @property
    def overrun(self) -> bool:
        return self.allocation is not None and self._used > self.allocation
