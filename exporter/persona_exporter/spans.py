"""Events to OpenTelemetry spans: GenAI semantic conventions plus Langfuse's attributes.

Each traced event becomes one finished span with the ids the SDK assigned when the work
started, so a generation can be exported before its stage and workflow have ended and the
backend still assembles ``invoke_workflow {name}`` -> stage -> ``chat {model}``.

The same span serves both backends. It follows the GenAI conventions (``gen_ai.*``,
``error.type``) with this project's ``persona``/``chatmode`` on top, and carries the
attributes Langfuse reads, written by the pinned ``langfuse`` package's own builders:
``user.id`` is the persona (persona-as-user), ``session.id`` the workflow run, chatmode and
workflow go to the trace's tags and metadata, and generations get model, usage details
and cost. An OpenTelemetry Collector can therefore route these spans into Langfuse as they
are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

# The pinned SDK's own attribute names and builders: its wire contract with the server.
from langfuse._client.attributes import (
    LangfuseOtelSpanAttributes,
    create_generation_attributes,
    create_span_attributes,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .events import Event, LLMGeneration, Observation, StageRun, WorkflowRun

LF = LangfuseOtelSpanAttributes
Level = Literal["DEBUG", "DEFAULT", "WARNING", "ERROR"]
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NS = 1_000_000_000


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                       trace_flags=_SAMPLED)


def _ids(event: LLMGeneration | StageRun | WorkflowRun | Observation) -> tuple[str, str]:
    if event.trace_id is None or event.span_id is None:
        raise ValueError(f"{event.type} event has no trace ids")
    return event.trace_id, event.span_id


def _times(start_time: float | None, duration: float) -> tuple[int, int]:
    if start_time is None:  # an event sent without its start: it ended when it arrived
        end = datetime.now(UTC).timestamp()
        start_time = end - duration
    start = int(start_time * _NS)
    return start, start + int(duration * _NS)


def _trace_attributes(workflow: str | None, chatmode: str | None, run_id: str | None,
                      persona: str | None) -> dict[str, Any]:
    """Trace-level attributes, on every span as Langfuse's propagate_attributes does."""
    attributes: dict[str, Any] = {}
    if persona:
        attributes[LF.TRACE_USER_ID] = persona
        attributes["persona"] = persona
    if run_id:
        attributes[LF.TRACE_SESSION_ID] = run_id
        attributes["gen_ai.conversation.id"] = run_id
    tags = []
    if chatmode and chatmode != "none":
        tags.append(f"chatmode:{chatmode}")
        attributes["chatmode"] = chatmode
        attributes[f"{LF.TRACE_METADATA}.chatmode"] = json.dumps(chatmode)
    if workflow and workflow != "none":
        tags.append(f"workflow:{workflow}")
        attributes[LF.TRACE_NAME] = workflow
        attributes[f"{LF.TRACE_METADATA}.workflow"] = json.dumps(workflow)
    if tags:
        attributes[LF.TRACE_TAGS] = tags
    return attributes


def _metadata(prefix: str, metadata: dict[str, str] | None) -> dict[str, Any]:
    # Langfuse JSON-encodes each metadata value (so "123" and 123 stay distinct).
    return {f"{prefix}.{key}": json.dumps(value) for key, value in (metadata or {}).items()}


def generation_span(e: LLMGeneration, resource: Resource,
                    scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    usage: dict[str, int] = {
        # Langfuse sums the usage types into the total, so they must not overlap.
        "input": e.input_tokens - min(e.cache_read_tokens, e.input_tokens),
        "output": e.output_tokens - min(e.reasoning_tokens, e.output_tokens),
        "total": e.input_tokens + e.output_tokens,
    }
    if e.cache_read_tokens:
        usage["input_cached_tokens"] = min(e.cache_read_tokens, e.input_tokens)
    if e.reasoning_tokens:
        usage["output_reasoning_tokens"] = min(e.reasoning_tokens, e.output_tokens)
    first_chunk = (datetime.fromtimestamp(start / _NS + e.time_to_first_chunk_seconds, UTC)
                   if e.time_to_first_chunk_seconds is not None else None)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.model,
        "gen_ai.usage.input_tokens": e.input_tokens,
        "gen_ai.usage.output_tokens": e.output_tokens,
        **_trace_attributes(e.workflow, e.chatmode, e.run_id, e.persona),
        **create_generation_attributes(
            model=e.model,
            usage_details=usage,
            cost_details={"total": e.cost_usd} if e.cost_usd is not None else None,
            completion_start_time=first_chunk,
            level="ERROR" if e.error_type else None,
            status_message=e.error_type,
            metadata={"persona": e.persona, "stage": e.stage, "provider": e.provider,
                      **(e.metadata or {})},
        ),
    }
    if e.cache_read_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = e.cache_read_tokens
    if e.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = e.reasoning_tokens
    if e.stage:
        attributes["stage"] = e.stage
    status = Status(StatusCode.UNSET)
    if e.error_type:
        attributes["error.type"] = e.error_type
        status = Status(StatusCode.ERROR, e.error_type)
    return ReadableSpan(
        name=f"chat {e.model}", context=_context(trace_id, span_id),
        parent=_context(trace_id, e.parent_span_id) if e.parent_span_id else None,
        resource=resource, attributes=attributes, kind=SpanKind.CLIENT, status=status,
        start_time=start, end_time=end, instrumentation_scope=scope)


