"""The seeds' Langfuse-style API, as thin layers over workflows, stages and governance.

Two vocabularies from the seed documents work as they show them:

* the first seed's ``LangfuseIntegration`` (persona-as-user)::

      langfuse = get_langfuse_integration()
      trace = langfuse.start_trace(name="feature", persona="backend-engineer",
                                   chatmode="feature-implementation")   # persona = trace user
      langfuse.create_generation(trace=trace, name="design", model="gpt-4", prompt=p,
                                 completion=c, usage={"prompt_tokens": 150,
                                                      "completion_tokens": 800})
      langfuse.end_trace(trace, status="success")

* the second seed's ``langfuse_client.py``: ``get_langfuse()`` (None without a Langfuse
  backend), its ``trace_context``/``span_context``/``generation``/``trace``/
  ``health_check``/``batch_mode``, and the module functions ``trace_context``,
  ``span_context``, ``generation``, ``trace_function`` and ``check_langfuse_health``.

Everything here is a no-op when tracing is off, returns the objects the seeds show (their
``id`` None when nothing is traced) and never raises into the caller; the caller's own
exceptions pass through untouched. As in the seeds, the ``LANGFUSE_*`` (or
``OTEL_EXPORTER_OTLP_*``) environment alone turns tracing on: the first use of an entry
point here configures the process default (``configure(tracing=True)``) if nothing was
configured yet - never over an explicit ``configure()`` or ``set_default()``.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar, overload

from ..tracing.content import CallContent
from . import telemetry as _telemetry
from .context import EMPTY_SCOPE, SCOPE, Scope, ScopeChange
from .governance import (
    GOVERNANCE_KEYS,
    PipelineTrace,
    TraceHolder,
    _metadata,
    _name,
    ensure_configured,
    finalize_trace,
    record_llm_call,
    register,
    release,
    trace_step,
)
from .handles import StageHandle
from .telemetry import Telemetry
from .workflow import finish_run, stage, start_run, workflow

F = TypeVar("F", bound=Callable[..., Any])

HEALTH_TIMEOUT_MAX = 2.0  # seconds: a health check is a probe, never a wait


def _langfuse_on(tel: Telemetry) -> bool:
    return any("langfuse" in getattr(sink, "backends", ()) for sink in tel.sinks)


def _report(err: BaseException | str) -> None:
    _telemetry._default.errors.report("langfuse_compat", err)


# --- the first seed's context objects ---


class _TraceScope(ScopeChange):
    """The scope ``start_trace`` enters until ``end_trace``. It replaces a scope another
    ``start_trace`` left rather than nesting on it: traces of the first seed's shape are
    often never ended (an exception before ``end_trace``) or ended out of order, and a
    chain of them would keep every run alive and bring a finished one back as the scope
    of later calls."""

    def __enter__(self) -> Scope:
        base = SCOPE.get()
        while isinstance(base.owner, _TraceScope):
            base = base.parent if base.parent is not None else EMPTY_SCOPE
        scope = replace(base, parent=base, owner=self, **self._changes)
        SCOPE.set(scope)
        return scope


class TraceContext(TraceHolder):
    """A trace (a workflow run). Built by :meth:`LangfuseIntegration.start_trace`; built
    directly (``TraceContext()``, any arguments) it is the seed's no-op instance: ``id``
    None, every method harmless. ``with`` ends it, failed if the block raised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pipeline: PipelineTrace | None = None
        self._scope: ScopeChange | None = None
        self.name: str | None = None

    @classmethod
    def _start(cls, name: object, persona: object, chatmode: object, metadata: object,
               tel: Telemetry, enter_scope: bool) -> TraceContext:
        trace = cls()
        try:
            trace.name = _name(name, "trace")
            if not tel.active:
                return trace
            run = start_run(trace.name, telemetry=tel, metadata=_metadata(metadata) or None,
                            persona=_name(persona, "unknown") if persona is not None else None,
                            chatmode=_name(chatmode, "none") if chatmode is not None else None)
            trace._pipeline = PipelineTrace(run)
            register(trace._pipeline)
            if enter_scope:  # calls until end_trace belong to this run
                trace._scope = _TraceScope(run=run, stage=None, telemetry=tel,
                                           chatmode=run.chatmode, persona=run.persona)
                trace._scope.__enter__()
        except Exception as err:  # noqa: BLE001
            _report(err)
        return trace

    @property
    def id(self) -> str | None:
        return self._pipeline.trace_id if self._pipeline is not None else None

    trace_id = id

    @property
    def persona(self) -> str | None:
        return self._pipeline.run.persona if self._pipeline is not None else None

    @property
    def metadata(self) -> dict[str, str]:
        if self._pipeline is None:
            return {}
        return dict(self._pipeline.run.metadata or {})

    def update(self, **kwargs: Any) -> TraceContext:
        """Add ``metadata`` (and a ``persona``/``user_id`` if the run has none yet)."""
        if self._pipeline is None:
            return self
        try:
            run = self._pipeline.run
            extra = _metadata(kwargs.get("metadata"))
            if extra:
                merged = dict(run.metadata or {})
                merged.update((k, v) for k, v in extra.items() if k not in GOVERNANCE_KEYS)
                run.metadata = dict(list(merged.items())[:32])
            user = kwargs.get("persona", kwargs.get("user_id"))
            if user is not None:
                run.attribute_to(_name(user, "unknown"))
        except Exception as err:  # noqa: BLE001
            _report(err)
        return self

    def span(self, name: object = None, persona: object = None, **kwargs: Any) -> SpanContext:
        """A step of this trace (a stage), opened by ``with``."""
        return SpanContext._of(self, name, kwargs.get("metadata"), persona)

    def generation(self, name: object = None, model: object = None, **kwargs: Any
                   ) -> GenerationContext:
        kwargs.pop("trace", None)  # this trace's generation, whatever else was said
        return get_langfuse_integration().create_generation(trace=self, name=name,
                                                            model=model, **kwargs)

    def end(self, status: object = "success", **kwargs: Any) -> None:
        kwargs.pop("trace", None)
        get_langfuse_integration().end_trace(self, status, **kwargs)

    def _leave_scope(self) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.__exit__(None, None, None)

    def __enter__(self) -> TraceContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._leave_scope()
        if self._pipeline is not None:
            if exc_type is not None:
                finish_run(self._pipeline.run, failed=True)
                release(self._pipeline.run)
            else:
                finish_run(self._pipeline.run)
                release(self._pipeline.run)


