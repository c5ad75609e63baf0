"""A batch of events validated at once (events.parse_valid_events) gives what validating
each event gives; a batch with any invalid event is answered event by event exactly as
before: the same indexes, reasons and messages, and its valid events applied."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from persona_exporter.events import (
    _NUMERIC_FIELDS,
    EVENT_CLASSES,
    METADATA_MAX_ITEMS,
    EventError,
    events_json_schema,
    out_of_bounds,
    parse_event,
    parse_valid_events,
)
from persona_exporter.metrics.recorder import Recorder
from persona_exporter.server.ingest import Ingestor, Rejection

from .conftest import sample

TRACE = {"trace_id": "a" * 32, "span_id": "b" * 16}
VALID: list[dict[str, Any]] = [
    {"type": "llm_generation", "persona": "qa", "model": "gpt-4o", "input_tokens": 10**12,
     "cost_usd": 1e6, "duration_seconds": 30 * 86_400, "time_to_first_chunk_seconds": 0,
     "metadata": {f"k{i}": "v" for i in range(METADATA_MAX_ITEMS)}, **TRACE,
     "parent_span_id": "c" * 16, "start_time": 253_402_300_799.0},
    {"type": "stage_run", "workflow": "w", "stage": "s", "persona": "p", "status": "partial",
     "duration_seconds": 1.5, "tokens": 7, "run_id": "r-1"},
    {"type": "workflow_start", "workflow": "w", "run_id": "r-1", "start_time": 1.0},
    {"type": "workflow_run", "workflow": "w", "status": "failed", "duration_seconds": 2,
     "tokens": 3, "token_allocation": 10, "budget_overrun": True, "persona": "p", **TRACE},
    {"type": "persona_switch", "workflow": "w", "from_persona": "a", "to_persona": "b"},
    {"type": "observation", "kind": "retrieval", "name": "docs", "persona": "p"},
]
INVALID: list[Any] = [
    {"type": "llm_generation", "persona": "qa", "model": "m", "duration_seconds": -1},
    {"type": "llm_generation", "persona": "qa", "model": "m", "duration_seconds": 1,
     "input_tokens": True},
    {"type": "nonsense"},
    {"persona": "qa"},
    "not an object",
    None,
    [1, 2],
    {"type": "stage_run", "colour": 1, "size": 2, "shape": 3, "smell": 4},
    {"type": "llm_generation", "persona": "qa", "model": "m", "duration_seconds": 1,
     "metadata": {f"k{i}": "v" for i in range(METADATA_MAX_ITEMS + 1)}},
    {"type": "llm_generation", "persona": "qa", "model": "m", "duration_seconds": 1,
     **{f"x{i}": 1 for i in range(40)}},
    {"type": "workflow_start", "workflow": " padded "},
]


def test_a_valid_batch_is_validated_at_once_into_the_same_events() -> None:
    batch = json.loads(json.dumps(VALID * 3))
    assert parse_valid_events(batch) == [parse_event(item) for item in batch]
    assert parse_valid_events([]) == []


def test_any_invalid_event_sends_the_batch_event_by_event() -> None:
    for bad in INVALID:
        assert parse_valid_events([*VALID, bad, *VALID]) is None


def test_a_huge_event_is_not_handed_to_pydantic_in_a_batch() -> None:
    huge = {**VALID[0], **{f"key-{i:06d}": 1 for i in range(74_000)}}
    started = time.perf_counter()
    assert parse_valid_events([huge]) is None
    assert time.perf_counter() - started < 0.05  # pydantic alone took 0.4 s (issue 11)


def reference(items: list[Any]) -> tuple[int, list[Rejection]]:
    """What _apply answered before the batch path: every event on its own."""
    accepted, rejected = 0, []
    for index, item in enumerate(items):
        try:
            parse_event(item)
            accepted += 1
        except EventError as error:
            reason = "unknown_event_type" if error.unknown_type else "invalid_event"
            rejected.append(Rejection(index, reason, str(error)))
    return accepted, rejected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(VALID), st.sampled_from(INVALID)), max_size=30))
def test_a_partly_bad_batch_is_answered_as_event_by_event(items: list[Any]) -> None:
    registry = CollectorRegistry()
    ingestor = Ingestor(Recorder(registry))
    result = ingestor.ingest(json.dumps({"batch_id": "b", "events": items}).encode())
    accepted, rejected = reference(items)
    assert result.accepted == accepted
    assert result.rejected == rejected
    generations = sum(1 for item in items if item is VALID[0])
    assert (sample(registry, "persona_llm_requests_total", persona="qa", chatmode="none",
                   model="gpt-4o", provider="unknown") or 0) == generations
    assert (sample(registry, "persona_exporter_events_rejected_total",
                   reason="invalid_event") or 0) == sum(
        1 for r in rejected if r.reason == "invalid_event")


def test_a_valid_batch_is_applied_whole() -> None:
    registry = CollectorRegistry()
    result = Ingestor(Recorder(registry)).ingest(json.dumps(VALID * 2).encode())
    assert (result.accepted, result.rejected) == (12, [])
    assert sample(registry, "persona_llm_tokens_total", persona="qa", chatmode="none",
                  model="gpt-4o", provider="unknown", token_type="input") == 2 * 10**12


def test_a_parsed_event_always_passes_the_recorders_own_check() -> None:
    """Why the recorder may skip out_of_bounds for parsed events (emit_validated): every
    field it checks has the same bounds in the schema pydantic validates with."""
    schema = events_json_schema()["$defs"]
    for cls in EVENT_CLASSES:
        properties = schema[cls.__name__]["properties"]
        for name, bound in _NUMERIC_FIELDS[cls]:
            options = properties[name].get("anyOf", [properties[name]])
            number = next(o for o in options if o.get("type") in ("integer", "number"))
            assert number["maximum"] == bound, (cls.__name__, name)
            assert number.get("minimum", number.get("exclusiveMinimum")) == 0, name
    for item in VALID:
        assert out_of_bounds(parse_event(item)) is None
