"""The metric catalog: every metric family this project exposes, declared once.

The recorder builds its instruments from this table; the README's metric reference, the
OTLP bridge, the dashboards and the alert rules read it too, so a rename here either
updates everything or fails a test. Nothing in this module has behaviour: it is data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as Prometheus sees it.

    ``name`` is the exposed family name (counters keep their ``_total``); ``unit`` is the
    base unit that the name ends with, if any.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()
    # The instrument the OTLP bridge exports for this family ("" when it exports none):
    # GenAI semantic-convention names where they exist, this project's otherwise.
    otel_name: str = ""
    otel_unit: str = ""
    otel_buckets: tuple[float, ...] = ()


# --- Enumerated label values -------------------------------------------------------------

# Token types are not additive: ``input`` counts every prompt token (cached ones included)
# and ``output`` every completion token (reasoning included), as the OpenTelemetry GenAI
# conventions define them; ``cache_read`` and ``reasoning`` break those two down. Budgets
# therefore count ``input`` + ``output`` only.
TOKEN_TYPES: Final = ("input", "output", "cache_read", "reasoning")
BILLED_TOKEN_TYPES: Final = ("input", "output")

RUN_STATUSES: Final = ("succeeded", "failed", "partial")

# Budget windows are Prometheus range durations, so ``increase(x[<window>])`` in the rules
# matches the gauge's ``window`` label one to one. The set is closed so the generated rules
# can cover every value.
BUDGET_WINDOWS: Final = ("1h", "24h", "7d", "30d")

EVENT_TYPES: Final = (
    "llm_generation",
    "stage_run",
    "workflow_start",
    "workflow_run",
    "persona_switch",
    "observation",
)

REJECT_REASONS: Final = (
    "invalid_event",
    "unknown_event_type",
    "malformed_body",
    "body_too_large",
    "too_many_events",
    "unsupported_media_type",
    "unauthorized",
    "batch_id_conflict",
)

# Why an SDK's remote sink lost events. The SDK counts them in its own registry and
# reports them with its next delivered batch ("dropped": {reason: count}), so the exporter
# counts them too; the exporter refuses a report naming any other reason.
REMOTE_DROP_REASONS: Final = (
    "queue_full",      # the in-memory queue was full (no spool, or the sender fell behind)
    "undeliverable",   # no spool, and the exporter did not answer before the process exited
    "spool_full",      # the spool reached its size limit
    "spool_failed",    # writing to the spool failed (disk full, I/O error)
    "spool_corrupt",   # a spool file could not be read back (counted once per file)
    "spool_unusable",  # the spool directory could not be used, so there was none
    "refused",         # the exporter refused the batch for good (400, 401, 413, ...)
)

TRACE_BACKENDS: Final = ("langfuse", "otlp")

# What became of each span the OTLP receiver accepted (see genai/traces.py).
OTLP_SPAN_OUTCOMES: Final = (
    "mapped",             # an LLM call, recorded as an llm_generation event
    "ignored",            # not an LLM call (tools, retrieval, HTTP, a wrapper without usage)
    "deduplicated",       # seen before (a retry through another path, a fan-out twice)
    "counted_below",      # an aggregate (agent, wrapper) whose LLM spans below carry the usage
    "workflow",           # an agent or workflow span recorded as a stage or workflow run
)
# Why the receiver refused single spans of a batch it otherwise applied.
OTLP_SPAN_REJECT_REASONS: Final = (
    "invalid_span",       # ids of the wrong length, end before start, a bad value type
    "too_many_attributes",
)
# Where the persona of a recorded span came from (genai/personas.py).
PERSONA_SOURCES: Final = ("span", "ancestor", "trace", "resource", "unknown")
OTLP_FORWARD_OUTCOMES: Final = ("forwarded", "failed", "retried", "dropped", "spooled")

# The label value that stands in for every value past a label's cardinality cap.
OVERFLOW_VALUE: Final = "__overflow__"

# Which cardinality cap bounds which label. Labels not named here take values from the
# closed sets above (or are internal), so they need no cap.
LABEL_DIMENSIONS: Final[dict[str, str]] = {
    "persona": "persona",
    "from_persona": "persona",
    "to_persona": "persona",
    "chatmode": "chatmode",
    "model": "model",
    "provider": "provider",
    "workflow": "workflow",
    "stage": "stage",
    "error_type": "error_type",
}
DIMENSIONS: Final = ("persona", "chatmode", "model", "provider", "workflow", "stage", "error_type")

# --- Buckets -----------------------------------------------------------------------------

# gen_ai.client.token.usage (semconv): 1, 4, 16, ... x4 up to 67108864.
GENAI_TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))
# gen_ai.client.operation.duration and ...time_to_first_chunk (semconv): 0.01 s doubling.
GENAI_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
# Stages run one or several LLM calls plus tool work; workflows chain stages.
STAGE_DURATION_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
WORKFLOW_DURATION_BUCKETS: Final = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
EXPORT_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_LLM = ("persona", "chatmode", "model", "provider")

CATALOG: Final[tuple[MetricSpec, ...]] = (
    # --- LLM calls ---
    MetricSpec(
        "persona_llm_requests_total", Kind.COUNTER,
        "LLM requests made under a persona, failed ones included.", _LLM,
    ),
    MetricSpec(
        "persona_llm_request_failures_total", Kind.COUNTER,
        "LLM requests that raised, by the error's type.", (*_LLM, "error_type"),
    ),
    MetricSpec(
        "persona_llm_tokens_total", Kind.COUNTER,
        "Tokens used by LLM requests. input includes cache_read and output includes "
        "reasoning; do not add the four types together.",
        (*_LLM, "token_type"), unit="tokens",
        otel_name="gen_ai.client.token.usage", otel_unit="{token}",
        otel_buckets=GENAI_TOKEN_BUCKETS,
    ),
    MetricSpec(
        "persona_llm_cost_usd_total", Kind.COUNTER,
        "Cost of LLM requests in US dollars, from the configured price table.",
        _LLM, unit="usd", otel_name="persona.llm.cost", otel_unit="USD",
    ),
    MetricSpec(
        "persona_llm_request_duration_seconds", Kind.HISTOGRAM,
        "Duration of LLM requests, to the last chunk when streaming.",
        ("persona", "model", "provider"), unit="seconds", buckets=GENAI_DURATION_BUCKETS,
        otel_name="gen_ai.client.operation.duration", otel_unit="s",
        otel_buckets=GENAI_DURATION_BUCKETS,
    ),
    MetricSpec(
        "persona_llm_time_to_first_chunk_seconds", Kind.HISTOGRAM,
        "Time from a streaming LLM request to its first chunk.",
        ("persona", "model", "provider"), unit="seconds", buckets=GENAI_DURATION_BUCKETS,
        otel_name="gen_ai.client.operation.time_to_first_chunk", otel_unit="s",
        otel_buckets=GENAI_DURATION_BUCKETS,
    ),
    # --- Budgets (configured limits; utilisation is computed in PromQL) ---
    MetricSpec(
        "persona_token_budget_tokens", Kind.GAUGE,
        "Configured token budget of a persona over a window (input + output tokens).",
        ("persona", "window"), unit="tokens", otel_name="persona.token.budget",
        otel_unit="{token}",
    ),
    MetricSpec(
        "persona_cost_budget_usd", Kind.GAUGE,
        "Configured cost budget of a persona over a window, in US dollars.",
        ("persona", "window"), unit="usd", otel_name="persona.cost.budget", otel_unit="USD",
    ),
    # --- Workflows and stages ---
    MetricSpec(
        "persona_workflow_runs_total", Kind.COUNTER,
        "Finished workflow runs by final status.", ("workflow", "status"),
    ),
    MetricSpec(
        "persona_workflow_duration_seconds", Kind.HISTOGRAM,
        "Duration of finished workflow runs.", ("workflow",),
        unit="seconds", buckets=WORKFLOW_DURATION_BUCKETS,
    ),
    MetricSpec(
        "persona_workflow_active", Kind.GAUGE,
        "Workflow runs started and not yet finished.", ("workflow",),
    ),
    MetricSpec(
        "persona_stage_runs_total", Kind.COUNTER,
        "Finished workflow stages by final status.", ("workflow", "stage", "persona", "status"),
    ),
    MetricSpec(
        "persona_stage_duration_seconds", Kind.HISTOGRAM,
        "Duration of finished workflow stages.", ("workflow", "stage", "persona"),
        unit="seconds", buckets=STAGE_DURATION_BUCKETS,
    ),
    MetricSpec(
        "persona_switches_total", Kind.COUNTER,
        "Changes of persona between consecutive stages of a workflow run.",
        ("workflow", "from_persona", "to_persona"),
    ),
    MetricSpec(
        "persona_workflow_budget_overruns_total", Kind.COUNTER,
        "Workflow runs that used more tokens than their chatmode allocates per run.",
        ("workflow", "chatmode"),
    ),
    # --- Self-metrics ---
    MetricSpec(
        "persona_exporter_events_accepted_total", Kind.COUNTER,
        "Events applied to the metrics, by event type.", ("type",),
    ),
    MetricSpec(
        "persona_exporter_events_rejected_total", Kind.COUNTER,
        "Events or requests refused, by reason.", ("reason",),
    ),
    MetricSpec(
        "persona_exporter_label_overflow_total", Kind.COUNTER,
        "Recordings whose label value was replaced by the overflow value because the "
        "label's cardinality cap was reached.", ("label",),
    ),
    MetricSpec(
        "persona_exporter_series_overflow_total", Kind.COUNTER,
        "Recordings sent to the all-overflow series because their family held as many "
        "label combinations as the series cap allows, by the family's first metric.",
        ("family",),
    ),
    MetricSpec(
        "persona_exporter_trace_exports_total", Kind.COUNTER,
        "Trace export attempts, by backend.", ("backend",),
    ),
    MetricSpec(
        "persona_exporter_trace_export_failures_total", Kind.COUNTER,
        "Trace export attempts that failed, by backend.", ("backend",),
    ),
    MetricSpec(
        "persona_exporter_trace_export_duration_seconds", Kind.HISTOGRAM,
        "Duration of trace export attempts, by backend.", ("backend",),
        unit="seconds", buckets=EXPORT_DURATION_BUCKETS,
    ),
    MetricSpec(
        "persona_exporter_trace_export_bytes_total", Kind.COUNTER,
        "Bytes of trace data sent, by backend.", ("backend",), unit="bytes",
    ),
    MetricSpec(
        "persona_exporter_trace_spans_dropped_total", Kind.COUNTER,
        "Spans dropped before export (queue full or shut down), by backend.", ("backend",),
    ),
    MetricSpec(
        "persona_exporter_trace_content_truncated_total", Kind.COUNTER,
        "Prompts and completions (each an input or output field of a span) cut to the trace "
        "content size cap before export, by backend.", ("backend",),
    ),
    MetricSpec(
        "persona_exporter_otlp_metric_exports_total", Kind.COUNTER,
        "OTLP metric export attempts of the exporter's bridge.",
    ),
    MetricSpec(
        "persona_exporter_otlp_metric_export_failures_total", Kind.COUNTER,
        "OTLP metric export attempts of the exporter's bridge that failed.",
    ),
    MetricSpec(
        "persona_exporter_remote_batches_total", Kind.COUNTER,
        "Batches the SDK delivered to a remote exporter, by outcome (sent, spooled, "
        "delivered_from_spool).", ("outcome",),
    ),
    MetricSpec(
        "persona_exporter_remote_events_dropped_total", Kind.COUNTER,
        "Events an SDK remote sink could not deliver nor spool, by reason ("
        + ", ".join(REMOTE_DROP_REASONS) + "); on the exporter, those its SDK clients "
        "reported with their batches.",
        ("reason",),
    ),
    MetricSpec(
        "persona_exporter_otlp_spans_received_total", Kind.COUNTER,
        "Spans received by the OTLP traces receiver in requests it could read, by "
        "transport (http, grpc).", ("transport",),
    ),
    MetricSpec(
        "persona_exporter_otlp_spans_total", Kind.COUNTER,
        "Received spans by what became of them (" + ", ".join(OTLP_SPAN_OUTCOMES) + ").",
        ("outcome",),
    ),
    MetricSpec(
        "persona_exporter_otlp_spans_rejected_total", Kind.COUNTER,
        "Spans of an accepted OTLP request that were refused, by reason.", ("reason",),
    ),
    MetricSpec(
        "persona_exporter_otlp_persona_resolutions_total", Kind.COUNTER,
        "LLM spans recorded, by where their persona came from (" + ", ".join(PERSONA_SOURCES)
        + ").", ("source",),
    ),
    MetricSpec(
        "persona_exporter_otlp_held_spans", Kind.GAUGE,
        "Received LLM spans waiting for an ancestor span to name their persona.",
    ),
    MetricSpec(
        "persona_exporter_otlp_forward_spans_total", Kind.COUNTER,
        "Spans of received OTLP requests passed on to an upstream, by upstream and outcome "
        "(" + ", ".join(OTLP_FORWARD_OUTCOMES) + ").", ("upstream", "outcome"),
    ),
    MetricSpec(
        "persona_exporter_otlp_forward_queue_bytes", Kind.GAUGE,
        "Bytes of OTLP requests waiting to be forwarded (in memory and spooled), by upstream.",
        ("upstream",), unit="bytes",
    ),
    MetricSpec(
        "persona_exporter_internal_errors_total", Kind.COUNTER,
        "Errors caught inside the instrumentation and not raised to the caller.",
        ("component", "kind"),
    ),
    MetricSpec(
        "persona_exporter_build_info", Kind.GAUGE,
        "Always 1; the labels carry the build's version.", ("version", "python_version"),
    ),
)

BY_NAME: Final[dict[str, MetricSpec]] = {spec.name: spec for spec in CATALOG}


def spec(name: str) -> MetricSpec:
    """The catalog entry for ``name``; a KeyError names the unknown metric."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in the catalog") from None