class SpanContext:
    """A span (a stage) of a trace, entered with ``with``; the no-op instance when built
    directly. ``id`` is its span id when traced."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._step: trace_step | None = None
        self._handle: StageHandle | None = None

    @classmethod
    def _of(cls, trace: object, name: object, metadata: object, persona: object
            ) -> SpanContext:
        span = cls()
        try:
            span._step = trace_step(trace, name, metadata if isinstance(metadata, Mapping)
                                    else None,
                                    persona=_name(persona, "unknown") if persona is not None
                                    else None)
        except Exception as err:  # noqa: BLE001
            _report(err)
        return span

    @property
    def id(self) -> str | None:
        return self._handle.span_id if self._handle is not None else None

    def update(self, **kwargs: Any) -> SpanContext:
        if self._handle is not None:
            try:
                extra = _metadata(kwargs.get("metadata"))
                if extra:
                    self._handle.metadata = {**(self._handle.metadata or {}), **extra}
            except Exception as err:  # noqa: BLE001
                _report(err)
        return self

    def end(self, **kwargs: Any) -> None:
        step, self._step = self._step, None
        if step is not None and self._handle is not None:
            step.__exit__(None, None, None)

    def __enter__(self) -> SpanContext:
        if self._step is not None:
            self._handle = self._step.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.__exit__(exc_type, exc, tb)


class GenerationContext:
    """A recorded LLM call; ``id`` is its span id when traced. Built directly it is the
    no-op instance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.id: str | None = None
        self.trace_id: str | None = None

    def update(self, **kwargs: Any) -> GenerationContext:
        return self

    def end(self, **kwargs: Any) -> None:
        return None

    def __enter__(self) -> GenerationContext:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


# --- the first seed's integration object ---


