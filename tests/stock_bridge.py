"""The OTLP metrics bridge as it was before issue 14: one OpenTelemetry SDK call per event.

Kept for tests/test_bridge.py, which checks that the aggregating bridge in
``persona_exporter.server.bridge`` exports the same data points as this one did
(copied from the commit before; only the imports changed).

Instrument names and buckets come from the catalog's ``otel_*`` fields: the GenAI semantic
conventions' ``gen_ai.client.token.usage`` (with ``gen_ai.token.type`` input/output),
``gen_ai.client.operation.duration`` (with ``error.type`` on failures) and
``...time_to_first_chunk``, each with ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model`` and this project's ``persona`` and ``chatmode``; plus the cost
and the budget gauges. It runs on its own MeterProvider (never the global one); a periodic
reader exports off the request path (``OTEL_METRIC_EXPORT_INTERVAL``), and export attempts
and failures are counted in ``persona_exporter_otlp_metric_export[s|_failures]_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from persona_exporter.catalog import spec
from persona_exporter.events import Event, LLMGeneration
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.tracing.otlp_env import default_resource

logger = logging.getLogger("persona_exporter")

TOKENS = spec("persona_llm_tokens_total")
COST = spec("persona_llm_cost_usd_total")
DURATION = spec("persona_llm_request_duration_seconds")
FIRST_CHUNK = spec("persona_llm_time_to_first_chunk_seconds")
TOKEN_BUDGET = spec("persona_token_budget_tokens")
COST_BUDGET = spec("persona_cost_budget_usd")


class _CountingExporter(MetricExporter):
    """Delegates to the OTLP exporter and counts attempts and failures."""

    def __init__(self, inner: MetricExporter, recorder: Recorder) -> None:
        # Carry over what the OTLP exporter resolved from the standard variables
        # (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE); the base class keeps them.
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._attempts = recorder.instrument("persona_exporter_otlp_metric_exports_total")
        self._failures = recorder.instrument("persona_exporter_otlp_metric_export_failures_total")
        self._errors = recorder.errors

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self._attempts.inc()
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self._errors.report("bridge.metrics", exc)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._failures.inc()
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class StockMetricsBridge:
    """A sink recording events into OpenTelemetry instruments exported over OTLP."""

    def __init__(self, exporter: MetricExporter, recorder: Recorder,
                 export_interval_millis: float | None = None) -> None:
        self._recorder = recorder
        reader = PeriodicExportingMetricReader(_CountingExporter(exporter, recorder),
                                               export_interval_millis=export_interval_millis)
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=default_resource())
        meter = self._provider.get_meter("persona_exporter")
        self._tokens = meter.create_histogram(
            TOKENS.otel_name, unit=TOKENS.otel_unit, description=TOKENS.help,
            explicit_bucket_boundaries_advisory=list(TOKENS.otel_buckets))
        self._duration = meter.create_histogram(
            DURATION.otel_name, unit=DURATION.otel_unit, description=DURATION.help,
            explicit_bucket_boundaries_advisory=list(DURATION.otel_buckets))
        self._first_chunk = meter.create_histogram(
            FIRST_CHUNK.otel_name, unit=FIRST_CHUNK.otel_unit, description=FIRST_CHUNK.help,
            explicit_bucket_boundaries_advisory=list(FIRST_CHUNK.otel_buckets))
        self._cost = meter.create_counter(COST.otel_name, unit=COST.otel_unit,
                                          description=COST.help)
        meter.create_observable_gauge(TOKEN_BUDGET.otel_name, [self._token_budgets],
                                      unit=TOKEN_BUDGET.otel_unit, description=TOKEN_BUDGET.help)
        meter.create_observable_gauge(COST_BUDGET.otel_name, [self._cost_budgets],
                                      unit=COST_BUDGET.otel_unit, description=COST_BUDGET.help)

    def _token_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        # Read from the recorder's config at each collection, so SIGHUP reloads show.
        for persona, budget in self._recorder.config.personas.items():
            for window, limit in budget.tokens.items():
                yield Observation(limit, {"persona": persona, "window": window})

    def _cost_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        for persona, budget in self._recorder.config.personas.items():
            for window, usd in budget.cost_usd.items():
                yield Observation(usd, {"persona": persona, "window": window})

    def emit(self, event: Event) -> None:
        if type(event) is not LLMGeneration:
            return
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": event.provider,
                      "gen_ai.request.model": event.model, "persona": event.persona,
                      "chatmode": event.chatmode}
        self._tokens.record(event.input_tokens, {**attributes, "gen_ai.token.type": "input"})
        self._tokens.record(event.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        if event.cost_usd:
            self._cost.add(event.cost_usd, attributes)
        if event.time_to_first_chunk_seconds is not None:
            self._first_chunk.record(event.time_to_first_chunk_seconds, attributes)
        if event.error_type is not None:
            attributes["error.type"] = event.error_type
        self._duration.record(event.duration_seconds, attributes)

    def flush(self, timeout: float | None = None) -> bool:
        return bool(self._provider.force_flush(int((timeout or 10) * 1000)))

    def shutdown(self, timeout: float | None = None) -> None:
        self._provider.shutdown(int((timeout or 10) * 1000))

