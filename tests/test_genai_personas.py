"""Persona and chatmode of a span, by the configured attribute lists (genai/personas.py)."""

from __future__ import annotations

import json
from typing import Any

from persona_exporter.config import Otlp, parse_config
from persona_exporter.genai.personas import MAX_METADATA_JSON, Resolver


def resolver(**otlp: Any) -> Resolver:
    return Resolver(Otlp.model_validate(otlp))


def test_defaults_read_each_ecosystems_carrier_in_the_notes_order() -> None:
    """The note's (d) precedence: explicit attribute, then the metadata each ecosystem
    propagates (Langfuse propagate_attributes: LPP `_get_propagated_span_key`; Traceloop
    association properties: TLS; AI SDK <= 6 telemetry metadata, 7 context), then the
    agent's name; a user id is not a persona by default."""
    r = Resolver(Otlp())
    assert r.read({"persona.name": "a", "persona": "b", "gen_ai.agent.name": "c"}) == ("a", None)
    assert r.read({"gen_ai.agent.name": "c", "langfuse.trace.metadata.persona": "lf"}) == (
        "lf", None)
    assert r.read({"traceloop.association.properties.persona": "tl",
                   "traceloop.association.properties.chatmode": "bug-fix"}) == ("tl", "bug-fix")
    assert r.read({"ai.telemetry.metadata.persona": "ai6"}) == ("ai6", None)
    assert r.read({"ai.settings.context.persona": "ai7"}) == ("ai7", None)
    assert r.read({"agent.name": "oi-agent"}) == ("oi-agent", None)
    assert r.read({"user.id": "alice@example.com", "langfuse.user.id": "alice"}) == (None, None)
    assert r.read({}) == (None, None)


def test_langfuse_metadata_values_arrive_json_encoded_and_are_read_as_text() -> None:
    """The Langfuse SDK serialises each metadata value as JSON (langfuse-python
    langfuse/_client/attributes.py _serialize): propagate_attributes(metadata={"persona":
    "qa-engineer"}) puts '"qa-engineer"' on the span, quotes included (SDK 5.0.4)."""
    r = Resolver(Otlp())
    assert r.read({"langfuse.trace.metadata.persona": '"qa-engineer"',
                   "langfuse.trace.metadata.chatmode": '"bug-fix"'}) == ("qa-engineer", "bug-fix")
    # not JSON after all: read as it stands; JSON that is not a string is not a name
    assert r.read({"persona": '"half'}) == ('"half', None)
    assert r.read({"persona": '"a" "b"'}) == ('"a" "b"', None)


def test_openinference_metadata_is_read_from_its_json_string_or_a_kvlist() -> None:
    """OpenInference `using_metadata` writes one JSON string attribute `metadata`
    (openinference-instrumentation `context_attributes.py`); an OTLP kvlist decodes to a
    dict."""
    r = Resolver(Otlp())
    assert r.read({"metadata": json.dumps({"persona": "qa", "chatmode": "review"})}) == (
        "qa", "review")
    assert r.read({"metadata": {"persona": "devops"}}) == ("devops", None)
    # an exact attribute of the dotted name wins over the nested key
    assert r.read({"metadata.persona": "exact", "metadata": '{"persona": "nested"}'}) == (
        "exact", None)
    # not JSON, not an object, too big, or a non-string value: nothing, and no error
    assert r.read({"metadata": "{not json"}) == (None, None)
    assert r.read({"metadata": '["persona"]'}) == (None, None)
    big = json.dumps({"persona": "x", "pad": "y" * MAX_METADATA_JSON})
    assert r.read({"metadata": big}) == (None, None)
    assert r.read({"metadata": json.dumps({"persona": 7})}) == (None, None)


def test_empty_and_non_string_values_are_skipped_for_the_next_attribute() -> None:
    r = resolver(persona={"attributes": ["a", "b", "c", "d"], "resource_attributes": []})
    assert r.read({"a": "   ", "b": 12, "c": True, "d": " found "}) == ("found", None)
    assert r.read({"a": ["list"], "b": None}) == (None, None)


def test_map_is_ordered_searched_and_first_match_wins() -> None:
    r = resolver(persona={"attributes": ["persona"], "resource_attributes": ["persona"],
                          "map": {"^qa": "qa-engineer", "back": "backend-engineer",
                                  "(?i)DEV": "devops"}})
    assert r.read({"persona": "qa-backend"})[0] == "qa-engineer"
    assert r.read({"persona": "team-backend-2"})[0] == "backend-engineer"
    assert r.read({"persona": "my-devops-bot"})[0] == "devops"
    assert r.read({"persona": "unmatched"})[0] == "unmatched"
    # the resource values go through the same map
    assert r.read_resource({"persona": "qa-1"}) == ("qa-engineer", None)
    # the second read of a value comes from the cache and is the same
    assert r.read({"persona": "qa-backend"})[0] == "qa-engineer"


def test_values_become_valid_label_values() -> None:
    r = Resolver(Otlp())
    assert r.read({"persona": "ingénieur qa"}) == ("ing_nieur qa", None)
    assert r.read({"persona": "x" * 300})[0] == "x" * 128


def test_resource_attributes_are_read_separately() -> None:
    r = Resolver(Otlp())
    resource = {"persona.name": "svc-persona", "chatmode": "batch", "service.name": "api"}
    assert r.read_resource(resource) == ("svc-persona", "batch")
    assert r.read_resource(resource) == ("svc-persona", "batch")  # the same dict, cached
    assert r.read_resource({"service.name": "api"}) == (None, None)
    # span attributes never read the resource list, nor the reverse
    assert r.read({"service.name": "api"}) == (None, None)


def test_configured_lists_and_map_from_the_yaml() -> None:
    config = parse_config("""
otlp:
  persona:
    attributes: [user.id]
    resource_attributes: [service.name]
    map: {"^svc-": "service-persona"}
  chatmode:
    attributes: [session.mode]
    resource_attributes: []
""")
    r = Resolver(config.otlp)
    assert r.read({"user.id": "alice", "persona": "ignored", "session.mode": "chat"}) == (
        "alice", "chat")
    assert r.read_resource({"service.name": "svc-billing"}) == ("service-persona", None)
