"""Trace and span ids, assigned when a run, stage or call starts and before any span
exists (the tracing sink builds finished spans from the events later, off the caller's
thread), and the sampling decision that says whether a run gets them at all."""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .telemetry import Telemetry


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def sampled(telemetry: Telemetry) -> bool:
    """Whether a new trace should be recorded, per the telemetry's sample rate."""
    if not telemetry.needs_trace_context:
        return False
    rate = telemetry.trace_sample_rate
    return rate >= 1.0 or random.random() < rate  # noqa: S311 - sampling, not security
