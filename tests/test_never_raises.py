"""Never raises, proven: hypothesis drives every public tracing and pipeline function with
arbitrary argument shapes - None, text (huge and non-ASCII too), numbers, bytes, lists,
dicts, plain objects, objects whose ``__str__``/``__repr__``/``__eq__``/``__hash__``/
``__len__``/``__iter__``/``__bool__`` raise, and live traces in every form - with tracing
off, on (an in-memory exporter) and with the backend refusing. The only exceptions that
may come out are the caller's own: the block's, or the wrapped function's."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import persona_exporter as pe
from persona_exporter import ObservableLLM, Telemetry, set_default
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.sdk import langfuse_compat
from persona_exporter.sdk.context import EMPTY_SCOPE, SCOPE
from persona_exporter.tracing.otlp_http import EncodingOTLPSpanExporter
from persona_exporter.tracing.sink import TraceSink

from .otlp_receiver import refused_url

# The refused backend's exporter retries with random jitter on its own thread while a
# test draws; hypothesis sees the random module in use and warns. Not our strategies.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")


class EvilError(Exception):
    """Raised by a hostile argument: it must never reach the caller through our code."""


class Evil:
    def __str__(self) -> str:
        raise EvilError("__str__")

    def __repr__(self) -> str:
        raise EvilError("__repr__")

    def __eq__(self, other: object) -> bool:
        raise EvilError("__eq__")

    def __hash__(self) -> int:
        raise EvilError("__hash__")

    def __len__(self) -> int:
        raise EvilError("__len__")

    def __iter__(self) -> Iterator[Any]:
        raise EvilError("__iter__")

    def __bool__(self) -> bool:
        raise EvilError("__bool__")


class EvilMapping(Mapping[Any, Any]):
    """A mapping whose key is hostile and whose iteration fails half way."""

    def __getitem__(self, key: Any) -> Any:
        return Evil()

    def __iter__(self) -> Iterator[Any]:
        yield Evil()
        raise EvilError("iteration")

    def __len__(self) -> int:
        return 2


class Sentinel(Exception):
    """The caller's own exception: the only one allowed out."""


scalars = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.builds(lambda char, n: char * n, st.sampled_from(["ü", "\U0001f600", "\ud800", "a/"]),
              st.integers(1_000, 200_000)),  # huge, non-ASCII, a lone surrogate
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=20),
    st.booleans(),
    st.builds(object),
    st.builds(Evil),
    st.just(...),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3),
                            st.builds(EvilMapping)),
    max_leaves=6)
LIVE = ("<start>", "<trace>", "<trace_id>", "<context>")
trace_like = st.one_of(anything, st.sampled_from(LIVE))


def _configured(mode: str) -> tuple[Telemetry, Any]:
    recorder = Recorder(CollectorRegistry())
    if mode == "off":
        return Telemetry(recorder=recorder), None
    exporter: Any = (InMemorySpanExporter() if mode == "on" else EncodingOTLPSpanExporter(
        endpoint=f"{refused_url()}/api/public/otel/v1/traces", timeout=0.2))
    sink = TraceSink({"langfuse": exporter}, recorder=recorder, flush_interval=0.05,
                     shutdown_timeout=0.5)
    return Telemetry(recorder=recorder, sinks=[sink]), sink


@pytest.fixture(scope="module")
def telemetries() -> Iterator[dict[str, Telemetry]]:
    built = {mode: _configured(mode) for mode in ("off", "on", "refused")}
    yield {mode: tel for mode, (tel, _) in built.items()}
    for tel, _ in built.values():
        tel.shutdown(0.5)


def _live(name: object, start: Any, context: Any) -> object:
    if not isinstance(name, str):
        return name
    if name == "<start>":
        return start
    if name == "<trace>":
        return start[0]
    if name == "<trace_id>":
        return start[1]
    if name == "<context>":
        return context
    return name


