"""The SDK: wrappers for every kind of function, contexts, workflows, budgets, and the rule
that instrumentation never changes what the caller sees."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import (
    ObservableLLM,
    Telemetry,
    TokenUsage,
    configure,
    current_persona,
    in_current_context,
    observe_llm,
    parse_config,
    persona,
    stage,
    workflow,
)
from persona_exporter.events import Event, LLMGeneration

from .conftest import sample

RESPONSE = {"model": "gpt-4o", "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                                         "prompt_tokens_details": {"cached_tokens": 40}}}


def labels(persona_: str = "backend-engineer", chatmode: str = "bug-fix",
           model: str = "gpt-4o", provider: str = "openai") -> dict[str, str]:
    return {"persona": persona_, "chatmode": chatmode, "model": model, "provider": provider}


class Capture:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Boom(Exception):
    pass


# --- wrappers ---

def test_sync_call_is_recorded_and_its_result_returned(telemetry: Telemetry,
                                                       registry: CollectorRegistry) -> None:
    llm = ObservableLLM(lambda **_: RESPONSE, provider="openai", telemetry=telemetry)
    with persona("backend-engineer", chatmode="bug-fix"):
        assert llm(model="gpt-4o", messages=[]) is RESPONSE
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="input") == 100
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="cache_read") == 40
    # 60 uncached input at 2.5/M, 40 cached at 1.25/M, 50 output at 10/M
    assert sample(registry, "persona_llm_cost_usd_total", **labels()) == pytest.approx(
        (60 * 2.5 + 40 * 1.25 + 50 * 10) / 1e6)


def test_exceptions_pass_through_untouched_and_are_counted(telemetry: Telemetry,
                                                           registry: CollectorRegistry) -> None:
    error = Boom("rate limited")

    def call(**_: Any) -> Any:
        raise error

    llm = ObservableLLM(call, model="gpt-4o", provider="openai", telemetry=telemetry)
    with persona("backend-engineer", chatmode="bug-fix"), pytest.raises(Boom) as caught:
        llm()
    assert caught.value is error
    assert caught.value.__traceback__ is not None
    assert caught.value.__traceback__.tb_next is not None  # the original frames are kept
    assert sample(registry, "persona_llm_request_failures_total", **labels(),
                  error_type="Boom") == 1
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1


def test_async_functions(telemetry: Telemetry, registry: CollectorRegistry) -> None:
    @observe_llm(model="gpt-4o", provider="openai", telemetry=telemetry)
    async def ask(prompt: str) -> Any:
        await asyncio.sleep(0)
        return RESPONSE

    assert inspect.iscoroutinefunction(ask)
    assert ask.__name__ == "ask"

    async def main() -> Any:
        with persona("backend-engineer", chatmode="bug-fix"):
            return await ask("hi")

    assert asyncio.run(main()) is RESPONSE
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1


def chunks() -> list[dict[str, Any]]:
    return [{"choices": [{"delta": {"content": "a"}}]}, {"choices": [{"delta": {"content": "b"}}]},
            {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}]


def test_sync_generators_record_time_to_first_chunk_and_final_usage(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    @observe_llm(model="gpt-4o", provider="openai", telemetry=telemetry)
    def stream(prompt: str) -> Iterator[dict[str, Any]]:
        yield from chunks()

    with persona("backend-engineer", chatmode="bug-fix"):
        gen = stream("hi")
        assert inspect.isgenerator(gen)
        received = list(gen)
    assert received == chunks()
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="output") == 2
    hist = {"persona": "backend-engineer", "model": "gpt-4o", "provider": "openai"}
    assert sample(registry, "persona_llm_time_to_first_chunk_seconds_count", **hist) == 1
    assert sample(registry, "persona_llm_request_duration_seconds_count", **hist) == 1


def test_async_generators(telemetry: Telemetry, registry: CollectorRegistry) -> None:
    @observe_llm(model="gpt-4o", provider="openai", telemetry=telemetry)
    async def stream(prompt: str) -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks():
            await asyncio.sleep(0)
            yield chunk

    async def main() -> list[Any]:
        with persona("backend-engineer", chatmode="bug-fix"):
            gen = stream("hi")
            assert inspect.isasyncgen(gen)
            return [c async for c in gen]

    assert asyncio.run(main()) == chunks()
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="input") == 10
    assert sample(registry, "persona_llm_time_to_first_chunk_seconds_count",
                  persona="backend-engineer", model="gpt-4o", provider="openai") == 1


def test_a_function_returning_a_generator_is_treated_as_a_stream(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    def create(**_: Any) -> Iterator[dict[str, Any]]:
        return iter_chunks()

    def iter_chunks() -> Iterator[dict[str, Any]]:
        yield from chunks()

    llm = ObservableLLM(create, model="gpt-4o", provider="openai", persona="backend-engineer",
                        chatmode="bug-fix", telemetry=telemetry)
    assert list(llm()) == chunks()
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="input") == 10


def test_a_stream_that_fails_midway_is_a_failure(telemetry: Telemetry,
                                                 registry: CollectorRegistry) -> None:
    @observe_llm(model="gpt-4o", provider="openai", persona="backend-engineer",
                 chatmode="bug-fix", telemetry=telemetry)
    def stream() -> Iterator[int]:
        yield 1
        raise Boom

    gen = stream()
    assert next(gen) == 1
    with pytest.raises(Boom):
        next(gen)
    assert sample(registry, "persona_llm_request_failures_total", **labels(),
                  error_type="Boom") == 1


def test_a_stream_abandoned_early_is_not_a_failure(telemetry: Telemetry,
                                                   registry: CollectorRegistry) -> None:
    closed = threading.Event()

    @observe_llm(model="gpt-4o", provider="openai", persona="backend-engineer",
                 chatmode="bug-fix", telemetry=telemetry)
    def stream() -> Generator[int, None, None]:
        try:
            yield from range(100)
        finally:
            closed.set()

    gen = stream()
    assert [next(gen), next(gen)] == [0, 1]
    gen.close()
    assert closed.is_set()  # the provider's stream is closed too
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1
    assert sample(registry, "persona_llm_request_failures_total", **labels(),
                  error_type="GeneratorExit") is None


def test_model_comes_from_wrapper_then_call_then_response(telemetry: Telemetry) -> None:
    capture = Capture()
    tel = Telemetry(sinks=[capture])
    ObservableLLM(lambda **_: RESPONSE, model="pinned", telemetry=tel)(model="gpt-4o")
    ObservableLLM(lambda **_: RESPONSE, telemetry=tel)(model="from-call")
    ObservableLLM(lambda **_: RESPONSE, telemetry=tel)()
    ObservableLLM(lambda **_: "text", telemetry=tel)()
    assert [e.model for e in capture.of(LLMGeneration)] == ["pinned", "from-call", "gpt-4o",
                                                            "unknown"]


def test_a_custom_usage_extractor(telemetry: Telemetry, registry: CollectorRegistry) -> None:
    llm = ObservableLLM(lambda: "plain text", model="gpt-4o", provider="openai",
                        persona="backend-engineer", chatmode="bug-fix",
                        usage=lambda text: {"input": 7, "output": len(text)},
                        telemetry=telemetry)
    llm()
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="output") == 10


# --- context ---

def test_persona_context_nests_and_restores() -> None:
    assert current_persona() is None
    with persona("a"):
        with persona("b", chatmode="bug-fix"):
            assert current_persona() == "b"
        assert current_persona() == "a"
    assert current_persona() is None


def test_each_asyncio_task_keeps_its_own_persona() -> None:
    capture = Capture()
    tel = Telemetry(sinks=[capture])

    @observe_llm(model="m", telemetry=tel)
    async def ask(tag: str) -> str:
        await asyncio.sleep(0.01)
        return tag

    async def as_persona(who: str) -> None:
        async with persona(who):
            for _ in range(5):
                await ask(who)

    async def main() -> None:
        await asyncio.gather(*(as_persona(f"p{i}") for i in range(4)))

    asyncio.run(main())
    generations = capture.of(LLMGeneration)
    assert len(generations) == 20
    assert sorted({e.persona for e in generations}) == ["p0", "p1", "p2", "p3"]
    assert all(sum(e.persona == f"p{i}" for e in generations) == 5 for i in range(4))


def test_threads_are_isolated_and_in_current_context_carries_the_persona() -> None:
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        with persona(name):
            barrier.wait()
            seen[name] = current_persona()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"x": "x", "y": "y"}

    with persona("carried"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(current_persona).result() is None  # threads start empty
        assert pool.submit(in_current_context(current_persona)).result() == "carried"


def test_invalid_names_are_cleaned_not_raised(telemetry: Telemetry,
                                              registry: CollectorRegistry) -> None:
    llm = ObservableLLM(lambda: RESPONSE, provider="openai", telemetry=telemetry)
    with persona("développeur\n", chatmode="bug-fix"):
        llm()
    assert sample(registry, "persona_llm_requests_total",
                  **labels(persona_="d_veloppeur")) == 1


# --- workflows ---

def test_the_seed_budget_example(telemetry: Telemetry) -> None:
    llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 600, "completion_tokens": 250}},
                        model="gpt-4o", telemetry=telemetry)
    with workflow("package-release", chatmode="package-release", telemetry=telemetry) as run:
        with stage("version-bump", persona="backend-engineer") as s:
            llm()
        assert (s.tokens, s.remaining, run.remaining) == (850, 4150, 4150)


def test_stage_statuses_switches_and_overruns(telemetry: Telemetry,
                                              registry: CollectorRegistry) -> None:
    llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 400, "completion_tokens": 300}},
                        model="gpt-4o", provider="openai", telemetry=telemetry)
    with workflow("fix", chatmode="bug-fix", telemetry=telemetry) as run:
        with stage("reproduce", persona="qa-engineer"):
            llm()
        with stage("patch", persona="backend-engineer"):
            llm()
        with stage("review", persona="backend-engineer"):  # same persona: no switch
            pass
        with pytest.raises(Boom), stage("verify", persona="qa-engineer"):
            raise Boom
    assert run.status == "partial"  # completed, but a stage failed
    assert run.tokens == 1400 and run.remaining == -400
    stage_labels = {"workflow": "fix", "stage": "verify", "persona": "qa-engineer"}
    assert sample(registry, "persona_stage_runs_total", **stage_labels, status="failed") == 1
    assert sample(registry, "persona_switches_total", workflow="fix",
                  from_persona="qa-engineer", to_persona="backend-engineer") == 1
    assert sample(registry, "persona_switches_total", workflow="fix",
                  from_persona="backend-engineer", to_persona="qa-engineer") == 1
    assert sample(registry, "persona_switches_total", workflow="fix",
                  from_persona="backend-engineer", to_persona="backend-engineer") is None
    assert sample(registry, "persona_workflow_runs_total", workflow="fix", status="partial") == 1
    assert sample(registry, "persona_workflow_budget_overruns_total", workflow="fix",
                  chatmode="bug-fix") == 1
    assert sample(registry, "persona_workflow_active", workflow="fix") == 0
    assert sample(registry, "persona_llm_requests_total",
                  **labels(persona_="qa-engineer")) == 1


def test_workflow_statuses(telemetry: Telemetry, registry: CollectorRegistry) -> None:
    with pytest.raises(Boom), workflow("w", telemetry=telemetry):
        raise Boom
    with workflow("w", telemetry=telemetry) as run:
        run.status = "partial"
    with workflow("w", telemetry=telemetry):
        pass
    for status in ("failed", "partial", "succeeded"):
        assert sample(registry, "persona_workflow_runs_total", workflow="w", status=status) == 1


def test_active_workflows_are_visible_while_running(telemetry: Telemetry,
                                                    registry: CollectorRegistry) -> None:
    with workflow("long", telemetry=telemetry), workflow("long", telemetry=telemetry):
        assert sample(registry, "persona_workflow_active", workflow="long") == 2
    assert sample(registry, "persona_workflow_active", workflow="long") == 0


def test_async_workflows_and_stages(telemetry: Telemetry, registry: CollectorRegistry) -> None:
    async def main() -> None:
        async with workflow("w", chatmode="bug-fix", telemetry=telemetry):
            async with stage("s", persona="qa-engineer") as s:
                await asyncio.sleep(0)
            assert s.status == "succeeded"

    asyncio.run(main())
    assert sample(registry, "persona_stage_runs_total", workflow="w", stage="s",
                  persona="qa-engineer", status="succeeded") == 1


# --- never break the caller ---

class BrokenSink(Capture):
    def emit(self, event: Event) -> None:
        raise RuntimeError("sink down")


class ExplodingUsage:
    @property
    def usage(self) -> Any:
        raise ValueError("no usage for you")


def test_instrumentation_failures_are_counted_logged_once_and_never_raised(
        registry: CollectorRegistry, caplog: pytest.LogCaptureFixture) -> None:
    capture = Capture()
    tel = Telemetry(registry=registry, sinks=[BrokenSink(), capture])
    broken_response = ExplodingUsage()
    llm = ObservableLLM(lambda: broken_response, model="m", telemetry=tel)
    def failing_extractor(response: Any) -> TokenUsage:
        raise ZeroDivisionError

    bad_extractor = ObservableLLM(lambda: 1, model="m", usage=failing_extractor, telemetry=tel)
    with caplog.at_level(logging.WARNING, logger="persona_exporter"):
        for _ in range(3):
            assert llm() is broken_response
            assert bad_extractor() == 1
            with workflow("w", telemetry=tel), stage("s"):
                pass
    assert len(capture.of(LLMGeneration)) == 6  # the healthy sink still got everything
    assert sample(registry, "persona_exporter_internal_errors_total", component="usage",
                  kind="ValueError") == 3
    assert sample(registry, "persona_exporter_internal_errors_total", component="usage",
                  kind="ZeroDivisionError") == 3
    assert sample(registry, "persona_exporter_internal_errors_total",
                  component="sink.BrokenSink", kind="RuntimeError") == 6 + 3 * 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # once per (component, kind)
    assert all("logged once" in m for m in messages)


def test_unconfigured_sdk_calls_straight_through() -> None:
    calls = []

    def call(x: int) -> int:
        calls.append(x)
        return x

    llm = ObservableLLM(call, model="m")
    with workflow("w") as run, stage("s", persona="p"):
        assert llm(5) == 5
    assert calls == [5]
    assert run.status == "succeeded"


def test_configure_sets_the_process_default(registry: CollectorRegistry) -> None:
    configure(registry=registry)
    llm = ObservableLLM(lambda: RESPONSE, provider="openai")
    with persona("backend-engineer", chatmode="bug-fix"):
        llm()
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1


def test_token_usage_helpers() -> None:
    assert TokenUsage(3, 4, 1, 2).billed == 7


# --- regressions: streams behave exactly as the unwrapped ones ---

def test_generator_send_throw_and_return_value_pass_through(telemetry: Telemetry) -> None:
    def echo() -> Generator[str, str, str]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "handled"
        return "final-summary"

    for make in (echo, observe_llm(model="m", telemetry=telemetry)(echo)):
        gen = make()
        assert next(gen) == "ready"
        assert gen.send("hello") == "got hello"
        assert gen.throw(KeyError("k")) == "handled"
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value == "final-summary"


def test_closing_a_wrapped_async_generator_closes_the_provider_stream_at_once(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    log: list[str] = []

    @observe_llm(model="gpt-4o", provider="openai", persona="backend-engineer",
                 chatmode="bug-fix", telemetry=telemetry)
    async def stream() -> AsyncGenerator[int, None]:
        try:
            for i in range(100):
                yield i
        finally:
            log.append("closed")

    async def main() -> None:
        gen = stream()
        assert await gen.__anext__() == 0
        await gen.aclose()
        assert log == ["closed"]  # now, not when the garbage collector gets to it
        assert sample(registry, "persona_llm_requests_total", **labels()) == 1

    asyncio.run(main())


def test_a_stream_is_attributed_to_the_persona_it_was_created_under(
        telemetry: Telemetry, registry: CollectorRegistry) -> None:
    @observe_llm(model="gpt-4o", provider="openai", telemetry=telemetry)
    def stream() -> Iterator[int]:
        yield 1

    with persona("backend-engineer", chatmode="bug-fix"):
        gen = stream()  # created here, consumed after the block (as a web framework would)
    assert list(gen) == [1]
    assert sample(registry, "persona_llm_requests_total", **labels()) == 1


def test_persona_objects_can_be_shared_and_reentered() -> None:
    backend = persona("backend")
    with backend:
        with backend:
            assert current_persona() == "backend"
        assert current_persona() == "backend"
    assert current_persona() is None

    async def task(name: str) -> str | None:
        async with backend:
            await asyncio.sleep(0.01)
            with persona(name):
                await asyncio.sleep(0.01)
            return current_persona()

    async def main() -> list[str | None]:
        return list(await asyncio.gather(task("a"), task("b")))

    assert asyncio.run(main()) == ["backend", "backend"]


def test_an_exit_in_another_task_does_not_leak_its_persona() -> None:
    async def agen() -> AsyncGenerator[int, None]:
        with persona("task-a"):
            yield 1

    async def main() -> str | None:
        gen = agen()
        await gen.__anext__()  # entered persona in this task...

        async def other() -> str | None:
            with persona("task-b"):
                await gen.aclose()  # ...and closed in another
                return current_persona()

        return await asyncio.create_task(other())

    assert asyncio.run(main()) == "task-b"


def test_concurrent_first_use_of_new_labels_creates_each_series_once(
        registry: CollectorRegistry) -> None:
    from prometheus_client import generate_latest

    tel = Telemetry(registry=registry)
    llm = ObservableLLM(lambda: RESPONSE, model="gpt-4o", provider="openai", telemetry=tel)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for i in range(60):
            with persona(f"p{i}"):
                llm()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [line for line in generate_latest(registry).decode().splitlines()
             if line.startswith("persona_llm_requests_total{")]
    assert len(lines) == len(set(lines)) == 60
    assert all(line.endswith(" 8.0") for line in lines)


def test_absurd_token_counts_cannot_break_the_exposition(telemetry: Telemetry,
                                                         registry: CollectorRegistry) -> None:
    from prometheus_client import generate_latest

    llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 10**400, "completion_tokens": 5}},
                        model="gpt-4o", provider="openai", persona="backend-engineer",
                        chatmode="bug-fix", telemetry=telemetry)
    llm()
    generate_latest(registry)  # must not raise
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="input") == 0
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="output") == 5


def test_an_absurd_price_never_makes_the_cost_series_infinite(
        registry: CollectorRegistry) -> None:
    # 1e300 USD per million tokens is a valid config value; the formula gives 1e296 per call
    config = parse_config("models: {gpt-4o: {provider: openai, input: 1e300, output: 1e300}}")
    tel = Telemetry(registry=registry, config=config)
    llm = ObservableLLM(lambda **_: RESPONSE, model="gpt-4o", provider="openai", telemetry=tel)
    with persona("backend-engineer", chatmode="bug-fix"):
        assert llm(messages=[]) is RESPONSE  # the host gets its result, nothing raised
        assert llm(messages=[]) is RESPONSE
    # the calls count, without a cost; the price is reported once
    assert sample(registry, "persona_llm_requests_total", **labels()) == 2
    assert sample(registry, "persona_llm_tokens_total", **labels(), token_type="input") == 200
    assert sample(registry, "persona_llm_cost_usd_total", **labels()) == 0
    assert sample(registry, "persona_exporter_internal_errors_total", component="pricing",
                  kind="CostOutOfBoundsError") == 2


def test_direct_events_with_absurd_numbers_never_reach_a_series(
        registry: CollectorRegistry) -> None:
    tel = Telemetry(registry=registry)
    tel.emit(LLMGeneration(persona="backend-engineer", chatmode="bug-fix", model="gpt-4o",
                           provider="openai", cost_usd=float("inf"), duration_seconds=1))
    assert sample(registry, "persona_llm_requests_total", **labels()) is None
    assert sample(registry, "persona_exporter_internal_errors_total", component="recorder",
                  kind="OutOfBoundsError") == 1


def test_ids_are_unique_valid_and_differ_after_a_fork() -> None:
    import os
    import re

    from persona_exporter.sdk.trace_ids import new_span_id, new_trace_id

    spans = {new_span_id() for _ in range(20_000)}
    assert len(spans) == 20_000 and all(re.fullmatch(r"[0-9a-f]{16}", s) for s in spans)
    assert re.fullmatch(r"[0-9a-f]{32}", new_trace_id())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next ids must not be the parent's next ids
        os.write(write, new_span_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16).decode() != new_span_id()


def test_metrics_only_calls_record_what_the_event_path_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Telemetry that feeds only metrics records an LLM call straight into the series,
    without an event; the same calls through the event path (another sink attached) must
    give the same /metrics: real SDK objects, failures, first chunks, costs, calls outside
    any context, and a duration past the events' bound refused alike."""
    from openai.types.chat import ChatCompletion

    import persona_exporter.sdk.llm as llm_module
    from persona_exporter.events import MAX_SECONDS

    config = parse_config("models: {gpt-4o: {provider: openai, input: 2.5, output: 10, "
                          "cache_read: 1.25}}")
    completion = ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200,
                  "prompt_tokens_details": {"cached_tokens": 64}}})

    class Clock:  # each reading a quarter second later; "jump" makes one call last 30 days
        now, jump = 0.0, False

        def __call__(self) -> float:
            self.now += MAX_SECONDS + 1 if self.jump else 0.25
            return self.now

    def calls(tel: Telemetry) -> None:
        clock = Clock()
        monkeypatch.setattr(llm_module, "_perf_counter", clock)

        def answer(kind: str = "dict") -> Any:
            clock.jump = kind == "slow"
            if kind == "fail":
                raise TimeoutError("slow")
            return completion if kind in ("openai", "slow") else RESPONSE

        def chunks() -> Iterator[dict[str, Any]]:
            yield {"choices": []}
            yield RESPONSE

        llm = ObservableLLM(answer, model="gpt-4o", provider="openai", telemetry=tel)
        streamed = ObservableLLM(chunks, model="gpt-4o", provider="openai", telemetry=tel)
        with persona("qa-engineer", chatmode="bug-fix"):
            for kind in ("dict", "openai", "openai", "dict"):
                llm(kind)
            with pytest.raises(TimeoutError):
                llm("fail")
            assert list(streamed()) == [{"choices": []}, RESPONSE]
            llm("slow")  # took longer than any event may say: refused
        llm("openai")  # outside any context: unknown / none

    direct, evented = metrics_only_and_evented(calls, config)
    assert exposition(direct) == exposition(evented)
    qa = labels("qa-engineer")
    assert direct.get_sample_value("persona_llm_requests_total", qa) == 6
    assert direct.get_sample_value("persona_llm_tokens_total",
                                   {**qa, "token_type": "cache_read"}) == 64 * 2 + 40 * 3
    assert direct.get_sample_value("persona_llm_request_failures_total",
                                   {**qa, "error_type": "TimeoutError"}) == 1
    assert direct.get_sample_value("persona_exporter_events_rejected_total",
                                   {"reason": "invalid_event"}) == 1
    assert direct.get_sample_value("persona_llm_requests_total",
                                   labels("unknown", "none")) == 1


