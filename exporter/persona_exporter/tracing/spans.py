"""Events to OpenTelemetry spans: GenAI semantic conventions plus Langfuse's attributes.

Each traced event becomes one finished span with the ids the SDK assigned when the work
started, so a generation can be exported before its stage and workflow have ended and the
backend still assembles ``invoke_workflow {name}`` -> stage -> ``chat {model}``.

The same span serves both backends. It follows the GenAI conventions (``gen_ai.*``,
``error.type``) with this project's ``persona``/``chatmode`` on top, and carries the
attributes Langfuse reads, named by the pinned ``langfuse`` package, laid out as its
``propagate_attributes`` lays them out: every span of a run carries the same trace-level
attributes - ``user.id`` the run's persona (persona-as-user), ``session.id`` the exact run
id, the trace name, tags and metadata (governance ids included) - because Langfuse's server
merges them from all the spans of a trace with "latest wins" rules (see
tests/langfuse_merge.py); each span's own persona, chatmode and stage are observation
metadata. Generations get model, usage details and cost. An OpenTelemetry Collector can
therefore route these spans into Langfuse as they are.
"""

from __future__ import annotations

import functools
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

from ..events import Event, LLMGeneration, Observation, StageRun, TraceAttributes, WorkflowRun

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
# The status of the root of a run nobody finished (the SDK marks its final event's
# metadata abandoned="true": sdk/handles.py).
ABANDONED = "abandoned: never finished"


def _ids(event: LLMGeneration | StageRun | WorkflowRun | Observation) -> tuple[str, str]:
    if event.trace_id is None or event.span_id is None:
        raise ValueError(f"{event.type} event has no trace ids")
    return event.trace_id, event.span_id


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                       trace_flags=_SAMPLED)


# A run's spans share a few parents (its stages, its root): one SpanContext each (they
# are immutable tuples), not one per span.
_parent_context = functools.lru_cache(maxsize=1024)(_context)


def _parent(trace_id: str, parent_span_id: str | None) -> SpanContext | None:
    return _parent_context(trace_id, parent_span_id) if parent_span_id else None


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


def _json_dumps() -> Any:
    """json.dumps with its defaults (ASCII escapes, NaN allowed) for the usage and cost
    dicts, twice a span. JSONEncoder.encode builds a C encoder per call, half the cost of
    these small dicts: this builds it once. No circular check: they hold numbers and
    strings only."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator in this Python
        return json.JSONEncoder().encode
    encode = make(None, _refuse, json.encoder.encode_basestring_ascii, None, ": ", ", ",
                  False, False, True)
    return lambda value: "".join(encode(value, 0))


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_dumps = _json_dumps()


def _meta(value: str) -> str:
    # How the Langfuse SDK encodes a metadata value (JSON, so "123" and 123 differ).
    return json.dumps(value, ensure_ascii=False)


# Exactness (the trace is how a manifest's run id is found again): values go out as given.
# A metadata value up to this size rides on every span; a longer one in full on the root
# only (up to ROOT_VALUE_MAX, marked when cut), the others saying so with "<key>_length"
# and "<key>_on_root". A session id over the SDK's limit for propagated values is left
# out (the exact run id is still in the metadata), marked with "session_id_omitted".
SPAN_VALUE_MAX = 1000
ROOT_VALUE_MAX = 65536
SESSION_MAX = 200


def _utf8(text: str) -> tuple[str, bool]:
    """``text``, or its escaped form when it holds a lone surrogate (which protobuf
    refuses, and with it the whole batch); True when escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8"), True
    return text, False


