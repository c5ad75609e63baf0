"""Events: valid ones parse, bad ones are refused with the field and value named."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persona_exporter.events import (
    EVENT_CLASSES,
    EventError,
    LLMGeneration,
    StageRun,
    WorkflowRun,
    clean_name,
    event_to_dict,
    events_json_schema,
    is_valid_name,
    parse_event,
)

GENERATION: dict[str, Any] = {
    "type": "llm_generation", "persona": "backend-engineer", "chatmode": "bug-fix",
    "model": "gpt-4o", "provider": "openai", "input_tokens": 120, "output_tokens": 80,
    "duration_seconds": 0.42,
}


def test_a_valid_generation_parses_with_defaults() -> None:
    event = parse_event({"type": "llm_generation", "persona": "qa", "model": "m",
                         "duration_seconds": 1})
    assert isinstance(event, LLMGeneration)
    assert (event.chatmode, event.provider, event.input_tokens, event.error_type) == (
        "none", "unknown", 0, None)


def test_every_event_type_round_trips_through_json() -> None:
    events = [
        parse_event(GENERATION),
        parse_event({"type": "stage_run", "workflow": "w", "stage": "s", "persona": "p",
                     "status": "partial", "duration_seconds": 2}),
        parse_event({"type": "workflow_start", "workflow": "w", "run_id": "r-1"}),
        parse_event({"type": "workflow_run", "workflow": "w", "status": "failed",
                     "duration_seconds": 3, "budget_overrun": True}),
        parse_event({"type": "persona_switch", "workflow": "w", "from_persona": "a",
                     "to_persona": "b"}),
        parse_event({"type": "observation", "kind": "retrieval", "name": "docs",
                     "metadata": {"k": "v"}}),
    ]
    assert [type(e) for e in events] == list(EVENT_CLASSES)
    for event in events:
        assert parse_event(json.loads(json.dumps(event_to_dict(event)))) == event


@pytest.mark.parametrize(("change", "field", "fragment"), [
    ({"input_tokens": -1}, "input_tokens", "greater than or equal to 0"),
    ({"output_tokens": 2.5}, "output_tokens", "valid integer"),
    ({"duration_seconds": math.nan}, "duration_seconds", "finite"),
    ({"duration_seconds": math.inf}, "duration_seconds", "finite"),
    ({"cost_usd": -0.01}, "cost_usd", "greater than or equal to 0"),
    ({"persona": ""}, "persona", "at least 1 character"),
    ({"persona": "x" * 129}, "persona", "at most 128"),
    ({"model": "gpt-4o\n"}, "model", "not a valid name"),
    ({"model": " gpt-4o"}, "model", "not a valid name"),
    ({"persona": "développeur"}, "persona", "not a valid name"),
    ({"input_tokens": "twelve"}, "input_tokens", "valid integer"),
    ({"colour": "blue"}, "colour", "unknown field"),
])
def test_bad_fields_are_named(change: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event({**GENERATION, **change})
    paths = [path for path, _ in caught.value.problems]
    assert field in paths
    message = dict(caught.value.problems)[field]
    assert fragment in message
    assert not caught.value.unknown_type


@pytest.mark.parametrize("value", [True, "12", 12.0])
def test_token_counts_are_integers_not_lookalikes(value: object) -> None:
    with pytest.raises(EventError, match="input_tokens"):
        parse_event({**GENERATION, "input_tokens": value})


def test_the_value_appears_in_the_message() -> None:
    with pytest.raises(EventError, match=r"input_tokens: .*got -5"):
        parse_event({**GENERATION, "input_tokens": -5})


def test_unknown_status_lists_the_allowed_ones() -> None:
    with pytest.raises(EventError) as caught:
        parse_event({"type": "stage_run", "workflow": "w", "stage": "s", "persona": "p",
                     "status": "done", "duration_seconds": 1})
    message = dict(caught.value.problems)["status"]
    assert "'succeeded'" in message and "'partial'" in message and "'done'" in message


@pytest.mark.parametrize("data", [
    {**GENERATION, "type": "llm_completion"},
    {k: v for k, v in GENERATION.items() if k != "type"},
])
def test_unknown_or_missing_type_is_flagged(data: dict[str, Any]) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(data)
    assert caught.value.unknown_type
    assert "llm_generation" in str(caught.value)


@pytest.mark.parametrize("data", [None, [], "llm_generation", 42])
def test_non_objects_are_refused(data: Any) -> None:
    with pytest.raises(EventError):
        parse_event(data)


def test_missing_required_fields_are_each_named() -> None:
    with pytest.raises(EventError) as caught:
        parse_event({"type": "workflow_run"})
    assert {p for p, _ in caught.value.problems} == {"workflow", "status", "duration_seconds"}


def test_json_schema_covers_every_event_type() -> None:
    schema = json.dumps(events_json_schema())
    for cls in (LLMGeneration, StageRun, WorkflowRun):
        assert cls.__name__ in schema
    assert '"additionalProperties": false' in schema


@given(st.one_of(st.text(), st.binary().map(repr), st.none(), st.integers()))
def test_clean_name_always_yields_a_valid_name(value: object) -> None:
    cleaned = clean_name(value)
    assert is_valid_name(cleaned)
    parse_event({**GENERATION, "persona": cleaned})


def test_clean_name_keeps_valid_names_and_repairs_others() -> None:
    assert clean_name("backend-engineer") == "backend-engineer"
    assert clean_name("développeur") == "d_veloppeur"
    assert clean_name("  ") == "unknown"
    assert clean_name(None, "none") == "none"
    assert len(clean_name("y" * 500)) == 128


# --- sane bounds (issue 11) ---

@pytest.mark.parametrize(("change", "field"), [
    ({"input_tokens": 10**12 + 1}, "input_tokens"),
    ({"reasoning_tokens": 2**63}, "reasoning_tokens"),
    ({"cost_usd": 1e308}, "cost_usd"),
    ({"cost_usd": 1_000_000.01}, "cost_usd"),
    ({"cost_usd": math.inf}, "cost_usd"),
    ({"duration_seconds": 30 * 86_400 + 1}, "duration_seconds"),
    ({"time_to_first_chunk_seconds": 1e300}, "time_to_first_chunk_seconds"),
    ({"time_to_first_chunk_seconds": -0.1}, "time_to_first_chunk_seconds"),
    ({"start_time": 1e20}, "start_time"),
])
def test_numbers_beyond_the_published_bounds_are_refused_naming_the_field(
        change: dict[str, Any], field: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event({**GENERATION, **change})
    assert [path for path, _ in caught.value.problems] == [field]
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("data", [
    {"type": "workflow_run", "workflow": "w", "status": "failed", "duration_seconds": 1,
     "token_allocation": 10**12 + 1},
    {"type": "stage_run", "workflow": "w", "stage": "s", "persona": "p", "status": "failed",
     "duration_seconds": 1, "tokens": 10**13},
    {"type": "observation", "kind": "event", "name": "n", "duration_seconds": 1e9},
])
def test_every_event_type_has_the_bounds(data: dict[str, Any]) -> None:
    with pytest.raises(EventError):
        parse_event(data)


def test_the_bounds_themselves_are_accepted() -> None:
    event = parse_event({**GENERATION, "input_tokens": 10**12, "cost_usd": 1e6,
                         "duration_seconds": 30 * 86_400, "time_to_first_chunk_seconds": 0})
    assert isinstance(event, LLMGeneration) and event.input_tokens == 10**12


def test_the_bounds_are_published_in_the_json_schema() -> None:
    schema = events_json_schema()
    generation = schema["$defs"]["LLMGeneration"]["properties"]
    assert generation["input_tokens"]["maximum"] == 10**12
    assert generation["input_tokens"]["minimum"] == 0
    cost = next(s for s in generation["cost_usd"]["anyOf"] if s.get("type") == "number")
    assert cost["maximum"] == 1_000_000 and cost["minimum"] == 0
    assert generation["duration_seconds"]["maximum"] == 2_592_000
    workflow_run = schema["$defs"]["WorkflowRun"]["properties"]
    allocation = next(s for s in workflow_run["token_allocation"]["anyOf"]
                      if s.get("type") == "integer")
    assert allocation["maximum"] == 10**12


# --- bounded error messages (issue 11) ---

def test_a_huge_event_gets_a_short_error_quickly() -> None:
    import time

    data = {**GENERATION, **{f"key-{i:06d}-" + "x" * 8: 1 for i in range(74_000)}}
    started = time.perf_counter()
    with pytest.raises(EventError) as caught:
        parse_event(data)
    assert time.perf_counter() - started < 0.1  # pydantic alone took 0.4 s here
    message = str(caught.value)
    assert len(message) <= 300
    assert message.startswith("74000 unknown fields: 'key-000000-") and "and 73997 more" in message


def test_many_problems_are_cut_to_a_bounded_message() -> None:
    data = {**GENERATION, **{f"extra{i}": 1 for i in range(5)},
            **{name: "n" * 5000 for name in ("persona", "model", "chatmode", "provider")},
            "metadata": {f"k{i}": i for i in range(30)}}
    with pytest.raises(EventError) as caught:
        parse_event(data)
    message = str(caught.value)
    assert len(message) <= 300
    assert message.startswith("persona: ") and message.endswith("problems)")
    huge_metadata = {**GENERATION, "metadata": {f"k{i}": "v" for i in range(50_000)}}
    with pytest.raises(EventError, match=r"^metadata: 50000 entries; at most 32$"):
        parse_event(huge_metadata)


def test_several_unknown_fields_are_counted_and_the_first_named() -> None:
    with pytest.raises(EventError) as caught:
        parse_event({**GENERATION, "colour": 1, "size": 2, "shape": 3, "smell": 4})
    assert str(caught.value) == "4 unknown fields: 'colour', 'size', 'shape' and 1 more"
    assert dict(caught.value.problems)["smell"] == "unknown field"
