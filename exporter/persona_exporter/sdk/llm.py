"""``ObservableLLM`` and ``@observe_llm``: instrument an LLM call without changing it.

    llm = ObservableLLM(client.chat.completions.create, provider="openai")
    with persona("backend-engineer", chatmode="bug-fix"):
        response = llm(model="gpt-4o", messages=[...])

    @observe_llm(model="claude-sonnet-4", provider="anthropic")
    async def ask(prompt: str) -> Message: ...

Sync and async functions, and sync and async generators (streaming: the time to the first
chunk is recorded and usage is read from the chunks), are all supported. The result is
returned and any exception re-raised untouched; the instrumentation's own failures are
counted and logged once, never raised. With no telemetry configured the wrapper calls
straight through.

Persona and chatmode come from the call's own ``persona=``/``chatmode=`` keywords (as
the first seed passes them; passed on only if the wrapped function declares them), else
the wrapper's arguments, else the surrounding ``persona``/``stage`` context. The model
comes from the wrapper, else the call's ``model=`` keyword, else the response's ``model``
attribute.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import time
from collections.abc import Callable
from types import AsyncGeneratorType, GeneratorType
from typing import Any, TypeVar, cast, overload

from ..events import MAX_SECONDS, MAX_TOKENS, LLMGeneration, clean_name
from ..tracing.content import CallArgs, CallContent
from . import telemetry as _telemetry
from .context import SCOPE, Scope
from .streams import AsyncStreamProxy, StreamProxy, afollow, follow
from .telemetry import Telemetry
from .trace_ids import new_span_id, new_trace_id, sampled
from .usage import TokenUsage, UsageExtractor, coerce_usage, extract_usage, response_model

F = TypeVar("F", bound=Callable[..., Any])

_perf_counter = time.perf_counter
_NAME_CACHE_MAX = 1024


class ObservableLLM:
    """Wrap an LLM-calling function so each call is recorded as an ``LLMGeneration``.

    ``usage`` extracts token usage from a response (or chunk) when the built-in shapes do
    not fit; it may return a :class:`TokenUsage`, a mapping with ``input``/``output``/
    ``cache_read``/``reasoning``, or None.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        llm_function: Callable[..., Any] | None = None,
        model: str | None = None,
        provider: str | None = None,
        persona: str | None = None,
        chatmode: str | None = None,
        usage: UsageExtractor | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        target = fn if fn is not None else llm_function  # llm_function=: the first seed's name
        if target is None or not callable(target):
            target = _not_callable(target)
        self.__wrapped__ = target
        self._model = _clean_or_none(model, "unknown")
        self._provider = _clean_or_none(provider, "unknown") or "unknown"
        self._persona = _clean_or_none(persona, "unknown")
        self._chatmode = _clean_or_none(chatmode, "none")
        self._usage = usage if callable(usage) else None
        self._telemetry = telemetry if isinstance(telemetry, Telemetry) else None
        self._names: dict[Any, str] = {}
        self._passes = _declared_call_keywords(target)
        self.function: Callable[..., Any] = self._build(target)
        with contextlib.suppress(Exception):  # a callable whose attributes refuse copying
            functools.update_wrapper(self, target, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def _for_call(self, kwargs: dict[str, Any]) -> ObservableLLM:
        """The call's own ``persona=``/``chatmode=`` taken out of ``kwargs`` (left in when
        the wrapped function declares them); with them, a per-call copy of this wrapper
        that records under them (call > wrapper > scope)."""
        persona, chatmode = kwargs.get("persona"), kwargs.get("chatmode")
        for key in _CALL_KEYWORDS - self._passes:
            kwargs.pop(key, None)
        if persona is None and chatmode is None:
            return self
        owner = copy.copy(self)
        if persona is not None:
            owner._persona = _clean_or_none(persona, "unknown")
        if chatmode is not None:
            owner._chatmode = _clean_or_none(chatmode, "none")
        return owner

    # --- the wrappers ---

    def _build(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):
            return self._wrap_stream(fn, afollow)
        if inspect.iscoroutinefunction(fn):
            return self._wrap_async(fn)
        if inspect.isgeneratorfunction(fn):
            return self._wrap_stream(fn, follow)
        return self._wrap_sync(fn)

    def _wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            owner = (self._for_call(kwargs) if "persona" in kwargs or "chatmode" in kwargs
                     else self)
            scope = SCOPE.get()
            tel = self._telemetry or scope.telemetry or _telemetry._default
            if not tel.active:
                return fn(*args, **kwargs)
            # The record's view of the call: with content capture, a copy of the prompt
            # lists (references only, serialised on the export thread). The function gets
            # the caller's own arguments: an agent loop appending to its messages must see
            # it whether or not anything captures.
            seen = CallArgs(args, kwargs) if tel.captures_content else kwargs
            start = _perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                owner._record(tel, scope, seen, None, None, _perf_counter() - start, None,
                              exc)
                raise
            return owner._finish_or_follow(tel, scope, seen, result, start)

        return call

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            owner = (self._for_call(kwargs) if "persona" in kwargs or "chatmode" in kwargs
                     else self)
            scope = SCOPE.get()
            tel = self._telemetry or scope.telemetry or _telemetry._default
            if not tel.active:
                return await fn(*args, **kwargs)
            # The record's view of the call: with content capture, a copy of the prompt
            # lists (references only, serialised on the export thread). The function gets
            # the caller's own arguments: an agent loop appending to its messages must see
            # it whether or not anything captures.
            seen = CallArgs(args, kwargs) if tel.captures_content else kwargs
            start = _perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                owner._record(tel, scope, seen, None, None, _perf_counter() - start, None,
                              exc)
                raise
            return owner._finish_or_follow(tel, scope, seen, result, start)

        return call

    # Generator functions get a plain wrapper that returns the generator: the persona and
    # stage are read when the stream is created (inside ``with persona(...)``), not when a
    # framework first iterates it elsewhere. The price: inspect.isgeneratorfunction and
    # isasyncgenfunction answer False for the wrapper.

    def _wrap_stream(self, fn: Callable[..., Any],
                     following: Callable[[_Pending, Any], Any]) -> Callable[..., Any]:
        """A generator or async generator function: ``following`` is ``follow`` or
        ``afollow``."""
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            owner = (self._for_call(kwargs) if "persona" in kwargs or "chatmode" in kwargs
                     else self)
            scope = SCOPE.get()
            tel = self._telemetry or scope.telemetry or _telemetry._default
            stream = fn(*args, **kwargs)
            if not tel.active:
                return stream
            if tel.captures_content:  # references only: serialised on the export thread
                kwargs = CallArgs(args, kwargs)
            # The body of a generator runs from its first next(): that is the call's start.
            return following(_Pending(owner, tel, scope, kwargs, None), stream)

        return call

    def _finish_or_follow(self, tel: Telemetry, scope: Scope, kwargs: dict[str, Any],
                          result: Any, start: float) -> Any:
        """Record a finished call, or follow a result that is not finished yet."""
        kind = type(result)
        if kind is dict:  # the common finished response, without the lookup below
            self._record(tel, scope, kwargs, result, None, _perf_counter() - start, None, None)
            return result
        how = result_kind(kind)
        if how is _FINISHED:
            self._record(tel, scope, kwargs, result, None, _perf_counter() - start, None, None)
            return result
        if how is _AWAITABLE:  # e.g. AsyncOpenAI().chat.completions.create
            return self._await_then_record(tel, scope, kwargs, result, start)
        pending = _Pending(self, tel, scope, kwargs, start)
        if how is _GENERATOR:
            return follow(pending, result)
        if how is _ASYNC_GENERATOR:
            return afollow(pending, result)
        if how is _ITERATOR:  # e.g. openai.Stream
            return StreamProxy(result, pending)
        return AsyncStreamProxy(result, pending)  # e.g. openai.AsyncStream

    async def _await_then_record(self, tel: Telemetry, scope: Scope, kwargs: dict[str, Any],
                                 awaitable: Any, start: float) -> Any:
        try:
            result = await awaitable
        except BaseException as exc:
            self._record(tel, scope, kwargs, None, None, _perf_counter() - start, None, exc)
            raise
        return self._finish_or_follow(tel, scope, kwargs, result, start)

    # --- recording ---

    def _merge_chunk_usage(self, tel: Telemetry, usage: TokenUsage | None,
                           chunk: Any) -> TokenUsage | None:
        try:
            found = self._extract(chunk)
        except Exception as exc:  # noqa: BLE001
            tel.errors.report("usage", exc)
            return usage
        if found is None:
            return usage
        return found if usage is None else usage.merge_max(found)

    def _extract(self, response: Any) -> TokenUsage | None:
        if self._usage is not None:
            return coerce_usage(self._usage(response))
        return extract_usage(response)

    def _name(self, raw: Any, default: str) -> str:
        # Cleaning a name costs a regex match; the same few model names recur, so cache.
        name = self._names.get(raw)
        if name is None:
            name = clean_name(raw, default)
            if len(self._names) < _NAME_CACHE_MAX:
                self._names[raw] = name
        return name

    def _record(self, tel: Telemetry, scope: Scope, kwargs: dict[str, Any], response: Any,
                usage: TokenUsage | None, duration: float, first_chunk: float | None,
                error: BaseException | None, streamed: bool = False,
                stopped_early: bool = False) -> None:
        try:
            unread = False  # the extractor failed: reported as such, not as missing usage
            if usage is None and response is not None and not streamed:
                try:
                    usage = self._extract(response)
                except Exception as exc:  # noqa: BLE001 - a user extractor may fail
                    tel.errors.report("usage", exc)
                    unread = True
            model = self._model
            if model is None:
                raw = kwargs.get("model") or response_model(response)
                model = self._name(raw, "unknown") if raw is not None else "unknown"
            persona = self._persona or scope.persona or "unknown"
            if usage is None:
                # A failed call has no usage to miss; a stream the consumer stopped early
                # never got to its last chunk, where providers put the usage (OpenAI with
                # include_usage, Anthropic's message_delta): nothing is misconfigured.
                if error is None and not unread and not stopped_early:
                    tel.errors.note("usage", "missing", model, _NO_USAGE_MESSAGE % model)
                usage = _NO_USAGE
            elif usage.billed:
                stage = scope.stage
                if stage is not None:
                    stage.consume(usage.billed)
                elif scope.run is not None:
                    scope.run.budget.consume(usage.billed)
            chatmode = self._chatmode or scope.chatmode or "none"
            error_type = self._name(type(error).__name__, "Exception") if error else None
            recorder = tel.metrics_only
            # Only numbers an event could carry go straight to the series; the rest take
            # the event path, whose recorder refuses them (rejected, reported) as before.
            if recorder is not None and _within_bounds(usage, duration, first_chunk):
                recorder.record_generation(persona, chatmode, model, self._provider,
                                           usage.input, usage.output, usage.cache_read,
                                           usage.reasoning, tel.cost_usd(model, usage),
                                           duration, first_chunk, error_type)
                return
            run = scope.run
            event = LLMGeneration(
                persona=persona,
                chatmode=chatmode,
                model=model,
                provider=self._provider,
                input_tokens=usage.input,
                output_tokens=usage.output,
                cache_read_tokens=usage.cache_read,
                reasoning_tokens=usage.reasoning,
                cost_usd=tel.cost_usd(model, usage),
                duration_seconds=duration,
                time_to_first_chunk_seconds=first_chunk,
                error_type=error_type,
            )
            if run is not None:
                event.workflow = run.name
                event.run_id = run.run_id
                stage = scope.stage
                if stage is not None:
                    event.stage = stage.name
                if run.trace_id is not None:
                    event.start_time = time.time() - duration
                    event.trace_id = run.trace_id
                    event.trace = run.trace_attributes
                    event.span_id = new_span_id()
                    event.parent_span_id = (stage.span_id if stage is not None and stage.span_id
                                            else run.span_id)
            elif tel.needs_trace_context and sampled(tel):  # a call outside any workflow
                event.start_time = time.time() - duration
                event.trace_id = new_trace_id()
                event.span_id = new_span_id()
            tel.emit(event, CallContent.of_call(kwargs, response, streamed)
                     if type(kwargs) is CallArgs else None)
        except Exception as exc:  # noqa: BLE001 - never raise into the caller
            tel.errors.report("llm", exc)


_NO_USAGE = TokenUsage()


def _within_bounds(usage: TokenUsage, duration: float, first_chunk: float | None) -> bool:
    """Whether an LLMGeneration with these numbers would pass the recorder's bounds check
    (events.out_of_bounds). Counts read by extract_usage are capped one by one, but a sum
    of them is not (Anthropic's input plus both cache counts; Gemini's output plus its
    thoughts), and a user's extractor may return any TokenUsage (negative, NaN, a str)."""
    try:
        return (0 <= usage.input <= MAX_TOKENS and 0 <= usage.output <= MAX_TOKENS
                and 0 <= usage.cache_read <= MAX_TOKENS and 0 <= usage.reasoning <= MAX_TOKENS
                and 0 <= duration <= MAX_SECONDS
                and (first_chunk is None or 0 <= first_chunk <= MAX_SECONDS))
    except TypeError:  # a str where a count belongs: the event path names it
        return False


_NO_USAGE_MESSAGE = (
    "persona-exporter: no token usage in the response of model %s: its calls count 0 "
    "tokens (logged once per model). A stream reports usage only when asked (OpenAI: "
    "stream_options={'include_usage': True}); for another response shape, give "
    "ObservableLLM a usage= extractor")

# What a call's result is, decided once per type (the protocols are looked up on the type
# by await, next() and async for, so the type decides). Probing the object itself cost
# 4-8 us on a pydantic model: hasattr(model, "__await__") runs BaseModel.__getattr__,
# which builds and raises an AttributeError; and a __getattr__ that raises anything else
# would have reached the caller.
_FINISHED, _GENERATOR, _ASYNC_GENERATOR, _AWAITABLE, _ITERATOR, _ASYNC_ITERATOR = (
    "finished", "generator", "async generator", "awaitable", "iterator", "async iterator")
_RESULT_KINDS: dict[type, str] = {dict: _FINISHED, GeneratorType: _GENERATOR,
                                  AsyncGeneratorType: _ASYNC_GENERATOR}
_RESULT_KINDS_MAX = 512  # types made on the fly (a class per call) must not grow it for good


def result_kind(kind: type) -> str:
    """How a result of type ``kind`` is followed to its end; "finished" for a type that
    cannot be inspected (its own result is returned untouched either way)."""
    try:
        known = _RESULT_KINDS.get(kind)
        if known is not None:
            return known
        if hasattr(kind, "__await__"):
            how = _AWAITABLE
        elif hasattr(kind, "__next__") and hasattr(kind, "__iter__"):
            how = _ITERATOR
        elif hasattr(kind, "__anext__"):
            how = _ASYNC_ITERATOR
        else:
            how = _FINISHED
    except Exception:  # noqa: BLE001 - a metaclass that raises, an unhashable type
        return _FINISHED
    if len(_RESULT_KINDS) < _RESULT_KINDS_MAX:
        _RESULT_KINDS[kind] = how
    return how


class _Pending:
    """An instrumented call whose result is still streaming, as the stream's
    :class:`~.streams.StreamObserver`: it notes the chunks and records the call once, when
    the stream ends, fails or is closed."""

    __slots__ = ("done", "ended", "first", "kwargs", "last", "owner", "scope", "start", "tel",
                 "usage")

    def __init__(self, owner: ObservableLLM, tel: Telemetry, scope: Scope,
                 kwargs: dict[str, Any], start: float | None) -> None:
        self.owner, self.tel, self.scope, self.kwargs = owner, tel, scope, kwargs
        self.start = start
        self.first: float | None = None
        self.usage: TokenUsage | None = None
        self.last: Any = None
        self.done = False
        self.ended = False

    def begin(self) -> None:
        if self.start is None:
            self.start = _perf_counter()

    def chunk(self, chunk: Any) -> None:
        if self.first is None:
            self.first = _perf_counter() - (self.start or 0.0)
        self.usage = self.owner._merge_chunk_usage(self.tel, self.usage, chunk)
        self.last = chunk
        if type(self.kwargs) is CallArgs:
            self.kwargs.keep(chunk)

    def end(self) -> None:
        self.ended = True

    def finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.begin()
        self.owner._record(self.tel, self.scope, self.kwargs, self.last, self.usage,
                           _perf_counter() - (self.start or 0.0), self.first, error,
                           streamed=True, stopped_early=not self.ended)


@overload
def observe_llm(
    fn: F,
    *,
    model: str | None = None,
    provider: str | None = None,
    persona: str | None = None,
    chatmode: str | None = None,
    usage: UsageExtractor | None = None,
    telemetry: Telemetry | None = None,
) -> F: ...


@overload
def observe_llm(
    fn: None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    persona: str | None = None,
    chatmode: str | None = None,
    usage: UsageExtractor | None = None,
    telemetry: Telemetry | None = None,
) -> Callable[[F], F]: ...


def observe_llm(
    fn: F | None = None,
    *,
    model: str | None = None,
    provider: str | None = None,
    persona: str | None = None,
    chatmode: str | None = None,
    usage: UsageExtractor | None = None,
    telemetry: Telemetry | None = None,
) -> Any:
    """Decorator form of :class:`ObservableLLM`. A coroutine function stays one
    (``inspect.iscoroutinefunction`` answers True); a generator function becomes a plain
    function returning the (observed) generator, so that the persona is read when the
    stream is created."""

    def decorate(f: F) -> F:
        return cast(F, ObservableLLM(f, model=model, provider=provider, persona=persona,
                                     chatmode=chatmode, usage=usage,
                                     telemetry=telemetry).function)

    return decorate(fn) if fn is not None else decorate


# Keywords a call may pass for the wrapper itself (the first seed's ``await llm(prompt,
# persona=..., chatmode=...)``); the wrapped function sees them only if it declares them.
_CALL_KEYWORDS = frozenset({"persona", "chatmode"})


def _clean_or_none(value: object, default: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # noqa: BLE001 - a hostile __str__
            return default
    return clean_name(value, default)


def _declared_call_keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """Which of the call keywords ``fn`` names as parameters (a bare ``**kwargs`` does
    not count: such a function is passed them only if it names them)."""
    try:
        parameters = inspect.signature(fn).parameters
    except Exception:  # noqa: BLE001 - builtins and C functions may have no signature
        return frozenset()
    return frozenset(name for name, p in parameters.items()
                     if name in _CALL_KEYWORDS and p.kind in (
                         inspect.Parameter.POSITIONAL_OR_KEYWORD,
                         inspect.Parameter.KEYWORD_ONLY))


def _not_callable(value: object) -> Callable[..., Any]:
    """What a wrapper built without a function calls: the caller's error, named."""

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("ObservableLLM needs a function to wrap: pass it first or as "
                        f"llm_function= (got {type(value).__name__})")

    return missing
