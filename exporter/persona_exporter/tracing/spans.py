"""Events to OpenTelemetry spans: GenAI semantic conventions plus Langfuse's attributes.

Each traced event becomes one finished span with the ids the SDK assigned when the work
started, so a generation can be exported before its stage and workflow have ended and the
backend still assembles ``invoke_workflow {name}`` -> stage -> ``chat {model}``.

The same span serves both backends. It follows the GenAI conventions (``gen_ai.*``,
``error.type``) with this project's ``persona``/``chatmode`` on top, and carries the
attributes Langfuse reads, named by the pinned ``langfuse`` package: ``user.id`` is the
persona (persona-as-user) and ``session.id`` the workflow run, on every span; chatmode and
workflow go to the trace's tags and metadata (on the root span); generations get model,
usage details and cost. An OpenTelemetry Collector can therefore route these spans into
Langfuse as they are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# The pinned SDK's attribute names: its wire contract with the server. The values are
# written here with the C JSON encoder (the SDK's own builders run every value through a
# pure-Python encoder, 20 us a span); tests/test_tracing.py checks that both agree.
from langfuse._client.attributes import LangfuseOtelSpanAttributes
from langfuse._client.attributes import _serialize as langfuse_serialize
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..events import Event, LLMGeneration, Observation, StageRun, WorkflowRun

LF = LangfuseOtelSpanAttributes


class SpanResource(Resource):
    """A Resource whose hash is computed once. The OTLP encoder groups spans by resource
    and hashes it for every span; Resource.__hash__ JSON-dumps all its attributes each
    time, a fifth of the encoding cost of our spans. A Resource is immutable, so caching
    is sound."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(dict(resource.attributes), resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NS = 1_000_000_000
_UNSET = Status(StatusCode.UNSET)


def _ids(event: LLMGeneration | StageRun | WorkflowRun | Observation) -> tuple[str, str]:
    if event.trace_id is None or event.span_id is None:
        raise ValueError(f"{event.type} event has no trace ids")
    return event.trace_id, event.span_id


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                       trace_flags=_SAMPLED)


def _parent(trace_id: str, parent_span_id: str | None) -> SpanContext | None:
    return _context(trace_id, parent_span_id) if parent_span_id else None


_MAX_DURATION = 7 * 24 * 3600.0  # a week: anything longer is a clock or unit error


def _times(start_time: float | None, duration: float) -> tuple[int, int]:
    # Validated events cannot carry impossible values, but SDK-built ones skip validation:
    # clamp here, so one bad span can never make a whole batch unencodable.
    if not 0.0 <= duration <= _MAX_DURATION:
        duration = _MAX_DURATION if duration > 0 else 0.0
    if start_time is None or not 0.0 < start_time < 4e9:  # missing or absurd (NaN too)
        start_time = datetime.now(UTC).timestamp() - duration
    start = int(start_time * _NS)
    return start, start + int(duration * _NS)


def _meta(value: str) -> str:
    # How the Langfuse SDK encodes a metadata value (JSON, so "123" and 123 differ).
    return json.dumps(value, ensure_ascii=False)


def _common(persona: str | None, chatmode: str | None, run_id: str | None) -> dict[str, Any]:
    """On every span: who (persona-as-user) and which run (the session)."""
    attributes: dict[str, Any] = {}
    if persona:
        attributes[LF.TRACE_USER_ID] = persona
        attributes["persona"] = persona
    if chatmode and chatmode != "none":
        attributes["chatmode"] = chatmode
    if run_id:
        attributes[LF.TRACE_SESSION_ID] = run_id
    return attributes


def trace_level(workflow: str | None, chatmode: str | None,
                metadata: dict[str, str] | None) -> dict[str, Any]:
    """Trace name, tags and metadata. Langfuse merges trace-level attributes from every
    span of a trace, so they ride on the root span only."""
    attributes: dict[str, Any] = {}
    tags = []
    if chatmode and chatmode != "none":
        tags.append(f"chatmode:{chatmode}")
        attributes[f"{LF.TRACE_METADATA}.chatmode"] = _meta(chatmode)
    if workflow and workflow != "none":
        tags.append(f"workflow:{workflow}")
        attributes[LF.TRACE_NAME] = workflow
        attributes[f"{LF.TRACE_METADATA}.workflow"] = _meta(workflow)
    if tags:
        attributes[LF.TRACE_TAGS] = tags
    for key, value in (metadata or {}).items():
        attributes[f"{LF.TRACE_METADATA}.{key}"] = _meta(value)
    return attributes


def observation_metadata(metadata: dict[str, str] | None) -> dict[str, Any]:
    return {f"{LF.OBSERVATION_METADATA}.{k}": _meta(v) for k, v in (metadata or {}).items()}


def usage_details(e: LLMGeneration) -> dict[str, int | str]:
    """Langfuse sums the usage types into the total, so they must not overlap."""
    cached = min(e.cache_read_tokens, e.input_tokens)
    reasoning = min(e.reasoning_tokens, e.output_tokens)
    usage: dict[str, int | str] = {
        "input": _js_safe(e.input_tokens - cached), "output": _js_safe(e.output_tokens - reasoning),
        "total": _js_safe(e.input_tokens + e.output_tokens)}
    if cached:
        usage["input_cached_tokens"] = _js_safe(cached)
    if reasoning:
        usage["output_reasoning_tokens"] = _js_safe(reasoning)
    return usage


def _js_safe(value: int) -> int | str:
    # As the Langfuse SDK does: integers JavaScript cannot hold exactly travel as strings.
    return value if -(2**53 - 1) <= value <= 2**53 - 1 else str(value)


