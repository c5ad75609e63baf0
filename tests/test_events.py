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
