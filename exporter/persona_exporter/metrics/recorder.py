"""The recorder: applies events to the catalog's metrics in a CollectorRegistry.

It is a sink (``emit(event)``) and sits on the hot path of every instrumented LLM call,
so it never calls ``labels(...)`` per event: each distinct label tuple is resolved once
(through the cardinality caps) into a bundle of held children, and later events with the
same tuple cost one dict lookup plus the ``inc``/``observe`` calls themselves.

>>> from prometheus_client import CollectorRegistry
>>> from persona_exporter.events import PersonaSwitch
>>> registry = CollectorRegistry()
>>> recorder = Recorder(registry)
>>> recorder.emit(PersonaSwitch(workflow="release", from_persona="a", to_persona="b"))
>>> registry.get_sample_value("persona_switches_total",
...     {"workflow": "release", "from_persona": "a", "to_persona": "b"})
1.0
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable
from importlib import metadata
from itertools import product
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from .. import catalog
from ..catalog import CATALOG, DIMENSIONS, OVERFLOW_VALUE, RUN_STATUSES, Kind, MetricSpec
from ..config import Config
from ..errors import ErrorReporter
from ..events import (
    Event,
    LLMGeneration,
    Observation,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    WorkflowStart,
    out_of_bounds,
)
from .labels import LabelLimiter
from .llm_series import LLMCollector, LLMSeries

logger = logging.getLogger("persona_exporter")

class OutOfBoundsError(ValueError):
    """An event built in-process carried a number no event may carry (see events.py)."""


# Pre-creating every persona x chatmode x model series costs memory in Prometheus; past this
# many combinations the recorder initialises budgets only and says so once.
MAX_INITIAL_COMBINATIONS = 2000


# Each kind of held series, by the first catalog family it writes: the series cap counts
# overflows under this name, and durable storage keeps rows of these kinds.
SERIES_FAMILIES: dict[str, str] = {
    "llm": "persona_llm_requests_total",
    "failure": "persona_llm_request_failures_total",
    "stage": "persona_stage_runs_total",
    "workflow": "persona_workflow_runs_total",
    "switch": "persona_switches_total",
    "overrun": "persona_workflow_budget_overruns_total",
}

# Families kept by the LLMCollector rather than prometheus_client instruments (see there).
_COLLECTED = frozenset({
    "persona_llm_requests_total",
    "persona_llm_tokens_total",
    "persona_llm_cost_usd_total",
    "persona_llm_request_duration_seconds",
    "persona_llm_time_to_first_chunk_seconds",
    "persona_exporter_events_accepted_total",
})


def _ignore(event: Event) -> None:
    return None


def build_version() -> str:
    try:
        return metadata.version("persona-exporter")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _instrument(spec: MetricSpec, registry: CollectorRegistry) -> MetricWrapperBase:
    common: dict[str, Any] = {"labelnames": spec.labels, "registry": registry}
    if spec.unit:
        common["unit"] = spec.unit
    if spec.kind is Kind.COUNTER:
        return Counter(spec.name, spec.help, **common)
    if spec.kind is Kind.GAUGE:
        return Gauge(spec.name, spec.help, **common)
    return Histogram(spec.name, spec.help, buckets=spec.buckets, **common)


class _StageSeries:
    __slots__ = ("duration", "labels", "runs")

    def __init__(self, m: dict[str, Any], workflow: str, stage: str, persona: str) -> None:
        self.labels = (workflow, stage, persona)
        runs = m["persona_stage_runs_total"]
        self.runs = {s: runs.labels(workflow, stage, persona, s) for s in RUN_STATUSES}
        self.duration = m["persona_stage_duration_seconds"].labels(workflow, stage, persona)


class _WorkflowSeries:
    __slots__ = ("active", "duration", "labels", "name", "runs")

    def __init__(self, m: dict[str, Any], workflow: str) -> None:
        runs = m["persona_workflow_runs_total"]
        self.name = workflow
        self.labels = (workflow,)
        self.runs = {s: runs.labels(workflow, s) for s in RUN_STATUSES}
        self.duration = m["persona_workflow_duration_seconds"].labels(workflow)
        self.active = m["persona_workflow_active"].labels(workflow)


class TraceExportSeries:
    """The self-metrics of one trace backend, held so the export thread never looks up
    labels."""

    __slots__ = ("bytes", "dropped", "duration", "exports", "failures")

    def __init__(self, m: dict[str, Any], backend: str) -> None:
        self.exports = m["persona_exporter_trace_exports_total"].labels(backend)
        self.failures = m["persona_exporter_trace_export_failures_total"].labels(backend)
        self.duration = m["persona_exporter_trace_export_duration_seconds"].labels(backend)
        self.bytes = m["persona_exporter_trace_export_bytes_total"].labels(backend)
        self.dropped = m["persona_exporter_trace_spans_dropped_total"].labels(backend)


class Recorder:
    """Apply events to the catalog's metrics in ``registry``.

    ``config`` supplies the budget gauges, the label caps and the known personas, which
    are initialised at zero so rates and alerts work from the first scrape.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 config: Config | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._llm_collector = LLMCollector()
        self.registry.register(self._llm_collector)
        # Typed Any: the instruments' children are used through inc/set/observe only.
        m: dict[str, Any] = {spec.name: _instrument(spec, self.registry)
                             for spec in CATALOG if spec.name not in _COLLECTED}
        self._metrics = m
        self.errors = ErrorReporter(m["persona_exporter_internal_errors_total"])

        overflow = m["persona_exporter_label_overflow_total"]
        self._overflow = {dim: overflow.labels(dim) for dim in DIMENSIONS}
        series_overflow = m["persona_exporter_series_overflow_total"]
        self._series_overflow = {family: series_overflow.labels(family)
                                 for family in SERIES_FAMILIES.values()}
        self._series_cap = Config().limits.series
        # What changed since the last take_changes(), for durable storage; None (the SDK's
        # in-process recorder) costs one attribute test per event.
        self._dirty: set[tuple[str, Any]] | None = None
        self._limiter = LabelLimiter({}, on_overflow=lambda dim: self._overflow[dim].inc())

        self._llm_collector.init_accepted(catalog.EVENT_TYPES)
        rejected = m["persona_exporter_events_rejected_total"]
        self._rejected = {r: rejected.labels(r) for r in catalog.REJECT_REASONS}
        for backend in catalog.TRACE_BACKENDS:
            TraceExportSeries(m, backend)  # zero from the start, so export alerts can rate()
        m["persona_exporter_build_info"].labels(build_version(), platform.python_version()).set(1)

        self._llm: dict[tuple[str, str, str, str], LLMSeries] = {}
        self._failures: dict[tuple[str, str, str, str, str], Any] = {}
        self._stages: dict[tuple[str, str, str], _StageSeries] = {}
        self._workflows: dict[str, _WorkflowSeries] = {}
        self._switches: dict[tuple[str, str, str], Any] = {}
        self._overruns: dict[tuple[str, str], Any] = {}
        self._active: dict[str, int] = {}
        self._active_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._budget_series: set[tuple[str, str, str]] = set()
        self._handlers: dict[type, Callable[[Any], None]] = {
            LLMGeneration: self._on_generation,
            StageRun: self._on_stage,
            WorkflowStart: self._on_workflow_start,
            WorkflowRun: self._on_workflow_run,
            PersonaSwitch: self._on_switch,
            Observation: _ignore,  # traces only; counted as accepted below
        }
        self.config = Config()
        self.apply_config(config if config is not None else Config())

    # --- the sink interface ---

    def emit(self, event: Event) -> None:
        problem = out_of_bounds(event)
        if problem is not None:
            # Events built in-process skip validation; one absurd or non-finite number
            # would poison its series for good, so the whole event is refused here, where
            # every path meets. Counted and logged once, never raised into the host.
            self.reject("invalid_event")
            self.errors.report("recorder", OutOfBoundsError(problem))
            return
        self._handlers[type(event)](event)
        if type(event) is not LLMGeneration:  # generations are counted by their requests
            self._llm_collector.count_accepted(event.type)

    def emit_validated(self, event: Event) -> None:
        """:meth:`emit` for an event as :func:`~..events.parse_event` returned it: pydantic
        checked its numbers against the same bounds (tests/test_events.py keeps them
        equal), so they are not checked a second time (~0.4 us an event)."""
        self._handlers[type(event)](event)
        if type(event) is not LLMGeneration:
            self._llm_collector.count_accepted(event.type)

    def reject(self, reason: str, count: int = 1) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._metrics["persona_exporter_events_rejected_total"].labels(reason)
        child.inc(count)

    def instrument(self, name: str) -> Any:
        """The prometheus_client instrument of a catalog family, for the exporter's other
        parts (the bridge, the remote sink) to count their own outcomes."""
        try:
            return self._metrics[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a prometheus_client instrument of the catalog "
                           "(it may be one the LLM collector keeps)") from None

    def track_changes(self) -> None:
        """Note from now on which series each event changes, for durable storage to take
        (:func:`.state.take_changes`)."""
        if self._dirty is None:
            self._dirty = set()

    def trace_export_series(self, backend: str) -> TraceExportSeries:
        return TraceExportSeries(self._metrics, backend)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    # --- configuration ---

    def apply_config(self, config: Config) -> None:
        """Set budget gauges, caps and known series from ``config``; safe to call again
        (on reload), which changes the gauges in place and never resets a counter."""
        self.config = config
        self._series_cap = config.limits.series
        self._limiter.set_caps({dim: config.limits.cap(dim) for dim in DIMENSIONS})
        self._limiter.reserve("persona", config.personas)
        self._limiter.reserve("chatmode", config.chatmodes)
        self._limiter.reserve("model", config.models)
        self._limiter.reserve("provider", {p.provider for p in config.models.values()})
        self._apply_budget_gauges(config)
        self._initialise_known_series(config)

    def _apply_budget_gauges(self, config: Config) -> None:
        tokens = self._metrics["persona_token_budget_tokens"]
        cost = self._metrics["persona_cost_budget_usd"]
        wanted: dict[tuple[str, str, str], float] = {}
        for persona, budget in config.personas.items():
            for token_window, limit in budget.tokens.items():
                wanted[("tokens", persona, token_window)] = limit
            for cost_window, usd in budget.cost_usd.items():
                wanted[("cost", persona, cost_window)] = usd
        # Set new values before removing stale ones, so a scrape in between never sees a
        # budget vanish (an absent gauge would resolve its alerts).
        for (kind, persona, window), value in wanted.items():
            (tokens if kind == "tokens" else cost).labels(persona, window).set(value)
        for kind, persona, window in self._budget_series - wanted.keys():
            (tokens if kind == "tokens" else cost).remove(persona, window)
        self._budget_series = set(wanted)

    def _initialise_known_series(self, config: Config) -> None:
        personas = list(config.personas)
        chatmodes = list(config.chatmodes) or ["none"]
        models = [(name, price.provider) for name, price in config.models.items()]
        combinations = len(personas) * len(chatmodes) * len(models)
        most = min(MAX_INITIAL_COMBINATIONS, config.limits.series)
        if combinations > most:
            logger.warning(
                "not pre-initialising %d persona x chatmode x model series (over %d); "
                "they appear on first use", combinations, most)
            return
        for persona, chatmode, (model, provider) in product(personas, chatmodes, models):
            self._llm_series((persona, chatmode, model, provider))

    # --- handlers ---

    def _on_generation(self, e: LLMGeneration) -> None:
        self.record_generation(e.persona, e.chatmode, e.model, e.provider, e.input_tokens,
                               e.output_tokens, e.cache_read_tokens, e.reasoning_tokens,
                               e.cost_usd, e.duration_seconds, e.time_to_first_chunk_seconds,
                               e.error_type)

    def record_generation(self, persona: str, chatmode: str, model: str, provider: str,
                          input_tokens: int, output_tokens: int, cache_read_tokens: int,
                          reasoning_tokens: int, cost_usd: float | None,
                          duration_seconds: float, time_to_first_chunk_seconds: float | None,
                          error_type: str | None) -> None:
        """One LLM call, as an ``LLMGeneration`` with these fields records it, without the
        event: for the SDK's own calls when metrics are all its Telemetry feeds. The
        numbers must be within the event's bounds: they are not checked here, so the caller
        checks them (the SDK's _within_bounds; costs are capped where they are priced)."""
        key = (persona, chatmode, model, provider)
        series = self._llm.get(key) or self._llm_series(key)
        series.record(input_tokens, output_tokens, cache_read_tokens, reasoning_tokens,
                      cost_usd, duration_seconds, time_to_first_chunk_seconds)
        dirty = self._dirty
        if dirty is not None:
            dirty.add(("llm", series))
        if error_type is not None:
            failure_key = (*key, error_type)
            failures = self._failures.get(failure_key)
            if failures is None:
                failures = self._cached(self._failures, failure_key, ("persona", "chatmode",
                                        "model", "provider", "error_type"),
                                        self._metrics["persona_llm_request_failures_total"].labels,
                                        "failure")
            failures.inc()
            if dirty is not None:
                dirty.add(("failure", failures))

    def _on_stage(self, e: StageRun) -> None:
        key = (e.workflow, e.stage, e.persona)
        series = self._stages.get(key)
        if series is None:
            series = self._cached(self._stages, key, ("workflow", "stage", "persona"),
                                  self._stage_series, "stage")
        series.runs[e.status].inc()
        series.duration.observe(e.duration_seconds)
        if self._dirty is not None:
            self._dirty.add(("stage", series))

    def _on_workflow_start(self, e: WorkflowStart) -> None:
        series = self._workflow(e.workflow)
        overruns = self._overrun_counter(series.name, e.chatmode)  # exists at 0 before any
        with self._active_lock:
            count = self._active[series.name] = self._active.get(series.name, 0) + 1
            series.active.set(count)
        if self._dirty is not None:
            self._dirty.update((("workflow", series), ("overrun", overruns)))

    def _on_workflow_run(self, e: WorkflowRun) -> None:
        series = self._workflow(e.workflow)
        series.runs[e.status].inc()
        series.duration.observe(e.duration_seconds)
        with self._active_lock:
            # Clamped at zero: a client may report runs whose start it never sent.
            count = self._active[series.name] = max(0, self._active.get(series.name, 0) - 1)
            series.active.set(count)
        overruns = self._overrun_counter(series.name, e.chatmode)
        if e.budget_overrun:
            overruns.inc()
        if self._dirty is not None:
            self._dirty.update((("workflow", series), ("overrun", overruns)))

    def _on_switch(self, e: PersonaSwitch) -> None:
        key = (e.workflow, e.from_persona, e.to_persona)
        child = self._switches.get(key)
        if child is None:
            child = self._cached(self._switches, key, ("workflow", "persona", "persona"),
                                 self._metrics["persona_switches_total"].labels, "switch")
        child.inc()
        if self._dirty is not None:
            self._dirty.add(("switch", child))

    # --- label resolution ---

    def _llm_series(self, key: tuple[str, str, str, str]) -> LLMSeries:
        series: LLMSeries = self._cached(self._llm, key,
                                         ("persona", "chatmode", "model", "provider"),
                                         lambda *v: self._llm_collector.add(v), "llm")
        return series

    def _workflow(self, workflow: str) -> _WorkflowSeries:
        series = self._workflows.get(workflow)
        if series is None:
            series = self._cached(self._workflows, workflow, ("workflow",),
                                  self._workflow_series, "workflow")
        return series

    def _stage_series(self, workflow: str, stage: str, persona: str) -> _StageSeries:
        return _StageSeries(self._metrics, workflow, stage, persona)

    def _workflow_series(self, workflow: str) -> _WorkflowSeries:
        return _WorkflowSeries(self._metrics, workflow)

    def _overrun_counter(self, workflow: str, chatmode: str) -> Any:
        key = (workflow, chatmode)
        child = self._overruns.get(key)
        if child is None:
            # ``workflow`` was admitted already (it is the workflow series' own name).
            child = self._cached(self._overruns, key, (None, "chatmode"),
                                 self._metrics["persona_workflow_budget_overruns_total"].labels,
                                 "overrun")
        return child

    def _cached(self, cache: dict[Any, Any], key: Any, dimensions: tuple[str | None, ...],
                build: Callable[..., Any], kind: str) -> Any:
        """Resolve ``key`` through the caps and build its children; cache it only when no
        value overflowed, so the cache stays bounded by the caps whatever clients send.

        Two caps apply: each label's distinct values (``limits.<label>``), then the
        family's distinct combinations (``limits.series``), past which the recording goes
        to the one series whose labels are all the overflow value. A dimension of None is
        taken as it is (admitted before)."""
        raw = key if isinstance(key, tuple) else (key,)
        admitted = tuple(value if dim is None else self._limiter.admit(dim, value)
                         for dim, value in zip(dimensions, raw, strict=True))
        admitted_key = admitted if isinstance(key, tuple) else admitted[0]
        result = cache.get(admitted_key)
        if result is None:
            # Two threads may miss together; building twice would register two series
            # with one label set, which Prometheus rejects as duplicate samples.
            with self._build_lock:
                result = cache.get(admitted_key)
                if result is None and len(cache) >= self._series_cap:
                    self._series_overflow[SERIES_FAMILIES[kind]].inc()
                    admitted = (OVERFLOW_VALUE,) * len(raw)
                    admitted_key = admitted if isinstance(key, tuple) else admitted[0]
                    result = cache.get(admitted_key)
                if result is None:
                    result = cache[admitted_key] = build(*admitted)
        if admitted == raw:
            cache[key] = result
        return result
