"""OTLP trace requests, protobuf or JSON, into :class:`~.span.Span` views.

Both encodings of ``ExportTraceServiceRequest`` as the OTLP/HTTP specification defines
them (``opentelemetry-proto`` ``opentelemetry/proto/collector/trace/v1/trace_service.proto``
and the OTLP/JSON rules of ``specification/protocol/otlp.md``): in JSON, ids are hex
strings rather than base64, enums are integers, field names lowerCamelCase, and 64-bit
integers may be strings or numbers.

A body that cannot be read at all raises :class:`DecodeError` (the receiver answers 400,
which OTLP clients do not retry). A body that can be read but holds bad spans keeps the
good ones: each bad span is counted by reason and the first problem is kept for the
``partial_success`` message, so one malformed span never costs the batch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from .span import Span, SpanEvent
from .wire import MAX_VALUE_DEPTH, LazyAttributes, TraceRequest, read_value

# Bounds on one span. The OpenTelemetry SDKs' own default limit is 128 attributes and
# 128 events per span; these leave room for generous configurations and stop hostile ones.
MAX_ATTRIBUTES = 1024
MAX_EVENTS = 256          # past it, the rest of a span's events are not read
MAX_MESSAGE = 300         # the partial_success message, as the events API's errors

_INTEGER = re.compile(r"-?[0-9]{1,20}")
_HEX = {16: re.compile(r"[0-9a-fA-F]{16}"), 32: re.compile(r"[0-9a-fA-F]{32}")}

_INVALID = "invalid_span"
_TOO_MANY = "too_many_attributes"


class DecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest in the encoding it claims."""


class _BadSpanError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Decoded:
    spans: list[Span] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    first_error: str = ""

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        if not self.first_error:
            self.first_error = message[:MAX_MESSAGE]


# --- protobuf ----------------------------------------------------------------------------

def decode_protobuf(body: bytes, keys: frozenset[str] | None = None) -> Decoded:
    """``keys``: the span attributes that will be read. Their values are decoded and the
    attributes are a plain dict (its ``get`` runs in C: a span is asked for 15-20 keys,
    most of them absent); every other attribute keeps its serialised ``AnyValue`` bytes,
    never decoded. Without ``keys``, every value is decoded when first read
    (:class:`~.wire.LazyAttributes`)."""
    request = TraceRequest()
    try:
        request.ParseFromString(body)
    except (ProtobufDecodeError, RecursionError) as error:
        raise DecodeError(f"the body is not an OTLP ExportTraceServiceRequest in protobuf: "
                          f"{error or 'truncated or malformed'}") from None
    decoded = Decoded()
    for resource_spans in request.resource_spans:
        try:
            resource = _resource(resource_spans.resource.attributes)
        except _BadSpanError as error:
            # Without its resource a span would be read with the wrong persona: refuse all.
            for scope_spans in resource_spans.scope_spans:
                for _ in scope_spans.spans:
                    decoded.reject(error.reason, f"resource: {error}")
            continue
        for scope_spans in resource_spans.scope_spans:
            scope = _utf8(scope_spans.scope.name)
            for index, pb in enumerate(scope_spans.spans):
                try:
                    decoded.spans.append(_pb_span(pb, resource, scope, keys))
                except _BadSpanError as error:
                    decoded.reject(error.reason,
                                   f"span {index} ({_utf8(pb.name[:60])!r}): {error}")
    return decoded


