"""What a span says about an LLM call, read by the precedence of
``../shared/notes/otlp-ingest.md`` for every ecosystem it covers.

Two questions per span: :func:`classify` (is it one model call, an agent, a workflow
wrapper or something else; section (b) of the note) and :func:`read_call` (model, provider,
operation, tokens in the GenAI meaning, cost, time to first chunk, error; section (a)).

Everything here runs for every received span (30,000+ spans/s on one core), so it reads
attributes by exact key from precomputed tuples and never scans keys with patterns. Values
arrive typed as the sender typed them; a value that is the wrong type, negative, not
finite or beyond the event bounds is treated as absent and its key is listed in
``Call.invalid``, so a hostile span never yields an invalid event and never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from itertools import islice
from typing import Any, Final, TypeVar

from ..events import MAX_COST_USD, MAX_SECONDS, MAX_TOKENS, clean_name
from .span import STATUS_ERROR, Span

_T = TypeVar("_T")
_JSON: Final = json.JSONDecoder()  # json.loads without its per-call argument handling


class Role(Enum):
    LLM = "llm"            # one model call (chat, completion, embeddings, doGenerate, ...)
    AGENT = "agent"        # an agent or agent step (invoke_agent, agent_step, AGENT kind, ...)
    WORKFLOW = "workflow"  # a workflow / chain wrapper (invoke_workflow, traceloop workflow,
                           # OpenInference CHAIN, the AI SDK's outer ai.generateText, ...)
    OTHER = "other"        # tools, retrieval, HTTP, anything else


@dataclass(slots=True)
class Call:
    """The LLM-call fields of a span, in the GenAI meaning: ``input_tokens`` includes the
    cache reads (and writes), ``output_tokens`` includes reasoning."""

    model: str                     # request model, else response model, else "unknown"
    provider: str = "unknown"
    operation: str = "chat"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    has_usage: bool = False        # any token count was present on the span
    cost_usd: float | None = None  # from the span; None: the price table decides
    time_to_first_chunk_seconds: float | None = None
    error_type: str | None = None  # set when the call failed
    response_id: str | None = None  # gen_ai.response.id, to deduplicate within a trace
    cache_write_tokens: int = 0    # inside input_tokens too
    # Two names for one count disagreed (OpenInference writes llm.token_count.* and
    # gen_ai.usage.* on one span); the first in the note's order was kept, never the sum.
    usage_mismatch: bool = False
    # The input count excluded the cache (OpenLIT Anthropic): cache counts were added.
    input_exclusive_fixed: bool = False
    # The reasoning count exceeded the output count: it was added to the output.
    output_exclusive_fixed: bool = False
    # A reported total disagreed with input + output (a cross-check only, never used).
    total_mismatch: bool = False
    # Keys that were present but unusable (wrong type, negative, not finite, too big).
    invalid: tuple[str, ...] = ()


# --- attribute keys, in the note's precedence -------------------------------------------

LITELLM_RAW_SPAN: Final = "raw_gen_ai_request"  # LL: raw llm.<provider>.* keys, not a call

LF_TYPE: Final = "langfuse.observation.type"
LF_USAGE: Final = "langfuse.observation.usage_details"
LF_COST: Final = "langfuse.observation.cost_details"
LF_COMPLETION_START: Final = "langfuse.observation.completion_start_time"
LF_LEVEL: Final = "langfuse.observation.level"
LF_MODEL: Final = "langfuse.observation.model.name"
OI_KIND: Final = "openinference.span.kind"
OPERATION: Final = "gen_ai.operation.name"
AI_OPERATION: Final = "ai.operationId"
TL_KIND: Final = "traceloop.span.kind"
TL_REQUEST_TYPE: Final = "llm.request.type"

REQUEST_MODEL_KEYS: Final = (
    "gen_ai.request.model", "ai.model.id", "llm.model_name", LF_MODEL,
)
# llm.model_name (OI) stands for both and is read once, with the request keys.
RESPONSE_MODEL_KEYS: Final = ("gen_ai.response.model", "ai.response.model")
MODEL_KEYS: Final = REQUEST_MODEL_KEYS + RESPONSE_MODEL_KEYS
PROVIDER_KEYS: Final = (
    "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system", "ai.model.provider",
)
INPUT_KEYS: Final = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
    "ai.usage.inputTokens", "ai.usage.promptTokens",
)
OUTPUT_KEYS: Final = (
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
    "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens",
)
CACHE_READ_KEYS: Final = (
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read", "ai.usage.inputTokenDetails.cacheReadTokens",
    "ai.usage.cachedInputTokens",
)
CACHE_WRITE_KEYS: Final = (
    "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write", "ai.usage.inputTokenDetails.cacheWriteTokens",
)
REASONING_KEYS: Final = (
    "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens", "llm.token_count.completion_details.reasoning",
    "ai.usage.outputTokenDetails.reasoningTokens", "ai.usage.reasoningTokens",
)
# Never gen_ai.client.token.usage: OpenLIT's span attribute adds reasoning on LangChain.
TOTAL_KEYS: Final = (
    "gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total",
    "ai.usage.totalTokens",
)
USAGE_KEYS: Final = (LF_USAGE, *INPUT_KEYS, *OUTPUT_KEYS, *TOTAL_KEYS)
COST_KEYS: Final = ("gen_ai.usage.cost", "llm.cost.total", "gen_ai.cost.total_cost")
TTFT_SECONDS_KEYS: Final = (
    "gen_ai.response.time_to_first_chunk", "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.server.time_to_first_token",
)
TTFT_MS_KEYS: Final = ("ai.response.msToFirstChunk", "ai.stream.msToFirstChunk")
FIRST_CHUNK_EVENTS: Final = frozenset(
    {"ai.stream.firstChunk", "First Token Stream Event", "gen_ai.content.completion.chunk"}
)
RESPONSE_ID_KEYS: Final = ("gen_ai.response.id", "ai.response.id")
ERROR_TYPE: Final = "error.type"
# Every span attribute this module reads: the decoder reads only these (and the other
# modules' own) out of the wire format (tests/test_genai_decode.py checks it is complete).
READ_KEYS: Final = frozenset({
    LF_TYPE, LF_USAGE, LF_COST, LF_COMPLETION_START, LF_LEVEL, OI_KIND, OPERATION,
    AI_OPERATION, TL_KIND, TL_REQUEST_TYPE, *MODEL_KEYS, *PROVIDER_KEYS, *USAGE_KEYS,
    *CACHE_READ_KEYS, *CACHE_WRITE_KEYS, *REASONING_KEYS, *COST_KEYS, *TTFT_SECONDS_KEYS,
    *TTFT_MS_KEYS, *RESPONSE_ID_KEYS, ERROR_TYPE,
})
ERROR_FALLBACK: Final = "error"
TTFT_AFTER_END: Final = "time_to_first_chunk>duration"  # in Call.invalid, not a key
_TTFT_SLACK_NS: Final = 1_000_000  # clocks of the span and its TTFT source may differ by 1 ms

# --- roles -------------------------------------------------------------------------------

# LFM; "span" and "event" are the SDK's defaults and claim nothing, so the other rules decide.
_LANGFUSE_ROLES: Final = {
    "generation": Role.LLM, "embedding": Role.LLM, "agent": Role.AGENT,
    "chain": Role.WORKFLOW, "tool": Role.OTHER, "retriever": Role.OTHER,
    "evaluator": Role.OTHER, "guardrail": Role.OTHER,
}
_OPENINFERENCE_ROLES: Final = {
    "LLM": Role.LLM, "EMBEDDING": Role.LLM, "AGENT": Role.AGENT, "CHAIN": Role.WORKFLOW,
    "TOOL": Role.OTHER, "RETRIEVER": Role.OTHER, "RERANKER": Role.OTHER,
    "GUARDRAIL": Role.OTHER, "EVALUATOR": Role.OTHER, "PROMPT": Role.OTHER,
}
# gen_ai.operation.name -> (role, the SC operation). LiteLLM writes "chat" only for
# call_type "completion" and the raw call_type otherwise (CallTypes, litellm/types/utils.py):
# its async and modality variants are model calls too, so they count, under the SC name.
_OPERATIONS: Final[dict[str, tuple[Role, str]]] = {
    "chat": (Role.LLM, "chat"),
    "text_completion": (Role.LLM, "text_completion"),
    "completion": (Role.LLM, "chat"),
    "generate_content": (Role.LLM, "generate_content"),
    "embeddings": (Role.LLM, "embeddings"),
    "acompletion": (Role.LLM, "chat"),
    "atext_completion": (Role.LLM, "text_completion"),
    "embedding": (Role.LLM, "embeddings"),
    "aembedding": (Role.LLM, "embeddings"),
    "responses": (Role.LLM, "chat"),
    "aresponses": (Role.LLM, "chat"),
    "anthropic_messages": (Role.LLM, "chat"),
    "agenerate_content": (Role.LLM, "generate_content"),
    "generate_content_stream": (Role.LLM, "generate_content"),
    "agenerate_content_stream": (Role.LLM, "generate_content"),
    "rerank": (Role.LLM, "rerank"),
    "arerank": (Role.LLM, "rerank"),
    "image_generation": (Role.LLM, "image_generation"),
    "aimage_generation": (Role.LLM, "image_generation"),
    "transcription": (Role.LLM, "transcription"),
    "atranscription": (Role.LLM, "transcription"),
    "speech": (Role.LLM, "speech"),
    "aspeech": (Role.LLM, "speech"),
    "moderation": (Role.LLM, "moderation"),
    "amoderation": (Role.LLM, "moderation"),
    "invoke_agent": (Role.AGENT, "invoke_agent"),
    "agent_step": (Role.AGENT, "agent_step"),
    "create_agent": (Role.AGENT, "create_agent"),
    "invoke_workflow": (Role.WORKFLOW, "invoke_workflow"),
    "execute_tool": (Role.OTHER, "execute_tool"),
    "retrieval": (Role.OTHER, "retrieval"),
    "plan": (Role.OTHER, "plan"),
    "create_memory": (Role.OTHER, "create_memory"),
    "search_memory": (Role.OTHER, "search_memory"),
    "update_memory": (Role.OTHER, "update_memory"),
    "delete_memory": (Role.OTHER, "delete_memory"),
}
# AI SDK operationId (AI6 generate-text.ts, AI7 legacy-open-telemetry.ts): the do* spans
# are the model calls; the outer ones wrap every step and carry the summed usage, which is
# what a workflow wrapper is here (counted only when no call below carries usage).
_AI_SDK: Final[dict[str, tuple[Role, str]]] = {
    "ai.generateText.doGenerate": (Role.LLM, "chat"),
    "ai.streamText.doStream": (Role.LLM, "chat"),
    "ai.generateObject.doGenerate": (Role.LLM, "chat"),
    "ai.streamObject.doStream": (Role.LLM, "chat"),
    "ai.embed.doEmbed": (Role.LLM, "embeddings"),
    "ai.embedMany.doEmbed": (Role.LLM, "embeddings"),
    "ai.generateText": (Role.WORKFLOW, "ai.generateText"),
    "ai.streamText": (Role.WORKFLOW, "ai.streamText"),
    "ai.generateObject": (Role.WORKFLOW, "ai.generateObject"),
    "ai.streamObject": (Role.WORKFLOW, "ai.streamObject"),
    "ai.embed": (Role.WORKFLOW, "ai.embed"),
    "ai.embedMany": (Role.WORKFLOW, "ai.embedMany"),
}
# TL: a task is a unit of a workflow that wraps calls, like a chain.
_TRACELOOP_ROLES: Final = {
    "workflow": Role.WORKFLOW, "task": Role.WORKFLOW, "agent": Role.AGENT, "tool": Role.OTHER,
}
# llm.request.type (TL <0.54 LLMRequestTypeValues; LL writes the raw call_type here too)
_REQUEST_TYPE_OPERATIONS: Final = {
    "chat": "chat", "completion": "text_completion", "embedding": "embeddings",
    "rerank": "rerank",
}
_LANGFUSE_OPERATIONS: Final = {"generation": "chat", "embedding": "embeddings"}
_OPENINFERENCE_OPERATIONS: Final = {"LLM": "chat", "EMBEDDING": "embeddings"}

# --- providers ---------------------------------------------------------------------------

# gen_ai.provider.name holding a framework, not a provider (TL langchain callback_handler.py,
# OL instrumentation/langchain): skipped, so the next key (or "unknown") names the provider.
_FRAMEWORKS: Final = frozenset(
    {"langchain", "langgraph", "llamaindex", "llama_index", "crewai", "haystack", "autogen",
     "ag2", "dspy", "openai_agents", "agno", "mastra", "pydantic_ai", "smolagents"}
)
# SC well-known values that contain a dot and must not be read as AI SDK "provider.api".
_SC_DOTTED_PROVIDERS: Final = frozenset(
    {"azure.ai.openai", "azure.ai.inference", "gcp.gen_ai", "gcp.vertex_ai", "gcp.gemini",
     "aws.bedrock", "ibm.watsonx.ai"}
)
# vercel/ai packages/otel/src/gen-ai-format-messages.ts mapProviderName: the AI SDK writes
# "<provider>.<api>" ("openai.chat", "anthropic.messages") into gen_ai.system (AI6) and
# ai.model.provider.
_AI_SDK_PROVIDERS: Final = {
    "anthropic": "anthropic", "openai": "openai", "azure-openai": "azure.ai.openai",
    "azure": "azure.ai.inference", "google": "gcp.gen_ai", "google-vertex": "gcp.vertex_ai",
    "google-generative-ai": "gcp.gemini", "mistral": "mistral_ai", "cohere": "cohere",
    "amazon-bedrock": "aws.bedrock", "bedrock": "aws.bedrock", "groq": "groq",
    "deepseek": "deepseek", "perplexity": "perplexity", "xai": "x_ai",
}

_MAX_TEXT: Final = 256          # longer names are cut by clean_name anyway
_MAX_NUMBER_TEXT: Final = 40    # "12" as a string; longer is not a count
_MAX_JSON: Final = 65_536       # usage/cost details; Langfuse's are a few hundred bytes
_MAX_JSON_KEYS: Final = 64
_MAX_EVENTS_SCANNED: Final = 256
_MAX_NUMBER: Final = 10**15     # above every bound of events.py
_MAX_KEYWORD: Final = 64        # operation/kind values worth case-folding
_UNKNOWN: Final = "unknown"


def classify(span: Span) -> Role:
    """The span's role, by the note's section (b) order: the first rule that knows the
    span's kind decides; values a rule does not know fall through to the next."""
    if span.name == LITELLM_RAW_SPAN:
        return Role.OTHER
    attrs = span.attributes
    value = attrs.get(LF_TYPE)
    if type(value) is str:
        role = _lookup(_LANGFUSE_ROLES, value, str.lower)
        if role is not None:
            return role
    value = attrs.get(OI_KIND)
    if type(value) is str:
        role = _lookup(_OPENINFERENCE_ROLES, value, str.upper)
        if role is not None:
            return role
    value = attrs.get(OPERATION)
    if type(value) is str:
        known = _lookup(_OPERATIONS, value, str.lower)
        if known is not None:
            return known[0]
    value = attrs.get(AI_OPERATION)
    if type(value) is str:
        known = _AI_SDK.get(value)
        if known is not None:
            return known[0]
        if value.startswith("ai."):
            return Role.OTHER  # ai.toolCall and any later wrapper
    value = attrs.get(TL_KIND)
    if type(value) is str:
        role = _TRACELOOP_ROLES.get(value)
        if role is not None:
            return role
    if attrs.get(TL_REQUEST_TYPE) is not None:
        return Role.LLM
    if _has_any(attrs, MODEL_KEYS) and _has_any(attrs, USAGE_KEYS):
        return Role.LLM
    return Role.OTHER


