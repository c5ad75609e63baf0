"""The per-trace state of the OTLP receiver (genai/traces.py): spans in, exact events and
counts out. The mapping is a small stand-in (tests/genai_standin.py) injected into Traces,
except in the tests named ``..._real_mapping``."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from persona_exporter.catalog import OTLP_SPAN_OUTCOMES, PERSONA_SOURCES
from persona_exporter.config import Otlp
from persona_exporter.events import (
    LLMGeneration,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    event_to_dict,
    parse_event,
)
from persona_exporter.genai.mapping import Call, Role
from persona_exporter.genai.span import Span
from persona_exporter.genai.traces import Result, Traces

from . import genai_standin
from .genai_standin import START, chat, sid, span, tid


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CheckedTraces(Traces):
    """Traces whose every event must pass the validation of events parsed from outside."""

    def add(self, spans: Iterable[Span]) -> Result:
        return valid(super().add(spans))

    def expire(self, now: float | None = None) -> Result:
        return valid(super().expire(now))


def valid(result: Result) -> Result:
    for event in result.events:
        assert parse_event(event_to_dict(event)) == event
    assert set(result.outcomes) <= set(OTLP_SPAN_OUTCOMES)
    assert set(result.persona_sources) <= set(PERSONA_SOURCES)
    return result


def traces(clock: Clock | None = None, **otlp: Any) -> Traces:
    return CheckedTraces(Otlp.model_validate(otlp), clock=clock or Clock(),
                         classify=genai_standin.classify, read_call=genai_standin.read_call)


def at(start: float) -> float:
    return (START + int(start * 1e9)) / 1e9


def gen(trace: int, span_id: int, parent: int | None, persona: str, *,
        tokens: tuple[int, int] = (10, 5), start: float = 0.0, duration: float = 1.0,
        **fields: Any) -> LLMGeneration:
    values: dict[str, Any] = {
        "persona": persona, "chatmode": "none", "model": "gpt-4o", "provider": "openai",
        "input_tokens": tokens[0], "output_tokens": tokens[1],
        "duration_seconds": int(duration * 1e9) / 1e9, "start_time": at(start),
        "trace_id": tid(trace), "span_id": sid(span_id),
        "parent_span_id": None if parent is None else sid(parent)}
    values.update(fields)
    return LLMGeneration(**values)


PERSONA = {"persona.name": "backend"}


def test_an_llm_span_naming_its_persona_is_one_generation_at_once() -> None:
    t = traces()
    r = t.add([chat(1, 2, 1, tokens=(120, 30), start=5, duration=2.5,
                    attributes={**PERSONA, "chatmode": "bug-fix",
                                "gen_ai.response.time_to_first_chunk": 0.25})])
    assert r.events == [gen(1, 2, 1, "backend", tokens=(120, 30), start=5, duration=2.5,
                            chatmode="bug-fix", time_to_first_chunk_seconds=0.25)]
    assert r.outcomes == Counter(mapped=1)
    assert r.persona_sources == Counter(span=1)
    assert t.held == 0


def test_a_child_before_its_root_waits_for_the_root_across_requests() -> None:
    """Spans are exported on end: the chat span, then its agent, then the root, each in
    its own request; the persona is only on the root (note (e))."""
    t = traces()
    r1 = t.add([chat(1, 3, 2)])
    assert (r1.events, r1.outcomes, t.held) == ([], Counter(mapped=1), 1)
    r2 = t.add([span(1, 2, 1, name="plan")])
    assert (r2.events, r2.outcomes, t.held) == ([], Counter(ignored=1), 1)
    r3 = t.add([span(1, 1, None, name="POST /run",
                     attributes={**PERSONA, "chatmode.name": "release"})])
    assert r3.events == [gen(1, 3, 2, "backend", chatmode="release")]
    assert r3.persona_sources == Counter(ancestor=1)
    assert r3.outcomes == Counter(ignored=1)
    assert t.held == 0


def test_an_ancestor_in_the_same_request_resolves_at_once_whatever_the_order() -> None:
    """A request groups spans by resource and scope, so the parent may come first."""
    t = traces()
    r = t.add([span(1, 2, 1, name="agent", attributes={"gen_ai.agent.name": "qa"}),
               chat(1, 3, 2)])
    assert r.events == [gen(1, 3, 2, "qa")]
    assert r.persona_sources == Counter(ancestor=1)
    assert t.held == 0


def test_without_its_root_a_held_span_is_released_at_the_deadline() -> None:
    clock = Clock()
    t = traces(clock, hold_seconds=30)
    t.add([chat(1, 2, 1, resource={"persona.name": "svc", "chatmode": "batch"}),
           chat(2, 2, 1)])
    assert t.held == 2
    assert t.expire(clock.now + 29.9).events == []
    clock.now += 30
    r = t.expire()
    assert r.events == [gen(1, 2, 1, "svc", chatmode="batch"), gen(2, 2, 1, "unknown")]
    assert r.persona_sources == Counter(resource=1, unknown=1)
    assert r.outcomes == Counter()  # counted as mapped when they arrived
    assert t.held == 0


def test_a_persona_named_elsewhere_in_the_trace_is_the_trace_level_fallback() -> None:
    t = traces()
    t.add([chat(1, 3, 2)])
    t.add([span(1, 2, 1, name="tool"), span(1, 4, 1, name="other", attributes={
        "persona": "qa"})])
    assert t.held == 1
    r = t.add([span(1, 1, None, name="root", resource={"persona.name": "svc"})])
    assert r.events == [gen(1, 3, 2, "qa")]
    assert r.persona_sources == Counter(trace=1)


def test_the_persona_map_names_the_canonical_persona() -> None:
    t = traces(persona={"attributes": ["persona", "metadata.persona"],
                        "resource_attributes": [],
                        "map": {"^qa": "qa-engineer", "back": "backend-engineer"}})
    r = t.add([chat(1, 2, 1, attributes={"persona": "qa-backend-bot"}),
               chat(2, 2, 1, attributes={"metadata": json.dumps({"persona": "backend-2"})})])
    assert r.events == [gen(1, 2, 1, "qa-engineer"), gen(2, 2, 1, "backend-engineer")]
    assert r.persona_sources == Counter(span=2)


def test_past_max_held_spans_the_oldest_is_released_at_once() -> None:
    t = traces(max_held_spans=2)
    assert t.add([chat(1, 2, 1), chat(2, 2, 1)]).events == []
    r = t.add([chat(3, 2, 1)])
    assert r.released_early == 1
    assert r.events == [gen(1, 2, 1, "unknown")]
    assert t.held == 2


def test_traces_are_remembered_least_recently_used_first_forgotten() -> None:
    t = traces(max_traces=2)
    t.add([chat(1, 2, 1)])  # held
    t.add([chat(2, 2, 1, attributes=PERSONA)])
    r = t.add([chat(3, 2, 1, attributes=PERSONA)])  # trace 1 is forgotten, its span released
    assert r.released_early == 1
    assert r.events == [gen(1, 2, 1, "unknown"), gen(3, 2, 1, "backend")]
    assert t.add([chat(3, 2, 1, attributes=PERSONA)]).outcomes == Counter(deduplicated=1)
    # trace 2 is now the least recently used: forgotten when trace 4 comes, so its span
    # counts again (the bound on memory is the bound on deduplication)
    t.add([chat(4, 2, 1, attributes=PERSONA)])
    again = t.add([chat(2, 2, 1, attributes=PERSONA)])
    assert again.outcomes == Counter(mapped=1)


def test_a_span_received_twice_counts_once() -> None:
    t = traces()
    batch = [chat(1, 2, 1, attributes=PERSONA), span(1, 1, None, name="root")]
    first = t.add(batch)
    second = t.add(batch)
    assert first.outcomes == Counter(mapped=1, ignored=1)
    assert (second.events, second.outcomes) == ([], Counter(deduplicated=2))
    assert t.add(batch[:1]).outcomes == Counter(deduplicated=1)


def test_two_llm_spans_with_one_response_id_keep_the_innermost() -> None:
    """A framework's LLM span over the provider's (note (f)): one call."""
    outer = {**PERSONA, "gen_ai.response.id": "chatcmpl-1"}
    t = traces()
    # one request, the framework span first (another scope)
    r = t.add([chat(1, 2, 1, attributes=outer), chat(1, 3, 2, attributes=outer)])
    assert r.events == [gen(1, 3, 2, "backend")]
    assert r.outcomes == Counter(mapped=1, deduplicated=1)
    # separate requests: the inner one ends, and arrives, first
    r1 = t.add([chat(5, 3, 2, attributes=outer)])
    r2 = t.add([chat(5, 2, 1, attributes=outer)])
    assert r1.events == [gen(5, 3, 2, "backend")]
    assert (r2.events, r2.outcomes) == ([], Counter(deduplicated=1))
    # the same response id in another trace is another call
    assert t.add([chat(6, 2, 1, attributes=outer)]).outcomes == Counter(mapped=1)


def test_an_llm_span_over_another_with_usage_counts_once_without_a_response_id() -> None:
    """OpenInference's LangChain and OpenAI instrumentors both write LLM spans with
    llm.token_count.* and no response id (note (f): keep the innermost)."""
    t = traces()
    r = t.add([chat(1, 2, 1, attributes=PERSONA), chat(1, 3, 2, attributes=PERSONA)])
    assert r.events == [gen(1, 3, 2, "backend")]
    assert r.outcomes == Counter(mapped=1, counted_below=1)
    r1 = t.add([chat(5, 3, 2, attributes=PERSONA)])  # the inner ends, and arrives, first
    r2 = t.add([chat(5, 2, 1, attributes=PERSONA)])
    assert r1.events == [gen(5, 3, 2, "backend")]
    assert (r2.events, r2.outcomes) == ([], Counter(counted_below=1))


def ai6(span_id: int, parent: int | None, operation: str, tokens: tuple[int, int],
        **kwargs: Any) -> Span:
    """AI SDK 6 spans (tag ai@6.0.264 generate-text.ts): ai.usage.* on the outer
    ai.generateText span (the sum over steps) and on each doGenerate span."""
    return span(7, span_id, parent, name=operation, attributes={
        "ai.operationId": operation, "ai.model.id": "gpt-4o", "ai.model.provider": "openai",
        "gen_ai.system": "openai", "ai.usage.inputTokens": tokens[0],
        "ai.usage.outputTokens": tokens[1], "ai.telemetry.metadata.persona": "writer"},
        **kwargs)


def test_ai_sdk_6_outer_span_is_not_counted_over_its_do_generate_spans() -> None:
    t = traces()
    r = t.add([ai6(2, 1, "ai.generateText.doGenerate", (10, 4)),
               ai6(3, 1, "ai.generateText.doGenerate", (20, 8), start=2),
               ai6(1, None, "ai.generateText", (30, 12), duration=5)])
    assert r.events == [gen(7, 2, 1, "writer", tokens=(10, 4)),
                        gen(7, 3, 1, "writer", tokens=(20, 8), start=2)]
    assert r.outcomes == Counter(mapped=2, counted_below=1)


def test_ai_sdk_7_invoke_agent_and_agent_step_are_not_counted_over_chat() -> None:
    """AI SDK 7 gen_ai mode: invoke_agent and agent_step carry aggregate gen_ai.usage.*
    duplicating the chat spans (LF `isAiSdkAgentOperation`)."""
    agent = {"gen_ai.agent.name": "weather", "gen_ai.request.model": "gpt-4o",
             "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 10,
             "gen_ai.usage.output_tokens": 5}
    t = traces()
    r1 = t.add([chat(8, 3, 2, start=1)])
    r2 = t.add([span(8, 2, 1, name="agent_step", start=0.5, duration=2,
                     attributes={**agent, "gen_ai.operation.name": "agent_step"}),
                span(8, 1, None, name="invoke_agent weather", duration=3,
                     attributes={**agent, "gen_ai.operation.name": "invoke_agent"})])
    assert r1.events == []
    assert r2.events == [
        gen(8, 3, 2, "weather", start=1),
        StageRun(workflow="weather", stage="weather", persona="weather", status="succeeded",
                 duration_seconds=2.0, tokens=15, start_time=at(0.5), trace_id=tid(8),
                 span_id=sid(2), parent_span_id=sid(1)),
        WorkflowRun(workflow="weather", status="succeeded", duration_seconds=3.0, tokens=15,
                    persona="weather", start_time=at(0), trace_id=tid(8), span_id=sid(1)),
    ]
    assert r1.outcomes + r2.outcomes == Counter(mapped=1, workflow=2)


CLAUDE_AGENT = {"openinference.span.kind": "AGENT", "agent.name": "coder",
                "llm.model_name": "claude-sonnet-4", "llm.provider": "anthropic",
                "llm.token_count.prompt": 100, "llm.token_count.completion": 50,
                "llm.cost.total": 0.02}


def test_an_openinference_agent_span_with_usage_and_nothing_below_counts() -> None:
    """OpenInference claude-agent-sdk: the AGENT span is the only carrier of usage and
    cost (`…/claude-agent-sdk/…/_wrappers.py`)."""
    expected = gen(9, 2, 1, "coder", tokens=(100, 50), model="claude-sonnet-4",
                   provider="anthropic", cost_usd=0.02)
    t = traces()
    r = t.add([span(9, 3, 2, name="Bash", attributes={"openinference.span.kind": "TOOL"}),
               span(9, 2, 1, name="ClaudeSDKClient", attributes=CLAUDE_AGENT),
               span(9, 1, None, name="session", attributes={"openinference.span.kind": "CHAIN"})])
    assert r.events == [expected]
    assert r.outcomes == Counter(mapped=1, ignored=2)


def test_an_aggregate_root_alone_is_decided_at_the_deadline() -> None:
    """A root with usage and no span seen below it may have children still to come: it
    counts (and is a workflow run, being an agent) if none carrying usage arrives."""
    clock = Clock()
    t = traces(clock)
    r = t.add([span(9, 1, None, name="ClaudeSDKClient", attributes=CLAUDE_AGENT)])
    assert r.events == [WorkflowRun(workflow="coder", status="succeeded", duration_seconds=1.0,
                                    tokens=150, persona="coder", start_time=at(0),
                                    trace_id=tid(9), span_id=sid(1))]
    assert (r.outcomes, t.held) == (Counter(), 1)
    clock.now += 30
    late = t.expire()
    assert late.events == [gen(9, 1, None, "coder", tokens=(100, 50), model="claude-sonnet-4",
                               provider="anthropic", cost_usd=0.02)]
    assert late.outcomes == Counter(mapped=1)
    # the same, with an LLM span below arriving after it: counted below, no generation
    t.add([span(10, 1, None, name="ClaudeSDKClient", attributes=CLAUDE_AGENT)])
    r2 = t.add([chat(10, 2, 1)])
    assert r2.events == [gen(10, 2, 1, "coder")]
    assert r2.outcomes == Counter(mapped=1, counted_below=1)
    assert t.held == 0


def agent(span_id: int, name: str, start: float, duration: float, **kwargs: Any) -> Span:
    return span(11, span_id, 1, name=f"invoke_agent {name}", start=start, duration=duration,
                attributes={"gen_ai.operation.name": "invoke_agent",
                            "gen_ai.agent.name": name}, **kwargs)


def test_a_workflow_root_with_three_agents_is_a_run_with_stages_and_switches() -> None:
    """SC invoke_workflow over invoke_agent spans (spans.yaml): the agents are stages;
    backend -> qa -> devops switches persona twice."""
    t = traces()
    r1 = t.add([chat(11, 3, 2, tokens=(100, 20), start=1),
                agent(2, "backend", 0.5, 3),
                chat(11, 5, 4, tokens=(50, 10), start=4.5)])
    r2 = t.add([agent(4, "qa", 4, 2),
                chat(11, 7, 6, tokens=(30, 5), start=7),
                agent(6, "devops", 6.5, 3, error=True),
                span(11, 1, None, name="invoke_workflow release", duration=10, attributes={
                    "gen_ai.operation.name": "invoke_workflow",
                    "gen_ai.workflow.name": "release"})])
    assert r1.events == [gen(11, 3, 2, "backend", tokens=(100, 20), start=1)]
    assert r1.outcomes == Counter(mapped=2)

    def stage(span_id: int, name: str, start: float, duration: float, tokens: int,
              status: str = "succeeded") -> StageRun:
        return StageRun(workflow="release", stage=name, persona=name, status=status,  # type: ignore[arg-type]
                        duration_seconds=duration, tokens=tokens, start_time=at(start),
                        trace_id=tid(11), span_id=sid(span_id), parent_span_id=sid(1))

    assert r2.events == [
        gen(11, 5, 4, "qa", tokens=(50, 10), start=4.5),
        gen(11, 7, 6, "devops", tokens=(30, 5), start=7),
        stage(2, "backend", 0.5, 3.0, 120),
        stage(4, "qa", 4, 2.0, 60),
        stage(6, "devops", 6.5, 3.0, 35, "failed"),
        PersonaSwitch(workflow="release", from_persona="backend", to_persona="qa"),
        PersonaSwitch(workflow="release", from_persona="qa", to_persona="devops"),
        WorkflowRun(workflow="release", status="succeeded", duration_seconds=10.0, tokens=215,
                    persona="backend", start_time=at(0), trace_id=tid(11), span_id=sid(1)),
    ]
    assert r2.outcomes == Counter(mapped=1, workflow=4)
    assert r2.persona_sources == Counter(ancestor=2)


def test_agent_spans_whose_root_never_comes_are_ignored_after_the_window() -> None:
    clock = Clock()
    t = traces(clock)
    r = t.add([agent(2, "backend", 0, 1)])
    assert r.outcomes == Counter()
    clock.now += 30
    assert t.expire().outcomes == Counter(ignored=1)


def test_held_spans_survive_a_restart_through_take_changes_and_restore() -> None:
    a = traces()
    a.add([chat(1, 3, 2, attributes={"gen_ai.response.id": "r-1"})])
    upserts, deleted = a.take_changes()
    key = f"{tid(1)}:{sid(3)}"
    assert [k for k, _ in upserts] == [key] and deleted == []
    assert json.loads(upserts[0][1])["f"]["model"] == "gpt-4o"
    assert a.take_changes() == ([], [])

    b = traces()  # a fresh process
    assert b.restore(upserts) == 1
    assert b.held == 1
    assert b.add([chat(1, 3, 2)]).outcomes == Counter(deduplicated=1)  # a client's retry
    r = b.add([span(1, 2, 1, name="plan"), span(1, 1, None, name="root", attributes=PERSONA)])
    assert r.events == [gen(1, 3, 2, "backend")]
    assert r.persona_sources == Counter(ancestor=1)
    assert b.take_changes() == ([], [key])

    a.add([span(1, 1, None, name="root")])
    assert a.take_changes() == ([], [key])


def test_a_span_held_and_released_between_takes_is_never_stored() -> None:
    t = traces()
    t.add([chat(1, 3, 2)])
    t.add([span(1, 2, None, name="root")])
    assert t.take_changes() == ([], [])


def test_a_bad_stored_row_is_dropped_and_deleted_not_raised() -> None:
    good = traces()
    good.add([chat(1, 3, 2)])
    rows = good.take_changes()[0]
    row = json.loads(rows[0][1])
    row["f"]["input_tokens"] = -5
    t = traces()
    assert t.restore([("torn", "{not json"), ("old", json.dumps({"v": 0})),
                      ("negative", json.dumps(row)), *rows]) == 1
    assert t.held == 1
    assert t.take_changes() == ([], ["negative", "old", "torn"])


def test_reconfigure_applies_new_bounds_hold_and_map() -> None:
    clock = Clock()
    t = traces(clock, max_held_spans=10)
    t.add([chat(1, 2, 1), chat(2, 2, 1), chat(3, 2, 1)])
    t.reconfigure(Otlp.model_validate({
        "hold_seconds": 0, "max_held_spans": 1,
        "persona": {"attributes": ["persona"], "resource_attributes": [],
                    "map": {"^qa": "qa-engineer"}}}))
    assert t.held == 1
    r = t.expire()
    assert r.released_early == 2
    assert r.events == [gen(1, 2, 1, "unknown"), gen(2, 2, 1, "unknown")]
    # hold_seconds 0: never held
    r2 = t.add([chat(4, 2, 1), chat(5, 2, 1, attributes={"persona": "qa-7"})])
    assert r2.events == [gen(4, 2, 1, "unknown"), gen(5, 2, 1, "qa-engineer")]
    assert t.held == 1


def test_odd_values_make_valid_events_and_a_failing_span_loses_nothing_else() -> None:
    def classify(s: Span) -> Role:
        if s.name == "boom":
            raise RuntimeError("mapping bug")
        return Role.LLM

    def read_call(s: Span, role: Role | None = None) -> Call:
        return Call(model="m\u00e9" * 100, provider="", input_tokens=-3,
                    output_tokens=10**15, has_usage=True, cost_usd=math.nan,
                    time_to_first_chunk_seconds=-1.0, error_type="Rate\nLimit")

    odd = Span(trace_id="T" * 32, span_id="x", parent_span_id=None, name="odd", kind=1,
               start_unix_nano=-5, end_unix_nano=10**30, attributes=PERSONA)
    t = CheckedTraces(Otlp(), classify=classify, read_call=read_call)
    r = t.add([span(1, 1, None, name="boom"), odd])
    assert r.outcomes == Counter(ignored=1, mapped=1)
    [event] = r.events
    assert isinstance(event, LLMGeneration)
    assert parse_event(event_to_dict(event)) == event
    assert (event.input_tokens, event.output_tokens) == (0, 10**12)
    assert (event.cost_usd, event.time_to_first_chunk_seconds, event.start_time) == (
        None, None, None)
    assert (event.trace_id, event.span_id, event.error_type) == (None, None, "Rate_Limit")
    assert event.duration_seconds == 30 * 86_400.0


def test_a_chat_span_with_the_real_mapping() -> None:
    """With the real genai/mapping.py (fails until it lands: it is a stub on this branch)."""
    t = Traces(Otlp())
    r = t.add([chat(1, 2, 1, attributes=PERSONA)])
    assert r.events == [gen(1, 2, 1, "backend")]


def test_ai_sdk_6_outer_span_with_the_real_mapping() -> None:
    """ai.generateText over doGenerate, with the real mapping (fails until it lands)."""
    t = Traces(Otlp())
    r = t.add([ai6(2, 1, "ai.generateText.doGenerate", (10, 4)),
               ai6(1, None, "ai.generateText", (10, 4))])
    assert r.outcomes == Counter(mapped=1, counted_below=1)
    assert [e.span_id for e in r.events if isinstance(e, LLMGeneration)] == [sid(2)]


def test_a_root_arriving_with_the_missing_ancestor_resolves_through_it() -> None:
    """The root comes before the agent naming the persona in one request (another scope):
    the held span still gets the agent's persona, not the trace-level fallback."""
    t = traces()
    t.add([chat(1, 3, 2)])
    r = t.add([span(1, 1, None, name="root", attributes={"persona": "root-persona"}),
               span(1, 2, 1, name="agent", attributes={"gen_ai.agent.name": "qa"})])
    assert r.events == [gen(1, 3, 2, "qa")]
    assert r.persona_sources == Counter(ancestor=1)


