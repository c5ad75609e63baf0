"""A recorder's state as rows of plain numbers, and back: what durable storage keeps.

The state is persisted, not the events that made it. Replaying events would be exact only
while nothing that shapes their effect changes: a reload that raises a label cap, or a
release that validates differently, would turn the same events into other series. Rows of
absolute values are exact by construction: after a restart ``/metrics`` is what it was.

Each held series is one row, keyed by its kind and its admitted label values (the
overflow value included), so a restored recorder makes the same overflow decisions as
the one that wrote it. Only the series an ingested batch touched are written with it
(:meth:`Recorder.track_changes`); the one-label self-metrics that every request may move
(rejections, overflows, accepted events by type) travel as one small ``scalars`` row.
Budget gauges come from the config and process-local self-metrics (trace exports,
internal errors, build info) start again at zero.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..catalog import OVERFLOW_VALUE, RUN_STATUSES, spec
from .llm_series import DURATION_BOUNDS, FIRST_CHUNK_BOUNDS, LLMSeries

if TYPE_CHECKING:
    from .recorder import Recorder

# The one-label counters kept whole in the scalars row.
SCALAR_FAMILIES = (
    "persona_exporter_events_rejected_total",
    "persona_exporter_label_overflow_total",
    "persona_exporter_series_overflow_total",
    "persona_exporter_remote_events_dropped_total",
    "persona_exporter_otlp_spans_received_total",
    "persona_exporter_otlp_spans_total",
    "persona_exporter_otlp_spans_rejected_total",
    "persona_exporter_otlp_persona_resolutions_total",
)

# The label dimension of each label of a row, for re-admitting restored values.
ROW_DIMENSIONS: dict[str, tuple[str | None, ...]] = {
    "llm": ("persona", "chatmode", "model", "provider"),
    "failure": ("persona", "chatmode", "model", "provider", "error_type"),
    "stage": ("workflow", "stage", "persona"),
    "workflow": ("workflow",),
    "switch": ("workflow", "persona", "persona"),
    "overrun": ("workflow", "chatmode"),
}


@dataclass
class Changes:
    """What changed since the last take: ``rows`` of (kind, labels JSON, state JSON)."""

    rows: list[tuple[str, str, str]]
    scalars: str
    # Received spans waiting for their persona (genai/traces.py): (key, JSON) written,
    # keys released; stored with the batch that held or released them.
    held: list[tuple[str, str]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


class RowError(ValueError):
    """A stored row that does not fit this version's series (wrong shape, bad number)."""


def take_changes(recorder: Recorder) -> Changes:
    """The rows of every series changed since the last call, and the scalars."""
    dirty = recorder._dirty
    if dirty is None:
        raise RuntimeError("take_changes() needs Recorder.track_changes() first")
    recorder._dirty = set()
    rows = [(kind, json.dumps(labels, ensure_ascii=False), json.dumps(state))
            for kind, labels, state in (_encode(kind, held) for kind, held in dirty)]
    return Changes(rows, scalars_of(recorder))


def scalars_of(recorder: Recorder) -> str:
    scalars: dict[str, dict[str, Any]] = {}
    for name in SCALAR_FAMILIES:
        family = recorder._metrics[name]
        with family._lock:
            children = list(family._metrics.items())
        scalars[name] = {values[0]: child._value.get() for values, child in children}
    scalars["accepted"] = recorder._llm_collector.accepted()
    return json.dumps(scalars, sort_keys=True)


def _encode(kind: str, held: Any) -> tuple[str, tuple[str, ...], list[Any]]:
    if kind == "llm":
        series: LLMSeries = held
        return kind, series.labels, list(series.snapshot())
    if kind == "stage":
        return kind, held.labels, [*_runs(held.runs), *_histogram(held.duration)]
    if kind == "workflow":
        return kind, held.labels, [*_runs(held.runs), *_histogram(held.duration),
                                   held.active._value.get()]
    return kind, held._labelvalues, [held._value.get(), held._created]


def _runs(runs: dict[str, Any]) -> list[Any]:
    return [[runs[status]._value.get() for status in RUN_STATUSES],
            runs[RUN_STATUSES[0]]._created]


def _histogram(child: Any) -> list[Any]:
    return [[bucket.get() for bucket in child._buckets], child._sum.get(), child._created]


def zero_state(kind: str) -> str:
    """The state of a series of ``kind`` that has counted nothing yet."""
    if kind == "llm":
        return json.dumps([0, [0, 0, 0, 0], 0.0, [0] * (len(DURATION_BOUNDS) + 1), 0.0,
                           [0] * (len(FIRST_CHUNK_BOUNDS) + 1), 0.0])
    if kind in ("stage", "workflow"):
        histogram = spec(f"persona_{kind}_duration_seconds")
        buckets = [0] * (len(histogram.buckets) + (histogram.buckets[-1] != math.inf))
        now = time.time()
        return json.dumps([[0] * len(RUN_STATUSES), now, buckets, 0.0, now]
                          + ([0] if kind == "workflow" else []))
    return json.dumps([0, time.time()])


# --- restore ---