def read_call(span: Span, role: Role | None = None) -> Call | None:
    """The call fields of an LLM span, or of any other span that carries usage (an
    aggregate, model or not: OpenInference's claude-agent-sdk AGENT span sets
    llm.model_name only when it knows it, and its usage may be the only record of the
    calls); ``None`` otherwise. Pass ``role`` when the caller has already classified the
    span. Never raises on attribute values."""
    if role is None:
        role = classify(span)
    if span.name == LITELLM_RAW_SPAN:
        return None
    attrs = span.attributes
    invalid: list[str] = []
    model = _first_name(attrs, REQUEST_MODEL_KEYS, invalid) or _first_name(
        attrs, RESPONSE_MODEL_KEYS, invalid
    )
    call = Call(model=model or _UNKNOWN)
    _read_usage(attrs, call, invalid)
    if role is not Role.LLM and not call.has_usage:
        return None
    call.provider = _provider(attrs, invalid)
    call.operation = _operation(attrs)
    call.cost_usd = _cost(attrs, invalid)
    call.time_to_first_chunk_seconds = _within_call(span, _time_to_first_chunk(span, invalid),
                                                    invalid)
    call.error_type = _error_type(span)
    call.response_id = _first_name(attrs, RESPONSE_ID_KEYS, invalid)
    if invalid:
        call.invalid = tuple(invalid)
    return call


