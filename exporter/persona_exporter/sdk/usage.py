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

import contextlib
import functools
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any, Final, NamedTuple

from pydantic import BaseModel

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


# TokenUsage(a, b, c, d) goes through the NamedTuple's Python-level __new__ (0.3 us more
# than this, on every call); the hot paths build their four ints directly.
_new_tuple: Final = tuple.__new__

UsageExtractor = Callable[[Any], "TokenUsage | Mapping[str, Any] | None"]


def _get(obj: Any, key: str) -> Any:
    kind = type(obj)
    if kind is dict:  # the common case, without the lookup below
        return obj.get(key)
    return _plan_of(kind).get(obj, key)


def _fields(obj: Any) -> Any:
    """A pydantic model as the dict of its fields when that reads every key this module
    reads exactly as ``getattr`` would (see :class:`TypePlan`); else ``obj`` itself."""
    if not _plan_of(type(obj)).fields:
        return obj
    try:
        if obj.__pydantic_extra__:  # an extra field could be one we read: the slow way
            return obj
        fields = obj.__dict__
    except AttributeError:  # not initialised: pydantic's own reads cope, ours go through them
        return obj
    return fields if type(fields) is dict else obj


class TypePlan(NamedTuple):
    """How to read keys from objects of one type, decided once per type.

    Deciding per object cost more than the rest of the call: whether it is a Mapping is an
    ABC check (~0.2 us each time), and on a pydantic model (what the openai and anthropic
    SDKs return) every key it lacks goes through ``BaseModel.__getattr__``, which builds
    and raises an AttributeError (1-4 us; a streamed chunk without usage misses ten).
    ``get`` reads one key; ``fields``: the instance ``__dict__`` of a model without extra
    fields gives the same values for every key in ``_KEYS`` (:func:`_fields`)."""

    get: Callable[[Any, str], Any]
    fields: bool = False


_KEYS: Final = frozenset({
    "usage", "usage_metadata", "message", "response", "model",
    "prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details",
    "cached_tokens", "reasoning_tokens", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens", "input_tokens_details",
    "output_tokens_details", "prompt_token_count", "candidates_token_count",
    "thoughts_token_count", "cached_content_token_count"})
_PLANS: dict[type, TypePlan] = {}
_PLANS_MAX = 512  # types made on the fly (a class per call) must not grow this for good
_MISSING = object()


def _mapping_get(obj: Any, key: str) -> Any:
    return obj.get(key)


def _attribute_get(obj: Any, key: str) -> Any:
    return getattr(obj, key, None)


_MAPPING_PLAN: Final = TypePlan(_mapping_get)
_ATTRIBUTE_PLAN: Final = TypePlan(_attribute_get)


def _plan_of(kind: type) -> TypePlan:
    try:
        return _PLANS[kind]
    except KeyError:
        return type_plan(kind)
    except Exception:  # noqa: BLE001 - a type whose metaclass refuses hashing
        return _ATTRIBUTE_PLAN


def type_plan(kind: type) -> TypePlan:
    """The plan for ``kind``, made and remembered on first use (up to _PLANS_MAX types);
    a type that cannot be inspected gets the plain ``getattr``."""
    try:
        plan = (_MAPPING_PLAN if issubclass(kind, Mapping)
                else _model_plan(kind) or _ATTRIBUTE_PLAN)
    except Exception:  # noqa: BLE001 - an odd type (a hostile metaclass)
        plan = _ATTRIBUTE_PLAN
    if len(_PLANS) < _PLANS_MAX:
        with contextlib.suppress(Exception):  # an unhashable type is asked again next time
            _PLANS[kind] = plan
    return plan


def _model_plan(kind: type) -> TypePlan | None:
    """For a pydantic (v2) model type that keeps pydantic's own attribute lookup: reads
    that give what ``getattr(obj, key, None)`` gives, found where that lookup finds them
    (pydantic/main.py, ``BaseModel.__getattr__``): a name the class has (a property, a
    method) or a private attribute the ordinary way; a field from the instance
    ``__dict__``; else an extra field (the SDKs' models allow extras) from
    ``__pydantic_extra__``; else None, without the exception. None when ``kind`` is not
    such a model."""
    if not (_MODEL_GETATTR is not None and issubclass(kind, BaseModel)
            and getattr(kind, "__getattr__", None) is _MODEL_GETATTR
            and kind.__getattribute__ is object.__getattribute__):
        return None
    private = kind.__private_attributes__
    on_class = {key: key in private or _has_class_attribute(kind, key) for key in _KEYS}

    def get(obj: Any, key: str) -> Any:
        found = on_class.get(key)
        if found is None:
            found = key in private or _has_class_attribute(kind, key)
        if found:
            return getattr(obj, key, None)
        try:
            value = obj.__dict__.get(key, _MISSING)
            if value is not _MISSING:
                return value
            extra = obj.__pydantic_extra__
        except AttributeError:  # not initialised: pydantic reads that as no extras
            return None
        return extra.get(key) if extra else None

    return TypePlan(get, fields=not any(on_class.values()))


_MODEL_GETATTR: Final = getattr(BaseModel, "__getattr__", None)


