"""Prompts and completions on spans: what a call sent and received, per backend's rules.

Content travels beside the event, never on it: ``Telemetry.emit(event, content)`` hands a
:class:`CallContent` only to sinks that ask for content (``wants_content``), so Prometheus,
the remote sink's payload and the logs never see it. On the caller's thread it is a handful
of references (top-level lists copied, so a later ``messages.append`` does not change what
was sent); converting, masking, serialising and truncating happen on the backend's export
thread (:class:`ContentPolicy`, called by :mod:`.sink`).

Per backend, one switch, code over environment over default:

- ``langfuse``: ``langfuse.observation.input`` / ``.output``, written as the pinned SDK
  writes them (``langfuse/_client/attributes.py`` ``_serialize``: a str as it is, anything
  else JSON). On by default, as the SDK's ``@observe`` captures I/O
  (``_client/environment_variables.py``); off with
  ``PERSONA_EXPORTER_LANGFUSE_CAPTURE_CONTENT=false`` or the SDK's own
  ``LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED=false``.
- any other (OTLP): ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` as JSON text shaped by the GenAI conventions
  (open-telemetry/semantic-conventions-genai ``model/gen-ai/gen-ai-input-messages.json``,
  ``gen-ai-output-messages.json``), on generation spans. Off by default, as the conventions
  ask ("SHOULD NOT capture them by default"); on with
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (or ``SPAN_ONLY``,
  ``SPAN_AND_EVENT``, ``EVENT_ONLY``: all recorded as span attributes here).

In code: ``configure(capture_content=True | False | {"langfuse": ..., "otlp": ...},
mask=fn, content_max_chars=n)`` or the same keywords on ``TraceSink``.

A ``mask`` is called as Langfuse calls its own, ``mask(data=value)``, once per backend and
field, on the export thread (so it must be thread-safe); when it raises, the field becomes
Langfuse's fallback text and the error is counted (type name only: content never reaches
a log line). Each field is capped at ``content_max_chars`` characters of its attribute
value: long strings inside are cut, keeping the JSON valid, each cut marked with
``…[truncated N chars]``; the span is marked and the cut counted in
``persona_exporter_trace_content_truncated_total{backend}`` (once per field cut).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

logger = logging.getLogger("persona_exporter")

# The pinned SDK's names (langfuse/_client/attributes.py LangfuseOtelSpanAttributes), kept
# literal so the SDK's hot path imports neither langfuse nor OpenTelemetry; a test pins them.
LANGFUSE_INPUT = "langfuse.observation.input"
LANGFUSE_OUTPUT = "langfuse.observation.output"
LANGFUSE_TRUNCATED = "langfuse.observation.metadata.content_truncated"
# langfuse/_client/constants.py MASK_FALLBACK_VALUE
MASK_FALLBACK = "<fully masked due to failed mask function>"

GENAI_INPUT = "gen_ai.input.messages"
GENAI_OUTPUT = "gen_ai.output.messages"
GENAI_SYSTEM = "gen_ai.system_instructions"
GENAI_TRUNCATED = "persona_exporter.content.truncated"

LANGFUSE_CAPTURE_ENV = "PERSONA_EXPORTER_LANGFUSE_CAPTURE_CONTENT"
LANGFUSE_SDK_CAPTURE_ENV = "LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED"
OTEL_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
MAX_CHARS_ENV = "PERSONA_EXPORTER_TRACE_CONTENT_MAX_CHARS"

DEFAULT_MAX_CHARS = 32_768
MIN_MAX_CHARS = 256
# Streamed chunks kept per call for the output; past it the output is marked truncated.
MAX_CHUNKS = 10_000
# Bounds on turning arbitrary objects into JSON values, so one pathological argument
# cannot hold the export thread.
_MAX_DEPTH = 20
_MAX_NODES = 100_000
_MAX_REPR = 10_000

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_OTEL_ON = frozenset({"true", "span_only", "span_and_event", "event_only"})
_OTEL_OFF = frozenset({"false", "no_content", ""})
# Keyword arguments never recorded (a client's key or headers passed per call).
_CREDENTIALS = frozenset({"apikey", "authorization", "token", "secret", "password"})
_CREDENTIAL_SUFFIXES = ("_key", "_token", "_secret", "password", "headers")
_INPUT_KEYS = ("prompt", "input", "contents")


class CallArgs(dict[str, Any]):
    """A call's keyword arguments carrying its positional ones (and its streamed chunks)
    along, so ObservableLLM's existing plumbing takes them to the recording point. Built
    on the caller's thread only when some sink captures content: a dict copy and copies
    of the top-level lists, nothing serialised."""

    __slots__ = ("args", "chunks", "chunks_dropped")

    def __init__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        super().__init__(kwargs)
        for key in ("messages", *_INPUT_KEYS):
            value = self.get(key)
            if type(value) is list:
                self[key] = value.copy()
        if args and type(args[0]) is list:
            args = (args[0].copy(), *args[1:])
        self.args = args
        self.chunks: list[Any] = []
        self.chunks_dropped = 0

    def keep(self, chunk: Any) -> None:
        """Note one streamed chunk (a reference) for the output."""
        if len(self.chunks) < MAX_CHUNKS:
            self.chunks.append(chunk)
        else:
            self.chunks_dropped += 1


class CallContent:
    """What one call sent and received, for the sinks that capture content.

    ``CallContent(input=prompt, output=completion)`` for an explicit pair (a str, a list
    of chat messages, a response object or any JSON-able value): what governance's
    ``trace_llm_call(prompt=..., response=...)`` and seed-style ``create_generation``
    hand over as ``telemetry.emit(event, CallContent(...))``. Build it only when
    ``telemetry.captures_content``; it costs nothing to skip. ``of_call`` is
    ObservableLLM's form: the wrapped function's arguments and result.
    """

    __slots__ = ("call", "input", "output", "streamed")

    def __init__(self, input: Any = None, output: Any = None) -> None:
        self.input = input
        self.output = output
        self.call: CallArgs | None = None
        self.streamed = False

    @classmethod
    def of_call(cls, call: CallArgs, result: Any, streamed: bool = False) -> CallContent:
        content = cls(output=result)
        content.call = call
        content.streamed = streamed
        return content


# --- switches -----------------------------------------------------------------------------

Capture = bool | Mapping[str, bool] | None


def _env_flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    logger.warning("%s=%r is not true or false; ignoring it", name, raw)
    return None


def capture_from_env(backend: str) -> bool:
    """Whether ``backend`` captures content when code does not say."""
    if backend == "langfuse":
        for name in (LANGFUSE_CAPTURE_ENV, LANGFUSE_SDK_CAPTURE_ENV):
            flag = _env_flag(name)
            if flag is not None:
                return flag
        return True
    raw = os.environ.get(OTEL_CAPTURE_ENV, "").strip().lower()
    if raw in _OTEL_ON:
        return True
    if raw not in _OTEL_OFF:
        logger.warning("%s=%r is not one of true, false, NO_CONTENT, SPAN_ONLY, EVENT_ONLY, "
                       "SPAN_AND_EVENT; content is not captured", OTEL_CAPTURE_ENV, raw)
    return False


def check_capture(capture: Capture, known: Iterable[str] = ("langfuse", "otlp")) -> Capture:
    """``capture`` if it is a valid ``capture_content`` value, else a ValueError naming it."""
    if capture is None or isinstance(capture, bool):
        return capture
    if isinstance(capture, Mapping):
        names = sorted(set(known))
        for key, value in capture.items():
            if key not in names:
                raise ValueError(f"capture_content: unknown backend {key!r} (known: "
                                 f"{', '.join(names)})")
            if not isinstance(value, bool):
                raise ValueError(f"capture_content[{key!r}]: expected True or False, got "
                                 f"{value!r}")
        return capture
    raise ValueError(f"capture_content: expected True, False or a mapping of backend name "
                     f"to bool, got {type(capture).__name__}")


def check_max_chars(max_chars: int | None) -> int | None:
    if max_chars is None:
        return None
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or \
            max_chars < MIN_MAX_CHARS:
        raise ValueError(f"content_max_chars: expected an integer >= {MIN_MAX_CHARS}, got "
                         f"{max_chars!r}")
    return max_chars


def max_chars_from_env() -> int:
    raw = os.environ.get(MAX_CHARS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_CHARS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < MIN_MAX_CHARS:
        logger.warning("%s=%r is not an integer >= %d; using %d", MAX_CHARS_ENV, raw,
                       MIN_MAX_CHARS, DEFAULT_MAX_CHARS)
        return DEFAULT_MAX_CHARS
    return value


def resolve_capture(backend: str, capture: Capture) -> bool:
    if isinstance(capture, bool):
        return capture
    if capture is not None and backend in capture:
        return capture[backend]
    return capture_from_env(backend)


# --- turning objects into JSON values -------------------------------------------------------

class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _MAX_NODES


def _safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001 - a hostile __repr__
        return f"<unrepresentable {type(obj).__name__}>"
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "…"


def plain(obj: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """A JSON value for ``obj``: JSON types as they are, models and dataclasses as dicts,
    anything else its repr. Never raises; bounded in depth and size."""
    if budget is None:
        budget = _Budget()
    budget.left -= 1
    kind = type(obj)
    if obj is None or kind is str or kind is bool or kind is int:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else str(obj)
    if depth >= _MAX_DEPTH or budget.left <= 0:
        return "<…>"
    try:
        if isinstance(obj, Mapping):
            return {str(k) if type(k) is str else _safe_repr(k): plain(v, depth + 1, budget)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple, set, frozenset)):
            return [plain(v, depth + 1, budget) for v in obj]
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, (bytes, bytearray)):
            return base64.b64encode(bytes(obj[:_MAX_REPR])).decode("ascii")
        if isinstance(obj, bool):  # subclasses of the JSON scalars (IntEnum, ...)
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return plain(float(obj), depth, budget)
        dump = getattr(obj, "model_dump", None)  # pydantic (OpenAI, Anthropic responses)
        if callable(dump):
            return plain(dump(mode="json", exclude_none=True), depth + 1, budget)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: plain(getattr(obj, f.name, None), depth + 1, budget)
                    for f in dataclasses.fields(obj)}
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return plain(to_dict(), depth + 1, budget)
    except Exception:  # noqa: BLE001 - hostile objects: fall back to the repr
        return _safe_repr(obj)
    return _safe_repr(obj)


def _lazy(obj: Any) -> Any:
    """``obj`` itself when JSON may take it as it is (a plain dict, list or scalar: checked
    when it is serialised, with :func:`plain` as the fallback), else its plain form. Most
    content is plain dicts and lists, which the C encoder writes far faster."""
    kind = type(obj)
    if kind is dict or kind is list or kind is str or obj is None or kind is int \
            or kind is float or kind is bool:
        return obj
    return plain(obj)


def _get(obj: Any, name: str) -> Any:
    """A field of a dict or an attribute of an object (SDK response types), or None."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - properties of foreign objects may raise
        return None


