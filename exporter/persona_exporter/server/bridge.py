"""The OTLP metrics bridge: the exporter's events as OpenTelemetry metrics.

Instrument names and buckets come from the catalog's ``otel_*`` fields: the GenAI semantic
conventions' ``gen_ai.client.token.usage`` (with ``gen_ai.token.type`` input/output),
``gen_ai.client.operation.duration`` (with ``error.type`` on failures) and
``...time_to_first_chunk``, each with ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model`` and this project's ``persona`` and ``chatmode``; plus the cost
and the budget gauges.

The SDK's synchronous instruments cost about 8 us per ``add``/``record`` here (attribute
cleaning and hashing), which divided ingest by five. So ``emit`` only adds into plain
aggregates, one lock per event, and the data points the SDK would have made are built from
them on the export thread (``OTEL_METRIC_EXPORT_INTERVAL``), as the SDK builds them: the
aggregation code this mirrors is ``opentelemetry/sdk/metrics/_internal/aggregation.py``
(``_SumAggregation``, ``_ExplicitBucketHistogramAggregation``) and
``_view_instrument_match.py`` (start times, the 2000 attribute-set limit per instrument
with its ``otel.metric.overflow`` point). Temporality follows the exporter's preference
(``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``: cumulative by default; delta and
lowmemory make the counter and the histograms delta). The OTLP exporter still encodes and
sends; export attempts and failures are counted in
``persona_exporter_otlp_metric_export[s|_failures]_total``.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, cast

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.metrics import Counter, Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ..catalog import MetricSpec, spec
from ..events import Event, LLMGeneration
from ..metrics.recorder import Recorder
from ..tracing.otlp_env import default_resource, env_float, otlp_protocol

logger = logging.getLogger("persona_exporter")

TOKENS = spec("persona_llm_tokens_total")
COST = spec("persona_llm_cost_usd_total")
DURATION = spec("persona_llm_request_duration_seconds")
FIRST_CHUNK = spec("persona_llm_time_to_first_chunk_seconds")
TOKEN_BUDGET = spec("persona_token_budget_tokens")
COST_BUDGET = spec("persona_cost_budget_usd")

TOKEN_BOUNDS = tuple(TOKENS.otel_buckets)
DURATION_BOUNDS = tuple(DURATION.otel_buckets)
FIRST_CHUNK_BOUNDS = tuple(FIRST_CHUNK.otel_buckets)

# The SDK's default cardinality limit per instrument (_DEFAULT_CARDINALITY_LIMIT in
# _view_instrument_match.py); later attribute sets share one overflow point.
CARDINALITY_LIMIT = 2000
_OVERFLOW: tuple[Any, ...] = ("otel.metric.overflow",)
_OVERFLOW_ATTRIBUTES: dict[str, Any] = {"otel.metric.overflow": True}
# Events resolve their points once per export interval through this cache; past this many
# distinct label tuples they resolve on each event, so a flood of names cannot grow it.
_CACHE_LIMIT = 4 * CARDINALITY_LIMIT
# The SDK's defaults (PeriodicExportingMetricReader): 60 s between exports, 30 s per export.
_DEFAULT_INTERVAL_MS = 60_000.0
_DEFAULT_TIMEOUT_MS = 30_000.0

Attributes = dict[str, Any]


class _Hist:
    """One histogram point of one export interval (what the SDK's aggregation holds)."""

    __slots__ = ("attributes", "start", "counts", "sum", "min", "max")

    def __init__(self, attributes: Attributes, start: int, buckets: int) -> None:
        self.attributes = attributes
        self.start = start
        self.counts = [0] * buckets
        # int 0 as in the SDK: token sums stay ints, second sums become floats
        self.sum: float = 0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, slot: int, value: float) -> None:
        self.counts[slot] += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, later: _Hist) -> None:
        self.counts = [a + b for a, b in zip(later.counts, self.counts, strict=True)]
        self.min = min(later.min, self.min)
        self.max = max(later.max, self.max)
        self.sum = later.sum + self.sum


class _Total:
    """One counter point of one export interval."""

    __slots__ = ("attributes", "start", "value")

    def __init__(self, attributes: Attributes, start: int) -> None:
        self.attributes = attributes
        self.start = start
        self.value: float = 0

    def merge(self, later: _Total) -> None:
        self.value = later.value + self.value


_Point = _Hist | _Total


