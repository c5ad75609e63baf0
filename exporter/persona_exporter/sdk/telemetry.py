"""Where the SDK's events go: the sinks of a ``Telemetry``, and the process-wide default.

Every event the SDK produces goes to each :class:`~persona_exporter.sink.Sink` (the seam
is in the core). The :class:`~persona_exporter.metrics.recorder.Recorder` is one
(metrics); tracing backends and the remote exporter client plug in as others. A
``Telemetry`` with no sinks is the no-op path: instrumented calls check one attribute and
call straight through, so an unconfigured SDK costs next to nothing.

    telemetry = Telemetry(registry=CollectorRegistry(), config=load_config("budgets.yaml"))
    with workflow("release", chatmode="package-release", telemetry=telemetry): ...

or once per process: ``persona_exporter.configure(registry=REGISTRY, config=...)``.

Prompts and completions travel beside events, never on them: ``emit(event, content)``
hands the :class:`~persona_exporter.tracing.content.CallContent` only to the sinks whose
``wants_content`` is true (the tracing sink, for backends that capture content); the
recorder and the remote sink get the bare event, so content cannot reach ``/metrics`` or
the exporter's ingest payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ..config import Config, cost_usd
from ..errors import ErrorReporter
from ..events import MAX_COST_USD, Event
from ..metrics.recorder import Recorder
from ..sink import Sink
from .usage import TokenUsage

if TYPE_CHECKING:
    from ..tracing.content import CallContent


class CostOutOfBoundsError(ValueError):
    """The configured prices give one call a cost no event may carry (events.MAX_COST_USD)."""


class Telemetry:
    """The SDK's wiring: the sinks that receive events, and the config that prices calls
    and budgets workflow runs.

    ``registry`` (or ``recorder``) turns on metrics; ``sinks`` adds other receivers.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        recorder: Recorder | None = None,
        config: Config | None = None,
        sinks: Iterable[Sink] = (),
    ) -> None:
        if recorder is None and registry is not None:
            recorder = Recorder(registry, config=config)
        self.recorder = recorder
        self.config = config if config is not None else (
            recorder.config if recorder is not None else Config())
        self.errors = recorder.errors if recorder is not None else ErrorReporter()
        # Per-model rates as plain floats, computed once: read on every call, and pydantic
        # attribute access is several times slower.
        self._rates = {name: price.rates() for name, price in self.config.models.items()}
        self._sinks: tuple[Sink, ...] = ((recorder,) if recorder is not None else ()) + tuple(sinks)
        # Read on every instrumented call: plain attributes, not properties.
        self.active = bool(self._sinks)
        # Metrics are all it feeds: an LLM call goes straight to the recorder's series, no
        # event object built for sinks that are not there (a third of what a call adds).
        self.metrics_only = recorder if recorder is not None and len(self._sinks) == 1 else None
        tracing = [s for s in self._sinks if getattr(s, "needs_trace_context", False)]
        self.needs_trace_context = bool(tracing)
        # Share of workflow runs (and lone calls) traced; a run is sampled whole.
        self.trace_sample_rate = max(
            (float(getattr(s, "sample_rate", 1.0)) for s in tracing), default=0.0)
        # Whether a call's content is worth handing over at all: instrumented code builds
        # a CallContent only when this is true.
        self.captures_content = any(getattr(s, "wants_content", False) for s in self._sinks)

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def emit(self, event: Event, content: CallContent | None = None) -> None:
        """Send ``event`` to every sink, and ``content`` (the call's prompt and completion,
        e.g. ``CallContent(input=prompt, output=response)``) only to those that capture
        content. Never raises."""
        for sink in self._sinks:
            try:
                if content is not None and getattr(sink, "wants_content", False):
                    sink.emit_content(event, content)  # type: ignore[attr-defined]
                else:
                    sink.emit(event)
            except Exception as exc:  # noqa: BLE001 - a sink must never break the caller
                self.errors.report(f"sink.{type(sink).__name__}", exc)

    def cost_usd(self, model: str, usage: TokenUsage) -> float | None:
        """Cost from the configured prices (see ``ModelPrice.cost_usd``); None when the
        model has no price."""
        rates = self._rates.get(model)
        if rates is None:
            return None
        cost = cost_usd(rates, usage.input, usage.output, usage.cache_read)
        if cost <= MAX_COST_USD:
            return cost
        # An absurd price in the config: the call still counts, without a cost.
        self.errors.report("pricing", CostOutOfBoundsError(
            f"model {model!r}: {cost:g} USD for one call is over {MAX_COST_USD:g}; "
            "check its prices"))
        return None

    def flush(self, timeout: float | None = None) -> bool:
        ok = True
        for sink in self._sinks:
            try:
                ok = sink.flush(timeout) and ok
            except Exception as exc:  # noqa: BLE001
                self.errors.report(f"sink.{type(sink).__name__}", exc)
                ok = False
        return ok

    def shutdown(self, timeout: float | None = None) -> None:
        for sink in self._sinks:
            try:
                sink.shutdown(timeout)
            except Exception as exc:  # noqa: BLE001
                self.errors.report(f"sink.{type(sink).__name__}", exc)


DISABLED = Telemetry()

_default: Telemetry = DISABLED


def configure(
    *,
    registry: CollectorRegistry | None = None,
    config: Config | None = None,
    sinks: Iterable[Sink] = (),
    tracing: bool = True,
    capture_content: bool | Mapping[str, bool] | None = None,
    mask: Callable[..., Any] | None = None,
    content_max_chars: int | None = None,
) -> Telemetry:
    """Build a Telemetry and make it the process default for instrumented code that was
    not given one explicitly. Returns it.

    With ``tracing`` (the default), Langfuse and OTLP tracing are added when the standard
    ``LANGFUSE_*`` / ``OTEL_EXPORTER_OTLP_*`` variables configure them; otherwise no
    tracing code is even imported.

    Prompts and completions on the traces: ``capture_content`` is True, False or
    ``{"langfuse": bool, "otlp": bool}``; unset, each backend follows the environment
    (Langfuse on unless ``PERSONA_EXPORTER_LANGFUSE_CAPTURE_CONTENT=false``; OTLP off
    unless ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``). ``mask`` is called
    as ``mask(data=value)`` on the export thread; ``content_max_chars`` caps each field
    (default 32768). See :mod:`persona_exporter.tracing.content`.
    """
    global _default
    if capture_content is not None or mask is not None or content_max_chars is not None:
        from ..tracing.content import check_capture, check_max_chars

        check_capture(capture_content)  # bad values fail here, backends configured or not
        check_max_chars(content_max_chars)
        if mask is not None and not callable(mask):
            raise ValueError(f"mask: expected a callable, got {type(mask).__name__}")
    recorder = Recorder(registry, config=config) if registry is not None else None
    all_sinks = list(sinks)
    if tracing:
        from ..tracing.backends import tracing_from_env

        trace_sink = tracing_from_env(recorder)
        if trace_sink is not None:
            trace_sink.configure_content(capture_content, mask=mask,
                                         max_chars=content_max_chars)
            all_sinks.append(trace_sink)
    _default = Telemetry(recorder=recorder, config=config, sinks=all_sinks)
    return _default


def set_default(telemetry: Telemetry) -> Telemetry:
    """Make ``telemetry`` the process default; returns the previous one."""
    global _default
    previous, _default = _default, telemetry
    return previous


def get_telemetry() -> Telemetry:
    return _default
