"""Trace fidelity (issue 13, items 1 and 2): the trace user Langfuse's server computes, the
trace-level attributes laid out as the pinned SDK's ``propagate_attributes`` lays them out,
governance ids on every span byte for byte, the root of a raising or abandoned run, and
nested steps as nested spans.

Spans are what the real OTLP exporter sends, decoded by a local receiver; the trace the
server makes of them comes from tests/langfuse_merge.py (its two write paths, cited there),
applied in every arrival order.
"""

from __future__ import annotations

import gc
import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import ObservableLLM, Telemetry, persona, stage, workflow
from persona_exporter.events import WorkflowRun, event_to_dict, parse_event
from persona_exporter.sdk.governance import (
    finalize_trace,
    trace_llm_call,
    trace_pipeline_execution,
    trace_step,
)
from persona_exporter.sdk.workflow import start_run
from persona_exporter.tracing.backends import langfuse_exporter
from persona_exporter.tracing.sink import TraceSink

from .langfuse_merge import events_trace, legacy_trace
from .otlp_receiver import Receiver, Span

PUBLIC_KEY = "pk-lf-fidelity"
SECRET_KEY = "sk-lf-fidelity"  # noqa: S105 - a test value
RESPONSE = {"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
TRACE_PREFIX = "langfuse.trace."
META = "langfuse.trace.metadata."


class Traced:
    """A telemetry whose only sink is Langfuse tracing to a local receiver."""

    def __init__(self, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", PUBLIC_KEY)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_BASE_URL", receiver.url)
        self.receiver = receiver
        self.sink = TraceSink({"langfuse": langfuse_exporter()}, flush_interval=0.05)  # type: ignore[dict-item]
        self.tel = Telemetry(sinks=[self.sink], registry=CollectorRegistry())
        self.llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=self.tel)

    def spans(self, count: int) -> list[Span]:
        assert self.sink.flush(10)
        spans = self.receiver.wait_for_spans(count)
        assert len(spans) == count, [s.name for s in spans]
        return spans


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traced]:
    with Receiver() as receiver:
        t = Traced(receiver, monkeypatch)
        yield t
        t.sink.shutdown(2)


def release(t: Traced, explicit: str | None, *, call_before_stages: bool = False) -> str:
    """backend -> qa -> devops, one call in each stage. Returns the run id."""
    with workflow("release", chatmode="package-release", persona=explicit,
                  telemetry=t.tel) as run:
        if call_before_stages:
            t.llm()  # before any persona is known
        for name, who in (("bump", "backend-engineer"), ("test", "qa-engineer"),
                          ("ship", "devops-engineer")):
            with stage(name, persona=who):
                t.llm()
    return run.run_id


def every_order(spans: list[Span]) -> Iterator[tuple[Span, ...]]:
    return itertools.permutations(spans)


def merged_users(spans: list[Span]) -> tuple[set[Any], set[Any]]:
    legacy, events = set(), set()
    for order in every_order(spans):
        legacy.add(legacy_trace(order)["userId"])
        events.add(events_trace(order)["userId"])
    return legacy, events


@pytest.mark.parametrize(("explicit", "user"), [
    ("tech-lead", "tech-lead"),        # workflow(persona=...): not any stage's
    (None, "backend-engineer"),        # else the first stage's
])
def test_the_trace_user_is_the_run_persona_in_every_arrival_order(
        traced: Traced, explicit: str | None, user: str) -> None:
    run_id = release(traced, explicit, call_before_stages=explicit is None)
    spans = traced.spans(8 if explicit is None else 7)
    if explicit is None:  # the call before the stages has no user (not yet known)
        (early,) = [s for s in spans if "user.id" not in s.attributes]
        assert early.name == "chat gpt-4o"
        spans = [s for s in spans if s is not early]
        for order in itertools.islice(every_order(spans), 0, None, 50):  # 8! is a lot
            for at in range(len(order) + 1):
                with_early = (*order[:at], early, *order[at:])
                assert legacy_trace(with_early)["userId"] == user
                assert events_trace(with_early)["userId"] == user
    assert merged_users(spans) == ({user}, {user})
    for order in itertools.islice(every_order(spans), 0, None, 97):
        for merged in (legacy_trace(order), events_trace(order)):
            assert merged["sessionId"] == run_id
            assert merged["name"] == "release"
            assert merged["tags"] == ["chatmode:package-release", "workflow:release"]
    # each observation still says whose it is, as filterable metadata
    by_stage = {s.attributes.get("stage"): s for s in spans if s.name == "chat gpt-4o"}
    assert json.loads(by_stage["ship"].attributes["langfuse.observation.metadata.persona"]) \
        == "devops-engineer"
    assert json.loads(by_stage["test"].attributes["langfuse.observation.metadata.stage"]) \
        == "test"