def generation_span(e: LLMGeneration, resource: Resource,
                    scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.model,
        "gen_ai.usage.input_tokens": e.input_tokens,
        "gen_ai.usage.output_tokens": e.output_tokens,
        **_common(e.persona, e.chatmode, e.run_id),
        LF.OBSERVATION_TYPE: "generation",
        LF.OBSERVATION_MODEL: e.model,
        LF.OBSERVATION_USAGE_DETAILS: json.dumps(usage_details(e)),
    }
    if e.cache_read_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = e.cache_read_tokens
    if e.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = e.reasoning_tokens
    if e.cost_usd is not None:
        attributes[LF.OBSERVATION_COST_DETAILS] = json.dumps({"total": e.cost_usd})
    if e.time_to_first_chunk_seconds is not None:
        first = datetime.fromtimestamp(start / _NS + e.time_to_first_chunk_seconds, UTC)
        attributes[LF.OBSERVATION_COMPLETION_START_TIME] = langfuse_serialize(first)
    if e.stage:
        attributes["stage"] = e.stage  # Langfuse keeps plain span attributes in metadata
    if e.metadata:
        attributes.update(observation_metadata(e.metadata))
    status = _UNSET
    if e.error_type:
        attributes["error.type"] = e.error_type
        attributes[LF.OBSERVATION_LEVEL] = "ERROR"
        attributes[LF.OBSERVATION_STATUS_MESSAGE] = e.error_type
        status = Status(StatusCode.ERROR, e.error_type)
    return ReadableSpan(
        name=f"chat {e.model}", context=_context(trace_id, span_id),
        parent=_parent(trace_id, e.parent_span_id), resource=resource, attributes=attributes,
        kind=SpanKind.CLIENT, status=status, start_time=start, end_time=end,
        instrumentation_scope=scope)


def _outcome(attributes: dict[str, Any], status: str, error_type: str) -> Status:
    """failed: an error; partial: a warning in Langfuse; succeeded: nothing to say."""
    if status == "failed":
        attributes["error.type"] = error_type
        attributes[LF.OBSERVATION_LEVEL] = "ERROR"
        attributes[LF.OBSERVATION_STATUS_MESSAGE] = "failed"
        return Status(StatusCode.ERROR, "failed")
    if status == "partial":
        attributes[LF.OBSERVATION_LEVEL] = "WARNING"
        attributes[LF.OBSERVATION_STATUS_MESSAGE] = "partial"
    return _UNSET


def stage_span(e: StageRun, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    attributes: dict[str, Any] = {
        # A stage is one persona (an agent) doing one step of the workflow.
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": e.persona,
        "stage": e.stage,
        "stage.tokens": e.tokens,
        **_common(e.persona, e.chatmode, e.run_id),
        LF.OBSERVATION_TYPE: "agent",
        **observation_metadata({"stage": e.stage, **(e.metadata or {})}),
    }
    status = _outcome(attributes, e.status, "StageFailed")
    return ReadableSpan(
        name=e.stage, context=_context(trace_id, span_id),
        parent=_parent(trace_id, e.parent_span_id), resource=resource, attributes=attributes,
        kind=SpanKind.INTERNAL, status=status, start_time=start, end_time=end,
        instrumentation_scope=scope)


def workflow_span(e: WorkflowRun, resource: Resource,
                  scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    run_metadata = {"budget_overrun": str(e.budget_overrun).lower()}
    if e.token_allocation is not None:
        run_metadata["token_allocation"] = str(e.token_allocation)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": e.workflow,
        "workflow.tokens": e.tokens,
        **_common(e.persona, e.chatmode, e.run_id),
        # Governance ids and other run metadata belong to the trace, on its root.
        **trace_level(e.workflow, e.chatmode, {"run_id": e.run_id or "", **(e.metadata or {})}),
        LF.OBSERVATION_TYPE: "chain",
        **observation_metadata(run_metadata),
    }
    status = _outcome(attributes, e.status, "WorkflowFailed")
    return ReadableSpan(
        name=f"invoke_workflow {e.workflow}", context=_context(trace_id, span_id), parent=None,
        resource=resource, attributes=attributes, kind=SpanKind.INTERNAL, status=status,
        start_time=start, end_time=end, instrumentation_scope=scope)


def observation_span(e: Observation, resource: Resource,
                     scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "retrieval" if e.kind == "retrieval" else e.kind,
        **_common(e.persona, None, e.run_id),
        LF.OBSERVATION_TYPE: "retriever" if e.kind == "retrieval" else "event",
        **observation_metadata({"kind": e.kind, **(e.metadata or {})}),
    }
    if e.stage:
        attributes["stage"] = e.stage
    return ReadableSpan(
        name=e.name, context=_context(trace_id, span_id),
        parent=_parent(trace_id, e.parent_span_id), resource=resource, attributes=attributes,
        kind=SpanKind.INTERNAL, start_time=start, end_time=end, instrumentation_scope=scope)


def to_span(event: Event, resource: Resource, scope: InstrumentationScope) -> ReadableSpan | None:
    """The span for ``event``, or None when it carries no trace ids (not traced, or a kind
    of event that is not a span: workflow starts, persona switches)."""
    if getattr(event, "trace_id", None) is None or getattr(event, "span_id", None) is None:
        return None
    if isinstance(event, LLMGeneration):
        return generation_span(event, resource, scope)
    if isinstance(event, StageRun):
        return stage_span(event, resource, scope)
    if isinstance(event, WorkflowRun):
        return workflow_span(event, resource, scope)
    if isinstance(event, Observation):
        return observation_span(event, resource, scope)
    return None
