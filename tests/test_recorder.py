"""The recorder applies events to the catalog's metrics, exactly, and within its caps."""

from __future__ import annotations

import subprocess
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from persona_exporter import Config, Recorder, parse_config
from persona_exporter.catalog import OVERFLOW_VALUE
from persona_exporter.events import (
    LLMGeneration,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    WorkflowStart,
)

from .conftest import sample

LLM = {"persona": "backend-engineer", "chatmode": "bug-fix", "model": "gpt-4o",
       "provider": "openai"}


def generation(**overrides: object) -> LLMGeneration:
    fields: dict[str, object] = {**LLM, "input_tokens": 100, "output_tokens": 40,
                                 "duration_seconds": 0.3}
    fields.update(overrides)
    return LLMGeneration(**fields)  # type: ignore[arg-type]


def test_a_generation_updates_requests_tokens_cost_and_latency(
        registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    recorder.emit(generation(cache_read_tokens=30, reasoning_tokens=10, cost_usd=0.25))
    recorder.emit(generation(input_tokens=1, output_tokens=2, cost_usd=0.5,
                             duration_seconds=1.0, time_to_first_chunk_seconds=0.05))
    assert sample(registry, "persona_llm_requests_total", **LLM) == 2
    for token_type, value in (("input", 101), ("output", 42), ("cache_read", 30),
                              ("reasoning", 10)):
        assert sample(registry, "persona_llm_tokens_total", **LLM, token_type=token_type) == value
    assert sample(registry, "persona_llm_cost_usd_total", **LLM) == pytest.approx(0.75)
    hist = {"persona": "backend-engineer", "model": "gpt-4o", "provider": "openai"}
    assert sample(registry, "persona_llm_request_duration_seconds_count", **hist) == 2
    duration_sum = sample(registry, "persona_llm_request_duration_seconds_sum", **hist)
    assert duration_sum == pytest.approx(1.3)
    assert sample(registry, "persona_llm_time_to_first_chunk_seconds_count", **hist) == 1
    assert sample(registry, "persona_exporter_events_accepted_total", type="llm_generation") == 2
    assert sample(registry, "persona_llm_request_failures_total", **LLM, error_type="X") is None


def test_histogram_buckets_are_cumulative_and_le_inclusive(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    for seconds in (0.01, 0.0100001, 0.5, 100.0):
        recorder.emit(generation(duration_seconds=seconds))
    hist = {"persona": "backend-engineer", "model": "gpt-4o", "provider": "openai"}
    name = "persona_llm_request_duration_seconds_bucket"
    assert sample(registry, name, **hist, le="0.01") == 1  # exactly on the bound counts
    assert sample(registry, name, **hist, le="0.02") == 2
    assert sample(registry, name, **hist, le="0.64") == 3
    assert sample(registry, name, **hist, le="81.92") == 3
    assert sample(registry, name, **hist, le="+Inf") == 4


def test_latency_histograms_sum_over_chatmodes(registry: CollectorRegistry) -> None:
    # The duration histogram has no chatmode label: two chatmodes' calls share its series.
    recorder = Recorder(registry)
    recorder.emit(generation(chatmode="bug-fix", duration_seconds=0.1))
    recorder.emit(generation(chatmode="package-release", duration_seconds=0.2))
    hist = {"persona": "backend-engineer", "model": "gpt-4o", "provider": "openai"}
    assert sample(registry, "persona_llm_request_duration_seconds_count", **hist) == 2
    text = generate_latest(registry).decode()
    assert text.count('persona_llm_request_duration_seconds_count{model="gpt-4o"') == 1


def test_failures_are_counted_by_error_type_and_also_as_requests(
        registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    recorder.emit(generation(error_type="RateLimitError", input_tokens=0, output_tokens=0))
    recorder.emit(generation(error_type="RateLimitError", input_tokens=0, output_tokens=0))
    recorder.emit(generation())
    assert sample(registry, "persona_llm_request_failures_total", **LLM,
                  error_type="RateLimitError") == 2
    assert sample(registry, "persona_llm_requests_total", **LLM) == 3


def test_workflow_stage_and_switch_events(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    recorder.emit(WorkflowStart(workflow="release", chatmode="package-release"))
    recorder.emit(WorkflowStart(workflow="release", chatmode="package-release"))
    assert sample(registry, "persona_workflow_active", workflow="release") == 2
    assert sample(registry, "persona_workflow_budget_overruns_total", workflow="release",
                  chatmode="package-release") == 0
    recorder.emit(StageRun(workflow="release", stage="bump", persona="be", status="succeeded",
                           duration_seconds=2.0))
    recorder.emit(StageRun(workflow="release", stage="bump", persona="be", status="failed",
                           duration_seconds=0.5))
    recorder.emit(PersonaSwitch(workflow="release", from_persona="be", to_persona="ops"))
    recorder.emit(WorkflowRun(workflow="release", chatmode="package-release", status="partial",
                              duration_seconds=40.0, budget_overrun=True))
    recorder.emit(WorkflowRun(workflow="release", chatmode="package-release", status="succeeded",
                              duration_seconds=20.0))
    stage_labels = {"workflow": "release", "stage": "bump", "persona": "be"}
    assert sample(registry, "persona_stage_runs_total", **stage_labels, status="succeeded") == 1
    assert sample(registry, "persona_stage_runs_total", **stage_labels, status="failed") == 1
    assert sample(registry, "persona_stage_runs_total", **stage_labels, status="partial") == 0
    assert sample(registry, "persona_stage_duration_seconds_sum", **stage_labels) == 2.5
    assert sample(registry, "persona_switches_total", workflow="release", from_persona="be",
                  to_persona="ops") == 1
    assert sample(registry, "persona_workflow_runs_total", workflow="release",
                  status="partial") == 1
    assert sample(registry, "persona_workflow_runs_total", workflow="release",
                  status="failed") == 0
    assert sample(registry, "persona_workflow_duration_seconds_bucket", workflow="release",
                  le="30.0") == 1
    assert sample(registry, "persona_workflow_budget_overruns_total", workflow="release",
                  chatmode="package-release") == 1
    assert sample(registry, "persona_workflow_active", workflow="release") == 0
    for event_type, count in (("workflow_start", 2), ("stage_run", 2), ("persona_switch", 1),
                              ("workflow_run", 2)):
        assert sample(registry, "persona_exporter_events_accepted_total", type=event_type) == count


def test_active_workflows_never_go_negative(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    recorder.emit(WorkflowRun(workflow="w", status="succeeded", duration_seconds=1))
    recorder.emit(WorkflowStart(workflow="w"))
    assert sample(registry, "persona_workflow_active", workflow="w") == 1


def test_known_personas_start_at_zero(registry: CollectorRegistry, config: Config) -> None:
    Recorder(registry, config=config)
    labels = {"persona": "qa-engineer", "chatmode": "bug-fix", "model": "gpt-4o",
              "provider": "openai"}
    assert sample(registry, "persona_llm_requests_total", **labels) == 0
    assert sample(registry, "persona_llm_tokens_total", **labels, token_type="output") == 0
    assert sample(registry, "persona_llm_cost_usd_total", **labels) == 0
    assert sample(registry, "persona_llm_request_duration_seconds_count", persona="qa-engineer",
                  model="gpt-4o", provider="openai") == 0


def test_budget_gauges_follow_the_config_and_reload_without_resetting(
        registry: CollectorRegistry, config: Config) -> None:
    recorder = Recorder(registry, config=config)
    assert sample(registry, "persona_token_budget_tokens", persona="backend-engineer",
                  window="24h") == 100000
    assert sample(registry, "persona_token_budget_tokens", persona="backend-engineer",
                  window="7d") == 500000
    assert sample(registry, "persona_cost_budget_usd", persona="backend-engineer",
                  window="30d") == 50
    assert sample(registry, "persona_token_budget_tokens", persona="qa-engineer",
                  window="24h") == 20000
    recorder.emit(generation())
    recorder.apply_config(parse_config(
        "personas: {backend-engineer: {tokens: {24h: 300000}}}"))
    assert sample(registry, "persona_token_budget_tokens", persona="backend-engineer",
                  window="24h") == 300000
    # Removed from the config, removed from the exposition: no stale limits.
    assert sample(registry, "persona_token_budget_tokens", persona="backend-engineer",
                  window="7d") is None
    assert sample(registry, "persona_cost_budget_usd", persona="backend-engineer",
                  window="30d") is None
    assert sample(registry, "persona_token_budget_tokens", persona="qa-engineer",
                  window="24h") is None
    assert sample(registry, "persona_llm_requests_total", **LLM) == 1  # counters kept


def test_label_caps_send_new_values_to_overflow(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry, config=parse_config(
        "personas: {known: {}}\nlimits: {persona: 2, model: 1}"))
    for who in ("known", "second", "third", "fourth"):
        recorder.emit(generation(persona=who))
    assert sample(registry, "persona_llm_requests_total", **{**LLM, "persona": "second"}) == 1
    assert sample(registry, "persona_llm_requests_total", **{**LLM, "persona": "third"}) is None
    assert sample(registry, "persona_llm_requests_total",
                  **{**LLM, "persona": OVERFLOW_VALUE}) == 2
    assert sample(registry, "persona_exporter_label_overflow_total", label="persona") == 2
    # the cap holds across every family that carries the dimension
    recorder.emit(PersonaSwitch(workflow="w", from_persona="known", to_persona="fifth"))
    assert sample(registry, "persona_switches_total", workflow="w", from_persona="known",
                  to_persona=OVERFLOW_VALUE) == 1
    recorder.emit(generation(model="other-model"))
    assert sample(registry, "persona_exporter_label_overflow_total", label="model") == 1
    assert sample(registry, "persona_exporter_label_overflow_total", label="workflow") == 0


def test_configured_names_never_overflow(registry: CollectorRegistry) -> None:
    config = parse_config("personas: {a: {}, b: {}, c: {}}\nlimits: {persona: 1}")
    recorder = Recorder(registry, config=config)
    recorder.emit(generation(persona="stranger"))
    recorder.emit(generation(persona="c"))
    assert sample(registry, "persona_llm_requests_total", **{**LLM, "persona": "c"}) == 1
    assert sample(registry, "persona_llm_requests_total",
                  **{**LLM, "persona": OVERFLOW_VALUE}) == 1


def test_rejections_and_self_metrics_start_at_zero(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    assert sample(registry, "persona_exporter_events_rejected_total", reason="invalid_event") == 0
    recorder.reject("invalid_event", 3)
    assert sample(registry, "persona_exporter_events_rejected_total", reason="invalid_event") == 3
    assert sample(registry, "persona_exporter_trace_export_failures_total", backend="langfuse") == 0
    build = [s for f in registry.collect() if f.name == "persona_exporter_build_info"
             for s in f.samples]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"]


def test_concurrent_recording_loses_nothing(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    threads, per_thread = 8, 5000

    def work() -> None:
        for _ in range(per_thread):
            recorder.emit(generation(input_tokens=3, output_tokens=1, cost_usd=0.5))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = threads * per_thread
    assert sample(registry, "persona_llm_requests_total", **LLM) == total
    assert sample(registry, "persona_llm_tokens_total", **LLM, token_type="input") == 3 * total
    assert sample(registry, "persona_llm_cost_usd_total", **LLM) == 0.5 * total


def test_registering_twice_in_one_registry_is_refused(registry: CollectorRegistry) -> None:
    Recorder(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Recorder(registry)


def test_exposition_passes_promtool_lint(registry: CollectorRegistry, config: Config,
                                         promtool: str) -> None:
    recorder = Recorder(registry, config=config)
    recorder.emit(generation(error_type="Timeout", time_to_first_chunk_seconds=0.1))
    recorder.emit(WorkflowStart(workflow="w"))
    recorder.emit(PersonaSwitch(workflow="w", from_persona="a", to_persona="b"))
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_the_series_cap_bounds_label_combinations_per_family(registry: CollectorRegistry) -> None:
    # 100 personas x 50 chatmodes x 100 models, each value within its own label's cap:
    # the per-label caps alone allowed 1.3 M samples and a 133 MB /metrics.
    recorder = Recorder(registry, config=parse_config("limits: {}"))  # the default caps
    cap = Config().limits.series
    sent = 0
    for i in range(30_000):
        persona, chatmode = f"persona-{i % 100}", f"chatmode-{(i // 100) % 50}"
        workflow = f"workflow-{i % 100}"
        recorder.emit(LLMGeneration(
            persona=persona, chatmode=chatmode, model=f"model-name-{(i // 7) % 100}",
            provider=f"provider-{i % 20}", input_tokens=10, output_tokens=5,
            duration_seconds=0.5, time_to_first_chunk_seconds=0.1, error_type=f"Error{i % 50}"))
        recorder.emit(StageRun(workflow=workflow, stage=f"stage-{(i // 3) % 200}",
                               persona=f"persona-{(i // 11) % 100}", chatmode=chatmode,
                               status="succeeded",
                               duration_seconds=3, tokens=1))
        recorder.emit(PersonaSwitch(workflow=workflow, from_persona=persona,
                                    to_persona=f"persona-{(i // 13) % 100}"))
        recorder.emit(WorkflowStart(workflow=workflow, chatmode=chatmode))
        sent += 1
    body = generate_latest(registry)
    requests = [s for m in text_string_to_metric_families(body.decode())
                if m.name == "persona_llm_requests" for s in m.samples
                if s.name == "persona_llm_requests_total"]
    assert len(requests) == cap + 1  # the cap, plus the one all-overflow series
    overflow = registry.get_sample_value("persona_llm_requests_total", {
        "persona": OVERFLOW_VALUE, "chatmode": OVERFLOW_VALUE, "model": OVERFLOW_VALUE,
        "provider": OVERFLOW_VALUE})
    counted = registry.get_sample_value("persona_exporter_series_overflow_total",
                                        {"family": "persona_llm_requests_total"})
    assert overflow == counted and overflow is not None and overflow > 0
    assert sum(s.value for s in requests) == sent  # nothing lost, only folded
    for family in ("persona_stage_runs_total", "persona_switches_total",
                   "persona_llm_request_failures_total",
                   "persona_workflow_budget_overruns_total"):
        assert (registry.get_sample_value("persona_exporter_series_overflow_total",
                                          {"family": family}) or 0) > 0, family
    # every family at its cap at once: still a few MB (it was 133 MB)
    assert len(body) < 4_500_000, f"/metrics is {len(body):,} bytes at the default caps"


@pytest.mark.parametrize("bad", [
    {"cost_usd": 1e308}, {"cost_usd": float("nan")}, {"cost_usd": float("inf")},
    {"input_tokens": 10**13}, {"output_tokens": -5}, {"duration_seconds": float("inf")},
    {"time_to_first_chunk_seconds": float("nan")}, {"reasoning_tokens": "many"},
])
def test_an_event_built_in_process_with_an_absurd_number_is_refused(
        registry: CollectorRegistry, bad: dict[str, object],
        caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(registry)
    recorder.emit(generation())
    recorder.emit(generation(**bad))  # never raises into the host
    recorder.emit(generation(**bad))
    assert sample(registry, "persona_llm_requests_total", **LLM) == 1
    assert sample(registry, "persona_llm_cost_usd_total", **LLM) == 0
    assert sample(registry, "persona_exporter_events_rejected_total",
                  reason="invalid_event") == 2
    assert sample(registry, "persona_exporter_internal_errors_total", component="recorder",
                  kind="OutOfBoundsError") == 2
    logged = [r.getMessage() for r in caplog.records if "OutOfBoundsError" in r.getMessage()]
    assert len(logged) == 1 and f"llm_generation.{next(iter(bad))}" in logged[0]
    text = generate_latest(registry).decode()
    assert "Inf" not in text.replace("+Inf\"", "") and "NaN" not in text


def test_every_event_type_is_guarded(registry: CollectorRegistry) -> None:
    recorder = Recorder(registry)
    recorder.emit(StageRun(workflow="w", stage="s", persona="p", status="failed",
                           duration_seconds=float("inf")))
    recorder.emit(WorkflowRun(workflow="w", status="failed", duration_seconds=1,
                              tokens=10**15))
    recorder.emit(WorkflowStart(workflow="w", start_time=float("nan")))
    assert sample(registry, "persona_exporter_events_rejected_total",
                  reason="invalid_event") == 3
    assert sample(registry, "persona_workflow_active", workflow="w") is None