class _Stream:
    """One instrument: the points of the current interval (written under the bridge's
    lock), and on the export thread what a cumulative export carries across intervals."""

    def __init__(self, metric: MetricSpec, bounds: tuple[float, ...] | None,
                 delta: bool) -> None:
        self.name = metric.otel_name
        self.unit = metric.otel_unit
        self.description = metric.help
        self.bounds = bounds
        self.delta = delta
        self.points: dict[tuple[Any, ...], _Point] = {}
        self.admitted: set[tuple[Any, ...]] = set()  # cumulative: sets with their own point
        self.in_use = False  # the SDK makes an instrument's storage at its first measurement
        self.since: int | None = None  # delta: the last collection since it is in use
        self.totals: dict[tuple[Any, ...], _Point] = {}  # cumulative, export thread only

    def point(self, key: tuple[Any, ...], attributes: Callable[[], Attributes]) -> _Point:
        """The point of ``key`` in this interval; the bridge's lock is held."""
        found = self.points.get(key)
        if found is not None:
            return found
        if not self._admits(key):
            key = _OVERFLOW
            found = self.points.get(key)
            if found is not None:
                return found
            make = dict(_OVERFLOW_ATTRIBUTES)
        else:
            make = attributes()
        # Delta points created after a collection start at it; others when first seen.
        start = self.since if self.delta and self.since is not None else time.time_ns()
        created: _Point = (_Hist(make, start, len(self.bounds) + 1) if self.bounds is not None
                           else _Total(make, start))
        self.points[key] = created
        self.in_use = True
        return created

    def _admits(self, key: tuple[Any, ...]) -> bool:
        if self.delta:  # the SDK forgets idle sets at each delta collection
            return len(self.points) < CARDINALITY_LIMIT
        if key in self.admitted:
            return True
        if len(self.admitted) >= CARDINALITY_LIMIT:
            return False
        self.admitted.add(key)
        return True

    def take(self, now: int) -> dict[tuple[Any, ...], _Point]:
        """This interval's points, leaving an empty interval; the bridge's lock is held."""
        taken, self.points = self.points, {}
        if self.delta and self.in_use:
            self.since = now
        return taken

    def data(self, taken: dict[tuple[Any, ...], _Point], now: int) -> Metric | None:
        """The instrument's metric for one collection (export thread)."""
        if self.delta:
            points = list(taken.values())
        else:
            for key, point in taken.items():
                total = self.totals.get(key)
                if total is None:
                    self.totals[key] = point
                else:
                    total.merge(point)  # type: ignore[arg-type]
            points = list(self.totals.values())
        if not points:
            return None
        temporality = (AggregationTemporality.DELTA if self.delta
                       else AggregationTemporality.CUMULATIVE)
        data: HistogramData | Sum
        if self.bounds is not None:
            data = HistogramData(data_points=[_histogram_point(p, self.bounds, now)
                                              for p in points if isinstance(p, _Hist)],
                                 aggregation_temporality=temporality)
        else:
            data = Sum(data_points=[NumberDataPoint(attributes=p.attributes,
                                                    start_time_unix_nano=p.start,
                                                    time_unix_nano=now, value=p.value)
                                    for p in points if isinstance(p, _Total)],
                       aggregation_temporality=temporality, is_monotonic=True)
        return Metric(name=self.name, description=self.description, unit=self.unit, data=data)


def _histogram_point(point: _Hist, bounds: tuple[float, ...], now: int) -> HistogramDataPoint:
    # Copies: a cumulative total goes on changing after this export.
    return HistogramDataPoint(attributes=point.attributes, start_time_unix_nano=point.start,
                              time_unix_nano=now, count=sum(point.counts), sum=point.sum,
                              bucket_counts=tuple(point.counts), explicit_bounds=bounds,
                              min=point.min, max=point.max)


class _Points:
    """The points one (provider, model, persona, chatmode, error type) tuple adds into."""

    __slots__ = ("base", "input", "output", "duration", "cost", "first_chunk")

    def __init__(self, base: tuple[str, str, str, str], input_: _Hist, output: _Hist,
                 duration: _Hist) -> None:
        self.base = base
        self.input = input_
        self.output = output
        self.duration = duration
        self.cost: _Total | None = None  # made at the first non-zero cost, as the SDK would
        self.first_chunk: _Hist | None = None


def _base_attributes(base: tuple[str, str, str, str]) -> Attributes:
    provider, model, persona, chatmode = base
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model, "persona": persona, "chatmode": chatmode}


