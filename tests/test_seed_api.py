"""Every call shape of the two seed documents, written from their own examples.

Seed 000 (/work/shared/seeds/000_*.txt: ``LangfuseIntegration``, persona-as-user,
``ObservableLLM``) and seed 004 (004_*.txt: ``observability.py`` pipeline tracing with
governance ids, ``langfuse_client.py``). Test names carry the inventory numbers of the
design study (A1-A11, B1-B29). Each shape runs in three modes: tracing off (metrics only),
Langfuse on (the real exporter to a local OTLP receiver, spans decoded), and the Langfuse
backend refusing connections (nothing may raise or hang)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import persona_exporter as pe
from persona_exporter import (
    GenerationContext,
    LangfuseIntegration,
    ObservableLLM,
    SpanContext,
    Telemetry,
    TraceContext,
    configure,
    get_langfuse_integration,
    observe_llm,
    set_default,
)
from persona_exporter.sdk import telemetry as telemetry_module
from persona_exporter.sdk.langfuse_compat import _NoOpSpan, _NoOpTrace

from .conftest import sample
from .otlp_receiver import Receiver, Span, refused_url

MODES = ("off", "langfuse", "refused")


@dataclass
class Mode:
    name: str
    telemetry: Telemetry
    registry: CollectorRegistry
    receiver: Receiver | None

    @property
    def traced(self) -> bool:
        return self.name != "off"

    def spans(self, count: int) -> list[Span]:
        """The spans the Langfuse receiver decoded (none in the other modes)."""
        self.telemetry.flush(3)
        if self.receiver is None:
            return []
        return self.receiver.wait_for_spans(count, timeout=5)

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(self.registry, name, **labels)


def send_langfuse_to(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """The Langfuse variables of a project whose traces go to ``url``, flushed quickly."""
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.setenv("LANGFUSE_BASE_URL", url)
    monkeypatch.setenv("PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL", "0.05")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mode]:
    registry = CollectorRegistry()
    if request.param == "off":
        yield Mode("off", configure(registry=registry), registry, None)
        return
    with Receiver() as receiver:
        send_langfuse_to(monkeypatch,
                         receiver.url if request.param == "langfuse" else refused_url())
        monkeypatch.setenv("LANGFUSE_TIMEOUT", "0.5")
        monkeypatch.setenv("PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT", "0.5")
        tel = configure(registry=registry)
        try:
            yield Mode(request.param, tel, registry,
                       receiver if request.param == "langfuse" else None)
        finally:
            tel.shutdown(0.5)


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def meta(span: Span, key: str, level: str = "trace") -> Any:
    """A Langfuse metadata value as sent (JSON text, as the Langfuse SDK encodes it)."""
    return json.loads(span.attributes[f"langfuse.{level}.metadata.{key}"])


# --- seed 000: LangfuseIntegration, persona-as-user, ObservableLLM ---


def test_a1_a6_the_integration_is_one_object_enabled_with_langfuse(mode: Mode) -> None:
    langfuse = get_langfuse_integration()  # S0:33
    assert langfuse is get_langfuse_integration()
    assert isinstance(langfuse, LangfuseIntegration)
    assert langfuse.enabled is mode.traced  # S0:245 `self.enabled`
    assert (langfuse.langfuse_client is not None) is mode.traced


def test_a2_a4_start_trace_create_generation_end_trace(mode: Mode) -> None:
    langfuse = get_langfuse_integration()
    # S0:36-53, verbatim but for the "..." texts
    trace = langfuse.start_trace(
        name="workflow-name",
        persona="backend-engineer",
        chatmode="feature-implementation",
    )
    generation = langfuse.create_generation(
        trace=trace,
        name="generation-name",
        model="gpt-4",
        prompt="Design the API",
        completion="Here is the API",
        usage={"prompt_tokens": 150, "completion_tokens": 800},
    )
    langfuse.end_trace(trace, status="success")

    assert isinstance(trace, TraceContext) and isinstance(generation, GenerationContext)
    labels = {"persona": "backend-engineer", "chatmode": "feature-implementation",
              "model": "gpt-4", "provider": "unknown"}
    assert mode.metric("persona_llm_tokens_total", **labels, token_type="input") == 150
    assert mode.metric("persona_llm_tokens_total", **labels, token_type="output") == 800
    assert mode.metric("persona_workflow_runs_total", workflow="workflow-name",
                       status="succeeded") == 1
    if not mode.traced:
        assert trace.id is None and generation.id is None
        return
    assert trace.id is not None and generation.trace_id == trace.id
    spans = by_name(mode.spans(2) if mode.name == "langfuse" else [])
    if mode.name == "refused":
        return
    root, llm = spans["invoke_workflow workflow-name"], spans["chat gpt-4"]
    assert root.trace_id == llm.trace_id == trace.id
    assert llm.parent_span_id == root.span_id and llm.span_id == generation.id
    assert root.attributes["user.id"] == "backend-engineer"  # S0:234 "Becomes user_id"
    assert json.loads(llm.attributes["langfuse.observation.usage_details"]) == {
        "input": 150, "output": 800, "total": 950}
    assert root.status_code == 0  # "success" is our succeeded


def test_a4_end_trace_maps_the_seed_status_words(mode: Mode) -> None:
    langfuse = get_langfuse_integration()
    for status, ours in (("success", "succeeded"), ("error", "failed"),
                         ("partial", "partial"), ("no-such-status", "partial")):
        trace = langfuse.start_trace(name=f"w-{status}", persona="qa-engineer")
        langfuse.end_trace(trace, status=status)
        assert mode.metric("persona_workflow_runs_total", workflow=f"w-{status}",
                           status=ours) == 1
    langfuse.end_trace(trace, status="success")  # twice: still once
    assert not mode.metric("persona_workflow_runs_total", workflow="w-no-such-status",
                           status="succeeded")


def test_a5_b19_context_classes_are_harmless_no_ops_when_built_directly() -> None:
    # S0:247 `return TraceContext(...)  # No-op instance`; S4:98-100 _NoOpTrace/_NoOpSpan
    for built in (TraceContext(), TraceContext("x", persona=None, anything=object()),
                  _NoOpTrace(1, 2, 3)):
        assert built.id is None and built.trace_id is None
        assert built.update(metadata={"k": "v"}, anything=1) is built
        with built.span("s", persona="p") as span:
            assert span.id is None
        assert built.generation("g", model="m").id is None
        built.end(status="success")
        with built:
            pass
    for span in (SpanContext(), SpanContext(None, "x"), _NoOpSpan()):
        assert span.update(metadata={"k": 1}) is span
        with span as entered:
            assert entered.id is None
        span.end()
    generation = GenerationContext(trace=None, name="g")
    assert generation.update(output="x") is generation
    generation.end(level="ERROR")


def test_a7_a8_observable_llm_takes_llm_function_and_consumes_call_persona(
        mode: Mode) -> None:
    seen: list[dict[str, Any]] = []

    async def my_llm_call(prompt: str, **kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return {"model": "gpt-4", "usage": {"prompt_tokens": 12, "completion_tokens": 34}}

    # S0:71-80
    observable_llm = ObservableLLM(
        llm_function=my_llm_call,
        model="gpt-4",
    )
    response = asyncio.run(observable_llm(
        "Design API",
        persona="backend-engineer",
        chatmode="feature-implementation",
    ))
    assert response["usage"]["completion_tokens"] == 34
    assert seen == [{}]  # persona and chatmode were the wrapper's, not the function's
    labels = {"persona": "backend-engineer", "chatmode": "feature-implementation",
              "model": "gpt-4", "provider": "unknown"}
    assert mode.metric("persona_llm_requests_total", **labels) == 1
    if mode.name == "langfuse":
        (span,) = mode.spans(1)
        assert span.name == "chat gpt-4"
        assert span.attributes["persona"] == "backend-engineer"
        assert span.attributes["chatmode"] == "feature-implementation"


def test_a8_call_beats_wrapper_beats_scope_and_declared_keywords_pass_through(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    received: list[dict[str, Any]] = []

    def declares(prompt: str, persona: str | None = None) -> dict[str, Any]:
        received.append({"persona": persona})
        return {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    wrapped = ObservableLLM(declares, model="m", persona="wrapper-persona", telemetry=telemetry)
    with pe.persona("scope-persona", chatmode="bug-fix"):
        wrapped("a")  # wrapper > scope
        wrapped("b", persona="call-persona")  # call > wrapper; declared, so passed on too
        ObservableLLM(declares, model="m", telemetry=telemetry)("c")  # scope
    assert received == [{"persona": None}, {"persona": "call-persona"}, {"persona": None}]
    for who in ("wrapper-persona", "call-persona", "scope-persona"):
        assert sample(registry, "persona_llm_requests_total", persona=who, chatmode="bug-fix",
                      model="m", provider="unknown") == 1, who


def test_a8_streaming_calls_take_the_call_persona_too(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    def stream(prompt: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        assert kwargs == {"temperature": 0}
        yield {"delta": "a"}
        yield {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    async def astream(prompt: str, **kwargs: Any) -> Any:
        assert kwargs == {}
        yield {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    async def drain(chunks: Any) -> None:
        async for _ in chunks:
            pass

    llm = ObservableLLM(llm_function=stream, model="m", telemetry=telemetry)
    assert len(list(llm("p", persona="qa-engineer", chatmode="bug-fix", temperature=0))) == 2
    asyncio.run(drain(ObservableLLM(astream, model="m", telemetry=telemetry)(
        "p", persona="qa-engineer", chatmode="bug-fix")))
    assert sample(registry, "persona_llm_tokens_total", persona="qa-engineer",
                  chatmode="bug-fix", model="m", provider="unknown", token_type="input") == 6


def test_a7_without_a_function_the_call_raises_the_callers_type_error() -> None:
    llm = ObservableLLM(model="gpt-4")  # constructing never raises
    with pytest.raises(TypeError, match="llm_function"):
        llm("hello")


def test_a9_observe_llm_decorator_with_a_persona(mode: Mode) -> None:
    # S0:83-87
    @observe_llm(model="gpt-4", persona="backend-engineer")
    async def design_api(prompt: str) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 5, "completion_tokens": 6}}

    asyncio.run(design_api("User authentication system"))
    assert mode.metric("persona_llm_requests_total", persona="backend-engineer",
                       chatmode="none", model="gpt-4", provider="unknown") == 1
    if mode.name == "langfuse":
        (span,) = mode.spans(1)
        assert span.attributes["user.id"] == "backend-engineer"  # a lone call: its own user


def test_a10_the_seed_import_list_works_from_the_package() -> None:
    # S0:130-138, our package in place of .hypertool.instrumentation
    from persona_exporter import (  # noqa: F401
        GenerationContext,
        LangfuseIntegration,
        ObservableLLM,
        SpanContext,
        TraceContext,
        get_langfuse_integration,
        observe_llm,
    )

    assert set(pe.__all__) <= set(dir(pe))
    for name in ("trace_pipeline_execution", "trace_step", "trace_llm_call",
                 "trace_doctrine_load", "trace_context_retrieval", "trace_snapshot_creation",
                 "trace_output_generation", "finalize_trace", "is_observability_enabled",
                 "get_langfuse", "trace_context", "span_context", "generation",
                 "trace_function", "check_langfuse_health", "RunManifest",
                 "compute_inputs_hash", "derive_run_id"):
        assert name in pe.__all__, name


def test_a11_the_environment_alone_turns_tracing_on_but_never_overrides_a_choice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver() as receiver:
        send_langfuse_to(monkeypatch, receiver.url)
        chosen = Telemetry(registry=CollectorRegistry())
        set_default(chosen)  # an explicit choice (tracing off): kept
        assert not get_langfuse_integration().enabled
        assert telemetry_module.get_telemetry() is chosen

        set_default(telemetry_module.DISABLED)  # nothing configured: the env decides (S0:28)
        langfuse = get_langfuse_integration()
        assert langfuse.enabled
        trace = langfuse.start_trace(name="from-env", persona="backend-engineer")
        langfuse.end_trace(trace, status="success")
        tel = telemetry_module.get_telemetry()
        try:
            assert tel is not telemetry_module.DISABLED
            (root,) = receiver.wait_for_spans(1)
            assert root.trace_id == trace.id
        finally:
            tel.shutdown(0.5)


# --- seed 004: observability.py pipeline tracing with governance ids ---


def test_b1_b28_b29_five_positional_arguments_return_trace_and_trace_id(mode: Mode) -> None:
    job_id, run_id, job_type, brand, inputs_hash = (
        "ig-test-001", "eb8e4cd552fdf661f062f84d481fe547", "instagram_copy", "sigilzero",
        "def456789012")
    # S4:692-694
    trace, trace_id = pe.trace_pipeline_execution(
        job_id, run_id, job_type, brand, inputs_hash
    )
    if not mode.traced:
        assert trace is None and trace_id is None
        return
    assert trace is not None and trace_id == trace.trace_id
    # S4:273-276: trace.metadata contains job_id, run_id, job_type, brand
    assert trace.metadata == {"job_id": job_id, "run_id": run_id, "job_type": job_type,
                              "brand": brand, "inputs_hash": inputs_hash}
    pe.finalize_trace(trace, "succeeded")
    if mode.name == "langfuse":
        (root,) = mode.spans(1)
        assert root.trace_id == trace_id
        for key, value in trace.metadata.items():  # S4:500-511
            assert meta(root, key) == value, key


def test_b2_keywords_and_queue_job_id(mode: Mode) -> None:
    # S4:388-394 and S4:485-491, plus queue_job_id (S4:120-128, S4:510)
    trace, trace_id = pe.trace_pipeline_execution(
        job_id="test-job",
        run_id="run-1",
        job_type="test",
        brand="test-brand",
        inputs_hash="abc",
        queue_job_id="celery-task-xyz",
    )
    assert (trace_id is not None) is mode.traced
    if trace is not None:
        assert trace.metadata["queue_job_id"] == "celery-task-xyz"
        assert trace.metadata["brand"] == "test-brand" and trace.brand == "test-brand"
        pe.finalize_trace(trace, "succeeded")
    if mode.name == "langfuse":
        (root,) = mode.spans(1)
        assert meta(root, "queue_job_id") == "celery-task-xyz"
        assert meta(root, "inputs_hash") == "abc"


def test_b3_b9_the_degraded_mode_example_with_literal_ellipses(mode: Mode) -> None:
    # S4:804-813: the seed's own text, `...` included
    trace, trace_id = pe.trace_pipeline_execution(...)
    if not mode.traced:
        assert trace is None
        assert trace_id is None
    with pe.trace_step(None, "load_doctrine") as step:
        assert step is None
    pe.trace_llm_call(None, "caption_generation", ...)  # No-op
    pe.finalize_trace(trace, "succeeded")


def test_b4_the_old_four_argument_form_now_reads_the_fourth_as_brand(mode: Mode) -> None:
    # The breaking change: (job_id, run_id, job_type, inputs_hash) is now ... brand.
    trace, _ = pe.trace_pipeline_execution("j", "r", "t", "h")
    if trace is not None:
        assert trace.metadata == {"job_id": "j", "run_id": "r", "job_type": "t", "brand": "h"}
        pe.finalize_trace(trace)


def test_b5_b6_b8_steps_and_calls_by_trace_id_string(mode: Mode) -> None:
    trace, trace_id = pe.trace_pipeline_execution("ig-1", "run-1", "instagram_copy",
                                                  "sigilzero", "h")
    # S4:696-703, with the third positional metadata of S4:137-143
    with pe.trace_step(trace_id, "load_doctrine", {"doctrine": "voice"}) as step:
        assert (step is not None) is mode.traced
    with pe.trace_step(trace_id, "generate_captions"):
        pe.trace_llm_call(trace_id, "caption_generation", "gpt-4", "Write a caption",
                          "A caption", {"prompt_tokens": 500, "completion_tokens": 150})
    pe.finalize_trace(trace, "succeeded")
    if not mode.traced:
        return
    assert mode.metric("persona_llm_tokens_total", persona="unknown", chatmode="none",
                       model="gpt-4", provider="unknown", token_type="input") == 500
    if mode.name == "langfuse":
        spans = by_name(mode.spans(4))
        root = spans["invoke_workflow instagram_copy"]
        assert {s.trace_id for s in spans.values()} == {trace_id}
        doctrine, captions = spans["load_doctrine"], spans["generate_captions"]
        assert doctrine.parent_span_id == captions.parent_span_id == root.span_id
        assert meta(doctrine, "doctrine", "observation") == "voice"
        llm = spans["chat gpt-4"]
        assert llm.parent_span_id == captions.span_id  # S4:551-556
        assert meta(llm, "name", "observation") == "caption_generation"
        assert json.loads(llm.attributes["langfuse.observation.usage_details"])["input"] == 500


def test_b5_an_unknown_trace_id_is_a_counted_no_op(mode: Mode) -> None:
    with pe.trace_step("not-a-live-trace", "load_doctrine") as step:
        assert step is None
    pe.trace_llm_call("not-a-live-trace", "x", "gpt-4", "p", "r")
    assert mode.metric("persona_exporter_internal_errors_total", component="governance",
                       kind="UnknownTraceId") == 2
    assert not mode.metric("persona_llm_requests_total", persona="unknown", chatmode="none",
                           model="gpt-4", provider="unknown")


def test_b7_nested_steps_are_nested_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    with Receiver() as receiver:
        send_langfuse_to(monkeypatch, receiver.url)
        tel = configure(registry=CollectorRegistry())
        try:
            trace, trace_id = pe.trace_pipeline_execution("j", "r", "t", "b", "h")
            with (pe.trace_step(trace_id, "create_snapshots"),  # S4:544-550
                  pe.trace_step(trace_id, "snapshot_step")):
                pe.trace_snapshot_creation(trace_id, "brief", "abc123", 1024)
            pe.finalize_trace(trace)
            tel.flush(3)
            spans = by_name(receiver.wait_for_spans(4))
        finally:
            tel.shutdown(0.5)
    assert spans["snapshot_step"].parent_span_id == spans["create_snapshots"].span_id
    assert spans["snapshot_brief"].parent_span_id == spans["snapshot_step"].span_id


def test_b10_b11_b12_domain_tracers(mode: Mode) -> None:
    trace, trace_id = pe.trace_pipeline_execution("ig-1", "run-1", "instagram_copy", "b", "h")
    pe.trace_doctrine_load(trace_id, "brand-voice", "1.2.0", "doctrine/voice.md", "ab" * 32)
    pe.trace_context_retrieval(trace_id, "semantic", ["a.md", "b.md"], query="secret query",
                               top_k=5, retrieval_method="semantic")
    with pe.trace_step(trace_id, "create_snapshots"):
        pe.trace_snapshot_creation(trace_id, "brief", "abc123", 1024)
    pe.trace_output_generation(trace_id, ["captions.json"], 2048, {"format": "json"})
    pe.finalize_trace(trace, "succeeded")
    if mode.name != "langfuse":
        return
    spans = by_name(mode.spans(6))
    root = spans["invoke_workflow instagram_copy"]
    doctrine = spans["load_doctrine"]  # S4:538-540
    assert doctrine.parent_span_id == root.span_id
    assert meta(doctrine, "doctrine_id", "observation") == "brand-voice"
    assert meta(doctrine, "sha256", "observation") == "ab" * 32
    retrieval = spans["retrieve_context"]  # S4:541-543
    assert retrieval.attributes["langfuse.observation.type"] == "retriever"
    assert meta(retrieval, "files_retrieved", "observation") == "2"
    # the query is content: the observation's input (captured for Langfuse by default),
    # never metadata
    assert "secret query" in retrieval.attributes["langfuse.observation.input"]
    assert "secret query" not in json.dumps(
        {k: v for k, v in retrieval.attributes.items() if "metadata" in k})
    snapshot = spans["snapshot_brief"]  # S4:544-546, in its step
    assert snapshot.parent_span_id == spans["create_snapshots"].span_id
    assert meta(snapshot, "bytes", "observation") == "1024"
    outputs = spans["generate_outputs"]  # S4:558-559
    assert json.loads(meta(outputs, "files", "observation")) == ["captions.json"]
    assert meta(outputs, "format", "observation") == "json"


def test_b13_finalize_takes_error_and_artifacts_once_by_trace_or_id(mode: Mode) -> None:
    trace, trace_id = pe.trace_pipeline_execution("j", "r", "failing_job", "b", "h")
    pe.finalize_trace(trace_id, "failed", error="ValueError: bad brief",
                      artifacts={"captions.json": 12})
    pe.finalize_trace(trace, "succeeded")  # once: ignored
    if not mode.traced:
        assert not mode.metric("persona_workflow_runs_total", workflow="failing_job",
                               status="failed")  # nothing traced, nothing run
        return
    assert mode.metric("persona_workflow_runs_total", workflow="failing_job",
                       status="failed") == 1
    assert not mode.metric("persona_workflow_runs_total", workflow="failing_job",
                           status="succeeded")
    if mode.name == "langfuse":
        (root,) = mode.spans(1)
        assert root.status_code == 2  # ERROR
        assert meta(root, "error") == "ValueError: bad brief"
        assert json.loads(meta(root, "artifacts")) == {"captions.json": 12}
        # the root observation's output, as the seed's hierarchy shows it (S4:518-521)
        assert json.loads(root.attributes["langfuse.observation.output"]) == {
            "status": "failed", "artifacts": {"captions.json": 12},
            "error": "ValueError: bad brief"}


def test_b14_is_observability_enabled(mode: Mode) -> None:
    assert pe.is_observability_enabled() is mode.traced  # S4:228-231


def test_b15_b20_get_langfuse_and_the_old_trace_pattern(mode: Mode) -> None:
    # S4:672-683 and S4:800-801
    lf = pe.get_langfuse()
    trace_id = None
    if lf:
        trace = lf.trace(name="job:instagram_copy")
        trace_id = trace.id
        trace.end()
    manifest = pe.RunManifest("ig-1", None, "r", "h", {}, langfuse_trace_id=trace_id)
    assert (lf is None) is (not mode.traced)
    assert (manifest.langfuse_trace_id is not None) is mode.traced
    if mode.name == "langfuse":
        (root,) = mode.spans(1)
        assert root.trace_id == trace_id


def test_b16_b17_b21_client_context_managers_generation_and_batch_mode(mode: Mode) -> None:
    lf = pe.get_langfuse()
    if lf is None:  # S4:932 `lf.batch_mode()` on None is the seed's own bug
        assert not mode.traced
        lf = pe.LangfuseClient()
    # S4:63-85
    with lf.trace_context("job:ig", persona="copywriter", metadata={"job_id": "ig-1"}) as trace:
        trace.update(metadata={"stage_count": 2})
        with lf.batch_mode(), lf.span_context(trace.id, "draft") as span:  # S4:932-936
            span.update(metadata={"attempt": 1})
            generation = lf.generation(trace.id, "caption_generation", model="gpt-4",
                                       input="Write", output="Done",
                                       usage={"prompt_tokens": 7, "completion_tokens": 8})
    assert mode.metric("persona_llm_tokens_total", persona="copywriter", chatmode="none",
                       model="gpt-4", provider="unknown", token_type="output") == 8
    if not mode.traced:
        assert trace.id is None and span.id is None and generation.id is None
        return
    if mode.name == "langfuse":
        spans = by_name(mode.spans(3))
        root, step = spans["invoke_workflow job:ig"], spans["draft"]
        assert root.trace_id == trace.id and step.span_id == span.id
        assert spans["chat gpt-4"].parent_span_id == step.span_id
        assert meta(root, "job_id") == "ig-1" and meta(root, "stage_count") == "2"
        assert meta(step, "attempt", "observation") == "1"


def test_b16_module_level_context_managers_end_failed_on_the_callers_exception(
        mode: Mode) -> None:
    opened: list[SpanContext] = []

    def pipeline() -> None:
        with pe.trace_context("doomed") as trace, pe.span_context(trace.id, "step") as span:
            opened.append(span)
            raise KeyError("the caller's own")

    with pytest.raises(KeyError):
        pipeline()
    assert (opened[0].id is not None) is mode.traced
    assert mode.metric("persona_workflow_runs_total", workflow="doomed",
                       status="failed") == 1
    if mode.name == "langfuse":
        spans = by_name(mode.spans(2))
        assert spans["invoke_workflow doomed"].status_code == 2
        assert spans["step"].status_code == 2


def test_b18_trace_function_sync_async_nested_and_raising(mode: Mode) -> None:
    # S4:88-96
    @pe.trace_function(name="load", capture_args=True, capture_result=True)
    def load(path: str) -> str:
        return path.upper()

    @pe.trace_function
    async def fetch() -> int:
        return 7

    @pe.trace_function()
    def boom() -> None:
        raise ZeroDivisionError("the caller's own")

    assert load("a") == "A"
    assert asyncio.run(fetch()) == 7
    with pytest.raises(ZeroDivisionError):
        boom()
    with pe.workflow("outer"):
        assert load("b") == "B"  # a stage of the run it is called in
    if mode.name == "langfuse":
        spans = mode.spans(5)
        assert sorted(s.name for s in spans) == [
            "invoke_workflow boom", "invoke_workflow fetch", "invoke_workflow load",
            "invoke_workflow outer", "load"]
        stage = next(s for s in spans if s.name == "load")
        outer = next(s for s in spans if s.name == "invoke_workflow outer")
        assert stage.parent_span_id == outer.span_id
        failed = next(s for s in spans if s.name == "invoke_workflow boom")
        assert failed.status_code == 2
        # capture_args / capture_result: the call's arguments and result as input/output
        assert json.loads(stage.attributes["langfuse.observation.input"]) == {
            "args": ["b"], "kwargs": {}}
        assert stage.attributes["langfuse.observation.output"] == "B"
        alone = next(s for s in spans if s.name == "invoke_workflow load")
        assert alone.attributes["langfuse.observation.output"] == "A"
        plain = next(s for s in spans if s.name == "invoke_workflow fetch")
        assert "langfuse.observation.input" not in plain.attributes


# --- check_langfuse_health (S4:946-955), against a real server in each state ---


@pytest.fixture
def langfuse_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.setenv("PERSONA_EXPORTER_TRACE_SHUTDOWN_TIMEOUT", "0.2")
    yield monkeypatch
    telemetry_module.get_telemetry().shutdown(0.2)


def test_b22_health_disabled_without_keys_or_when_switched_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert pe.check_langfuse_health() == {"status": "disabled", "reason": "env_vars_missing"}
    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")
    assert pe.check_langfuse_health() == {"status": "disabled", "reason": "tracing_disabled"}


def test_b22_health_healthy_with_latency(langfuse_env: pytest.MonkeyPatch) -> None:
    with Receiver() as receiver:
        langfuse_env.setenv("LANGFUSE_BASE_URL", receiver.url)
        health = pe.check_langfuse_health()
        assert pe.get_langfuse().health_check().latency >= 0  # type: ignore[union-attr]
    assert health["status"] == "healthy"
    assert isinstance(health["latency_ms"], float) and 0 <= health["latency_ms"] < 2000


def test_b22_health_unhealthy_on_503_and_refused(langfuse_env: pytest.MonkeyPatch) -> None:
    with Receiver(status=503) as receiver:
        langfuse_env.setenv("LANGFUSE_BASE_URL", receiver.url)
        health = pe.check_langfuse_health()
    assert health == {"status": "unhealthy",
                      "error": f"HTTP 503 from {receiver.url}/api/public/health"}
    langfuse_env.setenv("LANGFUSE_BASE_URL", refused_url())
    health = pe.check_langfuse_health()
    assert health["status"] == "unhealthy" and "Connection" in health["error"]


def test_b22_health_is_bounded_in_time_against_a_hanging_server(
        langfuse_env: pytest.MonkeyPatch) -> None:
    with Receiver(hang=True) as receiver:
        langfuse_env.setenv("LANGFUSE_BASE_URL", receiver.url)
        langfuse_env.setenv("LANGFUSE_TIMEOUT", "30")  # capped at 2 s for a probe
        start = time.monotonic()
        health = pe.check_langfuse_health()
        elapsed = time.monotonic() - start
        assert health["status"] == "unhealthy" and health["error"].startswith("timeout after 2")
        assert elapsed < 2.5
        start = time.monotonic()
        assert pe.check_langfuse_health(timeout=0.2)["status"] == "unhealthy"
        assert time.monotonic() - start < 0.7


# --- the manifest (S4:376-447, 777-784) ---


def test_b23_inputs_hash_from_hash_strings_and_run_id() -> None:
    # S4:377-404
    snapshot_hashes = {
        "brief": "abc123",
        "context": "def456",
        "model_config": "ghi789",
    }
    inputs_hash_1 = pe.compute_inputs_hash(snapshot_hashes)
    run_id_1 = pe.derive_run_id(inputs_hash_1)
    trace, trace_id = pe.trace_pipeline_execution(
        job_id="test-job", run_id=run_id_1, job_type="test", brand="test-brand",
        inputs_hash=inputs_hash_1)
    assert trace_id is None  # tracing off here; the determinism below holds either way
    pe.finalize_trace(trace)
    inputs_hash_2 = pe.compute_inputs_hash(snapshot_hashes)
    assert inputs_hash_1 == inputs_hash_2
    assert run_id_1 == pe.derive_run_id(inputs_hash_2)
    same = {name: pe.InputSnapshot(f"inputs/{name}.json", digest, 1)
            for name, digest in snapshot_hashes.items()}
    assert pe.compute_inputs_hash(same) == inputs_hash_1  # snapshots or their hashes
    with pytest.raises(TypeError, match="'brief'"):
        pe.compute_inputs_hash({"brief": 123})  # type: ignore[dict-item]


SEED_MANIFEST = {  # S4:409-432, without its comments and "..."
    "schema_version": "1.2.0",
    "job_id": "ig-test-001",
    "run_id": "eb8e4cd552fdf661f062f84d481fe547",
    "inputs_hash": "def456789012",
    "input_snapshots": {
        "brief": {"path": "inputs/brief.resolved.json", "sha256": "abc123", "bytes": 1024},
        "context": {"path": "inputs/context.resolved.json", "sha256": "def456", "bytes": 2048},
    },
    "langfuse_trace_id": "trace-xyz-789",
    "artifacts": [],
}


def test_b24_b25_the_seed_manifest_loads_from_dict_and_file(tmp_path: Path) -> None:
    # S4:437-445
    manifest = pe.RunManifest.from_dict(SEED_MANIFEST)
    assert manifest.langfuse_trace_id == "trace-xyz-789"
    for snapshot in manifest.input_snapshots.values():
        assert "trace_id" not in snapshot
        assert "langfuse_trace_id" not in snapshot
        assert "sha256" in snapshot
    assert manifest.job_type is None and manifest.extra == {"schema_version": "1.2.0"}
    path = tmp_path / "manifest.json"  # S4:776-784
    path.write_text(json.dumps(SEED_MANIFEST))
    loaded = pe.RunManifest.from_file(path)
    assert [s.sha256 for s in loaded.input_snapshots.values()] == ["abc123", "def456"]


def test_b26_with_trace_takes_the_pair_its_parts_a_string_or_none(mode: Mode) -> None:
    manifest = pe.RunManifest.from_dict(SEED_MANIFEST)
    start = pe.trace_pipeline_execution("j", "r", "t", "b", "h")
    trace, trace_id = start
    for given in (start, trace, trace_id):
        expected = trace_id if mode.traced else "trace-xyz-789"
        assert manifest.with_trace(given).langfuse_trace_id == expected
    assert manifest.with_trace("abc").langfuse_trace_id == "abc"
    assert manifest.with_trace(None) is manifest
    pe.finalize_trace(start)


def test_pipeline_start_as_a_context_manager_fails_the_run_on_an_exception(
        mode: Mode) -> None:
    def pipeline() -> None:
        with pe.trace_pipeline_execution("j", "r", "ctx", "b") as start:
            assert (start.trace_id is not None) is mode.traced
            raise RuntimeError("the caller's own")

    with pytest.raises(RuntimeError):
        pipeline()
    if mode.traced:
        assert mode.metric("persona_workflow_runs_total", workflow="ctx", status="failed") == 1


# --- found in review: the seeds' patterns that reach past one call ---


def test_traces_ended_out_of_order_or_never_leave_no_run_in_scope(mode: Mode) -> None:
    # S0's start_trace/end_trace without try/finally: one raises before end_trace, two
    # end out of order. The scope must not pile them up nor bring a finished one back.
    from persona_exporter.sdk.context import SCOPE

    langfuse = get_langfuse_integration()
    for _ in range(50):
        langfuse.start_trace(name="never-ended", persona="qa-engineer")
    a = langfuse.start_trace(name="A", persona="backend-engineer")
    b = langfuse.start_trace(name="B", persona="devops-engineer")
    langfuse.end_trace(a, status="success")
    langfuse.end_trace(b, status="success")
    assert SCOPE.get().run is None
    depth, scope = 0, SCOPE.get()
    while scope.parent is not None:
        depth, scope = depth + 1, scope.parent
    assert depth == 0


def test_a_persona_given_by_update_becomes_the_trace_user(mode: Mode) -> None:
    langfuse = get_langfuse_integration()
    trace = langfuse.start_trace(name="feature")
    langfuse.create_generation(trace=trace, name="g1", model="gpt-4",
                               usage={"prompt_tokens": 1, "completion_tokens": 1})
    trace.update(user_id="backend-engineer")
    langfuse.create_generation(trace=trace, name="g2", model="gpt-4",
                               usage={"prompt_tokens": 1, "completion_tokens": 1})
    langfuse.end_trace(trace, status="success")
    if mode.name == "langfuse":
        spans = mode.spans(3)
        root = next(s for s in spans if s.name.startswith("invoke_workflow"))
        assert root.attributes["user.id"] == "backend-engineer"


def test_a_duplicate_trace_keyword_never_raises(mode: Mode) -> None:
    assert isinstance(pe.generation(None, "x", "gpt-4", trace="abc"), GenerationContext)
    TraceContext().generation("x", "m", trace=None)
    TraceContext().end("success", trace=None)


def test_the_trace_id_alone_is_enough_to_carry_a_pipeline(mode: Mode) -> None:
    import gc

    def start_job() -> str | None:
        _, trace_id = pe.trace_pipeline_execution("job-1", "run-1", "captions", "acme", "abc")
        return trace_id  # the caller keeps only the id, as the seed's helpers take it

    trace_id = start_job()
    gc.collect()
    with pe.trace_step(trace_id, "load_doctrine"):
        pe.trace_llm_call(trace_id, "caption_generation", "gpt-4", "prompt", "response",
                          {"prompt_tokens": 5, "completion_tokens": 3})
    pe.finalize_trace(trace_id, "succeeded")
    if mode.traced:
        assert mode.metric("persona_workflow_runs_total", workflow="captions",
                           status="succeeded") == 1
    if mode.name == "langfuse":
        names = sorted(s.name for s in mode.spans(3))
        assert names == ["chat gpt-4", "invoke_workflow captions", "load_doctrine"]


def test_is_observability_enabled_reads_the_environment_first(mode: Mode) -> None:
    from persona_exporter.sdk.telemetry import DISABLED, get_telemetry, set_default

    set_default(DISABLED)  # as in a fresh process configured by its environment only
    try:
        assert pe.is_observability_enabled() is mode.traced
    finally:
        made = get_telemetry()
        set_default(mode.telemetry)
        if made is not mode.telemetry and made is not DISABLED:
            made.shutdown(0.5)


def test_governance_ids_that_are_not_strings_are_recorded_as_their_text(mode: Mode) -> None:
    import uuid
    from pathlib import PurePosixPath

    job = uuid.UUID("12345678-1234-5678-1234-567812345678")
    trace, _ = pe.trace_pipeline_execution(job, "run-7", "captions", PurePosixPath("b/acme"),
                                           "h")
    if trace is not None:  # as a manifest writes them: str(), not repr()
        assert trace.metadata["job_id"] == "12345678-1234-5678-1234-567812345678"
        assert trace.metadata["brand"] == "b/acme"
    pe.finalize_trace(trace, "succeeded")


def test_the_start_pair_reads_the_traces_attributes_or_none(mode: Mode) -> None:
    start = pe.trace_pipeline_execution("job-9", "run-9", "captions", "acme", "h")
    if mode.traced:
        assert (start.job_id, start.run_id, start.metadata["brand"]) == (
            "job-9", "run-9", "acme")
    else:  # untraced: absent, never an AttributeError in the caller's code
        assert (start.job_id, start.run_id, start.trace_id, start.metadata) == (
            None, None, None, {})
    pe.finalize_trace(start, "succeeded")
