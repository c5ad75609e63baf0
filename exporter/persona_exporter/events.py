"""The event model: the one shape that crosses every boundary.

The SDK builds these dataclasses directly (construction is cheap, and the SDK cleans its
inputs with :func:`clean_name` first); anything arriving from outside - HTTP ingest, a
spool file - goes through :func:`parse_event` / :func:`parse_valid_events`, which validate with
pydantic and name the field and value at fault.

Names (persona, model, workflow, ...) become Prometheus label values and Langfuse
attributes, so they are 1-128 printable US-ASCII characters without surrounding spaces.
Numbers are finite and not negative. Unknown fields are refused rather than ignored, so a
misspelt field never silently records zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic.json_schema import SkipJsonSchema

NAME_MAX_LENGTH: Final = 128
NAME_PATTERN: Final = r"^[!-~](?:[ -~]{0,126}[!-~])?$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
_NOT_PRINTABLE_ASCII: Final = re.compile(r"[^ -~]")

Name = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
]
# Sane bounds for one event. Anything beyond is a client bug or an attack, and one such
# value would sit in a counter for good (1e308 USD turns the series into +Inf), so it is
# refused with the field named. They are in the JSON Schema (/v1/schema) as maximum.
MAX_TOKENS: Final = 10**12           # tokens in one call, stage or run
MAX_COST_USD: Final = 1_000_000.0    # USD for one call
MAX_SECONDS: Final = 30 * 86_400.0   # 30 days: a call, stage or workflow run
MAX_TIMESTAMP: Final = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last datetime
# strict: true is not a token count, nor is "12"
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
Usd = Annotated[float, Field(ge=0, le=MAX_COST_USD, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(gt=0, le=MAX_TIMESTAMP, allow_inf_nan=False,
                                   description="Unix time, seconds")]
TraceId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
SpanId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
RunId = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
Status = Literal["succeeded", "failed", "partial"]
# Free-form context for traces (governance ids, step attributes); never a metric label.
METADATA_MAX_ITEMS: Final = 32
Metadata = Annotated[
    dict[Name, Annotated[str, Field(max_length=1000)]], Field(max_length=METADATA_MAX_ITEMS)
]

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True, eq=False)
class TraceAttributes:
    """The trace-level attributes of one traced run, shared by reference by all its events.

    Langfuse merges a trace's user, session, name, tags and metadata from every span it
    receives ("latest wins"), so every span of a run carries the same values, exactly as
    given: ``metadata`` holds the caller's strings unchanged (a governance id is never
    cleaned like a :data:`Name`). Built by the SDK, read by the tracing sink; never on
    the wire (``init=False`` on the events' ``trace`` field keeps it out of the schema,
    of :func:`parse_event` and of :func:`event_to_dict`).
    """

    user: str | None = None
    session: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    # Filled once by the span builder with the encoded attributes (the per-span work
    # then reuses them); never compared, never shown.
    encoded: Any = field(default=None, repr=False, compare=False)




@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class LLMGeneration:
    """One LLM request, finished or failed (``error_type`` set)."""

    type: Literal["llm_generation"] = "llm_generation"
    persona: Name
    chatmode: Name = "none"
    model: Name
    provider: Name = "unknown"
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cache_read_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    cost_usd: Usd | None = None
    duration_seconds: Seconds
    time_to_first_chunk_seconds: Seconds | None = None
    error_type: Name | None = None
    workflow: Name | None = None
    stage: Name | None = None
    run_id: RunId | None = None
    start_time: Timestamp | None = None
    trace_id: TraceId | None = None
    span_id: SpanId | None = None
    parent_span_id: SpanId | None = None
    metadata: Metadata | None = None
    # Set after construction by the SDK; not in the JSON Schema, unknown on the wire.
    trace: SkipJsonSchema[TraceAttributes | None] = field(
        default=None, init=False, repr=False, compare=False)


@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class StageRun:
    """One finished stage of a workflow run, done under one persona."""

    type: Literal["stage_run"] = "stage_run"
    workflow: Name
    stage: Name
    persona: Name
    chatmode: Name = "none"
    status: Status
    duration_seconds: Seconds
    tokens: TokenCount = 0
    run_id: RunId | None = None
    start_time: Timestamp | None = None
    trace_id: TraceId | None = None
    span_id: SpanId | None = None
    parent_span_id: SpanId | None = None
    metadata: Metadata | None = None
    # Set after construction by the SDK; not in the JSON Schema, unknown on the wire.
    trace: SkipJsonSchema[TraceAttributes | None] = field(
        default=None, init=False, repr=False, compare=False)


@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class WorkflowStart:
    """A workflow run began (it counts as active until its WorkflowRun arrives)."""

    type: Literal["workflow_start"] = "workflow_start"
    workflow: Name
    chatmode: Name = "none"
    run_id: RunId | None = None
    start_time: Timestamp | None = None


@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class WorkflowRun:
    """One finished workflow run."""

    type: Literal["workflow_run"] = "workflow_run"
    workflow: Name
    chatmode: Name = "none"
    status: Status
    duration_seconds: Seconds
    tokens: TokenCount = 0
    token_allocation: TokenCount | None = None
    budget_overrun: bool = False
    # The persona the run is attributed to in traces (Langfuse's user): the workflow's own,
    # else its first stage's.
    persona: Name | None = None
    run_id: RunId | None = None
    start_time: Timestamp | None = None
    trace_id: TraceId | None = None
    span_id: SpanId | None = None
    metadata: Metadata | None = None
    # Set after construction by the SDK; not in the JSON Schema, unknown on the wire.
    trace: SkipJsonSchema[TraceAttributes | None] = field(
        default=None, init=False, repr=False, compare=False)


@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class PersonaSwitch:
    """Consecutive stages of a workflow run changed persona."""

    type: Literal["persona_switch"] = "persona_switch"
    workflow: Name
    from_persona: Name
    to_persona: Name
    run_id: RunId | None = None


@with_config(_STRICT)
@dataclass(slots=True, kw_only=True)
class Observation:
    """A traced step that is not an LLM call: a retrieval, an artifact written, an output.

    It only becomes a span (a Langfuse retriever or event observation); no metric counts
    it beyond the accepted-events counter.
    """

    type: Literal["observation"] = "observation"
    kind: Literal["retrieval", "artifact", "event"]
    name: Name
    persona: Name | None = None
    workflow: Name | None = None
    stage: Name | None = None
    duration_seconds: Seconds = 0.0
    run_id: RunId | None = None
    start_time: Timestamp | None = None
    trace_id: TraceId | None = None
    span_id: SpanId | None = None
    parent_span_id: SpanId | None = None
    metadata: Metadata | None = None
    # Set after construction by the SDK; not in the JSON Schema, unknown on the wire.
    trace: SkipJsonSchema[TraceAttributes | None] = field(
        default=None, init=False, repr=False, compare=False)


Event = LLMGeneration | StageRun | WorkflowStart | WorkflowRun | PersonaSwitch | Observation
EVENT_CLASSES: Final = (LLMGeneration, StageRun, WorkflowStart, WorkflowRun, PersonaSwitch,
                        Observation)

_EVENT_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(
    Annotated[Event, Field(discriminator="type")]
)


# An error message quotes the client's input, so it is bounded: one hostile event must
# not produce (nor make the exporter remember) a megabyte of error.
MAX_ERROR_MESSAGE: Final = 300
_LISTED_UNKNOWN: Final = 3  # unknown field names quoted before "and N more"
_UNKNOWN_FIELD: Final = "unknown field"


class EventError(ValueError):
    """An event failed validation; ``problems`` lists (field path, message) pairs.

    The message (``str(error)``) is at most MAX_ERROR_MESSAGE characters: unknown fields
    are summed up as their count and the first few names."""

    def __init__(self, problems: list[tuple[str, str]], *, unknown_type: bool = False):
        self.problems = problems
        self.unknown_type = unknown_type
        super().__init__(_summary(problems))


def _summary(problems: list[tuple[str, str]]) -> str:
    unknown = [path for path, msg in problems if msg == _UNKNOWN_FIELD]
    parts = [f"{path}: {msg}" if path else msg
             for path, msg in problems if msg != _UNKNOWN_FIELD]
    if len(unknown) == 1:
        parts.append(f"{unknown[0]}: {_UNKNOWN_FIELD}")
    elif unknown:
        parts.append(_unknown_fields(unknown, len(unknown)))
    text = "; ".join(parts)
    if len(text) <= MAX_ERROR_MESSAGE:
        return text
    tail = f"... ({len(problems)} problems)"
    return text[:MAX_ERROR_MESSAGE - len(tail)] + tail


def _unknown_fields(names: list[str], count: int) -> str:
    listed = ", ".join(short_repr(name, limit=24) for name in names[:_LISTED_UNKNOWN])
    more = f" and {count - _LISTED_UNKNOWN} more" if count > _LISTED_UNKNOWN else ""
    return f"{count} unknown fields: {listed}{more}"


def _describe(error: Any) -> tuple[str, str]:
    # pydantic prefixes the location with the union tag ('llm_generation', 'persona'); the
    # tag is the event type, which the caller already knows, so the field path starts after.
    loc = [str(part) for part in error["loc"]]
    if loc and loc[0] in _TAGS:
        loc = loc[1:]
    path = short_repr(".".join(loc), quote=False)  # an unknown field's name is the client's
    kind = error["type"]
    value = error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return path, "unknown field"
    if kind == "missing":
        return path, "required field is missing"
    if kind == "union_tag_invalid":
        given = value.get("type") if isinstance(value, dict) else value
        return "type", f"unknown event type {short_repr(given)}; expected one of {', '.join(_TAGS)}"
    if kind == "union_tag_not_found":
        return "type", f"missing event type; expected one of {', '.join(_TAGS)}"
    if kind == "string_pattern_mismatch":
        return path, (
            f"{short_repr(value)} is not a valid name: use 1-{NAME_MAX_LENGTH} printable ASCII "
            "characters, no leading or trailing space"
        )
    return path, f"{error['msg']} (got {short_repr(value)})"


def short_repr(value: Any, *, quote: bool = True, limit: int = 60) -> str:
    """A value for an error message: its repr, cut to ``limit`` characters."""
    if isinstance(value, (dict, list)) and len(value) > 8:
        # repr of a huge container costs its whole size before being cut
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_TAGS: Final[tuple[str, ...]] = tuple(
    str(cls.__dataclass_fields__["type"].default) for cls in EVENT_CLASSES)
_ALL_FIELDS: Final = frozenset(name for cls in EVENT_CLASSES for name in cls.__dataclass_fields__
                               if name != "trace")  # in-process only: unknown on the wire
# No event type has this many fields, so a bigger object has unknown ones for sure.
_MAX_FIELDS: Final = max(len(cls.__dataclass_fields__) for cls in EVENT_CLASSES)


def parse_event(data: Any) -> Event:
    """Validate one event from decoded JSON; raise :class:`EventError` naming the field."""
    if isinstance(data, dict) and len(data) > _MAX_FIELDS:
        # pydantic would build one error per unknown key (74,000 keys: 0.4 s, 1.8 MB)
        names = [str(key) for key in data if key not in _ALL_FIELDS]
        raise EventError([("", _unknown_fields(names, len(names)))],
                         unknown_type=data.get("type") not in _TAGS)
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if isinstance(metadata, dict) and len(metadata) > METADATA_MAX_ITEMS:
        raise EventError([("metadata", f"{len(metadata)} entries; at most "
                                       f"{METADATA_MAX_ITEMS}")])
    try:
        return _EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = any(e["type"] in ("union_tag_invalid", "union_tag_not_found") for e in errors)
        raise EventError([_describe(e) for e in errors], unknown_type=unknown) from None


# The same union as a list: a batch validated in one call into pydantic-core costs about
# two thirds of validating its events one by one (issue 14: parse_event was 37% of serve).
_BATCH_ADAPTER: Final[TypeAdapter[list[Event]]] = TypeAdapter(
    list[Annotated[Event, Field(discriminator="type")]]
)


def parse_valid_events(items: Sequence[Any]) -> list[Event] | None:
    """All of ``items`` as events when every one is valid, validated at once; None when
    any is not (then :func:`parse_event`, one by one, says which and why). An item
    :func:`parse_event` refuses before pydantic sees it (too many fields or metadata
    entries, which would cost one error each) makes it None without validating."""
    for item in items:
        if type(item) is not dict or len(item) > _MAX_FIELDS:
            return None
        metadata = item.get("metadata")
        if type(metadata) is dict and len(metadata) > METADATA_MAX_ITEMS:
            return None
    try:
        return _BATCH_ADAPTER.validate_python(items)
    except ValidationError:
        return None


# The numeric fields of each event type and their upper bound (the lower one is 0).
_BOUNDS: Final = {"tokens": MAX_TOKENS, "cost_usd": MAX_COST_USD, "seconds": MAX_SECONDS,
                  "start_time": MAX_TIMESTAMP, "token_allocation": MAX_TOKENS}
_NUMERIC_FIELDS: Final[dict[type, tuple[tuple[str, float], ...]]] = {
    cls: tuple((name, bound) for name in cls.__dataclass_fields__
               for suffix, bound in _BOUNDS.items() if name.endswith(suffix))
    for cls in EVENT_CLASSES}




def _sane_check(fields: tuple[tuple[str, float], ...]) -> Callable[[Any], bool]:
    # One expression per event type, as dataclasses generate their __init__: the recorder
    # runs this on every event of every instrumented call, and a loop over the fields with
    # getattr cost 0.8 us there (a fifth of what the whole call adds).
    terms = [f"(e.{name} is None or 0 <= e.{name} <= {bound!r})" for name, bound in fields]
    check: Callable[[Any], bool] = eval(  # noqa: S307 - built from our own field names
        f"lambda e: {' and '.join(terms) or 'True'}")
    return check


_SANE: Final[dict[type, Callable[[Any], bool]]] = {
    cls: _sane_check(fields) for cls, fields in _NUMERIC_FIELDS.items()}


def out_of_bounds(event: Event) -> str | None:
    """The first numeric field of an event built in-process (not parsed, so not validated)
    that is negative, not finite or over its bound, as "field: value"; None when all are
    sane. Parsed events always pass."""
    try:
        if _SANE[type(event)](event):  # NaN fails both comparisons
            return None
    except TypeError:  # a string where a number belongs: named below
        pass
    for name, bound in _NUMERIC_FIELDS[type(event)]:
        value = getattr(event, name)
        try:
            if value is None or 0 <= value <= bound:  # NaN fails both comparisons
                continue
        except TypeError:
            pass
        return f"{event.type}.{name}: {short_repr(value)} is outside 0..{bound:g}"
    return None


_WIRE_FIELDS: Final = {cls: tuple(name for name in cls.__dataclass_fields__ if name != "trace")
                       for cls in EVENT_CLASSES}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready form of an event, without the fields left at None nor the in-process
    ``trace`` (which the wire schema does not have)."""
    wire: dict[str, Any] = {}
    for name in _WIRE_FIELDS[type(event)]:
        value = getattr(event, name)
        if value is not None:
            wire[name] = dict(value) if isinstance(value, dict) else value
    return wire


def events_json_schema() -> dict[str, Any]:
    """JSON Schema of one event (a discriminated union on ``type``)."""
    return _EVENT_ADAPTER.json_schema()


def clean_name(value: object, default: str = "unknown") -> str:
    """Turn anything into a valid name: the SDK's inputs must never fail validation.

    Characters outside printable ASCII become ``_``, the result is trimmed and cut to
    the maximum length; an empty result is ``default``.
    """
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if _NAME_RE.match(text) and len(text) <= NAME_MAX_LENGTH:
        return text
    text = _NOT_PRINTABLE_ASCII.sub("_", text.strip())[:NAME_MAX_LENGTH].rstrip()
    return text or default


def is_valid_name(value: str) -> bool:
    return len(value) <= NAME_MAX_LENGTH and _NAME_RE.match(value) is not None