def test_more_traces_in_one_request_than_remembered_loses_no_span() -> None:
    """max_traces below the traces of one batch: spans of a trace forgotten mid-batch
    are still decided, and later released with what is known then."""
    clock = Clock()
    t = traces(clock, max_traces=1)
    r = t.add([chat(1, 2, 1), chat(2, 2, 1), chat(3, 2, 1, attributes=PERSONA)])
    assert r.events == [gen(3, 2, 1, "backend")]
    assert r.outcomes == Counter(mapped=3)
    r2 = t.add([span(1, 1, None, name="root", attributes=PERSONA)])
    clock.now += 30
    r3 = t.expire()
    events = r2.events + r3.events
    assert sorted(events, key=lambda e: event_to_dict(e)["trace_id"]) == [
        gen(1, 2, 1, "backend"), gen(2, 2, 1, "unknown")]
    assert t.held == 0


def test_an_llm_span_without_model_or_usage_is_still_a_request() -> None:
    def nothing(s: Span, role: Role | None = None) -> Call | None:
        return None

    t = CheckedTraces(Otlp(), classify=lambda s: Role.LLM, read_call=nothing)
    r = t.add([span(1, 2, 1, attributes=PERSONA, error=True)])
    assert r.events == [gen(1, 2, 1, "backend", model="unknown", provider="unknown",
                            tokens=(0, 0), error_type="error")]
    assert r.outcomes == Counter(mapped=1)


def test_of_nested_aggregates_without_an_llm_span_below_the_innermost_counts() -> None:
    usage = {"gen_ai.agent.name": "coder", "gen_ai.request.model": "gpt-4o",
             "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 10,
             "gen_ai.usage.output_tokens": 5}
    t = traces()
    r = t.add([span(3, 2, 1, name="agent_step", attributes={
                   **usage, "gen_ai.operation.name": "agent_step"}),
               span(3, 1, None, name="invoke_agent coder", duration=2, attributes={
                   **usage, "gen_ai.operation.name": "invoke_agent"})])
    assert r.events == [
        gen(3, 2, 1, "coder"),
        StageRun(workflow="coder", stage="coder", persona="coder", status="succeeded",
                 duration_seconds=1.0, tokens=15, start_time=at(0), trace_id=tid(3),
                 span_id=sid(2), parent_span_id=sid(1)),
        WorkflowRun(workflow="coder", status="succeeded", duration_seconds=2.0, tokens=15,
                    persona="coder", start_time=at(0), trace_id=tid(3), span_id=sid(1)),
    ]
    assert r.outcomes == Counter(mapped=1, workflow=1)
