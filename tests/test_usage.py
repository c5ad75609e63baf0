"""Token usage from the response shapes of the common SDKs, as dicts and as objects."""

from __future__ import annotations

from numbers import Integral
from types import SimpleNamespace as Obj
from typing import Any

import pytest

from persona_exporter.sdk.usage import TokenUsage, coerce_usage, extract_usage, response_model


def as_objects(value: Any) -> Any:
    """The same payload as attribute objects, like the pydantic models the SDKs return."""
    if isinstance(value, dict):
        return Obj(**{k: as_objects(v) for k, v in value.items()})
    return value


OPENAI_CHAT = {"model": "gpt-4o", "usage": {
    "prompt_tokens": 1200, "completion_tokens": 300,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 120}}}
OPENAI_RESPONSES = {"model": "o3", "usage": {
    "input_tokens": 500, "output_tokens": 900,
    "input_tokens_details": {"cached_tokens": 100},
    "output_tokens_details": {"reasoning_tokens": 700}}}
ANTHROPIC = {"model": "claude-sonnet-4", "usage": {
    "input_tokens": 50, "output_tokens": 400,
    "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300}}
GEMINI = {"usage_metadata": {
    "prompt_token_count": 800, "candidates_token_count": 200,
    "cached_content_token_count": 600, "thoughts_token_count": 150}}


@pytest.mark.parametrize("shape", [lambda x: x, as_objects], ids=["dict", "object"])
@pytest.mark.parametrize(("response", "expected"), [
    (OPENAI_CHAT, TokenUsage(1200, 300, 1024, 120)),
    (OPENAI_RESPONSES, TokenUsage(500, 900, 100, 700)),
    # Anthropic's input_tokens excludes cache reads and writes: input is their sum.
    (ANTHROPIC, TokenUsage(2350, 400, 2000, 0)),
    # Gemini's candidates exclude thinking: output adds it.
    (GEMINI, TokenUsage(800, 350, 600, 150)),
], ids=["openai-chat", "openai-responses", "anthropic", "gemini"])
def test_shapes(shape: Any, response: dict[str, Any], expected: TokenUsage) -> None:
    assert extract_usage(shape(response)) == expected


def test_the_usage_object_alone_is_understood() -> None:
    assert extract_usage(OPENAI_CHAT["usage"]) == TokenUsage(1200, 300, 1024, 120)


@pytest.mark.parametrize("response", [None, "plain text", b"bytes", 42, {"choices": []},
                                      Obj(text="hi"), {"usage": {"total": 5}}])
def test_no_usage_is_none(response: Any) -> None:
    assert extract_usage(response) is None


def test_nonsense_counts_are_zero_not_errors() -> None:
    usage = {"prompt_tokens": -5, "completion_tokens": True,
             "prompt_tokens_details": {"cached_tokens": "many"},
             "completion_tokens_details": None}
    assert extract_usage({"usage": usage}) == TokenUsage(0, 0, 0, 0)
    assert extract_usage({"usage": {"prompt_tokens": 7.0, "completion_tokens": 2.5}}) == \
        TokenUsage(7, 0, 0, 0)


def test_stream_reports_merge_to_the_largest() -> None:
    start = extract_usage({"usage": {"input_tokens": 30, "output_tokens": 1,
                                     "cache_read_input_tokens": 0}})
    delta = extract_usage({"usage": {"output_tokens": 250, "cache_read_input_tokens": 0}})
    assert start is not None and delta is not None
    assert start.merge_max(delta) == TokenUsage(30, 250, 0, 0)
    assert start.merge_max(delta).billed == 280


def test_user_extractors_may_return_mappings_or_usage() -> None:
    assert coerce_usage({"input": 3, "output": 4}) == TokenUsage(3, 4, 0, 0)
    assert coerce_usage(TokenUsage(1, 2, 0, 0)) == TokenUsage(1, 2, 0, 0)
    assert coerce_usage(None) is None
    assert coerce_usage(OPENAI_CHAT) == TokenUsage(1200, 300, 1024, 120)


def test_response_model() -> None:
    assert response_model(OPENAI_CHAT) == "gpt-4o"
    assert response_model(as_objects(ANTHROPIC)) == "claude-sonnet-4"
    assert response_model("text") is None
    assert response_model({"model": ""}) is None


class Tokens:
    """An integer type that is not int (numpy's int64 is one)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value


Integral.register(Tokens)


def test_integral_types_other_than_int_are_counted() -> None:
    usage = {"usage": {"prompt_tokens": Tokens(5), "completion_tokens": 3}}
    assert extract_usage(usage) == TokenUsage(5, 3, 0, 0)


def test_counts_beyond_the_event_limit_are_zero() -> None:
    assert extract_usage({"usage": {"prompt_tokens": 2**60, "completion_tokens": 1}}) == \
        TokenUsage(0, 1, 0, 0)


def test_usage_inside_stream_events_is_found() -> None:
    anthropic_start = {"type": "message_start", "message": {"usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 4}}}
    responses_done = {"type": "response.completed", "response": {"usage": {
        "input_tokens": 7, "output_tokens": 9}}}
    assert extract_usage(as_objects(anthropic_start)) == TokenUsage(14, 1, 4, 0)
    assert extract_usage(responses_done) == TokenUsage(7, 9, 0, 0)


def test_the_largest_count_read_is_the_largest_an_event_may_carry() -> None:
    from persona_exporter.events import MAX_TOKENS
    from persona_exporter.sdk.usage import MAX_COUNT

    assert MAX_COUNT == MAX_TOKENS
