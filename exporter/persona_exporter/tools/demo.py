"""The demo: the first seed's example workflows, run through the real SDK.

A built-in simulated LLM stands in for the providers: deterministic, no network, with
responses in the OpenAI chat, Anthropic messages and OpenAI streaming shapes, so the
SDK's usage extraction, streaming timing and failure recording all do real work. The
workflows exercise every metric family: persona switches across stages, a rate-limited
call that is retried, a stage that fails and leaves its workflow ``partial``, a run that
overruns its chatmode allocation, cached and reasoning tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ..sdk.handles import StageHandle
from ..sdk.llm import ObservableLLM
from ..sdk.telemetry import Telemetry
from ..sdk.workflow import stage, workflow


class RateLimitError(Exception):
    """What a provider raises on HTTP 429."""


class APITimeoutError(Exception):
    """What a provider raises when a request times out."""


@dataclass(frozen=True)
class Plan:
    """What the simulated model will answer for one stage."""

    stage: str
    persona: str
    model: str
    prompt: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    latency: float = 0.1
    stream: bool = False
    fail_attempts: int = 0
    error: type[Exception] = RateLimitError
    give_up: bool = False  # fail every attempt: the stage fails


@dataclass(frozen=True)
class Scenario:
    title: str
    workflow: str
    chatmode: str
    plans: tuple[Plan, ...]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("Package Release", "package-release", "package-release", (
        Plan("version-bump", "backend-engineer", "gpt-4o", "Update version to 1.2.0",
             600, 250, cached_tokens=256, latency=0.12),
        Plan("run-tests", "qa-engineer", "gpt-4o-mini", "Summarise the test run for 1.2.0",
             1100, 300, latency=0.2, stream=True),
        Plan("publish", "devops-engineer", "claude-sonnet-4", "Publish 1.2.0 to the registry",
             900, 300, cached_tokens=600, latency=0.15),
    )),
    Scenario("Bug Fix", "bug-fix", "bug-fix", (
        Plan("reproduce", "qa-engineer", "gpt-4o-mini", "Reproduce issue #4521",
             1200, 300, latency=0.1, fail_attempts=1, error=RateLimitError),
        Plan("fix", "backend-engineer", "o3-mini", "Fix the race in the session cache",
             3500, 2500, reasoning_tokens=1800, latency=0.35),
        Plan("verify", "qa-engineer", "gpt-4o-mini", "Verify the fix for #4521",
             700, 200, latency=0.1, stream=True),
    )),
    Scenario("Feature Implementation", "feature-implementation", "feature-implementation", (
        Plan("design", "backend-engineer", "claude-sonnet-4", "Design the export API",
             2400, 1600, cached_tokens=1800, latency=0.3),
        Plan("implement-ui", "frontend-engineer", "gpt-4o", "Build the export dialog",
             3000, 2200, latency=0.25, stream=True),
        Plan("implement-api", "backend-engineer", "gpt-4o", "Implement the export endpoint",
             2800, 1900, cached_tokens=1024, latency=0.25),
        Plan("e2e-tests", "qa-engineer", "gpt-4o-mini", "Write end-to-end tests for export",
             900, 0, latency=0.2, fail_attempts=2, error=APITimeoutError, give_up=True),
    )),
)

MAX_ATTEMPTS = 2


class SimulatedLLM:
    """Deterministic stand-in for LLM providers; ``speed`` scales its latency (0: none)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self._attempts: dict[str, int] = {}

    def _delay(self, seconds: float) -> None:
        if self.speed > 0:
            time.sleep(seconds * self.speed)

    def _maybe_fail(self, plan: Plan) -> None:
        attempt = self._attempts.get(plan.stage, 0) + 1
        self._attempts[plan.stage] = attempt
        if plan.give_up or attempt <= plan.fail_attempts:
            raise plan.error(f"simulated {plan.error.__name__} for {plan.stage}")

    def reset(self) -> None:
        self._attempts.clear()

    def openai_chat(self, *, model: str, messages: list[dict[str, str]], plan: Plan) -> Any:
        self._delay(plan.latency)
        self._maybe_fail(plan)
        return {
            "model": model,
            "choices": [{"message": {"role": "assistant", "content": f"Done: {plan.prompt}"}}],
            "usage": {
                "prompt_tokens": plan.input_tokens,
                "completion_tokens": plan.output_tokens,
                "prompt_tokens_details": {"cached_tokens": plan.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
            },
        }

    def anthropic_messages(self, *, model: str, prompt: str, plan: Plan) -> Any:
        self._delay(plan.latency)
        self._maybe_fail(plan)
        return {
            "model": model,
            "content": [{"type": "text", "text": f"Done: {prompt}"}],
            # Anthropic counts cache reads apart from input_tokens.
            "usage": {
                "input_tokens": plan.input_tokens - plan.cached_tokens,
                "output_tokens": plan.output_tokens,
                "cache_read_input_tokens": plan.cached_tokens,
                "cache_creation_input_tokens": 0,
            },
        }

    def openai_stream(self, *, model: str, messages: list[dict[str, str]],
                      plan: Plan) -> Iterator[Any]:
        self._delay(plan.latency / 2)
        self._maybe_fail(plan)
        words = f"Done: {plan.prompt}".split()
        for word in words:
            yield {"model": model, "choices": [{"delta": {"content": word + " "}}]}
        self._delay(plan.latency / 2)
        yield {"model": model, "choices": [], "usage": {
            "prompt_tokens": plan.input_tokens, "completion_tokens": plan.output_tokens,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens}}}


