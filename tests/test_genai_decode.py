"""The two OTLP encodings decode to the same spans, and the lean wire messages read what
opentelemetry-proto's own classes read."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, ClassVar

import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)

from persona_exporter.genai.decode import (
    MAX_ATTRIBUTES,
    DecodeError,
    decode_json,
    decode_protobuf,
)
from persona_exporter.genai.mapping import classify, read_call
from persona_exporter.genai.wire import LazyAttributes, decode_any_value


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(
            values=[KeyValue(key=k, value=_any(v)) for k, v in value.items()]))
    return AnyValue(string_value=value)


ATTRIBUTES = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
              "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1200,
              "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 200,
              "gen_ai.response.time_to_first_chunk": 0.25, "negative": -7, "flag": True,
              "tags": ["a", "b"], "nested": {"persona": "qa-engineer", "n": [1, 2.5]},
              "unicode": "ä€😀"}


def _request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="persona.name",
                                                       value=_any("devops-engineer")))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "openlit"
    span = scope_spans.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)),
                                 parent_span_id=bytes(range(9, 17)), name="chat gpt-4o",
                                 kind=3, start_time_unix_nano=1_700_000_000_000_000_000,
                                 end_time_unix_nano=1_700_000_001_500_000_000)
    span.status.code = 2
    span.status.message = "rate limited"
    span.attributes.extend(KeyValue(key=k, value=_any(v)) for k, v in ATTRIBUTES.items())
    event = span.events.add(name="exception", time_unix_nano=1_700_000_001_000_000_000)
    event.attributes.append(KeyValue(key="exception.type", value=_any("RateLimitError")))
    return request


def _otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the specification writes it: hex ids where proto3 JSON has base64."""
    data = MessageToDict(request)
    for resource_spans in data["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(data).encode()


def test_protobuf_and_json_decode_to_the_same_span() -> None:
    request = _request()
    from_protobuf = decode_protobuf(request.SerializeToString()).spans
    from_json = decode_json(_otlp_json(request)).spans
    assert len(from_protobuf) == len(from_json) == 1
    pb, js = from_protobuf[0], from_json[0]
    assert pb.trace_id == js.trace_id == bytes(range(1, 17)).hex()
    assert pb.parent_span_id == js.parent_span_id == bytes(range(9, 17)).hex()
    assert (pb.name, pb.kind, pb.status_code, pb.status_message, pb.scope_name) == \
        (js.name, js.kind, js.status_code, js.status_message, js.scope_name) == \
        ("chat gpt-4o", 3, 2, "rate limited", "openlit")
    assert pb.duration_seconds == pytest.approx(1.5)
    assert dict(pb.attributes.items()) == dict(js.attributes.items()) == ATTRIBUTES
    assert pb.resource == js.resource == {"persona.name": "devops-engineer"}
    assert pb.events[0].attributes["exception.type"] == "RateLimitError"
    assert classify(pb) == classify(js)
    assert read_call(pb) == read_call(js)
    call = read_call(pb)
    assert call is not None and (call.input_tokens, call.cache_read_tokens) == (1200, 200)


def test_a_value_that_cannot_be_decoded_reads_as_absent() -> None:
    # The map keeps each value's bytes unparsed, so a broken one surfaces only when read:
    # it reads as None (as an empty value would) and the other attributes stay readable.
    attributes = LazyAttributes({"broken": b"\x0a\x7fabc", "garbage": b"\xff\xff\xff",
                                 "model": _any("gpt-4o").SerializeToString()})
    assert attributes.get("broken") is None and attributes["garbage"] is None
    assert attributes.get("model") == "gpt-4o"
    assert dict(attributes.items()) == {"broken": None, "garbage": None, "model": "gpt-4o"}


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12))
def test_any_value_reads_as_the_real_message_class_reads_it(value: Any) -> None:
    if value is None:
        return
    raw = _any(value).SerializeToString()
    assert decode_any_value(raw) == value


