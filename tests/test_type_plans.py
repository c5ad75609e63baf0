"""Decisions the SDK makes once per response type (sdk/usage.py ``type_plan``, sdk/llm.py
``result_kind``) give what deciding for each object gives, for the SDKs' real types.

The reference is the same extraction with every type read the plain way (a Mapping's
``get``, else ``getattr(obj, key, None)``), which is what usage.py did before the plans.
"""

from __future__ import annotations

import asyncio
import types
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import anthropic.types as at
import openai.types.chat as oc
import openai.types.completion_usage as ou
import openai.types.responses as orr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, PrivateAttr

from persona_exporter import ObservableLLM, Telemetry, persona
from persona_exporter.sdk import usage as usage_module
from persona_exporter.sdk.llm import result_kind
from persona_exporter.sdk.usage import TokenUsage, extract_usage, response_model

from .conftest import sample


def plain_plan(kind: type) -> usage_module.TypePlan:
    return usage_module.TypePlan(usage_module._mapping_get if issubclass(kind, Mapping)
                                 else usage_module._attribute_get)


def uncached(fn: Any, value: Any) -> Any:
    """``fn(value)`` with no plan remembered and none made for a model."""
    saved = usage_module._PLANS, usage_module.type_plan
    usage_module._PLANS, usage_module.type_plan = {}, plain_plan
    try:
        return fn(value)
    finally:
        usage_module._PLANS, usage_module.type_plan = saved


def chat(usage: dict[str, Any] | None, **extra: Any) -> oc.ChatCompletion:
    return oc.ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok"}}],
        "usage": usage, **extra})


def chunk(usage: dict[str, Any] | None) -> oc.ChatCompletionChunk:
    return oc.ChatCompletionChunk.model_validate({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [] if usage else [{"index": 0, "delta": {"content": "hi"}}],
        "usage": usage})


