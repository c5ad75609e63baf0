"""Prompts and completions on the traces, decoded from what the real OTLP exporter sends.

Langfuse gets them as observation input/output, written as the pinned SDK writes them
(``langfuse/_client/attributes.py``: ``_serialize``), on by default as its ``@observe``
captures I/O; other OTLP backends get the GenAI conventions' ``gen_ai.input.messages`` /
``gen_ai.output.messages`` (open-telemetry/semantic-conventions-genai
``model/gen-ai/gen-ai-input-messages.json``, ``gen-ai-output-messages.json``), off unless
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` or code turns them on. Content
travels beside the event, so it never reaches /metrics, the logs or the remote sink; the
caller's thread does none of the converting, masking or serialising.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from persona_exporter import ObservableLLM, Telemetry, configure, stage, workflow
from persona_exporter.events import LLMGeneration
from persona_exporter.sdk.remote import RemoteSink
from persona_exporter.sdk.trace_ids import new_span_id, new_trace_id
from persona_exporter.tracing import content as content_module
from persona_exporter.tracing.content import CallContent, ContentText
from persona_exporter.tracing.span_encoding import SpanEncoder

from .conftest import sample
from .otlp_receiver import Receiver, Span
from .provider_stub import provider

PUBLIC_KEY = "pk-lf-test"
SECRET_KEY = "sk-lf-content-test"  # noqa: S105 - a test value
PROMPT = "Design the payments API; the customer's card is 4111-1111-1111-1111"
COMPLETION = "Here is the payments API design."
RESPONSE = {"id": "c1", "model": "gpt-4o",
            "usage": {"prompt_tokens": 12, "completion_tokens": 7},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": COMPLETION}}]}
LF_INPUT = "langfuse.observation.input"
LF_OUTPUT = "langfuse.observation.output"

# A subset of the conventions' JSON schemas (model/gen-ai/gen-ai-input-messages.json and
# gen-ai-output-messages.json): every message has a role and parts; every part a type;
# text parts a string content, tool calls a name, tool call responses a response.
_PART = {
    "type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
    "allOf": [
        {"if": {"properties": {"type": {"const": "text"}}},
         "then": {"required": ["content"], "properties": {"content": {"type": "string"}}}},
        {"if": {"properties": {"type": {"const": "tool_call"}}},
         "then": {"required": ["name"], "properties": {"name": {"type": "string"}}}},
        {"if": {"properties": {"type": {"const": "tool_call_response"}}},
         "then": {"required": ["response"]}},
        {"if": {"properties": {"type": {"const": "reasoning"}}},
         "then": {"required": ["content"], "properties": {"content": {"type": "string"}}}},
    ]}
INPUT_MESSAGES = {"type": "array", "items": {
    "type": "object", "required": ["role", "parts"],
    "properties": {"role": {"type": "string"}, "parts": {"type": "array", "items": _PART},
                   "name": {"type": ["string", "null"]}}}}
OUTPUT_MESSAGES = {"type": "array", "items": {
    "type": "object", "required": ["role", "parts"],
    "properties": {"role": {"type": "string"}, "parts": {"type": "array", "items": _PART},
                   "finish_reason": {"type": ["string", "null"]}}}}
SYSTEM_INSTRUCTIONS = {"type": "array", "items": _PART}


@pytest.fixture(autouse=True)
def fast_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL", "0.05")


@dataclass
class Backends:
    langfuse: Receiver
    otlp: Receiver


@pytest.fixture
def backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backends]:
    """Langfuse and a generic OTLP endpoint, both configured from the environment."""
    with Receiver() as langfuse, Receiver() as otlp:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_BASE_URL", langfuse.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp.url}/v1/traces")
        yield Backends(langfuse, otlp)


def chat(*_: Any, **__: Any) -> dict[str, Any]:
    return RESPONSE


def call_once(tel: Telemetry, fn: Callable[..., Any] = chat, *args: Any,
              **kwargs: Any) -> None:
    try:
        ObservableLLM(fn, provider="openai", telemetry=tel)(*args, **kwargs)
        assert tel.flush(10)
    finally:
        tel.shutdown(2)


def generation(receiver: Receiver) -> Span:
    spans = [s for s in receiver.wait_for_spans(1) if s.name.startswith("chat ")]
    assert len(spans) == 1, spans
    return spans[0]


def test_attribute_names_are_the_pinned_sdks() -> None:
    from langfuse._client.attributes import LangfuseOtelSpanAttributes
    from langfuse._client.constants import MASK_FALLBACK_VALUE

    assert content_module.LANGFUSE_INPUT == LangfuseOtelSpanAttributes.OBSERVATION_INPUT
    assert content_module.LANGFUSE_OUTPUT == LangfuseOtelSpanAttributes.OBSERVATION_OUTPUT
    assert content_module.LANGFUSE_TRUNCATED.startswith(
        LangfuseOtelSpanAttributes.OBSERVATION_METADATA + ".")
    assert content_module.MASK_FALLBACK == MASK_FALLBACK_VALUE


def test_langfuse_gets_prompt_and_completion_by_default_and_otlp_does_not(
        backends: Backends, registry: CollectorRegistry) -> None:
    """The seed's call shape: a positional prompt string, a chat completion back."""
    tel = configure(registry=registry)
    assert tel.captures_content
    call_once(tel, lambda prompt: RESPONSE, PROMPT)
    ours = generation(backends.langfuse).attributes
    assert ours[LF_INPUT] == PROMPT  # a str goes as it is, as the SDK's _serialize does
    assert json.loads(ours[LF_OUTPUT]) == {"role": "assistant", "content": COMPLETION}
    other = generation(backends.otlp).attributes
    assert not {k for k in other if k.startswith(("gen_ai.input", "gen_ai.output",
                                                   "langfuse.observation.input"))}