def test_bounds_and_broken_bodies() -> None:
    with pytest.raises(DecodeError, match="protobuf"):
        decode_protobuf(b"\x0a\xff\xff\xff")
    with pytest.raises(DecodeError, match="JSON"):
        decode_json(b"{")
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    crowded = scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    crowded.attributes.extend(KeyValue(key=str(i), value=_any(i))
                              for i in range(MAX_ATTRIBUTES + 1))
    scope.spans.add(trace_id=bytes(16), span_id=os.urandom(8))  # all-zero trace id
    scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), start_time_unix_nano=5,
                    end_time_unix_nano=4)
    scope.spans.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    decoded = decode_protobuf(request.SerializeToString())
    assert len(decoded.spans) == 1
    assert decoded.rejected == {"too_many_attributes": 1, "invalid_span": 2}
    assert "1025 attributes" in decoded.first_error


class _Recording(dict[str, Any]):
    """Attributes that note every key read by value (presence checks are free to be
    anything: a key whose value is never read need not be decoded)."""

    read: ClassVar[set[str]] = set()

    def get(self, key: str, default: Any = None) -> Any:
        _Recording.read.add(key)
        return dict.get(self, key, default)

    def __getitem__(self, key: str) -> Any:
        _Recording.read.add(key)
        return dict.__getitem__(self, key)


def _candidate_keys() -> list[str]:
    """Every dotted string literal in the modules that read span attributes: the keys a
    reader could ask for."""
    import ast
    import inspect

    from persona_exporter.genai import mapping, personas, traces

    found: set[str] = set()
    for module in (mapping, personas, traces):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and "." in node.value and " " not in node.value and len(node.value) < 80:
                found.add(node.value)
    return sorted(found | {"metadata", "persona", "chatmode", "persona.name"})


_VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(),
                    st.sampled_from(["chat", "invoke_agent", "generation", "LLM", "AGENT",
                                     "ai.generateText.doGenerate", "ai.generateText",
                                     "gpt-4o", "openai", "ERROR", "12", '{"input": 5}',
                                     '{"persona": "qa"}', '"qa-engineer"', "agent"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_candidate_keys()), _VALUES, max_size=14),
       st.booleans())
def test_the_declared_read_keys_cover_every_attribute_the_readers_read(
        attributes: dict[str, Any], is_root: bool) -> None:
    """decode_protobuf(body, keys) decodes only the declared keys: an attribute read but
    not declared would silently read as absent (raw bytes) in production."""
    from persona_exporter.config import Otlp
    from persona_exporter.genai.span import Span
    from persona_exporter.genai.traces import Traces
    from persona_exporter.server.otlp import read_keys

    _Recording.read = set()
    span = Span(trace_id="1" * 32, span_id="2" * 16,
                parent_span_id=None if is_root else "3" * 16, name="s", kind=1,
                start_unix_nano=10**18, end_unix_nano=10**18 + 10**9, status_code=2,
                attributes=_Recording(attributes), resource=dict(attributes))
    Traces(Otlp(hold_seconds=0)).add([span])
    assert _Recording.read <= read_keys(Otlp()), sorted(_Recording.read - read_keys(Otlp()))


def test_only_the_declared_keys_are_decoded() -> None:
    request = _request()
    keys = frozenset({"gen_ai.request.model", "gen_ai.usage.input_tokens"})
    [span] = decode_protobuf(request.SerializeToString(), keys).spans
    assert type(span.attributes) is dict
    assert span.attributes["gen_ai.request.model"] == "gpt-4o"
    assert span.attributes["gen_ai.usage.input_tokens"] == 1200
    # not declared: still present (presence checks work), never decoded
    assert span.attributes["flag"] == _any(True).SerializeToString()
    assert set(span.attributes) == set(ATTRIBUTES)


def test_a_name_that_is_not_utf8_costs_no_other_span() -> None:
    # protobuf's own string fields refuse the whole request over one bad byte sequence
    good = _request().SerializeToString()
    marker = good.index(b"chat gpt-4o")
    bad = good[:marker] + b"chat \xff\xfet-4o" + good[marker + len(b"chat gpt-4o"):]
    [span] = decode_protobuf(bad).spans
    assert span.name == "chat \ufffd\ufffdt-4o"
    assert span.attributes["gen_ai.request.model"] == "gpt-4o"