def old_layout(spans: list[Span]) -> list[Span]:
    """The spans as the exporter laid them out before: each span's own persona as its
    user, the trace-level attributes on the root only."""
    def old(span: Span) -> Span:
        attributes = {k: v for k, v in span.attributes.items()
                      if not span.parent_span_id or not k.startswith(TRACE_PREFIX)}
        attributes["user.id"] = span.attributes["persona"]
        return replace(span, attributes=attributes)
    return [old(s) for s in spans]


def test_the_merge_helper_reproduces_the_reported_bug(traced: Traced) -> None:
    """Regression: with each span's own persona as its user, Langfuse showed the last
    stage's persona (devops) on the legacy path, and any of them on the events path."""
    release(traced, "backend-engineer")
    spans = traced.spans(7)
    legacy, events = merged_users(old_layout(spans))
    assert legacy == {"devops-engineer"}
    assert events == {"backend-engineer", "qa-engineer", "devops-engineer"}
    assert merged_users(spans) == ({"backend-engineer"}, {"backend-engineer"})


def test_a_lone_call_under_a_persona_is_its_own_trace_with_its_chatmode(
        traced: Traced) -> None:
    with persona("qa-engineer", chatmode="bug-fix"):
        traced.llm()
    (span,) = traced.spans(1)
    assert span.parent_span_id == ""
    for merged in (legacy_trace([span]), events_trace([span])):
        assert merged["userId"] == "qa-engineer"
        assert merged["tags"] == ["chatmode:bug-fix"]
    assert json.loads(span.attributes[META + "chatmode"]) == "bug-fix"
    assert json.loads(span.attributes["langfuse.observation.metadata.chatmode"]) == "bug-fix"


def trace_level(span: Span) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items()
            if k.startswith(TRACE_PREFIX) or k in ("user.id", "session.id")}


def test_trace_attributes_are_encoded_as_propagate_attributes_encodes_them(
        traced: Traced) -> None:
    """The same user, session, name, tags and metadata through the pinned SDK's
    ``propagate_attributes`` (langfuse/_client/propagation.py, which its span processor
    copies onto every span) and through us: identical keys and encodings on the root, a
    stage and a generation."""
    from langfuse import Langfuse, propagate_attributes
    from opentelemetry.sdk.trace import TracerProvider

    governance = {"job_id": "j-1", "brand": "acme", "inputs_hash": "sha256:ab"}
    with workflow("release", chatmode="package-release", persona="backend-engineer",
                  run_id="run/ü-1", metadata=governance, telemetry=traced.tel), \
            stage("bump", persona="qa-engineer"):
        traced.llm()
    ours = {s.name: trace_level(s) for s in traced.spans(3)}

    with Receiver() as theirs:
        client = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=theirs.url,
                          tracer_provider=TracerProvider())
        with client.start_as_current_observation(name="root", as_type="chain"), \
                propagate_attributes(
                    user_id="backend-engineer", session_id="run/ü-1", trace_name="release",
                    tags=["chatmode:package-release", "workflow:release", "brand:acme"],
                    metadata={**governance, "chatmode": "package-release",
                              "workflow": "release", "persona": "backend-engineer",
                              "run_id": "run/ü-1"}), \
                client.start_as_current_observation(name="bump", as_type="agent"), \
                client.start_as_current_observation(name="gen", as_type="generation"):
            pass
        client.flush()
        sdk = {s.name: trace_level(s) for s in theirs.wait_for_spans(3)}
    for mine, its in (("invoke_workflow release", "root"), ("bump", "bump"),
                      ("chat gpt-4o", "gen")):
        assert ours[mine] == sdk[its], mine


