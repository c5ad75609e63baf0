"""Pipeline tracing with governance ids, and the seed's seven determinism invariants.

A deterministic pipeline: snapshots -> inputs_hash -> run_id -> (only then) tracing. The
trace id may appear at the manifest's root and nowhere in what determines the run."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import ObservableLLM, Telemetry, configure
from persona_exporter.sdk.governance import (
    PipelineTrace,
    finalize_trace,
    is_observability_enabled,
    trace_artifact,
    trace_llm_call,
    trace_pipeline_execution,
    trace_retrieval,
    trace_step,
)
from persona_exporter.sdk.manifest import (
    InputSnapshot,
    RunManifest,
    compute_inputs_hash,
    derive_run_id,
)
from persona_exporter.tracing.backends import langfuse_exporter
from persona_exporter.tracing.sink import TraceSink

from .conftest import sample
from .otlp_receiver import Receiver, Span, refused_url

INPUTS = {"brief.yaml": b"job_id: ig-test-001\nbrand: acme\n",
          "doctrine.md": b"# Voice\nShort, warm, no jargon.\n"}


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    with Receiver() as receiver:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
        monkeypatch.setenv("LANGFUSE_BASE_URL", receiver.url)
        monkeypatch.setenv("PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL", "0.05")
        yield receiver


def run_pipeline(telemetry: Telemetry, inputs: dict[str, bytes] = INPUTS,
                 job_id: str = "ig-test-001") -> tuple[RunManifest, PipelineTrace | None]:
    """What a pipeline does, in the order the seed prescribes."""
    snapshots = {name: InputSnapshot.of(f"inputs/{name}", data) for name, data in inputs.items()}
    inputs_hash = compute_inputs_hash(snapshots)
    run_id = derive_run_id(inputs_hash)  # determinism first...
    trace, _ = trace_pipeline_execution(job_id, run_id, "instagram-copy", "acme", inputs_hash,
                                        persona="copywriter",
                                        telemetry=telemetry)  # ...then observability
    with trace_step(trace, "retrieve", persona="researcher"):
        trace_retrieval(trace, "brand-guidelines", duration_seconds=0.2,
                        metadata={"documents": "3"})
    with trace_step(trace, "draft", persona="copywriter") as step:
        trace_llm_call(trace, model="gpt-4o", provider="openai", input_tokens=900,
                       output_tokens=200, duration_seconds=1.5)
        ObservableLLM(lambda: {"usage": {"prompt_tokens": 10, "completion_tokens": 5}},
                      model="gpt-4o-mini", telemetry=telemetry)()
        if step is not None:
            assert step.tokens == 1115
    trace_artifact(trace, "captions.json", metadata={"sha256": "ab" * 32})
    finalize_trace(trace, "succeeded", metadata={"artifacts": "1"})
    manifest = RunManifest(job_id, "instagram-copy", run_id, inputs_hash, snapshots,
                           status="succeeded", artifacts=("captions.json",))
    return manifest.with_trace(trace), trace


Traced = tuple[RunManifest, PipelineTrace | None, list[Span]]


@pytest.fixture
def traced(backend: Receiver) -> Traced:
    """One pipeline run with Langfuse tracing on: its manifest, trace and decoded spans."""
    tel = configure(registry=CollectorRegistry())
    try:
        manifest, trace = run_pipeline(tel)
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    return manifest, trace, backend.wait_for_spans(7)


def test_a_traced_pipeline_on_the_wire(traced: Traced) -> None:
    manifest, trace, spans = traced
    assert trace is not None
    names = {s.name: s for s in spans}
    assert set(names) == {"invoke_workflow instagram-copy", "retrieve", "brand-guidelines",
                          "draft", "chat gpt-4o", "chat gpt-4o-mini", "captions.json"}
    root = names["invoke_workflow instagram-copy"]
    assert root.trace_id == trace.trace_id == manifest.langfuse_trace_id
    # (3) governance ids go TO the trace, as trace metadata on its root
    metadata = {k.removeprefix("langfuse.trace.metadata."): json.loads(v)
                for k, v in root.attributes.items() if k.startswith("langfuse.trace.metadata.")}
    assert metadata == {"job_id": "ig-test-001", "run_id": manifest.run_id,
                        "job_type": "instagram-copy", "inputs_hash": manifest.inputs_hash,
                        "brand": "acme", "artifacts": "1", "workflow": "instagram-copy",
                        "persona": "copywriter"}  # the run's: the trace's user
    assert root.attributes["session.id"] == manifest.run_id
    assert root.attributes["user.id"] == "copywriter"
    # steps nest under the run, calls and retrievals under their step
    assert names["retrieve"].parent_span_id == root.span_id
    assert names["brand-guidelines"].parent_span_id == names["retrieve"].span_id
    assert names["brand-guidelines"].attributes["langfuse.observation.type"] == "retriever"
    assert names["chat gpt-4o"].parent_span_id == names["draft"].span_id
    assert names["chat gpt-4o-mini"].parent_span_id == names["draft"].span_id
    assert names["chat gpt-4o"].attributes["user.id"] == "copywriter"
    assert names["captions.json"].parent_span_id == root.span_id
    assert names["captions.json"].attributes["langfuse.observation.type"] == "event"


def test_every_function_accepts_a_none_trace() -> None:
    # The whole API is a no-op on None: nothing raises, nothing is recorded.
    with trace_step(None, "s") as step:
        assert step is None
    trace_llm_call(None, model="m", input_tokens=5)
    trace_retrieval(None, "r")
    trace_artifact(None, "a")
    finalize_trace(None, "failed")


def test_disabled_sampled_out_and_opted_out_runs_get_no_trace(
        backend: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    untraced = Telemetry(registry=CollectorRegistry())
    assert not is_observability_enabled(untraced)
    assert trace_pipeline_execution("j", "r", "t", "b", "h", telemetry=untraced) == (None, None)

    tel = configure(registry=CollectorRegistry())
    try:
        assert is_observability_enabled(tel)
        assert trace_pipeline_execution("j", "r", "t", "b", "h", telemetry=tel,
                                        enabled=False) == (None, None)
    finally:
        tel.shutdown(1)
    monkeypatch.setenv("LANGFUSE_SAMPLE_RATE", "0")
    tel = configure(registry=CollectorRegistry())
    try:
        assert all(trace_pipeline_execution("j", "r", "t", "b", "h", telemetry=tel)
                   == (None, None)
                   for _ in range(50))
    finally:
        tel.shutdown(1)


def test_invariant_1_trace_ids_never_enter_the_input_snapshots(traced: Traced) -> None:
    manifest, trace, _ = traced
    assert trace is not None and trace.trace_id
    data = manifest.to_dict()
    assert data["langfuse_trace_id"] == trace.trace_id  # at the root...
    for snapshot in data["input_snapshots"].values():  # ...and nowhere in the snapshots
        assert set(snapshot) == {"path", "sha256", "bytes"}
        assert trace.trace_id not in json.dumps(snapshot)
    assert json.dumps(data["input_snapshots"]) == json.dumps(
        RunManifest.from_dict(data).to_dict()["input_snapshots"])


def test_invariant_2_the_run_id_is_derived_before_and_without_tracing(
        traced: Traced) -> None:
    untraced_manifest, untraced = run_pipeline(Telemetry(registry=CollectorRegistry()))
    assert untraced is None
    traced_manifest, trace, _ = traced
    assert trace is not None
    # same inputs, same run id, whether traced or not; tracing received it, did not make it
    assert traced_manifest.run_id == untraced_manifest.run_id == trace.run_id
    assert trace.run_id == derive_run_id(compute_inputs_hash(traced_manifest.input_snapshots))


def test_invariant_3_governance_ids_flow_to_the_trace_never_back(traced: Traced) -> None:
    manifest, trace, spans = traced
    assert trace is not None
    assert (trace.job_id, trace.job_type) == ("ig-test-001", "instagram-copy")
    root = next(s for s in spans if s.parent_span_id == "")
    assert json.loads(root.attributes["langfuse.trace.metadata.job_id"]) == manifest.job_id
    assert manifest.job_id == "ig-test-001"  # the manifest's ids are the pipeline's own
    assert trace.trace_id not in (manifest.job_id, manifest.run_id, manifest.inputs_hash)


def test_invariant_4_the_doctrine_is_a_hashed_input_and_traces_are_not() -> None:
    base = {n: InputSnapshot.of(n, d) for n, d in INPUTS.items()}
    changed = {**base, "doctrine.md": InputSnapshot.of("doctrine.md", b"# Voice\nFormal.\n")}
    assert compute_inputs_hash(changed) != compute_inputs_hash(base)
    assert derive_run_id(compute_inputs_hash(changed)) != derive_run_id(
        compute_inputs_hash(base))
    moved = {n: InputSnapshot(f"elsewhere/{s.path}", s.sha256, s.bytes) for n, s in base.items()}
    assert compute_inputs_hash(moved) == compute_inputs_hash(base)  # content, not location


def test_invariant_5_the_manifest_is_the_same_whether_tracing_works_or_fails(
        backend: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, _ = run_pipeline(Telemetry(registry=CollectorRegistry()))
    monkeypatch.setenv("LANGFUSE_BASE_URL", refused_url())  # Langfuse down
    monkeypatch.setenv("LANGFUSE_TIMEOUT", "1")
    registry = CollectorRegistry()
    tel = configure(registry=registry)
    try:
        down, trace = run_pipeline(tel)
        tel.flush(3)
    finally:
        tel.shutdown(1)
    assert trace is not None
    without_trace_id = {k: v for k, v in down.to_dict().items() if k != "langfuse_trace_id"}
    assert without_trace_id == plain.to_dict()
    assert (sample(registry, "persona_exporter_trace_export_failures_total",
                   backend="langfuse") or 0) >= 1


def test_invariant_6_trace_ids_never_change_the_inputs_hash(backend: Receiver) -> None:
    tel = configure(registry=CollectorRegistry())
    try:
        first, first_trace = run_pipeline(tel)
        second, second_trace = run_pipeline(tel)
        assert tel.flush(10)
    finally:
        tel.shutdown(2)
    assert first_trace is not None and second_trace is not None
    assert first_trace.trace_id != second_trace.trace_id
    assert first.inputs_hash == second.inputs_hash
    assert first.run_id == second.run_id
    first.verify()
    second.verify()


def test_invariant_7_manifests_without_a_trace_id_still_load() -> None:
    legacy = {"job_id": "ig-test-001", "job_type": "instagram-copy",
              "run_id": derive_run_id("h"), "inputs_hash": "h",
              "input_snapshots": {"brief.yaml": {"path": "inputs/brief.yaml",
                                                 "sha256": "00" * 32, "bytes": 10}},
              "status": "succeeded", "artifacts": [], "brand": "acme"}
    manifest = RunManifest.from_dict(legacy)
    assert manifest.langfuse_trace_id is None
    assert manifest.to_dict() == legacy  # unknown keys kept, no trace id invented
    assert "langfuse_trace_id" not in manifest.to_json()


def test_a_manifest_that_does_not_follow_from_its_inputs_is_caught() -> None:
    snapshots = {n: InputSnapshot.of(n, d) for n, d in INPUTS.items()}
    inputs_hash = compute_inputs_hash(snapshots)
    RunManifest("j", "t", derive_run_id(inputs_hash), inputs_hash, snapshots).verify()
    with pytest.raises(ValueError, match="run_id"):
        RunManifest("j", "t", "trace-xyz", inputs_hash, snapshots).verify()
    with pytest.raises(ValueError, match="inputs_hash"):
        RunManifest("j", "t", derive_run_id("x"), "x", snapshots).verify()


def test_tracing_faults_inside_governance_are_silent(registry: CollectorRegistry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenSink(TraceSink):
        def emit(self, event: object) -> None:
            raise RuntimeError("sink down")

    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
    monkeypatch.setenv("LANGFUSE_BASE_URL", refused_url())
    base = Telemetry(registry=registry)
    sink = BrokenSink({"langfuse": langfuse_exporter()}, recorder=base.recorder)  # type: ignore[dict-item]
    tel = Telemetry(recorder=base.recorder, sinks=[sink])
    try:
        manifest, trace = run_pipeline(tel)
        finalize_trace(trace, "no-such-status")  # already final: ignored, no raise
    finally:
        sink.shutdown(0.5)
    assert trace is not None and manifest.status == "succeeded"
    assert (sample(registry, "persona_exporter_internal_errors_total",
                   component="sink.BrokenSink", kind="RuntimeError") or 0) >= 5


def test_absurd_numbers_from_the_caller_are_dropped_not_recorded(
        registry: CollectorRegistry) -> None:
    class Capture(TraceSink):
        def __init__(self) -> None:
            self.needs_trace_context = True
            self.sample_rate = 1.0

        def emit(self, event: object) -> None:
            return None

        def flush(self, timeout: float | None = None) -> bool:
            return True

        def shutdown(self, timeout: float | None = None) -> None:
            return None

    tel = Telemetry(registry=registry, sinks=[Capture()])
    trace, _ = trace_pipeline_execution("j", derive_run_id("x"), "t", inputs_hash="x",
                                        telemetry=tel)
    assert trace is not None
    with trace_step(trace, "draft", persona="copywriter"):
        trace_llm_call(trace, model="m", input_tokens=10**15, duration_seconds=1e300,
                       cost_usd=1e300)
    labels = {"persona": "copywriter", "chatmode": "none", "model": "m",
              "provider": "unknown"}
    assert sample(registry, "persona_llm_requests_total", **labels) == 1
    assert sample(registry, "persona_llm_tokens_total", **labels, token_type="input") == 10**12
    assert sample(registry, "persona_llm_cost_usd_total", **labels) == 0
    latency = {k: v for k, v in labels.items() if k != "chatmode"}  # summed over chatmodes
    assert sample(registry, "persona_llm_request_duration_seconds_sum", **latency) == 0
