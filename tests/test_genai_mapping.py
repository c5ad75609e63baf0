"""genai.mapping: the span shapes of every ecosystem in ../shared/notes/otlp-ingest.md, read
into LLM-call fields in the GenAI meaning (input includes cache reads, output includes
reasoning), and hostile values that must never raise nor leave the event bounds.

Each fixture names the upstream file its attribute shape comes from (the note's sources).
Values are typed as the decoders hand them over: an OTLP/JSON intValue is a decimal string.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona_exporter.events import (
    MAX_COST_USD,
    MAX_SECONDS,
    MAX_TOKENS,
    LLMGeneration,
    is_valid_name,
    parse_event,
)
from persona_exporter.genai import mapping
from persona_exporter.genai.mapping import Call, Role, classify, read_call
from persona_exporter.genai.span import STATUS_ERROR, Span, SpanEvent

START = 1_780_000_000_000_000_000  # 2026-05-28T20:26:40Z in ns


def span(attrs: dict[str, Any], *, name: str = "chat gpt-4o", status: int = 0,
         events: list[SpanEvent] | None = None) -> Span:
    return Span(
        trace_id="0" * 31 + "1", span_id="0" * 15 + "2", parent_span_id=None, name=name,
        kind=3, start_unix_nano=START, end_unix_nano=START + 2_000_000_000,
        status_code=status, attributes=attrs, events=events or [],
    )


def call_of(attrs: dict[str, Any], **kwargs: Any) -> Call:
    result = read_call(span(attrs, **kwargs))
    assert result is not None
    return result


def tokens(call: Call) -> tuple[int, int, int, int]:
    return call.input_tokens, call.output_tokens, call.cache_read_tokens, call.reasoning_tokens


# --- OpenTelemetry GenAI semantic conventions ----------------------------------------------

def test_semconv_current_names() -> None:
    """semantic-conventions-genai model/gen-ai/registry.yaml, spans.yaml (inference span)."""
    attrs = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": "120",  # OTLP/JSON intValue
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 10,
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.time_to_first_chunk": 0.25,
    }
    assert classify(span(attrs)) is Role.LLM
    call = call_of(attrs)
    assert (call.model, call.provider, call.operation) == ("gpt-4o", "openai", "chat")
    assert tokens(call) == (120, 30, 100, 10)
    assert call.has_usage and not call.input_exclusive_fixed and not call.usage_mismatch
    assert call.time_to_first_chunk_seconds == 0.25
    assert call.response_id == "chatcmpl-1"
    assert call.cost_usd is None  # the price table decides
    assert call.error_type is None and call.invalid == ()


def test_semconv_deprecated_names() -> None:
    """model/gen-ai/deprecated/registry-deprecated.yaml: gen_ai.system, prompt/completion."""
    attrs = {
        "gen_ai.operation.name": "text_completion", "gen_ai.system": "OpenAI",
        "gen_ai.response.model": "gpt-3.5-turbo-instruct",
        "gen_ai.usage.prompt_tokens": 50, "gen_ai.usage.completion_tokens": 7,
    }
    call = call_of(attrs)
    assert (call.model, call.provider, call.operation) == (
        "gpt-3.5-turbo-instruct", "openai", "text_completion")
    assert tokens(call) == (50, 7, 0, 0)


@pytest.mark.parametrize(("operation", "role"), [
    ("chat", Role.LLM), ("generate_content", Role.LLM), ("embeddings", Role.LLM),
    ("completion", Role.LLM), ("invoke_agent", Role.AGENT), ("agent_step", Role.AGENT),
    ("create_agent", Role.AGENT), ("invoke_workflow", Role.WORKFLOW),
    ("execute_tool", Role.OTHER), ("retrieval", Role.OTHER), ("plan", Role.OTHER),
])
def test_semconv_operation_roles(operation: str, role: Role) -> None:
    assert classify(span({"gen_ai.operation.name": operation})) is role


def test_semconv_error_type_from_attribute_then_exception_event_then_fallback() -> None:
    """spans.yaml: error.type on a failed call; the exception event's exception.type."""
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    failed = call_of({**base, "error.type": "timeout"}, status=STATUS_ERROR)
    assert failed.error_type == "timeout"
    assert failed.has_usage is False  # a failed call without usage is still a call
    exception = SpanEvent("exception", START + 5, {"exception.type": "openai.RateLimitError"})
    assert call_of(base, status=STATUS_ERROR, events=[exception]).error_type == (
        "openai.RateLimitError")
    assert call_of(base, status=STATUS_ERROR).error_type == "error"
    # error.type without an ERROR status is not a failure (the note: status first)
    assert call_of({**base, "error.type": "timeout"}).error_type is None


