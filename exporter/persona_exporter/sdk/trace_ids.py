"""Trace and span ids, assigned when a run, stage or call starts and before any span
exists (the tracing sink builds finished spans from the events later, off the caller's
thread), and the sampling decision that says whether a run gets them at all."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .telemetry import Telemetry


# Ids need to be unique, not secret: OpenTelemetry's own RandomIdGenerator draws them from
# random.getrandbits. os.urandom is a system call, about 20 us here, on every call of
# every traced LLM request. One generator seeded from the OS, reseeded in a forked child
# (which would otherwise repeat its parent's ids).
_ids = random.Random(os.urandom(32))  # noqa: S311 - ids, not secrets


def _reseed() -> None:
    _ids.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def new_trace_id() -> str:
    while True:  # all zeros is not a valid trace id
        value = _ids.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    while True:
        value = _ids.getrandbits(64)
        if value:
            return f"{value:016x}"


def sampled(telemetry: Telemetry) -> bool:
    """Whether a new trace should be recorded, per the telemetry's sample rate."""
    if not telemetry.needs_trace_context:
        return False
    rate = telemetry.trace_sample_rate
    return rate >= 1.0 or random.random() < rate  # noqa: S311 - sampling, not security