def _pb_span(pb: Any, resource: dict[str, Any], scope: str,
             keys: frozenset[str] | None) -> Span:
    trace_id, span_id, parent = pb.trace_id, pb.span_id, pb.parent_span_id
    if len(trace_id) != 16 or not any(trace_id):
        raise _BadSpanError(_INVALID, "trace_id must be 16 bytes, not all zero")
    if len(span_id) != 8 or not any(span_id):
        raise _BadSpanError(_INVALID, "span_id must be 8 bytes, not all zero")
    if parent and len(parent) != 8:
        raise _BadSpanError(_INVALID, "parent_span_id must be empty or 8 bytes")
    start, end = pb.start_time_unix_nano, pb.end_time_unix_nano
    if end < start:
        raise _BadSpanError(_INVALID, "end_time_unix_nano is before start_time_unix_nano")
    attributes: dict[str, Any]
    if keys is None:
        attributes = LazyAttributes(pb.attributes)
    else:
        attributes = dict(pb.attributes)
        for key in keys.intersection(attributes):
            attributes[key] = read_value(attributes[key])
    if len(attributes) > MAX_ATTRIBUTES:
        raise _BadSpanError(_TOO_MANY, f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
    events = [SpanEvent(_utf8(event.name), event.time_unix_nano,
                        LazyAttributes(event.attributes))
              for event in pb.events[:MAX_EVENTS]] if pb.events else []
    status = pb.status
    return Span(
        trace_id=trace_id.hex(), span_id=span_id.hex(),
        parent_span_id=parent.hex() if parent and any(parent) else None,
        name=_utf8(pb.name), kind=pb.kind, start_unix_nano=start, end_unix_nano=end,
        status_code=status.code, status_message=_utf8(status.message),
        attributes=attributes, resource=resource, events=events, scope_name=scope)


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _resource(attributes: Any) -> dict[str, Any]:
    """A resource's attributes, decoded at once: there are few resources per request."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise _BadSpanError(_TOO_MANY, f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
    return dict(LazyAttributes(attributes).items())


# --- JSON --------------------------------------------------------------------------------

def decode_json(body: bytes) -> Decoded:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise DecodeError(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DecodeError("expected an OTLP ExportTraceServiceRequest object "
                          '{"resourceSpans": [...]}')
    resource_spans = data.get("resourceSpans", [])
    if not isinstance(resource_spans, list):
        raise DecodeError("'resourceSpans' must be an array")
    decoded = Decoded()
    for r_index, entry in enumerate(resource_spans):
        where = f"resourceSpans[{r_index}]"
        if not isinstance(entry, dict):
            decoded.reject(_INVALID, f"{where}: expected an object")
            continue
        try:
            resource = _json_attributes(_object(entry.get("resource", {}), "resource")
                                        .get("attributes", []))
        except _BadSpanError as error:
            decoded.reject(error.reason, f"{where}.resource: {error}")
            continue
        scopes = entry.get("scopeSpans", [])
        if not isinstance(scopes, list):
            decoded.reject(_INVALID, f"{where}.scopeSpans: expected an array")
            continue
        for s_index, scope_spans in enumerate(scopes):
            _json_scope(decoded, scope_spans, resource, f"{where}.scopeSpans[{s_index}]")
    return decoded


def _json_scope(decoded: Decoded, scope_spans: Any, resource: dict[str, Any],
                where: str) -> None:
    if not isinstance(scope_spans, dict) or not isinstance(scope_spans.get("spans", []), list):
        decoded.reject(_INVALID, f"{where}: expected an object with a 'spans' array")
        return
    scope = scope_spans.get("scope")
    scope_name = scope.get("name", "") if isinstance(scope, dict) else ""
    if not isinstance(scope_name, str):
        scope_name = ""
    for index, item in enumerate(scope_spans.get("spans", [])):
        try:
            decoded.spans.append(_json_span(item, resource, scope_name))
        except _BadSpanError as error:
            name = item.get("name") if isinstance(item, dict) else None
            label = f" ({name[:60]!r})" if isinstance(name, str) else ""
            decoded.reject(error.reason, f"{where}.spans[{index}]{label}: {error}")


def _json_span(item: Any, resource: dict[str, Any], scope: str) -> Span:
    span = _object(item, "span")
    trace_id = _hex_id(span.get("traceId"), 32, "traceId")
    span_id = _hex_id(span.get("spanId"), 16, "spanId")
    parent = span.get("parentSpanId") or None
    parent = _hex_id(parent, 16, "parentSpanId") if parent is not None else None
    start = _uint(span.get("startTimeUnixNano", 0), "startTimeUnixNano")
    end = _uint(span.get("endTimeUnixNano", 0), "endTimeUnixNano")
    if end < start:
        raise _BadSpanError(_INVALID, "endTimeUnixNano is before startTimeUnixNano")
    status = _object(span.get("status") or {}, "status")
    events_raw = span.get("events", [])
    if not isinstance(events_raw, list):
        raise _BadSpanError(_INVALID, "events: expected an array")
    events = []
    for event in events_raw[:MAX_EVENTS]:
        event = _object(event, "events[]")
        events.append(SpanEvent(_string(event.get("name", ""), "events[].name"),
                                _uint(event.get("timeUnixNano", 0), "events[].timeUnixNano"),
                                _json_attributes(event.get("attributes", []))))
    return Span(
        trace_id=trace_id, span_id=span_id,
        parent_span_id=parent if parent and parent.strip("0") else None,
        name=_string(span.get("name", ""), "name"),
        kind=_enum(span.get("kind", 0), _SPAN_KINDS, "kind"),
        start_unix_nano=start, end_unix_nano=end,
        status_code=_enum(status.get("code", 0), _STATUS_CODES, "status.code"),
        status_message=_string(status.get("message", ""), "status.message"),
        attributes=_json_attributes(span.get("attributes", [])), resource=resource,
        events=events, scope_name=scope)


def _json_attributes(attributes: Any) -> dict[str, Any]:
    if not isinstance(attributes, list):
        raise _BadSpanError(_INVALID, "attributes: expected an array of {key, value}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise _BadSpanError(_TOO_MANY, f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
    out: dict[str, Any] = {}
    for kv in attributes:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _BadSpanError(_INVALID, "attributes: each must be an object with a string 'key'")
        out[kv["key"]] = _json_value(kv.get("value"), 0, kv["key"])
    return out


_SCALARS = {"stringValue": str, "boolValue": bool}


def _json_value(value: Any, depth: int, key: str) -> Any:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: expected an AnyValue object with "
                                 "one field")
    (kind, inner), = value.items()
    if kind in _SCALARS:
        if type(inner) is not _SCALARS[kind]:
            raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: {kind} of the wrong type")
        return inner
    if kind == "intValue":
        return _int(inner, f"attribute {key[:60]!r}")
    if kind == "doubleValue":
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return float(inner)
        if inner in ("NaN", "Infinity", "-Infinity"):
            return float(inner.replace("Infinity", "inf"))
        raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: doubleValue must be a number")
    if kind == "bytesValue":
        return _string(inner, f"attribute {key[:60]!r}").encode()  # base64 text, kept as is
    if depth >= MAX_VALUE_DEPTH:
        raise _BadSpanError(_INVALID, f"attribute {key[:60]!r} nests deeper than {MAX_VALUE_DEPTH}")
    values = _object(inner, kind).get("values", [])
    if not isinstance(values, list):
        raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: {kind}.values must be an array")
    if kind == "arrayValue":
        return [_json_value(item, depth + 1, key) for item in values]
    if kind == "kvlistValue":
        out = {}
        for kv in values:
            if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
                raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: kvlist entries need a key")
            out[kv["key"]] = _json_value(kv.get("value"), depth + 1, key)
        return out
    raise _BadSpanError(_INVALID, f"attribute {key[:60]!r}: unknown AnyValue field {kind[:30]!r}")


# OTLP/JSON sends enums as integers; proto3 JSON printers (MessageToJson, protojson) send
# their names, which receivers in the wild accept too.
_SPAN_KINDS = {name: number for number, name in enumerate(
    ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
     "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"))}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _enum(value: Any, names: dict[str, int], name: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _uint(value, name)


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadSpanError(_INVALID, f"{name}: expected an object")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _BadSpanError(_INVALID, f"{name}: expected a string")
    return value


def _int(value: Any, name: str) -> int:
    # 64-bit integers are strings in proto3 JSON; OTLP receivers accept numbers too.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        raise _BadSpanError(_INVALID, f"{name}: expected an integer")
    if not -(2**63) <= number < 2**63:
        raise _BadSpanError(_INVALID, f"{name}: out of the 64-bit range")
    return number


def _uint(value: Any, name: str) -> int:
    number = _int(value, name)
    if number < 0:
        raise _BadSpanError(_INVALID, f"{name}: must not be negative")
    return number


def _hex_id(value: Any, digits: int, name: str) -> str:
    if not isinstance(value, str) or not _HEX[digits].fullmatch(value):
        raise _BadSpanError(_INVALID, f"{name}: expected {digits} hex digits")
    text = value.lower()
    if not text.strip("0") and name != "parentSpanId":
        raise _BadSpanError(_INVALID, f"{name}: must not be all zero")
    return text