def test_non_llm_spans_have_no_call() -> None:
    tool = span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"})
    assert classify(tool) is Role.OTHER and read_call(tool) is None
    http = span({"http.request.method": "POST", "url.full": "https://x"}, name="POST")
    assert classify(http) is Role.OTHER and read_call(http) is None


def test_fallback_model_plus_tokens_is_an_llm_call() -> None:
    """The note's (b) rule 6: no kind attribute, but a model and token counts."""
    attrs = {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 3}
    assert classify(span(attrs)) is Role.LLM
    assert classify(span({"gen_ai.request.model": "m"})) is Role.OTHER


# --- Langfuse SDK (v4/v5 OTel attributes) ---------------------------------------------------

LANGFUSE_BASE = {
    "langfuse.observation.type": "generation",
    "langfuse.observation.model.name": "gpt-4o-mini",
    # overridden by usage_details (LF extractUsageDetails)
    "gen_ai.usage.input_tokens": 999,
}


def test_langfuse_flat_usage_is_disjoint_and_summed() -> None:
    """langfuse-python langfuse/_client/attributes.py writes usage_details as a JSON string;
    the flat map holds Langfuse's disjoint keys (langfuse types.ts UsageDetails, the
    langchain CallbackHandler subtracts details from input/output)."""
    usage = {"input": 80, "input_cached_tokens": 20, "output": 25,
             "output_reasoning_tokens": 5, "total": 130}
    cost = {"input": 0.001, "output": 0.002, "total": 0.003}
    call = call_of({
        **LANGFUSE_BASE,
        "langfuse.observation.usage_details": json.dumps(usage),
        "langfuse.observation.cost_details": json.dumps(cost),
        # older SDKs double-encode (LF OtelIngestionProcessor.ts extractCompletionStartTime)
        "langfuse.observation.completion_start_time": '"2026-05-28T20:26:40.350000Z"',
    })
    assert call.model == "gpt-4o-mini" and call.operation == "chat"
    assert tokens(call) == (100, 30, 20, 5)
    assert call.cost_usd == 0.003
    assert call.time_to_first_chunk_seconds == pytest.approx(0.35, abs=1e-6)


def test_langfuse_langchain_anthropic_keys() -> None:
    """CallbackHandler._parse_usage_model: input_token_details -> input_cache_read etc."""
    usage = {"input": 10, "input_cache_read": 500, "input_cache_creation": 40, "output": 20,
             "input_priority": 7}  # a priority tier is not a sub-category
    call = call_of({**LANGFUSE_BASE, "langfuse.observation.usage_details": json.dumps(usage)})
    assert tokens(call) == (550, 20, 500, 0)
    assert call.cache_write_tokens == 40


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
     "prompt_tokens_details": {"cached_tokens": 20},
     "completion_tokens_details": {"reasoning_tokens": 5}},
    {"input_tokens": 100, "output_tokens": 30, "total_tokens": 130,
     "input_tokens_details": {"cached_tokens": 20},
     "output_tokens_details": {"reasoning_tokens": 5}},
], ids=["openai-chat", "openai-responses"])
def test_langfuse_openai_shapes_are_inclusive(usage: dict[str, Any]) -> None:
    """types.ts OpenAICompletionUsageSchema / OpenAIResponseUsageSchema: the OpenAI counts
    include their details (Langfuse subtracts them on ingest; we keep the GenAI meaning)."""
    call = call_of({**LANGFUSE_BASE, "langfuse.observation.usage_details": json.dumps(usage)})
    assert tokens(call) == (100, 30, 20, 5)