@dataclass
class StageResult:
    workflow: str
    stage: str
    persona: str
    status: str
    tokens: int
    remaining: int | None


def run_demo(telemetry: Telemetry, *, speed: float = 1.0, out: TextIO | None = None,
             scenarios: tuple[Scenario, ...] = SCENARIOS) -> list[StageResult]:
    """Run every scenario once through the SDK; print progress to ``out``."""
    sim = SimulatedLLM(speed)
    chat = ObservableLLM(sim.openai_chat, provider="openai", telemetry=telemetry)
    stream = ObservableLLM(sim.openai_stream, provider="openai", telemetry=telemetry)
    messages = ObservableLLM(sim.anthropic_messages, provider="anthropic", telemetry=telemetry)
    results: list[StageResult] = []

    def say(text: str) -> None:
        if out is not None:
            print(text, file=out, flush=True)

    for scenario in scenarios:
        sim.reset()
        allocation = telemetry.config.allocation(scenario.chatmode)
        say(f"\n▶ {scenario.title} workflow (chatmode {scenario.chatmode}"
            + (f", {allocation:,} tokens per run)" if allocation else ")"))
        started = time.perf_counter()
        with workflow(scenario.workflow, chatmode=scenario.chatmode,
                      telemetry=telemetry) as run:
            for number, plan in enumerate(scenario.plans, 1):
                say(f"  {number}. {plan.stage:<14} persona {plan.persona:<18} model {plan.model}")
                handle = _run_stage(plan, chat, stream, messages, say)
                results.append(StageResult(scenario.workflow, plan.stage, plan.persona,
                                           handle.status or "unknown", handle.tokens,
                                           handle.remaining))
                say(f"     {_status_mark(handle.status)} tokens {handle.tokens:>6,}"
                    f"   budget remaining {_remaining(handle.remaining)}")
        elapsed = time.perf_counter() - started
        say(f"  {_status_mark(run.status)} {scenario.title}: {run.status} in {elapsed:.2f}s, "
            f"{run.tokens:,} tokens" + (", over its allocation" if run.budget.overrun else ""))
    return results


def _run_stage(plan: Plan, chat: ObservableLLM, stream: ObservableLLM, messages: ObservableLLM,
               say: Any) -> StageHandle:
    with stage(plan.stage, persona=plan.persona) as handle:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                _call(plan, chat, stream, messages)
                break
            except (RateLimitError, APITimeoutError) as exc:
                if attempt == MAX_ATTEMPTS:
                    say(f"     ✗ {type(exc).__name__}, giving up after {attempt} attempts")
                    handle.status = "failed"
                    break
                say(f"     ⚠ {type(exc).__name__}, retrying")
    return handle


