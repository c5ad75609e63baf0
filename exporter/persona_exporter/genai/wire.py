"""The OTLP trace request read with a lean message definition, and attribute values read
only when asked for.

Why not ``opentelemetry-proto``'s own classes: with upb, every field access from Python
builds a wrapper, and a span's ten or so ``KeyValue``/``AnyValue`` pairs cost about
1.5 us each here - 17 us a span before any mapping, most of it for attributes nobody reads
(tool arguments, prompts). The messages below are wire-compatible with
``opentelemetry/proto/trace/v1/trace.proto`` (same field numbers and wire types, fields we
do not read left out, so the parser skips them) with one change: ``repeated KeyValue
attributes`` is declared ``map<string, bytes>``. A map entry is encoded exactly as a
message with the key in field 1 and the value in field 2, which is what ``KeyValue`` is,
so upb builds the key -> raw ``AnyValue`` map in C; a value is decoded when the mapping
asks for it (:class:`LazyAttributes`). Names and messages are declared ``bytes`` and
decoded with replacement: protobuf refuses a whole request over one string that is not
UTF-8, which would cost every good span of it. Two entries with the same key keep the last, as a
map does and as the OpenTelemetry SDKs do when they set an attribute twice.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_PACKAGE = "persona_exporter.otlp_lite"


def _build() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="persona_exporter/otlp_lite.proto",
                                              package=_PACKAGE, syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]],
                with_attributes_map: bool = False) -> None:
        proto = file.message_type.add(name=name)
        if with_attributes_map:
            entry = proto.nested_type.add(name="AttributesEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_OPT)
            entry.field.add(name="value", number=2, type=_F.TYPE_BYTES, label=_OPT)
        for field_name, number, kind, label, type_name in fields:
            added = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = f".{_PACKAGE}.{type_name}"

    # Field numbers: opentelemetry/proto/trace/v1/trace.proto, resource/v1/resource.proto,
    # common/v1/common.proto (InstrumentationScope), collector/trace/v1/trace_service.proto.
    message("Status", [("message", 2, _F.TYPE_BYTES, _OPT, ""),
                       ("code", 3, _F.TYPE_INT32, _OPT, "")])
    message("Event", [("time_unix_nano", 1, _F.TYPE_FIXED64, _OPT, ""),
                      ("name", 2, _F.TYPE_BYTES, _OPT, ""),
                      ("attributes", 3, _F.TYPE_MESSAGE, _REP, "Event.AttributesEntry")],
            with_attributes_map=True)
    message("Span", [("trace_id", 1, _F.TYPE_BYTES, _OPT, ""),
                     ("span_id", 2, _F.TYPE_BYTES, _OPT, ""),
                     ("parent_span_id", 4, _F.TYPE_BYTES, _OPT, ""),
                     ("name", 5, _F.TYPE_BYTES, _OPT, ""),
                     ("kind", 6, _F.TYPE_INT32, _OPT, ""),
                     ("start_time_unix_nano", 7, _F.TYPE_FIXED64, _OPT, ""),
                     ("end_time_unix_nano", 8, _F.TYPE_FIXED64, _OPT, ""),
                     ("attributes", 9, _F.TYPE_MESSAGE, _REP, "Span.AttributesEntry"),
                     ("events", 11, _F.TYPE_MESSAGE, _REP, "Event"),
                     ("status", 15, _F.TYPE_MESSAGE, _OPT, "Status")],
            with_attributes_map=True)
    message("Scope", [("name", 1, _F.TYPE_BYTES, _OPT, "")])
    message("ScopeSpans", [("scope", 1, _F.TYPE_MESSAGE, _OPT, "Scope"),
                           ("spans", 2, _F.TYPE_MESSAGE, _REP, "Span")])
    message("Resource", [("attributes", 1, _F.TYPE_MESSAGE, _REP, "Resource.AttributesEntry")],
            with_attributes_map=True)
    message("ResourceSpans", [("resource", 1, _F.TYPE_MESSAGE, _OPT, "Resource"),
                              ("scope_spans", 2, _F.TYPE_MESSAGE, _REP, "ScopeSpans")])
    message("Request", [("resource_spans", 1, _F.TYPE_MESSAGE, _REP, "ResourceSpans")])
    pool = descriptor_pool.DescriptorPool()  # our own: never clashes with the real names
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Request"))


TraceRequest = _build()

MAX_VALUE_DEPTH = 8  # arrays and kvlists inside each other


class ValueTooDeepError(ValueError):
    pass


_DOUBLE = struct.Struct("<d")


def decode_any_value(raw: bytes) -> Any:
    """A serialised ``AnyValue`` as a Python value. The scalar cases (nearly every
    attribute) are read here directly; arrays, kvlists and bytes go through the real
    message class."""
    if not raw:
        return None
    tag = raw[0]
    if tag == 0x0A:  # field 1 string_value, length-delimited
        length, start = _varint(raw, 1)
        if start + length == len(raw):
            return raw[start:].decode("utf-8", "replace")
    elif tag == 0x18:  # field 3 int_value, varint (int64, two's complement)
        number, end = _varint(raw, 1)
        if end == len(raw):
            return number - (1 << 64) if number >= 1 << 63 else number
    elif tag == 0x21 and len(raw) == 9:  # field 4 double_value, fixed64
        return _DOUBLE.unpack_from(raw, 1)[0]
    elif tag == 0x10 and len(raw) == 2:  # field 2 bool_value
        return raw[1] != 0
    value = AnyValue()
    value.ParseFromString(raw)  # DecodeError on garbage: the caller treats it as absent
    return plain_value(value, 0)


def plain_value(value: Any, depth: int) -> Any:
    """An ``AnyValue`` message (of opentelemetry-proto) as a Python value."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which is None:
        return None
    if depth >= MAX_VALUE_DEPTH:
        raise ValueTooDeepError(f"an attribute value nests deeper than {MAX_VALUE_DEPTH}")
    if which == "array_value":
        return [plain_value(item, depth + 1) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    return bytes(value.bytes_value)


def _varint(raw: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(raw) or shift > 63:
            raise ValueError("truncated varint")
        byte = raw[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


_MISSING: Any = object()


class LazyAttributes(dict[str, Any]):
    """Attributes whose values are serialised ``AnyValue`` bytes until read.

    Reading through ``[]``, ``get``, ``items`` or ``values`` decodes (and keeps) the
    value; a value that cannot be decoded reads as ``None``, the same as an empty one.
    ``in`` and ``len`` never decode. Copy with ``dict(attrs.items())``, not ``dict(attrs)``
    (which would copy the raw bytes).
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if type(value) is bytes:
            value = self._decode(key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _MISSING)
        if value is _MISSING:
            return default
        if type(value) is bytes:
            value = self._decode(key, value)
        return value

    def items(self) -> Any:
        return [(key, self[key]) for key in dict.keys(self)]

    def values(self) -> Any:
        return [self[key] for key in dict.keys(self)]

    def _decode(self, key: str, raw: bytes) -> Any:
        value = read_value(raw)
        dict.__setitem__(self, key, value)
        return value


def read_value(raw: bytes) -> Any:
    """A serialised ``AnyValue`` as a Python value; ``None`` when it cannot be decoded (a
    hostile value reads as absent, never raises)."""
    try:
        value = decode_any_value(raw)
    except Exception:  # noqa: BLE001
        return None
    if type(value) is bytes:
        value = _DecodedBytes(value)  # not read as raw again
    return value


class _DecodedBytes(bytes):
    """A ``bytes_value`` attribute, told apart from a value not yet decoded."""