def test_langfuse_raw_anthropic_usage_adds_cache() -> None:
    usage = {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 500,
             "cache_creation_input_tokens": 40}
    call = call_of({**LANGFUSE_BASE, "langfuse.observation.usage_details": json.dumps(usage)})
    assert tokens(call) == (550, 20, 500, 0)


def test_langfuse_cost_without_total_is_the_sum_and_level_error_fails() -> None:
    call = call_of({
        **LANGFUSE_BASE,
        "langfuse.observation.cost_details": '{"input": 0.25, "output": 0.5}',
        "langfuse.observation.level": "ERROR",
        "langfuse.observation.completion_start_time": "2026-05-28T20:26:41Z",
    })
    assert call.cost_usd == 0.75
    assert call.error_type == "error"
    assert call.time_to_first_chunk_seconds == 1.0
    # bad usage_details: fall back to gen_ai.usage.*, and say so
    fallback = call_of({**LANGFUSE_BASE, "langfuse.observation.usage_details": "{not json"})
    assert fallback.input_tokens == 999
    assert "langfuse.observation.usage_details" in fallback.invalid


@pytest.mark.parametrize(("kind", "role"), [
    ("generation", Role.LLM), ("embedding", Role.LLM), ("agent", Role.AGENT),
    ("chain", Role.WORKFLOW), ("tool", Role.OTHER), ("retriever", Role.OTHER),
])
def test_langfuse_observation_types(kind: str, role: Role) -> None:
    """langfuse ObservationTypeMapper.ts; the type outranks every other rule."""
    assert classify(span({"langfuse.observation.type": kind,
                          "gen_ai.operation.name": "execute_tool"})) is role


def test_langfuse_default_span_type_defers_to_other_rules() -> None:
    assert classify(span({"langfuse.observation.type": "span"})) is Role.OTHER
    assert classify(span({"langfuse.observation.type": "span",
                          "gen_ai.operation.name": "chat"})) is Role.LLM


# --- OpenLIT -------------------------------------------------------------------------------

def test_openlit_anthropic_exclusive_cache_is_added() -> None:
    """openlit sdk/python/src/openlit/instrumentation/anthropic/utils.py reports Anthropic's
    input_tokens, which exclude the cache; semcov/__init__.py names; __helpers.py TTFT."""
    attrs = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 500,
        "gen_ai.usage.cache_creation.input_tokens": 40,
        "gen_ai.usage.total_tokens": 30,
        "gen_ai.usage.cost": 0.0123,
        "gen_ai.server.time_to_first_token": 0.4,
        "gen_ai.client.token.usage": 99999,  # ignored: input+output (+reasoning on LangChain)
    }
    call = call_of(attrs)
    assert tokens(call) == (550, 20, 500, 0)
    assert call.input_exclusive_fixed and not call.total_mismatch
    assert call.cost_usd == 0.0123
    assert call.time_to_first_chunk_seconds == 0.4


def test_openlit_openai_inclusive_cache_is_kept() -> None:
    call = call_of({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 9, "gen_ai.usage.cache_read.input_tokens": 80,
        "gen_ai.usage.reasoning_tokens": 4,
    })
    assert tokens(call) == (100, 9, 80, 4)
    assert not call.input_exclusive_fixed


def test_framework_as_provider_name_is_skipped() -> None:
    """openlit instrumentation/langchain and openllmetry langchain callback_handler.py write
    the framework into gen_ai.provider.name: the next provider key decides, else unknown."""
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    assert call_of({**base, "gen_ai.provider.name": "langchain"}).provider == "unknown"
    assert call_of({**base, "gen_ai.provider.name": "LangGraph",
                    "gen_ai.system": "openai"}).provider == "openai"