def _call(fn: Callable[..., Any], data: st.DataObject, start: Any, context: Any) -> Any:
    """Call ``fn`` with a drawn value (or nothing) for each of its parameters, passed
    positionally or by keyword as its signature allows."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    given_names: set[str] = set()
    positional = True
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        required = param.default is param.empty
        if not required and not data.draw(st.booleans(), label=f"give {name}"):
            positional = False  # a skipped parameter ends the positional run
            continue
        strategy = trace_like if name in ("trace", "trace_id") else anything
        value = _live(data.draw(strategy, label=name), start, context)
        given_names.add(name)
        if positional and param.kind is param.POSITIONAL_OR_KEYWORD and data.draw(
                st.booleans(), label=f"{name} positional"):
            args.append(value)
        else:
            positional = False
            kwargs[name] = value
    if name_extra := data.draw(st.sampled_from(("", "persona", "chatmode", "metadata",
                                                 "error", "user_id")), label="extra"):
        sig = inspect.signature(fn).parameters
        if name_extra not in given_names and (
                name_extra in sig or any(p.kind is p.VAR_KEYWORD for p in sig.values())):
            kwargs.setdefault(name_extra, data.draw(anything, label=name_extra))
    return fn(*args, **kwargs)


integration = langfuse_compat.get_langfuse_integration()
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "trace_pipeline_execution": pe.trace_pipeline_execution,
    "trace_llm_call": pe.trace_llm_call,
    "trace_retrieval": pe.trace_retrieval,
    "trace_artifact": pe.trace_artifact,
    "trace_doctrine_load": pe.trace_doctrine_load,
    "trace_context_retrieval": pe.trace_context_retrieval,
    "trace_snapshot_creation": pe.trace_snapshot_creation,
    "trace_output_generation": pe.trace_output_generation,
    "finalize_trace": pe.finalize_trace,
    "is_observability_enabled": pe.is_observability_enabled,
    "start_trace": integration.start_trace,
    "create_generation": integration.create_generation,
    "end_trace": integration.end_trace,
    "TraceContext": pe.TraceContext,
    "SpanContext": pe.SpanContext,
    "GenerationContext": pe.GenerationContext,
    "get_langfuse": pe.get_langfuse,
    "generation": pe.generation,
    "with_trace": pe.RunManifest("j", None, "r", "h", {}).with_trace,
}
CONTEXTS: dict[str, Callable[..., Any]] = {
    "trace_step": pe.trace_step,
    "trace_context": pe.trace_context,
    "span_context": pe.span_context,
    "PipelineStart": pe.trace_pipeline_execution,
}
MODES = ("off", "on", "refused")
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@contextmanager
def isolated(tel: Telemetry) -> Iterator[None]:
    """``tel`` as the default, in an empty scope; both restored after the example (a
    drawn ``start_trace`` without its ``end_trace`` leaves its run in the scope, as the
    seed's unscoped API must)."""
    previous = set_default(tel)
    token = SCOPE.set(EMPTY_SCOPE)
    try:
        yield
    finally:
        SCOPE.reset(token)
        set_default(previous)


def _live_objects(tel: Telemetry) -> tuple[Any, Any]:
    start = pe.trace_pipeline_execution("job", "run", "type", "brand", "hash", telemetry=tel)
    context = integration.start_trace(name="ctx", persona="p")
    integration.end_trace(context)
    return start, context


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@SETTINGS
@given(data=st.data())
def test_functions_never_raise(telemetries: dict[str, Telemetry], mode: str, name: str,
                               data: st.DataObject) -> None:
    with isolated(telemetries[mode]):
        start, context = _live_objects(telemetries[mode])
        _call(FUNCTIONS[name], data, start, context)
        pe.finalize_trace(start)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CONTEXTS))
@SETTINGS
@given(data=st.data())
def test_context_managers_never_raise_and_pass_the_callers_exception(
        telemetries: dict[str, Telemetry], mode: str, name: str, data: st.DataObject) -> None:
    with isolated(telemetries[mode]):
        start, context = _live_objects(telemetries[mode])
        manager = _call(CONTEXTS[name], data, start, context)
        raising = data.draw(st.booleans(), label="block raises")
        try:
            with manager as entered:
                if hasattr(entered, "update"):
                    entered.update(metadata=data.draw(anything, label="update"))
                # a tracer inside the block, by whatever trace the caller has
                pe.trace_llm_call(start[1], "inner", "m", data.draw(anything, label="p"))
                if raising:
                    raise Sentinel
        except Sentinel:
            assert raising
        pe.finalize_trace(start)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(data=st.data())
def test_observable_llm_never_raises_but_the_wrapped_functions_own(
        telemetries: dict[str, Telemetry], mode: str, data: st.DataObject) -> None:
    with isolated(telemetries[mode]):
        result = data.draw(anything, label="result")
        fails = data.draw(st.booleans(), label="fn raises")
        received: list[dict[str, Any]] = []

        def fn(*args: Any, **kwargs: Any) -> Any:
            received.append(kwargs)
            if fails:
                raise Sentinel
            return result

        options = {key: data.draw(anything, label=key) for key in data.draw(
            st.sets(st.sampled_from(("model", "provider", "persona", "chatmode", "usage",
                                     "telemetry"))), label="options")}
        as_keyword = data.draw(st.booleans(), label="llm_function=")
        llm = ObservableLLM(llm_function=fn, **options) if as_keyword else ObservableLLM(
            fn, **options)
        call_kwargs = {key: data.draw(anything, label=f"call {key}") for key in data.draw(
            st.sets(st.sampled_from(("persona", "chatmode", "model", "messages"))),
            label="call keywords")}
        with pe.workflow("w"), pe.stage("s", persona="p"):
            try:
                llm(*data.draw(st.lists(anything, max_size=2), label="args"), **call_kwargs)
            except Sentinel:
                assert fails
        assert received and "persona" not in received[0] and "chatmode" not in received[0]

        async def afn(**kwargs: Any) -> Any:
            return result

        asyncio.run(ObservableLLM(afn, **options)(**call_kwargs))


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(data=st.data())
def test_trace_function_never_raises_but_the_functions_own(
        telemetries: dict[str, Telemetry], mode: str, data: st.DataObject) -> None:
    with isolated(telemetries[mode]):
        fails = data.draw(st.booleans(), label="fn raises")
        name = data.draw(anything, label="name")

        def work() -> int:
            if fails:
                raise Sentinel
            return 1

        traced = pe.trace_function(name if not callable(name) else None,
                                   data.draw(anything, label="capture_args"),
                                   data.draw(anything, label="capture_result"))(work)
        try:
            assert traced() == 1
        except Sentinel:
            assert fails


def test_health_check_never_raises_whatever_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
    monkeypatch.setenv("LANGFUSE_BASE_URL", refused_url())
    set_default(Telemetry(sinks=[TraceSink({"langfuse": InMemorySpanExporter()})]))
    for timeout in (None, -1, 0, float("nan"), float("inf"), "x", Evil(), 0.1):
        health = pe.check_langfuse_health(timeout=timeout)  # type: ignore[arg-type]
        assert health["status"] == "unhealthy"
    monkeypatch.setenv("LANGFUSE_TIMEOUT", "not-a-number")
    assert pe.check_langfuse_health()["status"] == "unhealthy"
    pe.get_telemetry().shutdown(0.2)