def _status(status: str) -> tuple[Status, Level | None]:
    if status == "failed":
        return Status(StatusCode.ERROR, "failed"), "ERROR"
    if status == "partial":
        return Status(StatusCode.UNSET), "WARNING"
    return Status(StatusCode.UNSET), None


def stage_span(e: StageRun, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    status, level = _status(e.status)
    attributes: dict[str, Any] = {
        # A stage is one persona (an agent) doing one step of the workflow.
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": e.persona,
        "stage": e.stage,
        "stage.status": e.status,
        "stage.tokens": e.tokens,
        **_trace_attributes(e.workflow, e.chatmode, e.run_id, e.persona),
        **create_span_attributes(
            observation_type="agent", level=level,
            status_message=e.status if level else None,
            metadata={"persona": e.persona, "stage": e.stage, "tokens": str(e.tokens),
                      **(e.metadata or {})}),
    }
    if e.status == "failed":
        attributes["error.type"] = "StageFailed"
    return ReadableSpan(
        name=e.stage, context=_context(trace_id, span_id),
        parent=_context(trace_id, e.parent_span_id) if e.parent_span_id else None,
        resource=resource, attributes=attributes, kind=SpanKind.INTERNAL, status=status,
        start_time=start, end_time=end, instrumentation_scope=scope)


def workflow_span(e: WorkflowRun, resource: Resource,
                  scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    status, level = _status(e.status)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": e.workflow,
        "workflow.status": e.status,
        "workflow.tokens": e.tokens,
        **_trace_attributes(e.workflow, e.chatmode, e.run_id, e.persona),
        # Governance ids and other run metadata belong to the trace, on its root.
        **_metadata(LF.TRACE_METADATA, {"run_id": e.run_id or "", **(e.metadata or {})}),
        **create_span_attributes(
            observation_type="chain", level=level,
            status_message=e.status if level else None,
            metadata={"tokens": str(e.tokens), "budget_overrun": str(e.budget_overrun).lower(),
                      **({"token_allocation": str(e.token_allocation)}
                         if e.token_allocation is not None else {})}),
    }
    if e.status == "failed":
        attributes["error.type"] = "WorkflowFailed"
    return ReadableSpan(
        name=f"invoke_workflow {e.workflow}", context=_context(trace_id, span_id),
        parent=None, resource=resource, attributes=attributes, kind=SpanKind.INTERNAL,
        status=status, start_time=start, end_time=end, instrumentation_scope=scope)


def observation_span(e: Observation, resource: Resource,
                     scope: InstrumentationScope) -> ReadableSpan:
    trace_id, span_id = _ids(e)
    start, end = _times(e.start_time, e.duration_seconds)
    kind = "retriever" if e.kind == "retrieval" else "event"
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "retrieval" if e.kind == "retrieval" else e.kind,
        **_trace_attributes(e.workflow, None, e.run_id, e.persona),
        **create_span_attributes(observation_type=kind,  # type: ignore[arg-type]
                                 metadata={"kind": e.kind, **(e.metadata or {})}),
    }
    return ReadableSpan(
        name=e.name, context=_context(trace_id, span_id),
        parent=_context(trace_id, e.parent_span_id) if e.parent_span_id else None,
        resource=resource, attributes=attributes, kind=SpanKind.INTERNAL,
        start_time=start, end_time=end, instrumentation_scope=scope)


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