# --- OpenLLMetry / Traceloop ---------------------------------------------------------------

def test_openllmetry_old_names() -> None:
    """semconv_ai/__init__.py before 3f2418b (<0.54): gen_ai.system, llm.request.type,
    gen_ai.usage.prompt_tokens, llm.usage.*; first chunk event from
    packages/opentelemetry-instrumentation-openai/.../shared/chat_wrappers.py."""
    chunk = SpanEvent("gen_ai.content.completion.chunk", START + 300_000_000)
    attrs = {
        "llm.request.type": "chat", "gen_ai.system": "OpenAI",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.prompt_tokens": 40, "gen_ai.usage.completion_tokens": 12,
        "gen_ai.usage.cache_read_input_tokens": 8, "llm.usage.reasoning_tokens": 2,
        "llm.usage.total_tokens": 52,
    }
    assert classify(span(attrs)) is Role.LLM
    call = call_of(attrs, events=[SpanEvent("other", START), chunk,
                                  SpanEvent("gen_ai.content.completion.chunk", START + 9)])
    assert (call.model, call.provider, call.operation) == ("gpt-4o", "openai", "chat")
    assert tokens(call) == (40, 12, 8, 2)
    assert call.time_to_first_chunk_seconds == 0.3
    assert not call.total_mismatch


@pytest.mark.parametrize(("request_type", "operation"), [
    ("completion", "text_completion"), ("embedding", "embeddings"), ("rerank", "rerank"),
])
def test_openllmetry_old_request_types(request_type: str, operation: str) -> None:
    call = call_of({"llm.request.type": request_type, "gen_ai.request.model": "m"})
    assert call.operation == operation


def test_openllmetry_new_names() -> None:
    """semconv_ai/__init__.py at 93429cf (>=0.54): gen_ai.provider.name, operation name."""
    call = call_of({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5", "gen_ai.usage.input_tokens": 70,
        "gen_ai.usage.output_tokens": 5, "gen_ai.usage.cache_read.input_tokens": 60,
        "gen_ai.usage.reasoning_tokens": 0, "gen_ai.usage.total_tokens": 75,
    })
    assert tokens(call) == (70, 5, 60, 0) and call.provider == "anthropic"


@pytest.mark.parametrize(("kind", "role"), [
    ("workflow", Role.WORKFLOW), ("task", Role.WORKFLOW), ("agent", Role.AGENT),
    ("tool", Role.OTHER),
])
def test_traceloop_span_kinds(kind: str, role: Role) -> None:
    """traceloop-sdk tracing.py / decorators: traceloop.span.kind marks wrappers."""
    assert classify(span({"traceloop.span.kind": kind, "traceloop.entity.name": "x"})) is role


# --- OpenInference -------------------------------------------------------------------------

OPENINFERENCE_LLM = {
    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o", "llm.provider": "openai",
    "llm.system": "openai", "llm.token_count.prompt": 200, "llm.token_count.completion": 50,
    "llm.token_count.total": 250, "llm.token_count.prompt_details.cache_read": 150,
    "llm.token_count.completion_details.reasoning": 20, "llm.cost.total": 0.004,
}


def test_openinference_llm_span() -> None:
    """openinference semconv/trace/__init__.py; first-token event from
    python/instrumentation/openinference-instrumentation-openai/.../_stream.py."""
    first = SpanEvent("First Token Stream Event", START + 500_000_000)
    call = call_of(OPENINFERENCE_LLM, events=[first])
    assert (call.model, call.provider) == ("gpt-4o", "openai")
    assert tokens(call) == (200, 50, 150, 20)
    assert call.cost_usd == 0.004
    assert call.time_to_first_chunk_seconds == 0.5