# --- coercion ----------------------------------------------------------------------------

def _lookup(table: dict[str, _T], value: str, fold: Callable[[str], str]) -> _T | None:
    """Exact first (the conventions fix the case), then case-folded for senders that
    capitalise; a long value is no keyword and is not folded."""
    found = table.get(value)
    if found is None and len(value) <= _MAX_KEYWORD:
        found = table.get(fold(value))
    return found


def _has_any(attrs: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return not attrs.keys().isdisjoint(keys)  # in C: no generator per span


def _number(value: Any) -> float | None:
    """A finite, non-negative number from an int, float or numeric string; else None.
    OTLP/JSON sends intValue as a decimal string (LF convertOtelIntValue)."""
    if type(value) is int:
        # compared before float(): an int beyond 1e308 would raise OverflowError
        return float(value) if 0 <= value <= _MAX_NUMBER else None
    if type(value) is float:
        return value if value >= 0.0 and math.isfinite(value) else None
    if type(value) is str and len(value) <= _MAX_NUMBER_TEXT:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number >= 0.0 and math.isfinite(number) else None
    return None  # bool is not a number here, nor is a list or a dict


def _count(value: Any) -> int | None:
    if type(value) is int:  # the common case, without the float round trip
        return value if 0 <= value <= MAX_TOKENS else None
    number = _number(value)
    if number is None or number > MAX_TOKENS:
        return None
    return round(number)


def _first_name(attrs: dict[str, Any], keys: tuple[str, ...], invalid: list[str]) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        if type(value) is not str:
            invalid.append(key)
            continue
        text = clean_name(value[:_MAX_TEXT], "")
        if text:
            return text
    return None


def _first_count(
    attrs: dict[str, Any], keys: tuple[str, ...], invalid: list[str]
) -> tuple[int | None, bool]:
    """The first usable count in ``keys`` and whether a later name disagreed with it.
    Two names for one count are alternatives, never added."""
    found: int | None = None
    mismatch = False
    get = attrs.get
    for key in keys:
        value = get(key)
        if value is None:
            continue
        count = value if type(value) is int and 0 <= value <= MAX_TOKENS else _count(value)
        if count is None:
            invalid.append(key)
        elif found is None:
            found = count
        elif count != found:
            mismatch = True
    return found, mismatch


# --- tokens ------------------------------------------------------------------------------

def _read_usage(attrs: dict[str, Any], call: Call, invalid: list[str]) -> None:
    """Tokens in the GenAI meaning. Langfuse's usage_details overrides gen_ai.usage.* (LF
    extractUsageDetails); otherwise each count takes the first name present."""
    details = _json_object(attrs.get(LF_USAGE), LF_USAGE, invalid)
    if details is not None and _langfuse_usage(details, call):
        return
    present = attrs.keys()
    counts: list[int | None] = [None] * len(_COUNT_FIELDS)
    for slot, keys in enumerate(_COUNT_FIELDS):
        if present.isdisjoint(keys):  # in C; most spans use one family of names
            continue
        counts[slot], mismatch = _first_count(attrs, keys, invalid)
        if mismatch and slot != _TOTAL_SLOT:
            call.usage_mismatch = True
    input_tokens, output_tokens, cache_read, cache_write, reasoning, total = counts
    if input_tokens is None and output_tokens is None and cache_read is None \
            and cache_write is None and reasoning is None:
        return
    call.has_usage = True
    _set_tokens(call, input_tokens or 0, output_tokens or 0, cache_read or 0,
                cache_write or 0, reasoning or 0)
    if total is not None and total not in (
        call.input_tokens + call.output_tokens, (input_tokens or 0) + (output_tokens or 0)
    ):
        call.total_mismatch = True


_COUNT_FIELDS: Final = (
    INPUT_KEYS, OUTPUT_KEYS, CACHE_READ_KEYS, CACHE_WRITE_KEYS, REASONING_KEYS, TOTAL_KEYS,
)
_TOTAL_SLOT: Final = 5


def _set_tokens(
    call: Call, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
    reasoning: int,
) -> None:
    # Cache and reasoning counts are subsets (SC); a cache read larger than the whole input
    # means the input excluded the cache (OpenLIT Anthropic, OpenInference
    # claude-agent-sdk: Anthropic's own input_tokens), so the cache counts are added.
    if cache_read > input_tokens:
        input_tokens += cache_read + cache_write
        call.input_exclusive_fixed = True
    if reasoning > output_tokens:
        output_tokens += reasoning
        call.output_exclusive_fixed = True
    call.input_tokens = min(input_tokens, MAX_TOKENS)
    call.output_tokens = min(output_tokens, MAX_TOKENS)
    call.cache_read_tokens = cache_read
    call.cache_write_tokens = cache_write
    call.reasoning_tokens = reasoning


def _json_object(value: Any, key: str, invalid: list[str]) -> dict[str, Any] | None:
    """A JSON object attribute (LP _serialize writes a string; a kvlist arrives as a dict)."""
    if value is None:
        return None
    if type(value) is dict:
        return value
    if type(value) is str and len(value) <= _MAX_JSON:
        try:
            parsed = _JSON.decode(value)
        except (ValueError, RecursionError):
            parsed = None
        if type(parsed) is dict:
            return parsed
    invalid.append(key)
    return None


def _detail(details: Any, *names: str) -> int:
    if type(details) is not dict:
        return 0
    for name in names:
        count = _count(details.get(name))
        if count is not None:
            return count
    return 0


def _langfuse_usage(usage: dict[str, Any], call: Call) -> bool:
    """The three shapes of LFT UsageDetails. The OpenAI Chat and Responses shapes carry
    inclusive counts with details; the flat map holds Langfuse's disjoint keys (its
    converters subtract details from input/output), so inclusive input is ``input`` plus
    every ``input_*`` key, and likewise for output. False when nothing was usable."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        input_tokens = _count(usage.get("prompt_tokens"))
        output_tokens = _count(usage.get("completion_tokens"))
        prompt = usage.get("prompt_tokens_details")
        completion = usage.get("completion_tokens_details")
        cache_read = _detail(prompt, "cached_tokens")
        cache_write = _detail(prompt, "cache_creation_tokens", "cache_write_tokens")
        reasoning = _detail(completion, "reasoning_tokens")
    elif "input_tokens" in usage or "output_tokens" in usage:
        input_tokens = _count(usage.get("input_tokens"))
        output_tokens = _count(usage.get("output_tokens"))
        prompt = usage.get("input_tokens_details")
        cache_read = _detail(prompt, "cached_tokens") or _detail(usage, "cache_read_input_tokens")
        cache_write = _detail(prompt, "cache_creation_tokens") or _detail(
            usage, "cache_creation_input_tokens"
        )
        reasoning = _detail(usage.get("output_tokens_details"), "reasoning_tokens")
        if ("cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage) \
                and input_tokens is not None:
            # Anthropic's raw usage passed through as a flat map: input excludes the cache.
            input_tokens += cache_read + cache_write
            call.input_exclusive_fixed = True
    else:
        return _langfuse_flat_usage(usage, call)
    if input_tokens is None and output_tokens is None:
        return False
    call.has_usage = True
    _set_tokens(call, input_tokens or 0, output_tokens or 0, cache_read, cache_write, reasoning)
    return True


# Flat-map keys that name a cache read, a cache write or reasoning: the langchain
# CallbackHandler (input_cache_read), Langfuse's OpenAI converters (input_cached_tokens,
# output_reasoning_tokens) and Anthropic's raw names.
_LF_DETAIL_SLOTS: Final = {
    "input_cached_tokens": 0, "input_cache_read": 0, "input_cached": 0,
    "cache_read_input_tokens": 0, "input_cache_creation": 1, "input_cache_write": 1,
    "cache_creation_input_tokens": 1, "output_reasoning_tokens": 2, "output_reasoning": 2,
}


def _langfuse_flat_usage(usage: dict[str, Any], call: Call) -> bool:
    input_tokens = output_tokens = 0
    details = [0, 0, 0]  # cache read, cache write, reasoning
    seen = False
    for key, value in islice(usage.items(), _MAX_JSON_KEYS):
        count = value if type(value) is int and 0 <= value <= MAX_TOKENS else _count(value)
        if count is None:
            continue
        if key == "input" or (key.startswith("input_") and not key.startswith("input_priority")):
            # priority-tier keys are not a sub-category (langfuse-python CallbackHandler.py)
            input_tokens += count
        elif key == "output" or key.startswith("output_"):
            output_tokens += count
        elif key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            input_tokens += count  # Anthropic's names, disjoint from its input_tokens
        else:
            continue
        seen = True
        slot = _LF_DETAIL_SLOTS.get(key)
        if slot is not None and not details[slot]:
            details[slot] = count
    if not seen:
        return False
    call.has_usage = True
    call.cache_read_tokens, call.cache_write_tokens, call.reasoning_tokens = details
    call.input_tokens = min(input_tokens, MAX_TOKENS)
    call.output_tokens = min(output_tokens, MAX_TOKENS)
    return True


# --- the other fields --------------------------------------------------------------------

def _provider(attrs: dict[str, Any], invalid: list[str]) -> str:
    for key in PROVIDER_KEYS:
        value = attrs.get(key)
        if value is None:
            continue
        if type(value) is not str:
            invalid.append(key)
            continue
        name = clean_name(value[:_MAX_TEXT].lower(), "")
        if not name or name in _FRAMEWORKS:
            continue
        if "." in name and name not in _SC_DOTTED_PROVIDERS:
            name = _AI_SDK_PROVIDERS.get(name.split(".", 1)[0], name)
        return name
    return _UNKNOWN


def _operation(attrs: dict[str, Any]) -> str:
    value = attrs.get(OPERATION)
    if type(value) is str and value:
        known = _lookup(_OPERATIONS, value, str.lower)
        return known[1] if known is not None else clean_name(value[:_MAX_TEXT], "chat")
    for key, table in (
        (TL_REQUEST_TYPE, _REQUEST_TYPE_OPERATIONS),
        (OI_KIND, _OPENINFERENCE_OPERATIONS),
        (AI_OPERATION, None),
        (LF_TYPE, _LANGFUSE_OPERATIONS),
    ):
        value = attrs.get(key)
        if type(value) is not str:
            continue
        if table is None:
            known = _AI_SDK.get(value)
            if known is not None:
                return known[1]
            continue
        operation = table.get(value)
        if operation is None and key == TL_REQUEST_TYPE:
            known = _OPERATIONS.get(value)  # LiteLLM's raw call_type
            operation = known[1] if known is not None else None
        if operation is not None:
            return operation
    return "chat"


def _usd(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number <= MAX_COST_USD else None


def _cost(attrs: dict[str, Any], invalid: list[str]) -> float | None:
    details = _json_object(attrs.get(LF_COST), LF_COST, invalid)
    if details is not None:
        cost = _langfuse_cost(details)
        if cost is not None:
            return cost
        invalid.append(LF_COST)
    return _first_valid(attrs, COST_KEYS, _usd, invalid)


def _first_valid(attrs: dict[str, Any], keys: tuple[str, ...],
                 convert: Callable[[Any], float | None],
                 invalid: list[str]) -> float | None:
    """The first of ``keys`` present whose value ``convert`` accepts; the keys present
    but refused are noted in ``invalid``."""
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        converted = convert(value)
        if converted is not None:
            return converted
        invalid.append(key)
    return None


def _langfuse_cost(details: dict[str, Any]) -> float | None:
    """``total`` when given, else the sum of the (disjoint) keys, as Langfuse does."""
    if "total" in details:
        return _usd(details["total"])
    total = 0.0
    seen = False
    for value in islice(details.values(), _MAX_JSON_KEYS):
        cost = _usd(value)
        if cost is not None:
            total += cost
            seen = True
    return _usd(total) if seen else None


def _seconds(value: float | None) -> float | None:
    return value if value is not None and value <= MAX_SECONDS else None


def _from_ms(value: Any) -> float | None:
    milliseconds = _number(value)
    return _seconds(milliseconds / 1000.0 if milliseconds is not None else None)


def _time_to_first_chunk(span: Span, invalid: list[str]) -> float | None:
    attrs = span.attributes
    seconds = _first_valid(attrs, TTFT_SECONDS_KEYS, lambda v: _seconds(_number(v)), invalid)
    if seconds is None:
        seconds = _first_valid(attrs, TTFT_MS_KEYS, _from_ms, invalid)
    if seconds is not None:
        return seconds
    value = attrs.get(LF_COMPLETION_START)
    if value is not None:
        seconds = _since_start(span, value)
        if seconds is not None:
            return seconds
        invalid.append(LF_COMPLETION_START)
    for index, event in enumerate(span.events):
        if index >= _MAX_EVENTS_SCANNED:
            break
        if event.name in FIRST_CHUNK_EVENTS:
            return _seconds(_nonnegative((event.time_unix_nano - span.start_unix_nano) / 1e9))
    return None


def _within_call(span: Span, seconds: float | None, invalid: list[str]) -> float | None:
    """A first chunk after the call ended is a unit mix-up (milliseconds sent as seconds)
    or a skewed clock, not a latency: dropped, and said so."""
    duration = span.end_unix_nano - span.start_unix_nano
    if seconds is None or duration <= 0 or seconds * 1e9 <= duration + _TTFT_SLACK_NS:
        return seconds
    invalid.append(TTFT_AFTER_END)
    return None


def _nonnegative(value: float) -> float | None:
    return value if value >= 0.0 else None


def _since_start(span: Span, value: Any) -> float | None:
    """Seconds from span start to Langfuse's completion_start_time: an ISO string, which
    older SDKs double-encode as a JSON string (LF extractCompletionStartTime)."""
    if type(value) is not str or len(value) > 64:
        return None
    text = value
    if text.startswith('"'):
        try:
            text = json.loads(text)
        except ValueError:
            return None
        if type(text) is not str:
            return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.timestamp() - span.start_unix_nano / 1e9
    return _seconds(_nonnegative(round(seconds, 6)))


def _error_type(span: Span) -> str | None:
    """A failed call's type: span status ERROR or Langfuse level ERROR; the type from
    ``error.type`` (SC spans.yaml, OLH handle_exception), else the first ``exception``
    event's ``exception.type``, else a fixed fallback."""
    attrs = span.attributes
    level = attrs.get(LF_LEVEL)
    if span.status_code != STATUS_ERROR and not (type(level) is str and level.upper() == "ERROR"):
        return None
    value = attrs.get(ERROR_TYPE)
    if type(value) is str and value:
        return clean_name(value[:_MAX_TEXT], ERROR_FALLBACK)
    for index, event in enumerate(span.events):
        if index >= _MAX_EVENTS_SCANNED:
            break
        if event.name == "exception":
            value = event.attributes.get("exception.type")
            if type(value) is str and value:
                return clean_name(value[:_MAX_TEXT], ERROR_FALLBACK)
            break
    return ERROR_FALLBACK