class MetricsBridge:
    """A sink recording events into aggregates exported over OTLP as OpenTelemetry metrics.

    >>> bridge = MetricsBridge(OTLPMetricExporter(), recorder)   # doctest: +SKIP
    >>> bridge.emit(generation); bridge.flush(); bridge.shutdown()  # doctest: +SKIP
    """

    def __init__(self, exporter: MetricExporter, recorder: Recorder,
                 export_interval_millis: float | None = None,
                 export_timeout_millis: float | None = None) -> None:
        self._recorder = recorder
        self._exporter = exporter
        self._errors = recorder.errors
        self._attempts = recorder.instrument("persona_exporter_otlp_metric_exports_total")
        self._failures = recorder.instrument("persona_exporter_otlp_metric_export_failures_total")
        self._resource = default_resource()
        self._scope = InstrumentationScope("persona_exporter")
        preferred = getattr(exporter, "_preferred_temporality", None) or {}
        counter_delta = preferred.get(Counter) is AggregationTemporality.DELTA
        histogram_delta = preferred.get(Histogram) is AggregationTemporality.DELTA
        aggregation = (getattr(exporter, "_preferred_aggregation", None) or {}).get(Histogram)
        if isinstance(aggregation, ExponentialBucketHistogramAggregation):
            logger.warning("the OTLP metrics bridge exports explicit-bucket histograms; "
                           "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION="
                           "base2_exponential_bucket_histogram is not supported")
        self._tokens = _Stream(TOKENS, TOKEN_BOUNDS, histogram_delta)
        self._duration = _Stream(DURATION, DURATION_BOUNDS, histogram_delta)
        self._first_chunk = _Stream(FIRST_CHUNK, FIRST_CHUNK_BOUNDS, histogram_delta)
        self._cost = _Stream(COST, None, counter_delta)
        self._streams = (self._tokens, self._duration, self._first_chunk, self._cost)
        self._lock = threading.Lock()  # the hot path's: aggregates and the cache
        self._cache: dict[tuple[str, str, str, str, str | None], _Points] = {}
        self._export_lock = threading.Lock()  # one collection and export at a time
        # milliseconds; a bad variable is logged and the default used (the SDK's reader
        # raised at start for 0)
        self._timeout_ms = (export_timeout_millis if export_timeout_millis is not None
                            else env_float("OTEL_METRIC_EXPORT_TIMEOUT", _DEFAULT_TIMEOUT_MS,
                                           low=0.001))
        interval = (export_interval_millis if export_interval_millis is not None
                    else env_float("OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_INTERVAL_MS,
                                   low=0.001))
        if interval <= 0:
            raise ValueError(f"export_interval_millis must be positive, got {interval}")
        self._interval_s = interval / 1000
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._final_timeout_ms = self._timeout_ms
        self._thread: threading.Thread | None = None
        if interval < math.inf:  # math.inf: export on flush() only, as the SDK's reader
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="persona-exporter-otlp-metrics")
            self._thread.start()
        atexit.register(self._at_exit)  # the MeterProvider's shutdown_on_exit did this

    # --- the hot path ---

    def emit(self, event: Event) -> None:
        if type(event) is not LLMGeneration:
            return
        key = (event.provider, event.model, event.persona, event.chatmode, event.error_type)
        with self._lock:
            points = self._cache.get(key)
            if points is None:
                points = self._resolve(key)
            tokens = event.input_tokens
            points.input.observe(bisect_left(TOKEN_BOUNDS, tokens), tokens)
            tokens = event.output_tokens
            points.output.observe(bisect_left(TOKEN_BOUNDS, tokens), tokens)
            cost = event.cost_usd
            if cost:
                total = points.cost or self._cost_point(points)
                total.value += cost
            duration = event.duration_seconds
            points.duration.observe(bisect_left(DURATION_BOUNDS, duration), duration)
            first_chunk = event.time_to_first_chunk_seconds
            if first_chunk is not None:
                point = points.first_chunk or self._first_chunk_point(points)
                point.observe(bisect_left(FIRST_CHUNK_BOUNDS, first_chunk), first_chunk)

    def _resolve(self, key: tuple[str, str, str, str, str | None]) -> _Points:
        """The points of a label tuple new in this interval (the lock is held)."""
        provider, model, persona, chatmode, error_type = key
        base = (provider, model, persona, chatmode)

        def tokens(token_type: str) -> Attributes:
            return {**_base_attributes(base), "gen_ai.token.type": token_type}

        def duration() -> Attributes:
            attributes = _base_attributes(base)
            if error_type is not None:
                attributes["error.type"] = error_type
            return attributes

        points = _Points(base, self._hist(self._tokens, (*base, "input"),
                                          lambda: tokens("input")),
                         self._hist(self._tokens, (*base, "output"), lambda: tokens("output")),
                         self._hist(self._duration, (*base, error_type), duration))
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[key] = points
        return points

    def _cost_point(self, points: _Points) -> _Total:
        base = points.base
        point = cast(_Total, self._cost.point(base, lambda: _base_attributes(base)))
        points.cost = point
        return point

    def _first_chunk_point(self, points: _Points) -> _Hist:
        base = points.base
        point = self._hist(self._first_chunk, base, lambda: _base_attributes(base))
        points.first_chunk = point
        return point

    @staticmethod
    def _hist(stream: _Stream, key: tuple[Any, ...],
              attributes: Callable[[], Attributes]) -> _Hist:
        return cast(_Hist, stream.point(key, attributes))

    # --- the export thread ---

    def collect(self) -> MetricsData | None:
        """Take this interval's aggregates and build the data points (None: nothing to
        send). Called by the export thread and flush(), under the export lock."""
        with self._lock:
            # Read under the lock: a point emit makes while this waits for it would
            # otherwise start after the time it is exported with (start > time).
            now = time.time_ns()
            taken = [(stream, stream.take(now)) for stream in self._streams]
            self._cache = {}
        metrics = [m for stream, points in taken if (m := stream.data(points, now)) is not None]
        metrics.extend(self._budgets(now))
        if not metrics:
            return None
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=self._resource, schema_url=self._resource.schema_url,
            scope_metrics=[ScopeMetrics(scope=self._scope, metrics=metrics,
                                        schema_url=self._scope.schema_url or "")])])

    def _budgets(self, now: int) -> list[Metric]:
        # Read from the recorder's config at each collection, so SIGHUP reloads show.
        personas = self._recorder.config.personas
        tokens = [(persona, window, limit) for persona, budget in personas.items()
                  for window, limit in budget.tokens.items()]
        costs = [(persona, window, usd) for persona, budget in personas.items()
                 for window, usd in budget.cost_usd.items()]
        metrics = []
        for metric, values in ((TOKEN_BUDGET, tokens), (COST_BUDGET, costs)):
            if values:
                points = [NumberDataPoint(attributes={"persona": persona, "window": window},
                                          # None, as the SDK's gauges: no start
                                          start_time_unix_nano=None,  # type: ignore[arg-type]
                                          time_unix_nano=now,
                                          value=value) for persona, window, value in values]
                metrics.append(Metric(name=metric.otel_name, description=metric.help,
                                      unit=metric.otel_unit, data=Gauge(data_points=points)))
        return metrics

    def _export(self, timeout_millis: float) -> bool:
        """Collect and send once; False when an export was attempted and failed."""
        with self._export_lock:
            try:
                data = self.collect()
            except Exception as exc:  # noqa: BLE001 - a fault here must not end the thread
                self._errors.report("bridge.metrics", exc)
                return False
            if data is None:
                return True
            self._attempts.inc()
            # As the SDK's reader: the exporter's own HTTP/gRPC calls are not instrumented.
            token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
            try:
                result = self._exporter.export(data, timeout_millis=timeout_millis)
            except Exception as exc:  # noqa: BLE001
                self._errors.report("bridge.metrics", exc)
                result = MetricExportResult.FAILURE
            finally:
                detach(token)
            if result is not MetricExportResult.SUCCESS:
                self._failures.inc()
                return False
            return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._export(self._timeout_ms)
        self._export(self._final_timeout_ms)  # the last one, within shutdown's deadline

    # --- the sink seam ---

    def flush(self, timeout: float | None = None) -> bool:
        """Export now, on the caller's thread; False after shutdown or when it failed."""
        if self._closed:
            return False
        return self._export((timeout or 10) * 1000)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the export thread after one last export, within ``timeout`` seconds (10 by
        default); safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + (timeout or 10)
        self._final_timeout_ms = (timeout or 10) * 1000
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self._exporter.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
        except Exception as exc:  # noqa: BLE001
            self._errors.report("bridge.metrics", exc)
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        self.shutdown()


def metrics_bridge_from_env(recorder: Recorder) -> MetricsBridge | None:
    """The bridge the standard OTEL_* variables describe, or None."""
    protocol = otlp_protocol("METRICS")
    if protocol is None:
        return None
    exporter: MetricExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        exporter = GrpcMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )
        exporter = HttpMetricExporter()
    return MetricsBridge(exporter, recorder)