def test_openinference_with_genai_semconv_picks_one_never_adds() -> None:
    """instrumentation/config.py OPENINFERENCE_ENABLE_GENAI_SEMCONV: both families on one
    span. Equal counts are one count; different ones keep the first name and flag it."""
    both = {**OPENINFERENCE_LLM, "gen_ai.usage.input_tokens": 200,
            "gen_ai.usage.output_tokens": 50}
    call = call_of(both)
    assert tokens(call) == (200, 50, 150, 20) and not call.usage_mismatch
    differing = call_of({**both, "gen_ai.usage.input_tokens": 210})
    assert differing.input_tokens == 210 and differing.usage_mismatch


@pytest.mark.parametrize(("kind", "role"), [
    ("LLM", Role.LLM), ("EMBEDDING", Role.LLM), ("AGENT", Role.AGENT),
    ("CHAIN", Role.WORKFLOW), ("TOOL", Role.OTHER), ("RETRIEVER", Role.OTHER),
    ("chain", Role.WORKFLOW),
])
def test_openinference_kinds(kind: str, role: Role) -> None:
    assert classify(span({"openinference.span.kind": kind})) is role


def test_openinference_claude_agent_sdk_aggregate() -> None:
    """openinference-instrumentation-claude-agent-sdk _wrappers.py: an AGENT span with
    usage (Anthropic's exclusive input) and llm.cost.total is an aggregate call."""
    attrs = {"openinference.span.kind": "AGENT", "llm.model_name": "claude-sonnet-4-5",
             "llm.token_count.prompt": 12, "llm.token_count.completion": 300,
             "llm.token_count.prompt_details.cache_read": 9000,
             "llm.token_count.prompt_details.cache_write": 800, "llm.cost.total": 0.05}
    assert classify(span(attrs)) is Role.AGENT
    call = call_of(attrs)
    assert tokens(call) == (9812, 300, 9000, 0) and call.cost_usd == 0.05
    assert call.input_exclusive_fixed
    # newer versions fold the cache into the prompt count themselves (its
    # tests/test_usage_and_cost_attributes_unit.py): not added twice
    folded = call_of({**attrs, "llm.token_count.prompt": 9812})
    assert folded.input_tokens == 9812 and not folded.input_exclusive_fixed
    # the model is set only when known: the usage still makes it an aggregate
    del attrs["llm.model_name"]
    anonymous = call_of(attrs)
    assert anonymous.model == "unknown" and anonymous.input_tokens == 9812
    # an agent span without usage is no call
    assert read_call(span({"openinference.span.kind": "AGENT", "llm.model_name": "m"})) is None


def test_openinference_embedding_operation() -> None:
    call = call_of({"openinference.span.kind": "EMBEDDING",
                    "embedding.model_name": "text-embedding-3-small"})
    assert call.operation == "embeddings" and call.model == "unknown"


# --- Vercel AI SDK -------------------------------------------------------------------------

def test_ai_sdk_6_outer_span_is_a_workflow_aggregate() -> None:
    """ai@6.0.264 packages/ai/src/generate-text/generate-text.ts: the outer ai.generateText
    span carries ai.usage.* summed over the steps."""
    attrs = {"ai.operationId": "ai.generateText", "ai.model.id": "gpt-4o",
             "ai.model.provider": "openai.chat", "ai.usage.inputTokens": 300,
             "ai.usage.outputTokens": 60, "ai.usage.totalTokens": 360}
    assert classify(span(attrs, name="ai.generateText")) is Role.WORKFLOW
    call = call_of(attrs)
    assert (call.provider, call.operation) == ("openai", "ai.generateText")
    assert tokens(call) == (300, 60, 0, 0)