def test_langfuse_values_are_what_the_sdk_writes(backends: Backends) -> None:
    from langfuse._client.attributes import _serialize

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Naïve question: 2 + 2?"}]
    call_once(configure(), chat, model="gpt-4o", messages=messages, api_key="sk-not-sent")
    attributes = generation(backends.langfuse).attributes
    assert attributes[LF_INPUT] == _serialize(messages)
    assert attributes[LF_OUTPUT] == _serialize({"role": "assistant", "content": COMPLETION})
    assert "sk-not-sent" not in json.dumps(attributes)


def test_otlp_follows_the_env_var_with_messages_shaped_by_the_conventions(
        backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"},
                                     {"type": "image_url",
                                      "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    call_once(configure(), chat, model="gpt-4o", messages=messages)
    attributes = generation(backends.otlp).attributes
    sent = json.loads(attributes["gen_ai.input.messages"])
    jsonschema.validate(sent, INPUT_MESSAGES)
    assert sent == [
        {"role": "user", "parts": [
            {"type": "text", "content": "What is 2 + 2?"},
            {"type": "uri", "modality": "image", "uri": "https://example.com/a.png"}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "id": "call_1", "name": "add", "arguments": {"a": 2, "b": 2}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1",
                                    "response": "4"}]},
    ]
    received = json.loads(attributes["gen_ai.output.messages"])
    jsonschema.validate(received, OUTPUT_MESSAGES)
    assert received == [{"role": "assistant", "finish_reason": "stop",
                         "parts": [{"type": "text", "content": COMPLETION}]}]
    # Langfuse keeps its own attributes (they win there over gen_ai.* anyway)
    langfuse = generation(backends.langfuse).attributes
    assert "gen_ai.input.messages" not in langfuse
    assert json.loads(langfuse[LF_INPUT]) == messages


@pytest.mark.parametrize(("env", "code", "langfuse_on", "otlp_on"), [
    ({"PERSONA_EXPORTER_LANGFUSE_CAPTURE_CONTENT": "false"}, None, False, False),
    ({"LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED": "false"}, None, False, False),
    ({"PERSONA_EXPORTER_LANGFUSE_CAPTURE_CONTENT": "false"}, {"langfuse": True}, True, False),
    ({}, {"langfuse": False}, False, False),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY"}, None, True, True),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "NO_CONTENT"}, None, True, False),
    ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}, {"otlp": False},
     True, False),
    ({}, {"otlp": True}, True, True),
    ({}, False, False, False),
    ({}, True, True, True),
], ids=["lf-env-off", "lf-sdk-env-off", "lf-code-beats-env", "lf-code-off",
        "otlp-env-span-only", "otlp-env-no-content", "otlp-code-beats-env", "otlp-code-on",
        "all-off", "all-on"])