class LangfuseIntegration:
    """The first seed's integration: persona-as-user traces and generations.

    ``enabled`` is whether a Langfuse backend is configured; ``langfuse_client`` the
    :class:`LangfuseClient`, or None. Use :func:`get_langfuse_integration`."""

    def __init__(self, *args: Any, telemetry: Telemetry | None = None, **kwargs: Any) -> None:
        self._telemetry = telemetry if isinstance(telemetry, Telemetry) else None

    @property
    def telemetry(self) -> Telemetry:
        return self._telemetry or ensure_configured()

    @property
    def enabled(self) -> bool:
        return _langfuse_on(self.telemetry)

    @property
    def langfuse_client(self) -> LangfuseClient | None:
        tel = self.telemetry
        return LangfuseClient(tel) if _langfuse_on(tel) else None

    def start_trace(self, name: object = None, persona: object = None, chatmode: object = None,
                    metadata: object = None, **kwargs: Any) -> TraceContext:
        """Start a trace whose user is ``persona``; calls made until :meth:`end_trace`
        (in this context) belong to it."""
        if persona is None:
            persona = kwargs.get("user_id")
        return TraceContext._start(name, persona, chatmode, metadata, self.telemetry,
                                   enter_scope=True)

    def create_generation(self, trace: object = None, name: object = None,
                          model: object = None, prompt: object = None,
                          completion: object = None, usage: object = None,
                          metadata: object = None, **kwargs: Any) -> GenerationContext:
        """Record one LLM call in ``trace`` (else in the run this context is in)."""
        generation = GenerationContext()
        try:
            if trace is None:  # the run this context is in, traced or not (metrics)
                run = SCOPE.get().run
                trace = PipelineTrace(run) if run is not None else None
            if prompt is None:
                prompt = kwargs.get("input")
            if completion is None:
                completion = kwargs.get("output", kwargs.get("response"))
            generation.id, generation.trace_id = record_llm_call(
                trace, name, model, prompt, completion, usage,
                metadata if isinstance(metadata, Mapping) else None,
                provider=kwargs.get("provider", "unknown"), persona=kwargs.get("persona"),
                input_tokens=kwargs.get("input_tokens"),
                output_tokens=kwargs.get("output_tokens"),
                duration_seconds=kwargs.get("duration_seconds", 0.0),
                cost_usd=kwargs.get("cost_usd"), error_type=kwargs.get("error_type"))
        except Exception as err:  # noqa: BLE001
            _report(err)
        return generation

    def end_trace(self, trace: object = None, status: object = "success", **kwargs: Any
                  ) -> None:
        """End ``trace``: success/ok/completed, error/failure, or partial."""
        try:
            if isinstance(trace, TraceContext):
                trace._leave_scope()
            finalize_trace(trace, status, kwargs.get("error"), kwargs.get("artifacts"),
                           metadata=kwargs.get("metadata"))
        except Exception as err:  # noqa: BLE001
            _report(err)

    def flush(self, timeout: float | None = None) -> bool:
        try:
            return self.telemetry.flush(timeout if isinstance(timeout, int | float) else None)
        except Exception as err:  # noqa: BLE001
            _report(err)
            return False


_INTEGRATION: LangfuseIntegration | None = None


def get_langfuse_integration(*args: Any, **kwargs: Any) -> LangfuseIntegration:
    """The process's integration (it follows the default telemetry, so a later
    ``configure()`` takes effect)."""
    global _INTEGRATION
    if _INTEGRATION is None:
        _INTEGRATION = LangfuseIntegration()
    return _INTEGRATION


# --- the second seed's client ---


@dataclass(frozen=True)
class HealthResponse:
    """A Langfuse health probe that answered 200: ``latency`` in milliseconds."""

    latency: float
    status: str = "OK"


def _health_url() -> str:
    base = (os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
            or "https://cloud.langfuse.com").strip().rstrip("/")
    return f"{base}/api/public/health"


def _health_timeout(timeout: object) -> float:
    if isinstance(timeout, int | float) and 0 < timeout < float("inf"):
        return float(timeout)
    try:
        configured = float(os.environ.get("LANGFUSE_TIMEOUT", "") or HEALTH_TIMEOUT_MAX)
    except ValueError:
        configured = HEALTH_TIMEOUT_MAX
    return min(configured, HEALTH_TIMEOUT_MAX) if configured > 0 else HEALTH_TIMEOUT_MAX