def restore(recorder: Recorder, rows: Iterable[tuple[str, str, str]],
            scalars: str | None) -> list[str]:
    """Rebuild the series of ``rows`` in a fresh recorder (built with its config); return
    one description per row that could not be restored (and was skipped)."""
    skipped: list[str] = []
    for kind, labels_json, state_json in rows:
        try:
            labels = json.loads(labels_json)
            if (kind not in ROW_DIMENSIONS or not isinstance(labels, list)
                    or len(labels) != len(ROW_DIMENSIONS[kind])
                    or not all(isinstance(v, str) for v in labels)):
                raise RowError("unknown kind or labels")
            _readmit(recorder, kind, labels)
            _RESTORERS[kind](recorder, tuple(labels), json.loads(state_json))
        except (RowError, ValueError, TypeError, KeyError, IndexError) as error:
            skipped.append(f"{kind} {labels_json[:120]}: {error}")
    if scalars is not None:
        try:
            _restore_scalars(recorder, json.loads(scalars))
        except (RowError, ValueError, TypeError, AttributeError) as error:
            skipped.append(f"scalars: {error}")
    recorder._dirty = set() if recorder._dirty is not None else None
    return skipped


def _readmit(recorder: Recorder, kind: str, labels: list[str]) -> None:
    # Admitted values stay admitted across a restart, whatever the caps say now, as they
    # do across a reload (LabelLimiter.set_caps).
    for dimension, value in zip(ROW_DIMENSIONS[kind], labels, strict=True):
        if dimension is not None and value != OVERFLOW_VALUE:
            recorder._limiter.reserve(dimension, (value,))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise RowError(f"{value!r} is not a finite number >= 0")
    return value


def _counts(values: Any, length: int) -> list[int]:
    if not isinstance(values, list) or len(values) != length:
        raise RowError(f"expected {length} counts")
    return [int(_number(v)) for v in values]


def _restore_llm(recorder: Recorder, labels: tuple[str, ...], state: list[Any]) -> None:
    requests, tokens, cost, d_counts, d_sum, f_counts, f_sum = state
    key = (labels[0], labels[1], labels[2], labels[3])
    series = recorder._llm.get(key)
    if series is None:
        series = recorder._llm[key] = recorder._llm_collector.add(key)
    token_counts = _counts(tokens, 4)
    durations = _counts(d_counts, len(DURATION_BOUNDS) + 1)
    first_chunks = _counts(f_counts, len(FIRST_CHUNK_BOUNDS) + 1)
    with series.lock:
        series.version += 1  # a scrape's kept lines of this series are stale now
        series.requests = int(_number(requests))
        series.tokens = token_counts
        series.cost = float(_number(cost))
        series.duration_counts, series.duration_sum = durations, float(_number(d_sum))
        series.first_chunk_counts, series.first_chunk_sum = first_chunks, float(_number(f_sum))


def _set_runs(runs: dict[str, Any], values: Any, created: Any) -> None:
    for status, value in zip(RUN_STATUSES, _counts(values, len(RUN_STATUSES)), strict=True):
        runs[status]._value.set(value)
        runs[status]._created = _number(created)


def _set_histogram(child: Any, buckets: Any, total: Any, created: Any) -> None:
    counts = _counts(buckets, len(child._buckets))
    for bucket, count in zip(child._buckets, counts, strict=True):
        bucket.set(count)
    child._sum.set(_number(total))
    child._created = _number(created)


def _restore_stage(recorder: Recorder, labels: tuple[str, ...], state: list[Any]) -> None:
    runs, runs_created, buckets, total, created = state
    key = (labels[0], labels[1], labels[2])
    series = recorder._stages.get(key)
    if series is None:
        series = recorder._stages[key] = recorder._stage_series(*key)
    _set_runs(series.runs, runs, runs_created)
    _set_histogram(series.duration, buckets, total, created)


def _restore_workflow(recorder: Recorder, labels: tuple[str, ...], state: list[Any]) -> None:
    runs, runs_created, buckets, total, created, active = state
    name = labels[0]
    series = recorder._workflows.get(name)
    if series is None:
        series = recorder._workflows[name] = recorder._workflow_series(name)
    _set_runs(series.runs, runs, runs_created)
    _set_histogram(series.duration, buckets, total, created)
    count = int(_number(active))
    with recorder._active_lock:
        recorder._active[name] = count
        series.active.set(count)


def _child_restorer(cache: str, family: str) -> Any:
    def restore_child(recorder: Recorder, labels: tuple[str, ...], state: list[Any]) -> None:
        value, created = state
        child = recorder._metrics[family].labels(*labels)
        child._value.set(_number(value))
        child._created = _number(created)
        getattr(recorder, cache)[labels] = child

    return restore_child


_RESTORERS = {
    "llm": _restore_llm,
    "stage": _restore_stage,
    "workflow": _restore_workflow,
    "failure": _child_restorer("_failures", "persona_llm_request_failures_total"),
    "switch": _child_restorer("_switches", "persona_switches_total"),
    "overrun": _child_restorer("_overruns", "persona_workflow_budget_overruns_total"),
}


def _restore_scalars(recorder: Recorder, scalars: dict[str, Any]) -> None:
    for name in SCALAR_FAMILIES:
        for label, value in (scalars.get(name) or {}).items():
            recorder._metrics[name].labels(label)._value.set(_number(value))
    recorder._llm_collector.restore_accepted(
        {str(k): int(_number(v)) for k, v in (scalars.get("accepted") or {}).items()})
