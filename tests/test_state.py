"""A recorder's state survives the trip through rows: the same /metrics after a restore,
and the same overflow decisions afterwards."""

from __future__ import annotations

import json
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from persona_exporter import Config, parse_config
from persona_exporter.events import (
    Event,
    LLMGeneration,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    WorkflowStart,
)
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.metrics.state import restore, take_changes

TIGHT = parse_config("""
personas: {backend-engineer: {tokens: {24h: 1000}}}
chatmodes: {bug-fix: {tokens_per_run: 500}}
models: {gpt-4o: {provider: openai, input: 2.5, output: 10}}
limits: {persona: 4, chatmode: 3, model: 3, workflow: 3, stage: 4, error_type: 2, series: 12}
""")


def random_events(rng: random.Random, count: int) -> list[Event]:
    def pick(prefix: str, n: int) -> str:
        return f"{prefix}-{rng.randrange(n)}"

    events: list[Event] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.5:
            events.append(LLMGeneration(
                persona=pick("persona", 7), chatmode=pick("mode", 5), model=pick("model", 5),
                provider=pick("provider", 2), input_tokens=rng.randrange(5000),
                output_tokens=rng.randrange(2000), cache_read_tokens=rng.randrange(100),
                reasoning_tokens=rng.randrange(100), cost_usd=rng.random() / 7,
                duration_seconds=rng.random() * 30,
                time_to_first_chunk_seconds=rng.random() if rng.random() < 0.5 else None,
                error_type=pick("err", 4) if rng.random() < 0.2 else None))
        elif roll < 0.65:
            events.append(StageRun(workflow=pick("wf", 5), stage=pick("stage", 6),
                                   persona=pick("persona", 7), chatmode=pick("mode", 5),
                                   status=rng.choice(["succeeded", "failed", "partial"]),
                                   duration_seconds=rng.random() * 600,
                                   tokens=rng.randrange(5000)))
        elif roll < 0.8:
            events.append(WorkflowStart(workflow=pick("wf", 5), chatmode=pick("mode", 5)))
        elif roll < 0.92:
            events.append(WorkflowRun(workflow=pick("wf", 5), chatmode=pick("mode", 5),
                                      status=rng.choice(["succeeded", "failed"]),
                                      duration_seconds=rng.random() * 900,
                                      tokens=rng.randrange(9000),
                                      budget_overrun=rng.random() < 0.3))
        else:
            events.append(PersonaSwitch(workflow=pick("wf", 5), from_persona=pick("persona", 7),
                                        to_persona=pick("persona", 7)))
    return events


def exposition(recorder: Recorder) -> list[str]:
    # Creation timestamps are the process's own; everything else must match.
    return sorted(line for line in generate_latest(recorder.registry).decode().splitlines()
                  if "_created" not in line)


def fresh(config: Config = TIGHT) -> Recorder:
    recorder = Recorder(CollectorRegistry(), config=config)
    recorder.track_changes()
    return recorder


def test_restored_state_is_the_same_and_decides_overflow_the_same() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    original = fresh()
    rows: dict[tuple[str, str], str] = {}
    scalars = None
    for _ in range(30):  # in batches, as the exporter commits them: later rows replace
        for event in random_events(rng, 100):
            original.emit(event)
        original.reject("invalid_event")
        changes = take_changes(original)
        rows.update({(kind, labels): state for kind, labels, state in changes.rows})
        scalars = changes.scalars
    overflowed = [line for line in exposition(original)
                  if "__overflow__" in line and not line.startswith("#")]
    assert overflowed, "the caps were reached: the restore must keep overflow series too"
    assert 'persona_exporter_series_overflow_total{family="persona_llm_requests_total"}' in \
        "\n".join(exposition(original))

    restored = fresh()
    skipped = restore(restored, [(k, labels, s) for (k, labels), s in rows.items()], scalars)
    assert skipped == []
    assert exposition(restored) == exposition(original)

    later = random_events(rng, 2000)
    for recorder in (original, restored):
        for event in later:
            recorder.emit(event)
    assert exposition(restored) == exposition(original)


def test_only_the_series_a_batch_touched_are_taken() -> None:
    recorder = fresh()
    recorder.emit(LLMGeneration(persona="a", chatmode="c", model="m", provider="p",
                                input_tokens=1, output_tokens=2, duration_seconds=0.1))
    first = take_changes(recorder)
    assert [(kind, json.loads(labels)) for kind, labels, _ in first.rows] == [
        ("llm", ["a", "c", "m", "p"])]
    assert take_changes(recorder).rows == []


@pytest.mark.parametrize("state", [
    "[1, [1, 2, 3], 0.5]",                    # too short
    '"not a list"',
    "[-1, [0, 0, 0, 0], 0, [0], 0, [0], 0]",  # negative, wrong bucket count
    "[1e999, [0, 0, 0, 0], 0, [0], 0, [0], 0]",
])
def test_a_row_that_does_not_fit_is_skipped_and_named(state: str) -> None:
    recorder = fresh()
    good = ("switch", '["wf", "a", "b"]', "[3, 1700000000.0]")
    skipped = restore(recorder, [("llm", '["a", "c", "m", "p"]', state), good], None)
    assert len(skipped) == 1 and skipped[0].startswith('llm ["a", "c", "m", "p"]')
    assert recorder.registry.get_sample_value(
        "persona_switches_total", {"workflow": "wf", "from_persona": "a", "to_persona": "b"}) == 3