def test_ai_sdk_6_do_generate_span() -> None:
    """generate-text.ts doGenerate/doStream attributes (gen_ai.system is the AI SDK provider
    string, mapped as gen-ai-format-messages.ts mapProviderName does)."""
    attrs = {
        "ai.operationId": "ai.streamText.doStream", "ai.model.id": "claude-sonnet-4-5",
        "ai.model.provider": "anthropic.messages", "gen_ai.system": "anthropic.messages",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20, "ai.usage.inputTokens": 100,
        "ai.usage.outputTokens": 20, "ai.usage.inputTokenDetails.cacheReadTokens": 10,
        "ai.usage.outputTokenDetails.reasoningTokens": 3,
        "ai.response.msToFirstChunk": 180.5, "ai.response.id": "msg_1",
    }
    assert classify(span(attrs)) is Role.LLM
    call = call_of(attrs)
    assert (call.model, call.provider, call.operation) == (
        "claude-sonnet-4-5", "anthropic", "chat")
    assert tokens(call) == (100, 20, 10, 3) and not call.usage_mismatch
    assert call.time_to_first_chunk_seconds == 0.1805
    assert call.response_id == "msg_1"


@pytest.mark.parametrize(("operation_id", "role", "operation"), [
    ("ai.generateText.doGenerate", Role.LLM, "chat"),
    ("ai.generateObject.doGenerate", Role.LLM, "chat"),
    ("ai.embedMany.doEmbed", Role.LLM, "embeddings"),
    ("ai.streamText", Role.WORKFLOW, None), ("ai.toolCall", Role.OTHER, None),
])
def test_ai_sdk_operation_ids(operation_id: str, role: Role, operation: str | None) -> None:
    attrs = {"ai.operationId": operation_id, "ai.model.id": "m"}
    assert classify(span(attrs)) is role
    if operation is not None:
        assert call_of(attrs).operation == operation


def test_ai_sdk_legacy_first_chunk_event_and_v4_names() -> None:
    """AI7 legacy-open-telemetry.ts ai.stream.firstChunk; ai@4.3.19 ai.usage.promptTokens."""
    call = call_of({"ai.operationId": "ai.streamText.doStream", "ai.model.id": "m",
                    "ai.usage.promptTokens": 5, "ai.usage.completionTokens": 6},
                   events=[SpanEvent("ai.stream.firstChunk", START + 1_250_000_000)])
    assert tokens(call) == (5, 6, 0, 0)
    assert call.time_to_first_chunk_seconds == 1.25


def test_ai_sdk_7_gen_ai_mode() -> None:
    """vercel/ai packages/otel/src/open-telemetry.ts: invoke_agent and agent_step carry the
    aggregate gen_ai.usage.*; each chat span is a call."""
    agent = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support",
             "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-5",
             "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 90}
    step = {**agent, "gen_ai.operation.name": "agent_step"}
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-5", "gen_ai.usage.input_tokens": 450,
            "gen_ai.usage.output_tokens": 45,
            "gen_ai.client.operation.time_to_first_chunk": 0.2}
    assert classify(span(agent)) is Role.AGENT and classify(span(step)) is Role.AGENT
    aggregate = call_of(agent)
    assert aggregate.operation == "invoke_agent" and aggregate.has_usage
    assert classify(span(chat)) is Role.LLM
    call = call_of(chat)
    assert tokens(call) == (450, 45, 0, 0) and call.time_to_first_chunk_seconds == 0.2


# --- LiteLLM -------------------------------------------------------------------------------

def test_litellm_request_span() -> None:
    """litellm/integrations/opentelemetry.py (SpanAttributes in litellm/proxy/_types.py):
    raw call_type in gen_ai.operation.name and llm.request.type, gen_ai.cost.total_cost."""
    attrs = {
        "gen_ai.operation.name": "acompletion", "llm.request.type": "acompletion",
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.prompt_tokens": 33, "gen_ai.usage.completion_tokens": 4,
        "gen_ai.usage.total_tokens": 37, "gen_ai.cost.total_cost": 0.0021,
        "gen_ai.response.id": "chatcmpl-9",
    }
    assert classify(span(attrs, name="litellm_request")) is Role.LLM
    call = call_of(attrs)
    assert (call.operation, call.provider) == ("chat", "openai")
    assert tokens(call) == (33, 4, 0, 0) and call.cost_usd == 0.0021
    assert call.response_id == "chatcmpl-9"


