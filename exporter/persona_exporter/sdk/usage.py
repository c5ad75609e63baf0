"""Token usage from LLM responses, in the shapes the common SDKs return.

Counts follow the OpenTelemetry GenAI conventions: ``input`` is every prompt token,
cached ones included, and ``output`` every completion token, reasoning included;
``cache_read`` and ``reasoning`` are the parts of those. Providers disagree on this, so
each shape is normalised:

- OpenAI chat completions: ``prompt_tokens`` / ``completion_tokens`` (already totals),
  ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``.
- OpenAI Responses API: ``input_tokens`` / ``output_tokens`` (totals),
  ``input_tokens_details.cached_tokens``, ``output_tokens_details.reasoning_tokens``.
- Anthropic: ``input_tokens`` excludes cache reads and writes, so ``input`` is
  ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
- Google Gemini: ``usage_metadata.prompt_token_count``; ``candidates_token_count`` excludes
  thinking, so ``output`` adds ``thoughts_token_count``.

Responses may be objects or dicts, with usage under ``usage`` or ``usage_metadata``, or be
the usage itself. Anything unreadable counts as zero rather than raising.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any, NamedTuple

# Larger counts are nonsense (a buggy proxy, an overflow) and are beyond what an event may
# carry (events.MAX_TOKENS; a test keeps them equal): they are read as zero, like any
# other unreadable count.
MAX_COUNT = 10**12


class TokenUsage(NamedTuple):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    reasoning: int = 0

    def merge_max(self, other: TokenUsage) -> TokenUsage:
        """Combine two reports of the same request (streamed chunks), field by field.

        Streams report usage cumulatively (Anthropic's ``message_start`` then
        ``message_delta``, OpenAI's final chunk), so the largest value seen is the total.
        """
        return TokenUsage(*(max(a, b) for a, b in zip(self, other, strict=True)))

    @property
    def billed(self) -> int:
        return self.input + self.output


UsageExtractor = Callable[[Any], "TokenUsage | Mapping[str, Any] | None"]

def _get(obj: Any, key: str) -> Any:
    if type(obj) is dict:  # the common case, without the slower ABC check below
        return obj.get(key)
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _count(value: Any) -> int:
    if type(value) is int:  # the common case first
        return value if 0 < value <= MAX_COUNT else 0
    if isinstance(value, bool):  # an int subclass: True is not one token
        return 0
    if isinstance(value, Integral):  # numpy and friends
        number = int(value)
        return number if 0 < number <= MAX_COUNT else 0
    if isinstance(value, float) and value.is_integer() and 0 < value <= MAX_COUNT:
        return int(value)
    return 0


def _usage_object(response: Any) -> Any:
    if type(response) is dict:
        usage = response.get("usage")
        if usage is not None:
            return usage
    elif response is None or isinstance(response, (str, bytes, int, float, bool)):
        return None
    for key in ("usage", "usage_metadata"):
        usage = _get(response, key)
        if usage is not None:
            return usage
    # Stream events that wrap the message: Anthropic's message_start (.message.usage) and
    # the OpenAI Responses API's response.completed (.response.usage).
    for key in ("message", "response"):
        inner = _get(response, key)
        if inner is not None and not isinstance(inner, (str, bytes)):
            usage = _get(inner, "usage")
            if usage is not None:
                return usage
    return response


def extract_usage(response: Any) -> TokenUsage | None:
    """Token usage from a response (or a streamed chunk), or None when it carries none."""
    usage = _usage_object(response)
    if usage is None:
        return None
    if type(usage) is dict and "prompt_tokens" in usage:  # OpenAI chat as a dict: the hot case
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return TokenUsage(
            _count(usage["prompt_tokens"]),
            _count(usage.get("completion_tokens")),
            _count(prompt_details.get("cached_tokens")) if type(prompt_details) is dict else 0,
            _count(completion_details.get("reasoning_tokens"))
            if type(completion_details) is dict else 0,
        )

    prompt = _get(usage, "prompt_tokens")
    if prompt is not None or _get(usage, "completion_tokens") is not None:  # OpenAI chat
        return TokenUsage(
            _count(prompt),
            _count(_get(usage, "completion_tokens")),
            _count(_get(_get(usage, "prompt_tokens_details"), "cached_tokens")),
            _count(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens")),
        )

    input_tokens = _get(usage, "input_tokens")
    if input_tokens is not None or _get(usage, "output_tokens") is not None:
        cache_read = _get(usage, "cache_read_input_tokens")
        cache_write = _get(usage, "cache_creation_input_tokens")
        if cache_read is not None or cache_write is not None:  # Anthropic
            read = _count(cache_read)
            return TokenUsage(
                _count(input_tokens) + read + _count(cache_write),
                _count(_get(usage, "output_tokens")),
                read,
                0,
            )
        return TokenUsage(  # OpenAI Responses API, or a plain {input_tokens, output_tokens}
            _count(input_tokens),
            _count(_get(usage, "output_tokens")),
            _count(_get(_get(usage, "input_tokens_details"), "cached_tokens")),
            _count(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
        )

    prompt_count = _get(usage, "prompt_token_count")
    if prompt_count is not None or _get(usage, "candidates_token_count") is not None:  # Gemini
        thoughts = _count(_get(usage, "thoughts_token_count"))
        return TokenUsage(
            _count(prompt_count),
            _count(_get(usage, "candidates_token_count")) + thoughts,
            _count(_get(usage, "cached_content_token_count")),
            thoughts,
        )
    return None


def coerce_usage(value: Any) -> TokenUsage | None:
    """What a user's extractor returned, as TokenUsage: a TokenUsage, a mapping with the
    four field names, or anything :func:`extract_usage` understands."""
    if value is None or isinstance(value, TokenUsage):
        return value
    if isinstance(value, Mapping) and any(k in value for k in TokenUsage._fields):
        # Token counts from a user's extractor get the same limits as the built-in shapes.
        return TokenUsage(*(_count(value.get(k, 0)) for k in TokenUsage._fields))
    return extract_usage(value)


def response_model(response: Any) -> str | None:
    """The model a response says it came from, if it says so."""
    if response is None or isinstance(response, (str, bytes)):
        return None
    model = _get(response, "model")
    return model if isinstance(model, str) and model else None