def _has_class_attribute(kind: type, key: str) -> bool:
    try:
        return hasattr(kind, key)
    except Exception:  # noqa: BLE001 - a metaclass that raises: take the ordinary getattr
        return True


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
    fields = _fields(response)
    for key in ("usage", "usage_metadata"):
        usage = _get(fields, key)
        if usage is not None:
            return usage
    # Stream events that wrap the message: Anthropic's message_start (.message.usage) and
    # the OpenAI Responses API's response.completed (.response.usage).
    for key in ("message", "response"):
        inner = _get(fields, key)
        if inner is not None and not isinstance(inner, (str, bytes)):
            usage = _get(_fields(inner), "usage")
            if usage is not None:
                return usage
    return response


def extract_usage(response: Any) -> TokenUsage | None:
    """Token usage from a response (or a streamed chunk), or None when it carries none."""
    if type(response) is not dict:
        found = _from_model_fields(response)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
    usage = _usage_object(response)
    if usage is None:
        return None
    if type(usage) is dict and "prompt_tokens" in usage:  # OpenAI chat as a dict: the hot case
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return _new_tuple(TokenUsage, (
            _count(usage["prompt_tokens"]),
            _count(usage.get("completion_tokens")),
            _count(prompt_details.get("cached_tokens")) if type(prompt_details) is dict else 0,
            _count(completion_details.get("reasoning_tokens"))
            if type(completion_details) is dict else 0,
        ))
    fields = _fields(usage)
    if fields is not usage and fields.get("prompt_tokens") is not None:
        # OpenAI chat's CompletionUsage model, read from its fields as _read would
        return TokenUsage(
            _count(fields["prompt_tokens"]),
            _count(fields.get("completion_tokens")),
            _count(_get(fields.get("prompt_tokens_details"), "cached_tokens")),
            _count(_get(fields.get("completion_tokens_details"), "reasoning_tokens")),
        )
    return _read(fields)


def _model_fields(obj: Any) -> dict[str, Any] | None:
    """:func:`_fields` for the hot path: the fields of a pydantic model whose type plan
    allows it and that has no extra fields, else None."""
    try:
        plan = _PLANS.get(type(obj))
    except Exception:  # noqa: BLE001 - a type whose metaclass refuses hashing: the plain reads
        return None
    if plan is None or not plan.fields:
        return None
    try:
        if obj.__pydantic_extra__:
            return None
        fields = obj.__dict__
    except AttributeError:
        return None
    return fields if type(fields) is dict else None


def _from_model_fields(response: Any) -> TokenUsage | object | None:
    """A model response whose ``usage`` is a model, read from the two models' fields: what
    :func:`_usage_object` and :func:`_read` give for it, with fewer calls (an SDK response
    is the common case). ``_MISSING`` for anything else, which takes the general path."""
    fields = _model_fields(response)
    if fields is None:
        return _MISSING
    usage = fields.get("usage")
    if usage is None:
        return _MISSING
    usage_fields = _model_fields(usage)
    if usage_fields is None:
        return _MISSING
    prompt = usage_fields.get("prompt_tokens")
    if prompt is not None:  # OpenAI chat's CompletionUsage
        return _new_tuple(TokenUsage, (
            _count(prompt),
            _count(usage_fields.get("completion_tokens")),
            _detail(usage_fields.get("prompt_tokens_details"), "cached_tokens"),
            _detail(usage_fields.get("completion_tokens_details"), "reasoning_tokens"),
        ))
    return _read(usage_fields)


def _detail(details: Any, key: str) -> int:
    """A count from a details object (``prompt_tokens_details``), read as :func:`_get`
    reads it."""
    if details is None:
        return 0
    fields = _model_fields(details)
    return _count(fields.get(key) if fields is not None else _get(details, key))


def _read(usage: Any) -> TokenUsage | None:
    # A dict (a model's fields too) is read with its own bound get: the shape is probed
    # with up to ten reads, and each through _get would cost its type check again.
    get: Callable[[str], Any] = (usage.get if type(usage) is dict
                                 else functools.partial(_get, usage))
    prompt = get("prompt_tokens")
    if prompt is not None or get("completion_tokens") is not None:  # OpenAI chat
        return TokenUsage(
            _count(prompt),
            _count(get("completion_tokens")),
            _count(_get(get("prompt_tokens_details"), "cached_tokens")),
            _count(_get(get("completion_tokens_details"), "reasoning_tokens")),
        )

    input_tokens = get("input_tokens")
    if input_tokens is not None or get("output_tokens") is not None:
        cache_read = get("cache_read_input_tokens")
        cache_write = get("cache_creation_input_tokens")
        if cache_read is not None or cache_write is not None:  # Anthropic
            read = _count(cache_read)
            return TokenUsage(
                _count(input_tokens) + read + _count(cache_write),
                _count(get("output_tokens")),
                read,
                0,
            )
        return TokenUsage(  # OpenAI Responses API, or a plain {input_tokens, output_tokens}
            _count(input_tokens),
            _count(get("output_tokens")),
            _count(_get(get("input_tokens_details"), "cached_tokens")),
            _count(_get(get("output_tokens_details"), "reasoning_tokens")),
        )

    prompt_count = get("prompt_token_count")
    if prompt_count is not None or get("candidates_token_count") is not None:  # Gemini
        thoughts = _count(get("thoughts_token_count"))
        return TokenUsage(
            _count(prompt_count),
            _count(get("candidates_token_count")) + thoughts,
            _count(get("cached_content_token_count")),
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
    model = _get(_fields(response), "model")
    return model if isinstance(model, str) and model else None