@pytest.mark.parametrize(("call_type", "operation"), [
    ("completion", "chat"), ("aembedding", "embeddings"), ("atext_completion",
                                                            "text_completion"),
    ("aresponses", "chat"), ("arerank", "rerank"),
])
def test_litellm_call_types(call_type: str, operation: str) -> None:
    attrs = {"gen_ai.operation.name": call_type, "gen_ai.request.model": "m"}
    assert classify(span(attrs)) is Role.LLM
    assert call_of(attrs).operation == operation


def test_litellm_raw_request_child_does_not_count() -> None:
    """opentelemetry.py set_raw_request_attributes: a child named raw_gen_ai_request with
    llm.<provider>.* keys (and, here, a model and usage that must not count twice)."""
    raw = span({"llm.openai.model": "gpt-4o-mini", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.prompt_tokens": 33, "llm.request.type": "acompletion"},
               name="raw_gen_ai_request")
    assert classify(raw) is Role.OTHER
    assert read_call(raw) is None


def test_first_chunk_after_the_call_ended_is_dropped() -> None:
    """180 "seconds" on a 2 s call: milliseconds in a seconds attribute."""
    call = call_of({"gen_ai.operation.name": "chat", "gen_ai.response.time_to_first_chunk": 180})
    assert call.time_to_first_chunk_seconds is None
    assert mapping.TTFT_AFTER_END in call.invalid
    assert call_of({"gen_ai.operation.name": "chat",
                    "gen_ai.response.time_to_first_chunk": 2}).time_to_first_chunk_seconds == 2


# --- hostile values ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "twelve", -5, "-5", 1e300, "1e300", "NaN", "nan", float("nan"), float("inf"), "inf",
    "9" * 5000, {"nested": 1}, [1, 2], True, b"12", 10**400, MAX_TOKENS + 1,
])
def test_hostile_token_values_are_absent_and_flagged(bad: Any) -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
             "gen_ai.usage.input_tokens": bad, "gen_ai.usage.prompt_tokens": 7,
             "gen_ai.usage.output_tokens": bad}
    call = call_of(attrs)
    assert (call.input_tokens, call.output_tokens) == (7, 0)
    assert "gen_ai.usage.input_tokens" in call.invalid


@pytest.mark.parametrize("bad", ["-1", 1e300, "NaN", {"a": 1}, MAX_COST_USD * 2, MAX_SECONDS * 2,
                                 "x" * 100_000])
def test_hostile_cost_and_ttft_are_absent(bad: Any) -> None:
    call = call_of({"gen_ai.operation.name": "chat", "gen_ai.usage.cost": bad,
                    "gen_ai.response.time_to_first_chunk": bad,
                    "langfuse.observation.cost_details": json.dumps({"total": -1}),
                    "langfuse.observation.completion_start_time": "1999-01-01T00:00:00Z"})
    assert call.cost_usd is None and call.time_to_first_chunk_seconds is None
    assert {"gen_ai.usage.cost", "langfuse.observation.cost_details"} <= set(call.invalid)
    # out of range, or (2e6 s on a 2 s call) later than the call's end
    assert {"gen_ai.response.time_to_first_chunk", mapping.TTFT_AFTER_END} & set(call.invalid)