def test_one_switch_per_backend_in_code_and_in_the_environment(
        backends: Backends, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
        code: Any, langfuse_on: bool, otlp_on: bool) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tel = configure(capture_content=code)
    assert tel.captures_content == (langfuse_on or otlp_on)
    call_once(tel, chat, model="gpt-4o", prompt=PROMPT)
    assert (LF_INPUT in generation(backends.langfuse).attributes) == langfuse_on
    assert ("gen_ai.input.messages" in generation(backends.otlp).attributes) == otlp_on


def test_the_mask_is_applied_per_backend(backends: Backends,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")

    def mask(*, data: Any, **_: Any) -> Any:  # Langfuse's MaskFunction signature
        if isinstance(data, str):
            return data.replace("4111-1111-1111-1111", "[card]")
        if isinstance(data, list):
            return [mask(data=v) for v in data]
        if isinstance(data, dict):
            return {k: mask(data=v) for k, v in data.items()}
        return data

    call_once(configure(mask=mask), chat, model="gpt-4o",
              messages=[{"role": "user", "content": PROMPT}])
    langfuse = generation(backends.langfuse).attributes
    assert json.loads(langfuse[LF_INPUT]) == [
        {"role": "user", "content": PROMPT.replace("4111-1111-1111-1111", "[card]")}]
    otlp = generation(backends.otlp).attributes["gen_ai.input.messages"]
    assert "[card]" in otlp and "4111" not in otlp


def test_a_raising_mask_gives_the_fallback_and_is_counted_without_the_content(
        backends: Backends, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")

    def mask(*, data: Any, **_: Any) -> Any:
        raise ValueError(f"cannot mask {data!r}")  # quotes the content: must not be logged

    with caplog.at_level(logging.DEBUG):
        call_once(configure(registry=registry, mask=mask), chat, PROMPT)
    langfuse = generation(backends.langfuse).attributes
    assert langfuse[LF_INPUT] == langfuse[LF_OUTPUT] == content_module.MASK_FALLBACK
    otlp = json.loads(generation(backends.otlp).attributes["gen_ai.input.messages"])
    jsonschema.validate(otlp, INPUT_MESSAGES)
    assert otlp[0]["parts"][0]["content"] == content_module.MASK_FALLBACK
    # 2 backends x (input, output)
    assert sample(registry, "persona_exporter_internal_errors_total",
                  component="trace.mask", kind="ValueError") == 4
    assert "4111" not in caplog.text and "trace.mask" in caplog.text


def test_the_cap_keeps_valid_json_marks_and_counts(
        backends: Backends, monkeypatch: pytest.MonkeyPatch,
        registry: CollectorRegistry) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    long_prompt = "ü" * 3000 + "END-OF-PROMPT"
    messages = [{"role": "system", "content": "short and kept"},
                {"role": "user", "content": long_prompt}]
    call_once(configure(registry=registry, content_max_chars=1000), chat, model="gpt-4o",
              messages=messages)

    langfuse = generation(backends.langfuse).attributes
    assert len(langfuse[LF_INPUT]) <= 1000
    sent = json.loads(langfuse[LF_INPUT])
    assert sent[0] == messages[0]  # short strings stay whole
    cut = re.fullmatch(r"(.*)…\[truncated (\d+) chars\]", sent[1]["content"], re.DOTALL)
    assert cut is not None
    assert len(cut[1]) >= 100 and long_prompt.startswith(cut[1])
    assert int(cut[2]) == len(long_prompt) - len(cut[1])
    assert "END-OF-PROMPT" not in langfuse[LF_INPUT]
    assert json.loads(langfuse["langfuse.observation.metadata.content_truncated"]) == {
        "input": len(_lf_serialize(messages))}
    assert json.loads(langfuse[LF_OUTPUT]) == {"role": "assistant", "content": COMPLETION}

    otlp = generation(backends.otlp).attributes
    assert len(otlp["gen_ai.input.messages"]) <= 1000
    messages_sent = json.loads(otlp["gen_ai.input.messages"])
    jsonschema.validate(messages_sent, INPUT_MESSAGES)
    assert "…[truncated " in messages_sent[1]["parts"][0]["content"]
    assert otlp["persona_exporter.content.truncated"] == ["input"]
    for backend in ("langfuse", "otlp"):
        assert sample(registry, "persona_exporter_trace_content_truncated_total",
                      backend=backend) == 1


def _lf_serialize(value: Any) -> str:
    from langfuse._client.attributes import _serialize

    text = _serialize(value)
    assert text is not None
    return text


def test_a_cut_string_says_how_much_was_cut() -> None:
    policy = content_module.ContentPolicy("langfuse", capture=True, max_chars=300)
    attributes = policy.attributes(CallContent(input="x" * 5000, output="ok"), True)
    text = attributes[LF_INPUT]
    kept = text.partition("…")[0]
    assert len(text) <= 300 and set(kept) == {"x"}
    assert text.endswith(f"…[truncated {5000 - len(kept)} chars]")
    assert json.loads(attributes["langfuse.observation.metadata.content_truncated"]) == {
        "input": 5000}


def test_thousands_of_messages_over_the_cap_still_make_valid_messages() -> None:
    policy = content_module.ContentPolicy("otlp", capture=True, max_chars=500)
    many = [{"role": "user", "content": "hi"}] * 2000
    text = policy.attributes(CallContent(input=many), True)["gen_ai.input.messages"]
    assert len(text) <= 500
    jsonschema.validate(json.loads(text), INPUT_MESSAGES)
    assert "…[truncated " in text


class _CaptureServer:
    """Stands in for the exporter's /v1/events: keeps every body posted to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []  # type: list[bytes]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_content_never_reaches_metrics_logs_or_the_remote_payload(
        backends: Backends, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    exporter = _CaptureServer()
    try:
        remote = RemoteSink(exporter.url, trace_context=True, flush_interval=0.05)
        with caplog.at_level(logging.DEBUG):
            tel = configure(registry=registry, sinks=[remote], content_max_chars=300)
            assert tel.captures_content
            with workflow("release", chatmode="bug-fix", telemetry=tel), \
                    stage("design", persona="backend-engineer"):
                call_once(tel, lambda *a, **k: {**RESPONSE, "choices": [
                    {"message": {"role": "assistant", "content": COMPLETION * 50}}]},
                    PROMPT * 20)
        payload = b"".join(exporter.bodies)
    finally:
        exporter.close()
    assert b'"llm_generation"' in payload  # the event went, without its content
    assert b"4111" not in payload and b"payments API" not in payload
    metrics = generate_latest(registry)
    assert b"persona_llm_requests_total" in metrics
    assert b"4111" not in metrics and b"payments API" not in metrics
    assert "4111" not in caplog.text and "payments API" not in caplog.text
    # ... while both trace backends have it
    assert PROMPT in generation(backends.langfuse).attributes[LF_INPUT]
    assert "4111" in generation(backends.otlp).attributes["gen_ai.input.messages"]


def test_the_callers_thread_does_no_converting_masking_or_serialising(
        backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    seen: list[threading.Thread] = []

    class Message:  # a message object whose content records who reads it
        role = "user"

        @property
        def content(self) -> str:
            seen.append(threading.current_thread())
            return PROMPT

    def mask(*, data: Any, **_: Any) -> Any:
        seen.append(threading.current_thread())
        return data

    tel = configure(mask=mask)
    llm = ObservableLLM(chat, provider="openai", telemetry=tel)
    caller = threading.current_thread()
    try:
        llm(model="gpt-4o", messages=[Message()])
        assert not seen  # nothing read, masked or serialised yet: the call has returned
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert seen and caller not in seen
    assert {t.name for t in seen} == {"persona-exporter-langfuse", "persona-exporter-otlp"}
    assert generation(backends.langfuse).attributes[LF_INPUT] == _lf_serialize(
        [{"role": "user", "content": PROMPT}])


def test_messages_appended_after_the_call_are_not_its_prompt(backends: Backends) -> None:
    tel = configure()
    messages = [{"role": "user", "content": "first"}]
    llm = ObservableLLM(chat, provider="openai", telemetry=tel)
    try:
        llm(model="gpt-4o", messages=messages)
        messages.append({"role": "assistant", "content": COMPLETION})  # the usual agent loop
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert json.loads(generation(backends.langfuse).attributes[LF_INPUT]) == [
        {"role": "user", "content": "first"}]


def test_real_openai_sdk_calls_and_streams(backends: Backends,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    tel = configure()
    try:
        with provider() as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
            llm = ObservableLLM(client.chat.completions.create, provider="openai",
                                telemetry=tel)
            llm(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            stream = llm(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                         stream=True, stream_options={"include_usage": True})
            assert "".join(c.choices[0].delta.content or "" for c in stream
                           if c.choices) == "done"
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    spans = {s.name: s.attributes for s in backends.langfuse.wait_for_spans(2)}
    assert json.loads(spans["chat gpt-4o"][LF_OUTPUT]) == {"role": "assistant",
                                                          "content": "done"}
    assert spans["chat gpt-4o-mini"][LF_OUTPUT] == "done"  # assembled from the chunks
    otlp = {s.name: s.attributes for s in backends.otlp.wait_for_spans(2)}
    streamed = json.loads(otlp["chat gpt-4o-mini"]["gen_ai.output.messages"])
    assert streamed[0]["parts"] == [{"type": "text", "content": "done"}]


def test_real_anthropic_sdk_with_a_system_prompt(backends: Backends,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    tel = configure()
    try:
        with provider() as url:
            client = anthropic.Anthropic(base_url=url, api_key="test", max_retries=0)
            llm = ObservableLLM(client.messages.create, provider="anthropic", telemetry=tel)
            llm(model="claude-sonnet-4", max_tokens=100, system="You review code.",
                messages=[{"role": "user", "content": "Review this."}])
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    otlp = generation(backends.otlp).attributes
    assert json.loads(otlp["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "You review code."}]
    jsonschema.validate(json.loads(otlp["gen_ai.system_instructions"]), SYSTEM_INSTRUCTIONS)
    output = json.loads(otlp["gen_ai.output.messages"])
    assert output == [{"role": "assistant", "finish_reason": "stop",
                       "parts": [{"type": "text", "content": "done"}]}]
    langfuse = generation(backends.langfuse).attributes
    assert json.loads(langfuse[LF_INPUT]) == [
        {"role": "system", "content": "You review code."},
        {"role": "user", "content": "Review this."}]
    assert json.loads(langfuse[LF_OUTPUT]) == {"role": "assistant", "content": "done"}


def test_an_explicit_pair_for_seed_style_calls(backends: Backends) -> None:
    """What governance's trace_llm_call(prompt=, response=) and create_generation hand
    over: ``telemetry.emit(event, CallContent(input=prompt, output=completion))``."""
    tel = configure()
    event = LLMGeneration(persona="copywriter", chatmode="none", model="gpt-4", provider="x",
                          input_tokens=150, output_tokens=800, duration_seconds=1.0,
                          trace_id=new_trace_id(), span_id=new_span_id())
    try:
        if tel.captures_content:
            tel.emit(event, CallContent(input=PROMPT, output=COMPLETION))
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    attributes = generation(backends.langfuse).attributes
    assert (attributes[LF_INPUT], attributes[LF_OUTPUT]) == (PROMPT, COMPLETION)


def test_a_failed_call_still_shows_its_prompt(backends: Backends) -> None:
    def refuse(prompt: str) -> Any:
        raise RuntimeError("rate limited")

    tel = configure()
    with pytest.raises(RuntimeError):
        call_once(tel, refuse, PROMPT)
    attributes = generation(backends.langfuse).attributes
    assert attributes[LF_INPUT] == PROMPT and LF_OUTPUT not in attributes


def test_content_values_stay_out_of_the_encoders_pair_cache() -> None:
    encoder = SpanEncoder()
    encoder._attributes({"persona": "qa", LF_INPUT: ContentText(PROMPT)})
    assert [key for key, _ in encoder._pairs] == ["persona"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"capture_content": {"langfsue": True}}, "capture_content: unknown backend 'langfsue'"),
    ({"capture_content": {"otlp": "yes"}}, "capture_content['otlp']: expected True or False"),
    ({"capture_content": "on"}, "capture_content: expected True, False or a mapping"),
    ({"content_max_chars": 10}, "content_max_chars: expected an integer >= 256"),
    ({"mask": "redact"}, "mask: expected a callable"),
])
def test_bad_switches_are_refused_naming_the_argument(kwargs: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        configure(**kwargs)


def test_bad_environment_values_are_reported_and_fall_back(
        backends: Backends, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "maybe")
    monkeypatch.setenv("PERSONA_EXPORTER_TRACE_CONTENT_MAX_CHARS", "tiny")
    with caplog.at_level(logging.WARNING):
        tel = configure()
    tel.shutdown(1)
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT='maybe'" in caplog.text
    assert "PERSONA_EXPORTER_TRACE_CONTENT_MAX_CHARS='tiny'" in caplog.text
    assert tel.captures_content  # Langfuse still on by default; OTLP off


def test_content_is_added_to_spans_built_elsewhere_too() -> None:
    """Spans from .spans hold a fresh dict, extended in place; any other span is copied."""
    from opentelemetry.sdk.trace import ReadableSpan

    from persona_exporter.tracing.sink import _with_attributes

    ours = ReadableSpan(name="chat", attributes={"persona": "qa"})
    assert _with_attributes(ours, {LF_INPUT: "hi"}) is ours
    assert dict(ours.attributes or {}) == {"persona": "qa", LF_INPUT: "hi"}
    other = ReadableSpan(name="chat", attributes=None)
    copied = _with_attributes(other, {LF_INPUT: "hi"})
    assert dict(copied.attributes or {}) == {LF_INPUT: "hi"} and copied.name == "chat"


class _Evil:
    """Raises from everything a converter might touch."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
    | st.binary(max_size=20) | st.builds(_Evil) | st.builds(object),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "choices",
                                       "message", "delta", "tool_calls", "x"]) | st.text(
                                           max_size=5), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(prompt=_values, response=_values, backend=st.sampled_from(["langfuse", "otlp"]),
       max_chars=st.sampled_from([256, 100_000]))