def test_metrics_only_calls_refuse_the_counts_the_event_path_refuses() -> None:
    """Counts no event may carry are refused on the metrics-only path as on the event
    path (rejected as invalid_event, nothing in a series): a user's extractor may return
    any TokenUsage (negative, NaN, over the bound), and Anthropic's input is a sum of
    three counts each capped alone (input + cache read + cache write), so over the bound
    when each is near it. Recorded straight, a negative count made a counter go down."""

    from persona_exporter.events import MAX_TOKENS

    usages = [TokenUsage(-5, 10, 0, 0), TokenUsage(float("nan"), 1, 0, 0),  # type: ignore[arg-type]
              TokenUsage(MAX_TOKENS + 1, 0, 0, 0)]
    anthropic = {"usage": {"input_tokens": MAX_TOKENS, "cache_read_input_tokens": MAX_TOKENS,
                           "output_tokens": 1}}
    def calls(tel: Telemetry) -> None:
        with persona("qa-engineer", chatmode="bug-fix"):
            for usage in usages:
                def extractor(_: Any, found: TokenUsage = usage) -> TokenUsage:
                    return found

                llm = ObservableLLM(lambda: "text", model="gpt-4o", provider="openai",
                                    usage=extractor, telemetry=tel)
                assert llm() == "text"
            claude = ObservableLLM(lambda: anthropic, model="claude", provider="anthropic",
                                   telemetry=tel)
            assert claude() is anthropic

    direct, evented = metrics_only_and_evented(calls)
    assert exposition(direct) == exposition(evented)
    assert direct.get_sample_value("persona_exporter_events_rejected_total",
                                   {"reason": "invalid_event"}) == 4
    assert not [line for line in exposition(direct) if line.startswith("persona_llm_")]


def metrics_only_and_evented(calls: Callable[[Telemetry], None], config: Any = None
                             ) -> tuple[CollectorRegistry, CollectorRegistry]:
    """The registries of the same ``calls`` made through a metrics-only Telemetry (LLM
    calls recorded straight into their series) and through one with another sink (every
    call an event)."""
    registries = []
    for sinks in ((), (Capture(),)):
        registry = CollectorRegistry()
        tel = Telemetry(registry=registry, config=config, sinks=sinks)
        assert (tel.metrics_only is not None) == (not sinks)
        calls(tel)
        registries.append(registry)
    return registries[0], registries[1]


def exposition(registry: CollectorRegistry) -> list[str]:
    """The registry's exposition lines, without the _created samples (when, not what)."""
    from prometheus_client import generate_latest

    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line.split(" ")[0]]