def _is_messages(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    return isinstance(_get(first, "role"), str)


def _without_credentials(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items()
            if str(k).lower() not in _CREDENTIALS
            and not str(k).lower().endswith(_CREDENTIAL_SUFFIXES)}


# What a call's input is: chat messages (with an optional system prompt), a single value
# (a prompt string, a list...), or the call's arguments as a whole.
_Input = tuple[str, Any, Any]


def _input_of(content: CallContent) -> _Input | None:
    call = content.call
    if call is None:
        if content.input is None:
            return None
        kind = "messages" if _is_messages(content.input) else "value"
        return kind, content.input, None
    messages = call.get("messages")
    if messages is not None:
        return "messages", messages, call.get("system")
    for key in _INPUT_KEYS:
        value = call.get(key)
        if value is not None:
            return ("messages" if _is_messages(value) else "value"), value, call.get("system")
    if call.args:
        first = call.args[0]
        if isinstance(first, str) or _is_messages(first):
            return ("messages" if _is_messages(first) else "value"), first, call.get("system")
    if not call.args and not call:
        return None
    # As Langfuse's @observe records a function's input (langfuse/_client/observe.py).
    return "call", {"args": list(call.args), "kwargs": _without_credentials(call)}, None


# --- Langfuse: observation input/output as the SDK writes them ------------------------------

def langfuse_input(content: CallContent) -> Any:
    found = _input_of(content)
    if found is None:
        return None
    kind, value, system = found
    if kind == "messages":
        messages = [_langfuse_message(m) for m in value]
        if system is not None:
            messages = [{"role": "system", "content": _lazy(system)}, *messages]
        return messages
    return _lazy(value)


def _langfuse_message(message: Any) -> Any:
    dumped = _lazy(message)
    if isinstance(dumped, str):  # a message object with no dict form: its role and content
        dumped = {"role": _get(message, "role"), "content": plain(_get(message, "content"))}
    return dumped


def _choice_message(choice: Any) -> Any:
    message = _get(choice, "message")
    return _lazy(message if message is not None else choice)


def langfuse_output(content: CallContent) -> Any:
    if content.streamed:
        return _stream_output(content, lambda text, _reason: text)
    return _langfuse_response(content.output)


def _langfuse_response(response: Any) -> Any:
    if response is None or isinstance(response, str):
        return response
    choices = _get(response, "choices")
    if isinstance(choices, (list, tuple)) and choices:
        # As Langfuse's OpenAI integration records a completion: the first choice's message.
        if len(choices) == 1:
            return _choice_message(choices[0])
        return [_choice_message(c) for c in choices]
    blocks = _get(response, "content")  # Anthropic Messages
    if isinstance(blocks, (list, tuple)) and blocks and _get(blocks[0], "type"):
        texts = [_get(b, "text") for b in blocks]
        if all(isinstance(t, str) for t in texts):
            return {"role": _get(response, "role") or "assistant", "content": "".join(texts)}
        return {"role": _get(response, "role") or "assistant", "content": plain(blocks)}
    text = _get(response, "output_text")  # OpenAI Responses
    if isinstance(text, str):
        return text
    return _lazy(response)


# --- streams --------------------------------------------------------------------------------

def _chunk_text(chunk: Any) -> tuple[str | None, Any]:
    """The text a streamed chunk adds and the finish reason it carries, if any."""
    if isinstance(chunk, str):
        return chunk, None
    choices = _get(chunk, "choices")  # OpenAI chat completions
    if isinstance(choices, (list, tuple)):
        if not choices:
            return None, None
        delta = _get(choices[0], "delta")
        text = _get(delta, "content") if delta is not None else None
        return (text if isinstance(text, str) else None), _get(choices[0], "finish_reason")
    kind = _get(chunk, "type")
    if kind == "content_block_delta":  # Anthropic
        text = _get(_get(chunk, "delta"), "text")
        return (text if isinstance(text, str) else None), None
    if kind == "message_delta":
        return None, _get(_get(chunk, "delta"), "stop_reason")
    if kind == "response.output_text.delta":  # OpenAI Responses
        text = _get(chunk, "delta")
        return (text if isinstance(text, str) else None), None
    if isinstance(kind, str):
        return None, None
    text = _get(chunk, "text")  # Gemini and plain dicts
    return (text if isinstance(text, str) else None), None


def _stream_output(content: CallContent, build: Callable[[str, Any], Any]) -> Any:
    call = content.call
    chunks = call.chunks if call is not None else []
    texts: list[str] = []
    reason = None
    for chunk in chunks:
        text, finish = _chunk_text(chunk)
        if text:
            texts.append(text)
        if finish:
            reason = finish
    dropped = call.chunks_dropped if call is not None else 0
    if not texts:
        if not chunks:
            return None
        return [plain(c) for c in chunks]
    text = "".join(texts)
    if dropped:
        text += _marker_text(f"{dropped} more chunks")
    return build(text, reason)


# --- OpenTelemetry GenAI: messages as the semantic conventions shape them -------------------

_FINISH = {"stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "length": "length",
           "max_tokens": "length", "tool_calls": "tool_call", "function_call": "tool_call",
           "tool_use": "tool_call", "content_filter": "content_filter",
           "refusal": "content_filter", "error": "error"}


def _text_part(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        text = json.dumps(plain(text), ensure_ascii=False)
    return {"type": "text", "content": text}


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return plain(raw)


def _data_url_part(url: str, modality: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        mime, _, data = url[5:].partition(";base64,")
        return {"type": "blob", "modality": modality, "mime_type": mime or None,
                "content": data}
    return {"type": "uri", "modality": modality, "uri": url}


def _genai_part(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return _text_part(part)
    kind = _get(part, "type")
    if kind in ("text", "input_text", "output_text"):
        return _text_part(_get(part, "text") or "")
    if kind == "image_url":  # OpenAI
        url = _get(_get(part, "image_url"), "url")
        if isinstance(url, str):
            return _data_url_part(url, "image")
    if kind in ("image", "document"):  # Anthropic
        source = _get(part, "source")
        modality = "image" if kind == "image" else "document"
        if _get(source, "type") == "base64":
            return {"type": "blob", "modality": modality,
                    "mime_type": _get(source, "media_type"), "content": _get(source, "data")}
        if isinstance(_get(source, "url"), str):
            return {"type": "uri", "modality": modality, "uri": _get(source, "url")}
    if kind == "tool_use":  # Anthropic
        return {"type": "tool_call", "id": _get(part, "id"), "name": _get(part, "name") or "",
                "arguments": plain(_get(part, "input"))}
    if kind == "tool_result":
        return {"type": "tool_call_response", "id": _get(part, "tool_use_id"),
                "response": plain(_get(part, "content"))}
    if kind == "thinking":
        return {"type": "reasoning", "content": _get(part, "thinking") or ""}
    if isinstance(kind, str):  # the conventions' GenericPart: any type, any properties
        dumped = plain(part)
        return {**(dumped if isinstance(dumped, dict) else {}), "type": kind}
    return _text_part(plain(part))


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, (list, tuple)):
        return [_genai_part(p) for p in content]
    return [_genai_part(content)]


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    calls = _get(message, "tool_calls")
    if not isinstance(calls, (list, tuple)):
        return []
    parts = []
    for call in calls:
        function = _get(call, "function")
        parts.append({"type": "tool_call", "id": _get(call, "id"),
                      "name": _get(function, "name") or "",
                      "arguments": _arguments(_get(function, "arguments"))})
    return parts


def _genai_message(message: Any, default_role: str) -> dict[str, Any]:
    role = _get(message, "role")
    role = role if isinstance(role, str) else default_role
    content = _get(message, "content")
    if role == "tool" and _get(message, "tool_call_id") is not None:  # OpenAI tool result
        parts = [{"type": "tool_call_response", "id": _get(message, "tool_call_id"),
                  "response": plain(content)}]
    else:
        parts = _parts(content) + _tool_calls(message)
    result: dict[str, Any] = {"role": role, "parts": parts}
    name = _get(message, "name")
    if isinstance(name, str):
        result["name"] = name
    return result


def genai_input(content: CallContent) -> tuple[Any, Any]:
    """``gen_ai.input.messages`` and ``gen_ai.system_instructions`` (or None)."""
    found = _input_of(content)
    if found is None:
        return None, None
    kind, value, system = found
    instructions = _parts(system) if system is not None else None
    if kind == "messages":
        return [_genai_message(m, "user") for m in value], instructions
    if kind == "value" and isinstance(value, (list, tuple)) and \
            all(isinstance(v, str) for v in value):
        return [{"role": "user", "parts": [_text_part(v) for v in value]}], instructions
    return [{"role": "user", "parts": [_text_part(plain(value))]}], instructions


def _output_message(parts: list[dict[str, Any]], reason: Any,
                    role: Any = "assistant") -> dict[str, Any]:
    return {"role": role if isinstance(role, str) else "assistant", "parts": parts,
            "finish_reason": _FINISH.get(reason, reason) if isinstance(reason, str)
            else "stop"}


def genai_output(content: CallContent) -> Any:
    if content.streamed:
        return _stream_output(content, lambda text, reason: [
            _output_message([_text_part(text)], reason)])
    response = content.output
    if response is None:
        return None
    if isinstance(response, str):
        return [_output_message([_text_part(response)], None)]
    choices = _get(response, "choices")
    if isinstance(choices, (list, tuple)) and choices:
        messages = []
        for choice in choices:
            message = _get(choice, "message")
            messages.append(_output_message(
                _parts(_get(message, "content")) + _tool_calls(message),
                _get(choice, "finish_reason"), _get(message, "role")))
        return messages
    blocks = _get(response, "content")
    if isinstance(blocks, (list, tuple)) and blocks and _get(blocks[0], "type"):
        return [_output_message(_parts(blocks), _get(response, "stop_reason"),
                                _get(response, "role"))]
    text = _get(response, "output_text")
    if isinstance(text, str):
        return [_output_message([_text_part(text)], None)]
    return [_output_message([_text_part(plain(response))], None)]


# --- mask, serialise, cap -------------------------------------------------------------------

class ContentText(str):
    """A content attribute value. Not an exact ``str`` on purpose: the span encoder caches
    the bytes of every repeating (key, str) pair, and content never repeats; this keeps
    prompts out of that cache (and its memory)."""

    __slots__ = ()


def _marker_text(what: str) -> str:
    return f"…[truncated {what}]"


def _marker(cut: int) -> str:
    return _marker_text(f"{cut} chars")


_MARKER_ROOM = len(_marker(10**12))


def _cut(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        if len(value) > limit + _MARKER_ROOM:
            return value[:limit] + _marker(len(value) - limit)
        return value
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    return value


def _longest(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((_longest(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest(v) for v in value), default=0)
    return 0


def _utf8_safe(text: str) -> str:
    # A lone surrogate is not UTF-8: protobuf would refuse the whole batch over it.
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Errors(Protocol):
    def report(self, component: str, error: BaseException | str) -> None: ...


def _refuse(obj: Any) -> Any:
    raise TypeError(type(obj).__name__)


def _json_writer(ensure_ascii: bool) -> Callable[[Any], str]:
    """JSON text with json.dumps's separators, refusing NaN and non-JSON objects (they go
    through :func:`plain` instead). The C encoder is built once: json.dumps builds one per
    call, half the cost for small messages. No circular check: a circle is a
    RecursionError, which also falls back to the depth-bounded plain()."""
    make = getattr(json.encoder, "c_make_encoder", None)
    quote = json.encoder.encode_basestring_ascii if ensure_ascii \
        else json.encoder.encode_basestring
    if make is None:  # no C accelerator in this Python
        return json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False,
                                check_circular=False).encode
    encode = make(None, _refuse, quote, None, ": ", ", ", False, False, False)

    def write(value: Any) -> str:
        if isinstance(value, str):
            return quote(value)
        return "".join(encode(value, 0))

    return write


# Langfuse's are json.dumps's defaults (its _serialize: ASCII escapes); GenAI keeps UTF-8.
_LANGFUSE_JSON = _json_writer(ensure_ascii=True)
_GENAI_JSON = _json_writer(ensure_ascii=False)


class ContentPolicy:
    """One backend's content rules: whether it captures, its style (``langfuse`` or
    ``genai``), the mask and the cap. ``attributes`` runs on the backend's export thread."""

    def __init__(self, backend: str, *, capture: bool, mask: Callable[..., Any] | None = None,
                 max_chars: int = DEFAULT_MAX_CHARS,
                 truncated: _Counter | None = None,
                 errors: _Errors | None = None) -> None:
        self.backend = backend
        self.capture = capture
        self.style = "langfuse" if backend == "langfuse" else "genai"
        self.mask = mask
        self.max_chars = max_chars
        self._truncated = truncated
        self._errors = errors

    def attributes(self, content: CallContent, generation: bool) -> dict[str, Any]:
        """The span attributes for ``content``; {} when there is nothing to add. Never
        raises; a failure is counted by type name only (content stays out of logs)."""
        if not self.capture:
            return {}
        try:
            if self.style == "langfuse":
                return self._langfuse(content)
            return self._genai(content) if generation else {}
        except Exception as exc:  # noqa: BLE001
            self._report("trace.content", exc)
            return {}

    def _langfuse(self, content: CallContent) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        cut: dict[str, int] = {}
        for field, key, value in (("input", LANGFUSE_INPUT, langfuse_input(content)),
                                  ("output", LANGFUSE_OUTPUT, langfuse_output(content))):
            if value is None:
                continue
            text, original = self._field(value, self._lf_text, self._lf_fallback)
            attributes[key] = text
            if original:
                cut[field] = original
        if cut:  # observation metadata, JSON-encoded as the SDK encodes metadata values
            attributes[LANGFUSE_TRUNCATED] = json.dumps(cut, separators=(",", ":"))
        return attributes

    def _genai(self, content: CallContent) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        cut: list[str] = []
        messages, system = genai_input(content)
        for field, key, value, role in (
                ("input", GENAI_INPUT, messages, "user"),
                ("input", GENAI_SYSTEM, system, "system"),
                ("output", GENAI_OUTPUT, genai_output(content), "assistant")):
            if value is None:
                continue
            text, original = self._field(value, self._genai_text,
                                         functools.partial(self._genai_fallback, role=role,
                                                           key=key))
            attributes[key] = text
            if original and field not in cut:
                cut.append(field)
        if cut:
            attributes[GENAI_TRUNCATED] = tuple(cut)
        return attributes

    # serialisers: the Langfuse SDK's _serialize (a str as it is, else JSON); GenAI JSON
    @staticmethod
    def _lf_text(value: Any) -> str:
        return value if isinstance(value, str) else _LANGFUSE_JSON(value)

    @staticmethod
    def _genai_text(value: Any) -> str:
        return _GENAI_JSON(value)

    @staticmethod
    def _lf_fallback(text: str) -> Any:
        return text

    @staticmethod
    def _genai_fallback(text: str, role: str, key: str) -> Any:
        if key == GENAI_SYSTEM:
            return [_text_part(text)]
        message: dict[str, Any] = {"role": role, "parts": [_text_part(text)]}
        if key == GENAI_OUTPUT:
            message["finish_reason"] = "stop"
        return [message]

    def _field(self, value: Any, serialise: Callable[[Any], str],
               fallback: Callable[[str], Any]) -> tuple[ContentText, int]:
        """Mask, serialise and cap one field: its text, and its length before the cap
        (0 when it fitted)."""
        if self.mask is not None:
            try:  # the mask gets a copy: it must not touch the caller's objects
                value = plain(self.mask(data=plain(value)))
            except Exception as exc:  # noqa: BLE001 - the user's mask: Langfuse's fallback
                self._report("trace.mask", exc)
                value = fallback(MASK_FALLBACK)
        try:
            text = serialise(value)
        except (TypeError, ValueError, RecursionError):  # not JSON as it is: NaN, objects...
            value = plain(value)
            text = serialise(value)
        original = 0
        if len(text) > self.max_chars:
            original = len(text)
            text = self._fit(plain(value), serialise, fallback)
            if self._truncated is not None:
                self._truncated.inc()
        return ContentText(_utf8_safe(text)), original

    def _fit(self, value: Any, serialise: Callable[[Any], str],
             fallback: Callable[[str], Any]) -> str:
        """The longest serialisation within the cap that keeps the structure: every string
        cut to one common length (found by bisection), each cut marked."""
        limit = self.max_chars
        if isinstance(value, str):  # Langfuse's plain-text input or output
            keep = max(0, limit - _MARKER_ROOM)
            return value[:keep] + _marker(len(value) - keep)
        best = None
        low, high = 0, min(_longest(value), limit)  # no string can keep more than the cap
        while low <= high:
            middle = (low + high) // 2
            candidate = serialise(_cut(value, middle))
            if len(candidate) <= limit:
                best, low = candidate, middle + 1
            else:
                high = middle - 1
        if best is not None:
            return best
        # The structure alone is over the cap (thousands of messages): its text, cut.
        whole = serialise(value)
        keep = max(0, limit // 2 - _MARKER_ROOM)
        return serialise(fallback(whole[:keep] + _marker(len(whole) - keep)))

    def _report(self, component: str, exc: BaseException) -> None:
        # The type name only: an exception's message may quote the content.
        if self._errors is not None:
            self._errors.report(component, type(exc).__name__)