def test_any_content_becomes_valid_attributes_and_never_raises(
        prompt: Any, response: Any, backend: str, max_chars: int) -> None:
    errors: list[tuple[str, Any]] = []

    class Errors:
        def report(self, component: str, error: BaseException | str) -> None:
            errors.append((component, error))

    policy = content_module.ContentPolicy(backend, capture=True, max_chars=max_chars,
                                          errors=Errors())
    for content in (CallContent(input=prompt, output=response),
                    CallContent.of_call(content_module.CallArgs((prompt,), {"x": response}),
                                        response)):
        attributes = policy.attributes(content, True)
        assert not errors, errors
        for key, value in attributes.items():
            if key in ("gen_ai.input.messages", "gen_ai.output.messages"):
                jsonschema.validate(json.loads(value),
                                    INPUT_MESSAGES if "input" in key else OUTPUT_MESSAGES)
            if isinstance(value, str):
                assert len(value) <= max_chars
                value.encode("utf-8")  # protobuf takes it


def test_other_call_shapes_are_recorded_as_observe_records_them(backends: Backends) -> None:
    """Neither a prompt nor messages: {"args", "kwargs"} as Langfuse's @observe records a
    function's input (langfuse/_client/observe.py), credentials left out."""
    call_once(configure(), chat, 3, {"doc": "spec"}, temperature=0.2, max_tokens=100,
              api_key="sk-secret", extra_headers={"Authorization": "Bearer x"})
    attributes = generation(backends.langfuse).attributes
    assert json.loads(attributes[LF_INPUT]) == {
        "args": [3, {"doc": "spec"}], "kwargs": {"temperature": 0.2, "max_tokens": 100}}
    assert "sk-secret" not in json.dumps(attributes)


def test_the_wrapped_function_gets_the_callers_own_messages(backends: Backends) -> None:
    """An agent loop that appends the reply to its messages inside the wrapped function
    must see it whether content is captured or not (the record keeps its own copy)."""
    import asyncio

    def reply(messages: list[dict[str, str]]) -> dict[str, Any]:
        messages.append({"role": "assistant", "content": COMPLETION})
        return RESPONSE

    async def areply(messages: list[dict[str, str]]) -> dict[str, Any]:
        return reply(messages)

    tel = configure()
    assert tel.captures_content
    history = [{"role": "user", "content": "first"}]
    try:
        ObservableLLM(reply, provider="openai", telemetry=tel)(messages=history)
        assert len(history) == 2
        asyncio.run(ObservableLLM(areply, provider="openai", telemetry=tel)(messages=history))
        assert len(history) == 3
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    prompts = [json.loads(s.attributes[LF_INPUT]) for s in backends.langfuse.wait_for_spans(2)
               if s.name.startswith("chat ")]
    assert sorted(len(p) for p in prompts) == [1, 2]  # each call's prompt as it was sent