def responses_api(usage: dict[str, Any] | None) -> orr.Response:
    return orr.Response.model_validate({
        "id": "r", "created_at": 1, "model": "o3", "object": "response", "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage})


def message(usage: dict[str, Any]) -> at.Message:
    return at.Message.model_validate({
        "id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": usage})


CHAT_USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
              "prompt_tokens_details": {"cached_tokens": 1024},
              "completion_tokens_details": {"reasoning_tokens": 120}}
RESPONSES_USAGE = {"input_tokens": 500, "output_tokens": 900, "total_tokens": 1400,
                   "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 700}}
ANTHROPIC_USAGE = {"input_tokens": 50, "output_tokens": 400,
                   "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300}


ONLY_ID: dict[str, Any] = {"id": "c"}


class MyCompletion(oc.ChatCompletion):
    """A user's subclass with a property among the names usage.py reads."""

    @property
    def usage_metadata(self) -> Any:
        return {"prompt_token_count": 7, "candidates_token_count": 3}


class Private(BaseModel):
    model_config = ConfigDict(extra="allow")
    _usage: Any = PrivateAttr(default=None)
    usage: Any = None


class Forwarding(BaseModel):
    """A model with its own __getattr__: read the plain way."""

    inner: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name in self.inner:
            return self.inner[name]
        return super().__getattr__(name)  # type: ignore[misc]


def real_responses() -> list[tuple[str, Any, TokenUsage | None]]:
    """(id, response, what extract_usage must give)."""
    full_chat = chat(CHAT_USAGE)
    return [
        ("openai-chat", full_chat, TokenUsage(1200, 300, 1024, 120)),
        ("openai-chat-usage-none", chat(None), None),
        ("openai-chat-usage-alone", full_chat.usage, TokenUsage(1200, 300, 1024, 120)),
        ("openai-chat-no-details", chat({"prompt_tokens": 5, "completion_tokens": 6,
                                         "total_tokens": 11}), TokenUsage(5, 6, 0, 0)),
        ("openai-chunk-without-usage", chunk(None), None),
        ("openai-chunk-final", chunk(CHAT_USAGE), TokenUsage(1200, 300, 1024, 120)),
        ("openai-responses", responses_api(RESPONSES_USAGE), TokenUsage(500, 900, 100, 700)),
        ("openai-responses-usage-none", responses_api(None), None),
        ("openai-responses-completed-event", orr.ResponseCompletedEvent.model_validate({
            "type": "response.completed", "sequence_number": 9,
            "response": responses_api(RESPONSES_USAGE).model_dump()}),
         TokenUsage(500, 900, 100, 700)),
        ("anthropic-message", message(ANTHROPIC_USAGE), TokenUsage(2350, 400, 2000, 0)),
        ("anthropic-message-start", at.RawMessageStartEvent.model_validate({
            "type": "message_start", "message": message(
                {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 4}
            ).model_dump()}), TokenUsage(14, 1, 4, 0)),
        ("anthropic-message-delta", at.RawMessageDeltaEvent.model_validate({
            "type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 250, "cache_read_input_tokens": 0}}),
         TokenUsage(0, 250, 0, 0)),
        ("anthropic-text-delta", at.RawContentBlockDeltaEvent.model_validate({
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "hi"}}), None),
        # an extra field the SDK model kept (extra="allow"): read where getattr finds it
        ("openai-chat-extra-usage-metadata", chat(None, usage_metadata={
            "prompt_token_count": 8, "candidates_token_count": 2}), TokenUsage(8, 2, 0, 0)),
        ("subclass-with-property", MyCompletion.model_validate(chat(None).model_dump()),
         TokenUsage(7, 3, 0, 0)),
        ("model-with-private-attribute", Private(usage=CHAT_USAGE),
         TokenUsage(1200, 300, 1024, 120)),
        ("model-with-own-getattr", Forwarding(inner={"usage": ANTHROPIC_USAGE}),
         TokenUsage(2350, 400, 2000, 0)),
        ("model-constructed-without-usage", oc.ChatCompletion.model_construct(**ONLY_ID), None),
        ("dict", chat(CHAT_USAGE).model_dump(), TokenUsage(1200, 300, 1024, 120)),
        ("ordered-dict", OrderedDict(usage=ANTHROPIC_USAGE), TokenUsage(2350, 400, 2000, 0)),
        ("dict-usage-none", {"usage": None, "usage_metadata": None}, None),
        ("namespace", SimpleNamespace(usage=SimpleNamespace(**RESPONSES_USAGE)),
         TokenUsage(500, 900, 100, 700)),
        ("namespace-usage-none", SimpleNamespace(usage=None, model="m"), None),
    ]


@pytest.mark.parametrize(("response", "expected"), [(r, e) for _, r, e in real_responses()],
                         ids=[name for name, _, _ in real_responses()])
def test_a_remembered_plan_reads_what_the_plain_reads_read(response: Any,
                                                           expected: TokenUsage | None) -> None:
    reference = uncached(extract_usage, response)
    assert reference == expected
    assert extract_usage(response) == expected  # plan made now
    assert extract_usage(response) == expected  # plan remembered
    assert response_model(response) == uncached(response_model, response)


def test_the_sdk_models_are_read_from_their_fields_and_odd_ones_the_plain_way() -> None:
    assert usage_module.type_plan(oc.ChatCompletion).fields
    assert usage_module.type_plan(at.Message).fields
    assert not usage_module.type_plan(MyCompletion).fields  # a property it must call
    assert usage_module.type_plan(Forwarding) is usage_module._ATTRIBUTE_PLAN
    assert usage_module.type_plan(OrderedDict) is usage_module._MAPPING_PLAN
    assert usage_module.type_plan(SimpleNamespace) is usage_module._ATTRIBUTE_PLAN


counts = st.one_of(st.none(), st.integers(-5, 2**41), st.just(10**12 + 1))


@settings(max_examples=150, deadline=None)
@given(prompt=counts, completion=counts, cached=counts, reasoning=counts,
       read=counts, write=counts, extra=st.booleans())
def test_any_counts_in_the_sdk_types_read_as_the_plain_reads(
        prompt: int | None, completion: int | None, cached: int | None,
        reasoning: int | None, read: int | None, write: int | None, extra: bool) -> None:
    # model_construct: the SDK types holding any value, as a proxy's JSON might give them
    chat_fields: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "prompt_tokens_details": None if cached is None else SimpleNamespace(
            cached_tokens=cached),
        "completion_tokens_details": {"reasoning_tokens": reasoning}}
    anthropic_fields: dict[str, Any] = {
        "input_tokens": prompt, "output_tokens": completion, "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write}
    responses_fields: dict[str, Any] = {
        "input_tokens": prompt, "output_tokens": completion,
        "input_tokens_details": SimpleNamespace(cached_tokens=cached),
        "output_tokens_details": SimpleNamespace(reasoning_tokens=reasoning)}
    chunk_fields: dict[str, Any] = {"usage": ou.CompletionUsage.model_construct(**chat_fields)}
    chat_usage = oc.ChatCompletionChunk.model_construct(**chunk_fields)
    anthropic_usage = at.MessageDeltaUsage.model_construct(**anthropic_fields)
    responses_usage = orr.ResponseUsage.model_construct(**responses_fields)
    for response in (chat_usage, anthropic_usage, responses_usage):
        if extra:  # an extra field of a name usage.py reads
            object.__setattr__(response, "__pydantic_extra__",
                               {"prompt_token_count": read, "candidates_token_count": write})
        assert extract_usage(response) == uncached(extract_usage, response)


class Hostile(type):
    """A metaclass that refuses every question about its classes."""

    def __getattr__(cls, name: str) -> Any:
        raise RuntimeError(name)

    def __hash__(cls) -> int:
        raise RuntimeError("hash")

    def __instancecheck__(cls, instance: Any) -> bool:
        raise RuntimeError("isinstance")

    def __subclasscheck__(cls, subclass: Any) -> bool:
        raise RuntimeError("issubclass")


class Odd(metaclass=Hostile):
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)


def test_a_type_whose_plan_cannot_be_made_reads_the_plain_way() -> None:
    assert usage_module.type_plan(Hostile("Odder", (), {})) is usage_module._ATTRIBUTE_PLAN
    assert result_kind(Odd) == "finished"


def test_a_result_of_an_odd_type_is_returned_and_recorded(registry: CollectorRegistry) -> None:
    odd = Odd()
    telemetry = Telemetry(registry=registry)
    llm = ObservableLLM(lambda **_: odd, provider="openai", telemetry=telemetry)
    with persona("backend-engineer", chatmode="bug-fix"):
        assert llm(model="gpt-4o") is odd
    assert sample(registry, "persona_llm_requests_total", persona="backend-engineer",
                  chatmode="bug-fix", model="gpt-4o", provider="openai") == 1
    # reading its usage failed (its __getattr__ raises): counted, never raised
    assert sample(registry, "persona_exporter_internal_errors_total", component="usage",
                  kind="RuntimeError") == 1


class Unhashable(type):
    """A metaclass with its own equality, hence no hash: its classes cannot be dict keys."""

    def __eq__(cls, other: object) -> bool:
        return cls is other

    __hash__ = None  # type: ignore[assignment]


class UnhashableReply(metaclass=Unhashable):
    def __init__(self) -> None:
        self.usage = {"prompt_tokens": 3, "completion_tokens": 4}
        self.model = "gpt-4o"


def test_a_response_of_an_unhashable_type_is_read_the_plain_way() -> None:
    """No plan can be remembered for such a type; its usage is read with getattr, as the
    module promises for anything it cannot inspect (the model fast path looked the type
    up in the plans and raised TypeError, so the call counted 0 tokens and a usage
    error)."""
    reply = UnhashableReply()
    assert extract_usage(reply) == TokenUsage(3, 4, 0, 0)
    assert response_model(reply) == "gpt-4o"


class Iterates:
    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        raise StopIteration


class IteratesAsync:
    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        raise StopAsyncIteration


def _generator() -> Iterator[int]:
    yield 1


async def _agenerator() -> AsyncIterator[int]:
    yield 1


async def _coroutine() -> int:
    return 1


def old_probe(result: Any) -> str:
    """What llm.py asked of every result before result_kind."""
    if type(result) is dict:
        return "finished"
    if type(result) is types.GeneratorType:
        return "generator"
    if type(result) is types.AsyncGeneratorType:
        return "async generator"
    if hasattr(result, "__await__"):
        return "awaitable"
    if hasattr(result, "__next__") and hasattr(result, "__iter__"):
        return "iterator"
    if hasattr(result, "__anext__"):
        return "async iterator"
    return "finished"


def test_the_kind_of_result_is_decided_per_type_as_per_object() -> None:
    coroutine = _coroutine()
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    results = [{"a": 1}, _generator(), _agenerator(), coroutine, future, Iterates(),
               IteratesAsync(), iter([1]), chat(CHAT_USAGE), message(ANTHROPIC_USAGE),
               chunk(None), SimpleNamespace(usage=None), "text", None, 3, [1, 2]]
    try:
        for result in results:
            assert result_kind(type(result)) == old_probe(result), type(result)
            assert result_kind(type(result)) == old_probe(result), type(result)  # remembered
    finally:
        coroutine.close()
        loop.close()