def spans_of(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def test_governance_ids_are_on_every_span_and_a_raising_run_still_sends_its_root(
        traced: Traced) -> None:
    governance = {"job_id": "job-42", "job_type": "instagram-copy", "brand": "acme",
                  "inputs_hash": "sha256:00ff", "queue_job_id": "q-7"}

    def pipeline() -> None:
        with workflow("instagram-copy", run_id="run-42", metadata=governance,
                      telemetry=traced.tel), stage("draft", persona="copywriter"):
            traced.llm()
            raise RuntimeError("the pipeline broke")

    with pytest.raises(RuntimeError, match="the pipeline broke"):
        pipeline()
    spans = spans_of(traced.spans(3))
    for span in spans.values():
        for key, value in {**governance, "run_id": "run-42"}.items():
            assert json.loads(span.attributes[META + key]) == value, (span.name, key)
        assert span.attributes["user.id"] == "copywriter"
    root = spans["invoke_workflow instagram-copy"]
    assert root.status_code == 2  # ERROR
    assert set(legacy_trace(list(spans.values()))["tags"]) >= {
        "job_type:instagram-copy", "brand:acme"}


def test_a_pipeline_that_exits_without_finalize_sends_its_root_at_exit() -> None:
    """The process ends with the pipeline never finalized (it raised, the caller caught
    and exited): the root still arrives, failed and marked abandoned, and every span
    carries the governance ids."""
    with Receiver() as backend:
        script = textwrap.dedent(f"""
            import os
            os.environ.update(LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY="sk",
                              LANGFUSE_BASE_URL="{backend.url}")
            from prometheus_client import CollectorRegistry
            import persona_exporter as pe
            from persona_exporter.sdk.governance import (
                trace_llm_call, trace_pipeline_execution, trace_step)
            pe.configure(registry=CollectorRegistry())
            trace = trace_pipeline_execution(job_id="job-9", run_id="run/ü-9",
                                             job_type="caption", inputs_hash="sha256:9")
            try:
                with trace_step(trace, "draft", persona="copywriter"):
                    trace_llm_call(trace, model="gpt-4o", input_tokens=3)
                    raise ValueError("boom")
            except ValueError:
                pass
            # no finalize_trace, no flush: the exit hook must end the run
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        spans = spans_of(backend.wait_for_spans(3, timeout=10))
    assert set(spans) == {"invoke_workflow caption", "draft", "chat gpt-4o"}
    root = spans["invoke_workflow caption"]
    assert root.status_code == 2
    assert root.status_message == "abandoned: never finished"
    assert json.loads(root.attributes[META + "abandoned"]) == "true"
    for span in spans.values():
        assert json.loads(span.attributes[META + "job_id"]) == "job-9"
        assert json.loads(span.attributes[META + "run_id"]) == "run/ü-9"
        assert span.attributes["session.id"] == "run/ü-9"


def test_a_run_collected_unfinished_sends_its_root(traced: Traced) -> None:
    run = start_run("nightly", persona="backend-engineer", metadata={"job_id": "n-1"},
                    telemetry=traced.tel)
    with stage("load", run=run):
        traced.llm()
    del run
    gc.collect()
    # Handed over by the finaliser, emitted at the next safe moment: another run's start.
    with workflow("next", telemetry=traced.tel):
        pass
    spans = spans_of(traced.spans(4))
    root = spans["invoke_workflow nightly"]
    assert root.status_code == 2
    assert root.status_message == "abandoned: never finished"
    assert json.loads(root.attributes[META + "job_id"]) == "n-1"


def test_ids_are_exact_in_the_trace_and_clean_in_the_metrics(traced: Traced) -> None:
    long_run = "r" * 300
    big = "J" * 2000
    with workflow("w", run_id="run/ü-1", metadata={"job_id": "ü" * 5, "note": "a\ud800b"},
                  telemetry=traced.tel) as run, stage("s", persona="p"):
        traced.llm()
    assert run.run_id == "run/_-1"  # the metric label and event: a valid name
    with workflow("w2", run_id=long_run, metadata={"job_id": big},
                  telemetry=traced.tel) as r2, stage("s", persona="p"):
        traced.llm()
    assert r2.run_id == "r" * 128
    spans = traced.spans(6)  # the lone surrogate did not make the batch unencodable
    first = [s for s in spans if s.trace_id == spans_of(spans)["invoke_workflow w"].trace_id]
    for span in first:
        assert span.attributes["session.id"] == "run/ü-1"
        assert json.loads(span.attributes[META + "run_id"]) == "run/ü-1"
        assert json.loads(span.attributes[META + "job_id"]) == "ü" * 5
        assert json.loads(span.attributes[META + "note"]) == "a\\ud800b"
        assert json.loads(span.attributes[META + "note_escaped"]) == "true"
    second = [s for s in spans if s not in first]
    for span in second:
        assert "session.id" not in span.attributes  # over the SDK's 200: left out, marked
        assert json.loads(span.attributes[META + "session_id_omitted"]) == \
            "run_id longer than 200 characters"
        assert json.loads(span.attributes[META + "run_id"]) == long_run
        if span.parent_span_id:
            assert META + "job_id" not in span.attributes
            assert json.loads(span.attributes[META + "job_id_length"]) == "2000"
            assert json.loads(span.attributes[META + "job_id_on_root"]) == "true"
        else:
            assert json.loads(span.attributes[META + "job_id"]) == big


def test_the_wire_form_of_an_event_has_no_trace_attributes(traced: Traced) -> None:
    """RemoteSink sends event_to_dict(event): the in-process trace attributes stay home,
    and the server refuses them as an unknown field."""
    run = start_run("w", telemetry=traced.tel)
    event = run.final_event("succeeded")
    assert event.trace is not None
    wire = event_to_dict(event)
    assert "trace" not in wire
    assert isinstance(parse_event(wire), WorkflowRun)
    with pytest.raises(ValueError, match="trace: unknown field"):
        parse_event({**wire, "trace": {"user": "x"}})
    run.finished = True  # not abandoned: this test only looked


def test_nested_steps_are_nested_spans(traced: Traced) -> None:
    trace = trace_pipeline_execution(job_id="j", run_id="r-nest", job_type="caption",
                                     inputs_hash="h", telemetry=traced.tel)
    with trace_step(trace, "outer", persona="copywriter"):
        with trace_step(trace, "load_doctrine"):
            trace_llm_call(trace, model="gpt-4o", input_tokens=1)
        trace_llm_call(trace, model="gpt-4o-mini", input_tokens=1)
    with workflow("w", telemetry=traced.tel), stage("a", persona="p"), stage("b"):
        traced.llm()
    finalize_trace(trace)
    spans = traced.spans(9)
    pipeline = spans_of([s for s in spans if json.loads(
        s.attributes.get(META + "job_id", '""')) == "j"])
    assert pipeline["load_doctrine"].parent_span_id == pipeline["outer"].span_id
    assert pipeline["outer"].parent_span_id == pipeline["invoke_workflow caption"].span_id
    assert pipeline["chat gpt-4o"].parent_span_id == pipeline["load_doctrine"].span_id
    assert pipeline["chat gpt-4o-mini"].parent_span_id == pipeline["outer"].span_id
    other = pipeline["invoke_workflow caption"].trace_id
    plain = spans_of([s for s in spans if s.trace_id != other])
    assert plain["b"].parent_span_id == plain["a"].span_id
    assert plain["a"].parent_span_id == plain["invoke_workflow w"].span_id
    assert plain["chat gpt-4o"].parent_span_id == plain["b"].span_id
    assert plain["b"].attributes["user.id"] == "p"  # the inner stage inherits the persona


def test_a_run_builds_its_trace_attributes_once_not_per_span(traced: Traced) -> None:
    """The per-span work is a lookup: every event of a run shares one TraceAttributes
    object (a second one only once the run's persona becomes known), whose encoded
    attributes the export thread builds once."""
    from persona_exporter.events import Event, TraceAttributes

    seen: list[Any] = []

    class Capture:
        needs_trace_context = False

        def emit(self, event: Event) -> None:
            seen.append(event)

        def flush(self, timeout: float | None = None) -> bool:
            return True

        def shutdown(self, timeout: float | None = None) -> None:
            pass

    tel = Telemetry(sinks=[Capture(), traced.sink], registry=CollectorRegistry())
    llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", telemetry=tel)
    with workflow("w", telemetry=tel):
        llm()  # before the run's persona is known
        with stage("a", persona="backend-engineer"):
            for _ in range(20):
                llm()
        with stage("b", persona="qa-engineer"):
            llm()
    traces: list[TraceAttributes] = [
        e.trace for e in seen if getattr(e, "span_id", None) and e.trace is not None]
    assert len(traces) == 25  # 22 calls, 2 stages, the root
    assert len({id(t) for t in traces}) == 2
    assert [t.user for t in traces].count(None) == 1
    traced.spans(25)
    assert all(t.encoded is not None for t in traces)