def probe_health(timeout: object = None) -> HealthResponse:
    """GET ``/api/public/health`` (200 healthy, 503 not: langfuse/langfuse
    ``web/src/pages/api/public/health.ts``). urllib's timeout bounds each socket
    operation, not the whole request, so the probe runs in a daemon thread joined against
    one deadline; past it the thread is abandoned and this raises ``TimeoutError``."""
    limit = _health_timeout(timeout)
    url = _health_url()
    box: dict[str, Any] = {}

    def probe() -> None:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=limit) as reply:  # noqa: S310 - http(s) from config
                reply.read(4096)
                box["latency"] = (time.perf_counter() - start) * 1000.0
        except urllib.error.HTTPError as err:
            box["error"] = f"HTTP {err.code} from {url}"
        except Exception as err:  # noqa: BLE001
            box["error"] = f"{type(err).__name__}: {err}"[:300]

    thread = threading.Thread(target=probe, name="persona-exporter-langfuse-health",
                              daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive() or not box:
        raise TimeoutError(f"timeout after {limit:g} s waiting for {url}")
    if "error" in box:
        raise ConnectionError(box["error"])
    return HealthResponse(round(box["latency"], 3))


class LangfuseClient:
    """What the second seed's ``get_langfuse()`` returns when Langfuse is configured."""

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self._telemetry = telemetry if isinstance(telemetry, Telemetry) else None

    def trace_context(self, name: object = None, **kwargs: Any
                      ) -> AbstractContextManager[TraceContext]:
        return trace_context(name, **kwargs)

    def span_context(self, trace_id: object = None, name: object = None, **kwargs: Any
                     ) -> AbstractContextManager[SpanContext]:
        return span_context(trace_id, name, **kwargs)

    def generation(self, trace_id: object = None, name: object = None, model: object = None,
                   **kwargs: Any) -> GenerationContext:
        return generation(trace_id, name, model, **kwargs)

    def trace(self, name: object = None, **kwargs: Any) -> TraceContext:
        """A trace handle (``trace.id``), ended by ``end()`` or at its context's exit."""
        return TraceContext._start(name, kwargs.get("persona", kwargs.get("user_id")),
                                   kwargs.get("chatmode"), kwargs.get("metadata"),
                                   self._telemetry or ensure_configured(), enter_scope=False)

    def health_check(self, timeout: float | None = None) -> HealthResponse:
        """Probe the Langfuse server; raises when it is down, refuses or is too slow."""
        return probe_health(timeout)

    def batch_mode(self) -> AbstractContextManager[None]:
        """A no-op: spans are already batched and sent off the caller's thread."""
        return nullcontext()

    def flush(self, timeout: float | None = None) -> bool:
        return get_langfuse_integration().flush(timeout)


def get_langfuse(*args: Any, **kwargs: Any) -> LangfuseClient | None:
    """The Langfuse client, or None when no Langfuse backend is configured."""
    try:
        tel = ensure_configured()
        return LangfuseClient(tel) if _langfuse_on(tel) else None
    except Exception as err:  # noqa: BLE001
        _report(err)
        return None


@contextmanager
def trace_context(name: object = None, **kwargs: Any) -> Iterator[TraceContext]:
    """A trace around a block (a workflow run; ``persona=`` or ``user_id=`` is its user);
    yields a :class:`TraceContext`, a no-op one when tracing is off."""
    trace = TraceContext._start(name, kwargs.get("persona", kwargs.get("user_id")),
                                kwargs.get("chatmode"), kwargs.get("metadata"),
                                ensure_configured(), enter_scope=True)
    try:
        yield trace
    except BaseException:
        trace.__exit__(Exception, None, None)
        raise
    trace.__exit__(None, None, None)


@contextmanager
def span_context(trace_id: object = None, name: object = None, **kwargs: Any
                 ) -> Iterator[SpanContext]:
    """A span (a step) of the trace ``trace_id`` around a block; no-op without one."""
    span = SpanContext._of(trace_id, name, kwargs.get("metadata"), kwargs.get("persona"))
    with span:
        yield span


def generation(trace_id: object = None, name: object = None, model: object = None,
               **kwargs: Any) -> GenerationContext:
    """Record an LLM call in the trace ``trace_id`` (``input``/``prompt``,
    ``output``/``response``, ``usage``, ``metadata`` as keywords)."""
    kwargs.pop("trace", None)  # the trace is trace_id, whatever else was said
    prompt = kwargs.pop("input", kwargs.pop("prompt", None))
    completion = kwargs.pop("output", kwargs.pop("response", kwargs.pop("completion", None)))
    return get_langfuse_integration().create_generation(
        trace=trace_id, name=name, model=model, prompt=prompt, completion=completion,
        usage=kwargs.pop("usage", None), metadata=kwargs.pop("metadata", None), **kwargs)


@overload
def trace_function(name: F, capture_args: bool = False, capture_result: bool = False) -> F: ...


@overload
def trace_function(name: str | None = None, capture_args: bool = False,
                   capture_result: bool = False) -> Callable[[F], F]: ...


def trace_function(name: object = None, capture_args: bool = False,
                   capture_result: bool = False) -> Any:
    """Decorate a function (sync or async) so each call is a span: a stage of the run it
    is called in, else its own trace when tracing is on. Its exceptions pass through.
    ``capture_args``/``capture_result`` send the arguments and the result as the span's
    input and output to the backends that capture content. Works bare
    (``@trace_function``) and called (``@trace_function()``)."""
    if callable(name) and not isinstance(name, str):
        return trace_function()(name)

    want_args, want_result = _flag(capture_args), _flag(capture_result)

    def decorate(fn: F) -> F:
        span_name = _name(name if name is not None else getattr(fn, "__name__", None),
                          "function")

        def opener() -> AbstractContextManager[Any]:
            try:
                scope = SCOPE.get()
                if scope.run is not None:
                    return stage(span_name, run=scope.run)
                tel = scope.telemetry or ensure_configured()
                if tel.needs_trace_context:
                    return workflow(span_name, telemetry=tel)
            except Exception as err:  # noqa: BLE001
                _report(err)
            return nullcontext()

        def keep(handle: object, args: tuple[Any, ...], kwargs: dict[str, Any],
                 result: Any = None, done: bool = False) -> None:
            """The call's arguments and result as the span's input and output, for the
            backends that capture content (references only: serialised off this thread)."""
            try:
                run = getattr(handle, "run", handle)
                tel = getattr(run, "telemetry", None)
                if tel is None or not tel.captures_content or not hasattr(handle, "content"):
                    return
                content = handle.content or CallContent()
                if not done:
                    content.input = {"args": list(args), "kwargs": dict(kwargs)}
                else:
                    content.output = result
                handle.content = content
            except Exception as err:  # noqa: BLE001
                _report(err)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def acall(*args: Any, **kwargs: Any) -> Any:
                with opener() as handle:
                    if want_args:
                        keep(handle, args, kwargs)
                    result = await fn(*args, **kwargs)
                    if want_result:
                        keep(handle, args, kwargs, result, done=True)
                    return result

            return acall  # type: ignore[return-value]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with opener() as handle:
                if want_args:
                    keep(handle, args, kwargs)
                result = fn(*args, **kwargs)
                if want_result:
                    keep(handle, args, kwargs, result, done=True)
                return result

        return call  # type: ignore[return-value]

    return decorate


def _flag(value: object) -> bool:
    """A switch's truth, never raising (a hostile ``__bool__`` is off)."""
    try:
        return bool(value)
    except Exception as err:  # noqa: BLE001
        _report(err)
        return False


def check_langfuse_health(*args: Any, timeout: float | None = None, **kwargs: Any
                          ) -> dict[str, Any]:
    """The second seed's health check: ``{"status": "disabled", "reason": ...}``,
    ``{"status": "healthy", "latency_ms": ...}`` or ``{"status": "unhealthy", "error":
    ...}``, within ``timeout`` (default ``LANGFUSE_TIMEOUT``, at most 2 s)."""
    try:
        env = os.environ
        if env.get("LANGFUSE_TRACING_ENABLED", "true").strip().lower() == "false":
            return {"status": "disabled", "reason": "tracing_disabled"}
        lf = get_langfuse()
        if lf is None:
            keys = (env.get("LANGFUSE_PUBLIC_KEY", "").strip()
                    and env.get("LANGFUSE_SECRET_KEY", "").strip())
            return {"status": "disabled",
                    "reason": "not_configured" if keys else "env_vars_missing"}
        try:
            response = lf.health_check(timeout)
            return {"status": "healthy", "latency_ms": response.latency}
        except Exception as err:  # noqa: BLE001
            return {"status": "unhealthy", "error": str(err)}
    except Exception as err:  # noqa: BLE001
        return {"status": "unhealthy", "error": type(err).__name__}


__all__ = [
    "GenerationContext",
    "HealthResponse",
    "LangfuseClient",
    "LangfuseIntegration",
    "SpanContext",
    "TraceContext",
    "check_langfuse_health",
    "ensure_configured",
    "generation",
    "get_langfuse",
    "get_langfuse_integration",
    "span_context",
    "trace_context",
    "trace_function",
]

# The second seed's no-op classes by their names there.
_NoOpTrace = TraceContext
_NoOpSpan = SpanContext