def test_hostile_names_become_valid_labels() -> None:
    call = call_of({"gen_ai.operation.name": "chat\n" + "x" * 10_000,
                    "gen_ai.request.model": "  gpt\x00-4o\u00e9 " + "y" * 1_000_000,
                    "gen_ai.provider.name": {"not": "a string"}, "gen_ai.system": "",
                    "error.type": "\u2603" * 500, "gen_ai.response.id": ["a"],
                    "gen_ai.usage.input_tokens": 1},  # an unknown operation: an aggregate
                   status=STATUS_ERROR)
    for name in (call.model, call.provider, call.operation, call.error_type):
        assert name is not None and is_valid_name(name)
    assert call.model.startswith("gpt_-4o_")
    assert call.provider == "unknown" and call.response_id is None
    assert {"gen_ai.provider.name", "gen_ai.response.id"} <= set(call.invalid)


def test_hostile_usage_details() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for details in (deep, '{"input": "NaN", "output": -3}', "[1]", '"s"', "{" * 10,
                    json.dumps({"prompt_tokens": {"x": 1}, "completion_tokens": "1e300"})):
        call = call_of({**LANGFUSE_BASE, "langfuse.observation.usage_details": details,
                        "langfuse.observation.cost_details": details})
        assert call.input_tokens == 999  # fell back to gen_ai.usage.*
        assert call.cost_usd is None


ALL_KEYS = sorted({
    *mapping.REQUEST_MODEL_KEYS, *mapping.RESPONSE_MODEL_KEYS, *mapping.PROVIDER_KEYS,
    *mapping.INPUT_KEYS, *mapping.OUTPUT_KEYS, *mapping.CACHE_READ_KEYS,
    *mapping.CACHE_WRITE_KEYS, *mapping.REASONING_KEYS, *mapping.TOTAL_KEYS,
    *mapping.COST_KEYS, *mapping.TTFT_SECONDS_KEYS, *mapping.TTFT_MS_KEYS,
    *mapping.RESPONSE_ID_KEYS, mapping.LF_TYPE, mapping.LF_USAGE, mapping.LF_COST,
    mapping.LF_COMPLETION_START, mapping.LF_LEVEL, mapping.OI_KIND, mapping.OPERATION,
    mapping.AI_OPERATION, mapping.TL_KIND, mapping.TL_REQUEST_TYPE, mapping.ERROR_TYPE,
})
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=8),
    st.sampled_from(["chat", "generation", "LLM", "ai.streamText.doStream", "12", "-1", "NaN",
                     "1e300", '{"input": 5, "output": 1e400}', '{"prompt_tokens": 3}',
                     '"2026-05-28T20:26:41Z"', "ERROR", "openai.chat"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(attrs=st.dictionaries(st.sampled_from(ALL_KEYS), VALUES, max_size=12),
       status=st.sampled_from([0, 1, 2]),
       event_offset=st.integers(min_value=-(10**20), max_value=10**20))
def test_never_raises_and_always_yields_a_valid_event(attrs: dict[str, Any], status: int,
                                                      event_offset: int) -> None:
    events = [SpanEvent("ai.stream.firstChunk", START + event_offset),
              SpanEvent("exception", START, {"exception.type": attrs.get("error.type")})]
    role = classify(span(attrs, status=status, events=events))
    call = read_call(span(attrs, status=status, events=events), role)
    if call is None:
        return
    for count in (call.input_tokens, call.output_tokens, call.cache_read_tokens,
                  call.reasoning_tokens, call.cache_write_tokens):
        assert 0 <= count <= MAX_TOKENS
    assert call.cost_usd is None or 0 <= call.cost_usd <= MAX_COST_USD
    ttft = call.time_to_first_chunk_seconds
    assert ttft is None or (math.isfinite(ttft) and 0 <= ttft <= MAX_SECONDS)
    event = parse_event({
        "type": "llm_generation", "persona": "p", "model": call.model,
        "provider": call.provider, "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens, "cache_read_tokens": call.cache_read_tokens,
        "reasoning_tokens": call.reasoning_tokens, "cost_usd": call.cost_usd,
        "duration_seconds": 1.0, "time_to_first_chunk_seconds": ttft,
        "error_type": call.error_type,
    })
    assert isinstance(event, LLMGeneration)
    assert is_valid_name(call.operation)