def _encode_trace(trace: TraceAttributes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what every span of the run carries, what its root carries): the layout of the
    pinned SDK's ``propagate_attributes`` (``langfuse/_client/propagation.py``:
    ``_get_propagated_span_key``), which its span processor copies onto every span."""
    common: dict[str, Any] = {}
    root_only: dict[str, Any] = {}
    marks: dict[str, str] = {}
    if trace.user:
        common[LF.TRACE_USER_ID] = _utf8(trace.user)[0]
    if trace.session:
        session, escaped = _utf8(trace.session)
        if escaped:
            marks["session_id_omitted"] = "run_id is not valid UTF-8"
        elif len(session) > SESSION_MAX:
            marks["session_id_omitted"] = f"run_id longer than {SESSION_MAX} characters"
        else:
            common[LF.TRACE_SESSION_ID] = session
    if trace.name:
        common[LF.TRACE_NAME] = _utf8(trace.name)[0]
    if trace.tags:
        common[LF.TRACE_TAGS] = tuple(_utf8(tag)[0] for tag in trace.tags)
    for raw_key, raw_value in trace.metadata:
        key, value = _utf8(raw_key)[0], _utf8(raw_value)
        if value[1]:
            marks[f"{key}_escaped"] = "true"
        if len(value[0]) <= SPAN_VALUE_MAX:
            common[f"{LF.TRACE_METADATA}.{key}"] = _meta(value[0])
            continue
        root_only[f"{LF.TRACE_METADATA}.{key}"] = _meta(value[0][:ROOT_VALUE_MAX])
        if len(value[0]) > ROOT_VALUE_MAX:
            root_only[f"{LF.TRACE_METADATA}.{key}_truncated"] = _meta("true")
        marks[f"{key}_length"] = str(len(value[0]))
        marks[f"{key}_on_root"] = "true"
    for key, mark in marks.items():
        common[f"{LF.TRACE_METADATA}.{key}"] = _meta(mark)
    return common, {**common, **root_only}


def trace_attributes(trace: TraceAttributes, *, root: bool) -> dict[str, Any]:
    """The encoded trace-level attributes, built once per TraceAttributes (a run's spans
    share one), here on the export thread. Never mutate the result."""
    encoded: tuple[dict[str, Any], dict[str, Any]] | None = trace.encoded
    if encoded is None:
        encoded = _encode_trace(trace)
        object.__setattr__(trace, "encoded", encoded)  # a cache slot; racing builds agree
    return encoded[1] if root else encoded[0]


_LONE: dict[tuple[str | None, str | None], TraceAttributes] = {}
_LONE_MAX = 1024


def _lone_call_trace(persona: str | None, chatmode: str | None) -> TraceAttributes:
    """A call outside any run is its own trace: its user is its persona, its chatmode a
    tag and a metadata key (as ``propagate_attributes(tags=, metadata=)`` would put it)."""
    key = (persona, chatmode)
    trace = _LONE.get(key)
    if trace is None:
        has_mode = bool(chatmode) and chatmode != "none"
        trace = TraceAttributes(
            user=persona if persona and persona != "unknown" else None,
            tags=(f"chatmode:{chatmode}",) if has_mode else (),
            metadata=(("chatmode", chatmode),) if has_mode and chatmode else ())
        if len(_LONE) < _LONE_MAX:
            _LONE[key] = trace
    return trace


def _event_trace(e: WorkflowRun) -> TraceAttributes:
    """A root built from an event without the SDK's TraceAttributes (one parsed from
    outside): the same layout from its own fields."""
    tags = [f"chatmode:{e.chatmode}"] if e.chatmode != "none" else []
    tags.append(f"workflow:{e.workflow}")
    metadata = {"chatmode": e.chatmode, "workflow": e.workflow} if e.chatmode != "none" \
        else {"workflow": e.workflow}
    metadata.update(e.metadata or {})
    if e.persona:
        metadata["persona"] = e.persona
    if e.run_id:
        metadata["run_id"] = e.run_id
    return TraceAttributes(user=e.persona, session=e.run_id, name=e.workflow,
                           tags=tuple(tags), metadata=tuple(metadata.items()))


def _trace_level(e: LLMGeneration | StageRun | Observation) -> dict[str, Any]:
    """The trace-level attributes of a span that is not a run's root."""
    if e.trace is not None:
        return trace_attributes(e.trace, root=e.parent_span_id is None)
    if e.parent_span_id is None:
        chatmode = e.chatmode if not isinstance(e, Observation) else None
        return trace_attributes(_lone_call_trace(e.persona, chatmode), root=True)
    # A child without its run's attributes: the session only, never a user of its own
    # (a per-span user is what made the latest span's persona the trace's user).
    return {LF.TRACE_SESSION_ID: e.run_id} if e.run_id else {}


# The same few personas, chatmodes and stages (names: at most 128 characters) recur on
# every span: each combination is built once (the spans spread it into their own dicts).
@functools.lru_cache(maxsize=4096)
def _observation_level(persona: str | None, chatmode: str | None,
                       stage: str | None) -> dict[str, Any]:
    """This span's own persona, chatmode and stage: plain attributes for OTLP backends,
    and top-level observation metadata keys in Langfuse (filterable there; a plain
    attribute only lands nested under ``metadata.attributes``). Never mutate the result."""
    attributes: dict[str, Any] = {}
    if persona:
        attributes["persona"] = persona
        attributes[_OBS_PERSONA] = _meta(persona)
    if chatmode and chatmode != "none":
        attributes["chatmode"] = chatmode
        attributes[_OBS_CHATMODE] = _meta(chatmode)
    if stage:
        attributes["stage"] = stage
        attributes[_OBS_STAGE] = _meta(stage)
    return attributes


_OBS_PERSONA = f"{LF.OBSERVATION_METADATA}.persona"
_OBS_CHATMODE = f"{LF.OBSERVATION_METADATA}.chatmode"
_OBS_STAGE = f"{LF.OBSERVATION_METADATA}.stage"


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
        **_trace_level(e),
        **_observation_level(e.persona, e.chatmode, e.stage),
        LF.OBSERVATION_TYPE: "generation",
        LF.OBSERVATION_MODEL: e.model,
        LF.OBSERVATION_USAGE_DETAILS: _dumps(usage_details(e)),
    }
    if e.cache_read_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = e.cache_read_tokens
    if e.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = e.reasoning_tokens
    if e.cost_usd is not None:
        attributes[LF.OBSERVATION_COST_DETAILS] = _dumps({"total": e.cost_usd})
    if e.time_to_first_chunk_seconds is not None:
        first = datetime.fromtimestamp(start / _NS + e.time_to_first_chunk_seconds, UTC)
        attributes[LF.OBSERVATION_COMPLETION_START_TIME] = langfuse_serialize(first)
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
        "stage.tokens": e.tokens,
        **_trace_level(e),
        **_observation_level(e.persona, e.chatmode, e.stage),
        LF.OBSERVATION_TYPE: "agent",
    }
    if e.metadata:
        attributes.update(observation_metadata(e.metadata))
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
        **trace_attributes(e.trace if e.trace is not None else _event_trace(e), root=True),
        **_observation_level(e.persona, e.chatmode, None),
        LF.OBSERVATION_TYPE: "chain",
        **observation_metadata(run_metadata),
    }
    status = _outcome(attributes, e.status, "WorkflowFailed")
    if e.metadata and e.metadata.get("abandoned") == "true":
        attributes[LF.OBSERVATION_STATUS_MESSAGE] = ABANDONED
        status = Status(StatusCode.ERROR, ABANDONED)
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
        **_trace_level(e),
        **_observation_level(e.persona, None, e.stage),
        LF.OBSERVATION_TYPE: "retriever" if e.kind == "retrieval" else "event",
        **observation_metadata({"kind": e.kind, **(e.metadata or {})}),
    }
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