def _call(plan: Plan, chat: ObservableLLM, stream: ObservableLLM,
          messages: ObservableLLM) -> None:
    prompt = [{"role": "user", "content": plan.prompt}]
    if plan.stream:
        for _chunk in stream(model=plan.model, messages=prompt, plan=plan):
            pass
    elif plan.model.startswith("claude"):
        messages(model=plan.model, prompt=plan.prompt, plan=plan)
    else:
        chat(model=plan.model, messages=prompt, plan=plan)


def _status_mark(status: str | None) -> str:
    return {"succeeded": "✔", "partial": "◐", "failed": "✗"}.get(status or "", "?")


def _remaining(remaining: int | None) -> str:
    if remaining is None:
        return "(no allocation)"
    return f"{remaining:,}" if remaining >= 0 else f"{remaining:,} (over budget)"


@dataclass
class PersonaSummary:
    persona: str
    requests: float = 0
    failures: float = 0
    input_tokens: float = 0
    output_tokens: float = 0
    cost_usd: float = 0
    budget_24h: float | None = None


def summarise(telemetry: Telemetry) -> list[PersonaSummary]:
    """Per-persona totals read back from the metrics registry: what Prometheus will see."""
    if telemetry.recorder is None:
        return []
    rows: dict[str, PersonaSummary] = {}
    for family in telemetry.recorder.registry.collect():
        for sample in family.samples:
            who = sample.labels.get("persona")
            if who is None:
                continue
            row = rows.setdefault(who, PersonaSummary(who))
            if sample.name == "persona_llm_requests_total":
                row.requests += sample.value
            elif sample.name == "persona_llm_request_failures_total":
                row.failures += sample.value
            elif sample.name == "persona_llm_tokens_total":
                kind = sample.labels["token_type"]
                if kind == "input":
                    row.input_tokens += sample.value
                elif kind == "output":
                    row.output_tokens += sample.value
            elif sample.name == "persona_llm_cost_usd_total":
                row.cost_usd += sample.value
            elif sample.name == "persona_token_budget_tokens" and sample.labels["window"] == "24h":
                row.budget_24h = sample.value
    return sorted(rows.values(), key=lambda r: r.persona)


def format_trace_summary(registry: Any, backends: tuple[str, ...]) -> str:
    """One line per trace backend, from the self-metrics."""
    lines = []
    for backend in backends:
        def value(name: str, backend: str = backend) -> float:
            return registry.get_sample_value(name, {"backend": backend}) or 0.0

        exports = value("persona_exporter_trace_exports_total")
        failed = value("persona_exporter_trace_export_failures_total")
        dropped = value("persona_exporter_trace_spans_dropped_total")
        sent = value("persona_exporter_trace_export_bytes_total")
        lines.append(f"Traces to {backend}: {exports:.0f} export requests, {failed:.0f} failed, "
                     f"{sent / 1024:.1f} KiB sent, {dropped:.0f} spans dropped")
    return "\n".join(lines)


def format_summary(rows: list[PersonaSummary]) -> str:
    header = (f"{'persona':<20}{'requests':>9}{'failures':>9}{'input':>9}{'output':>9}"
              f"{'cost USD':>10}{'24h budget used':>17}")
    lines = [header, "-" * len(header)]
    for r in rows:
        used = (f"{(r.input_tokens + r.output_tokens) / r.budget_24h:.2%}"
                if r.budget_24h else "no budget")
        lines.append(f"{r.persona:<20}{r.requests:>9.0f}{r.failures:>9.0f}{r.input_tokens:>9,.0f}"
                     f"{r.output_tokens:>9,.0f}{r.cost_usd:>10.4f}{used:>17}")
    return "\n".join(lines)
