"""The catalog follows Prometheus' naming rules, and the recorder exposes exactly it."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import catalog
from persona_exporter.catalog import CATALOG, Kind
from persona_exporter.metrics.recorder import Recorder

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
# Labels whose values come from closed sets or from the exporter itself.
INTERNAL_LABELS = {"token_type", "status", "window", "type", "reason", "label", "backend",
                   "outcome", "component", "kind", "version", "python_version", "family",
                   "source", "upstream", "transport"}


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_names_follow_prometheus_conventions(spec: catalog.MetricSpec) -> None:
    assert SNAKE.match(spec.name), spec.name
    assert spec.name.startswith(("persona_", "persona_exporter_"))
    assert (spec.kind is Kind.COUNTER) == spec.name.endswith("_total"), spec.name
    if spec.unit:
        stem = spec.name.removesuffix("_total")
        assert stem.endswith("_" + spec.unit), f"{spec.name} must end with its unit {spec.unit}"
    assert spec.help.endswith("."), spec.name
    for label in spec.labels:
        assert SNAKE.match(label) and not label.startswith("__"), label
        assert label in catalog.LABEL_DIMENSIONS or label in INTERNAL_LABELS, (
            f"{spec.name}{{{label}}} is neither capped nor from a closed set")
    if spec.kind is Kind.HISTOGRAM:
        assert list(spec.buckets) == sorted(set(spec.buckets)) and spec.buckets
    else:
        assert not spec.buckets


def test_llm_duration_buckets_are_the_genai_semconv_ones() -> None:
    # gen_ai.client.operation.duration: 0.01 s doubling up to 81.92 s.
    expected = tuple(round(0.01 * 2**i, 2) for i in range(14))
    assert expected == catalog.GENAI_DURATION_BUCKETS
    assert catalog.spec("persona_llm_request_duration_seconds").buckets == expected
    assert catalog.spec("persona_llm_time_to_first_chunk_seconds").buckets == expected


def test_issue_names_and_labels_are_kept() -> None:
    # The names and label sets are a contract with dashboards and alerts.
    expected = {
        "persona_llm_requests_total": ("persona", "chatmode", "model", "provider"),
        "persona_llm_request_failures_total": ("persona", "chatmode", "model", "provider",
                                               "error_type"),
        "persona_llm_tokens_total": ("persona", "chatmode", "model", "provider", "token_type"),
        "persona_llm_cost_usd_total": ("persona", "chatmode", "model", "provider"),
        "persona_llm_request_duration_seconds": ("persona", "model", "provider"),
        "persona_llm_time_to_first_chunk_seconds": ("persona", "model", "provider"),
        "persona_token_budget_tokens": ("persona", "window"),
        "persona_cost_budget_usd": ("persona", "window"),
        "persona_workflow_runs_total": ("workflow", "status"),
        "persona_workflow_duration_seconds": ("workflow",),
        "persona_workflow_active": ("workflow",),
        "persona_stage_runs_total": ("workflow", "stage", "persona", "status"),
        "persona_stage_duration_seconds": ("workflow", "stage", "persona"),
        "persona_switches_total": ("workflow", "from_persona", "to_persona"),
        "persona_workflow_budget_overruns_total": ("workflow", "chatmode"),
    }
    for name, labels in expected.items():
        assert catalog.spec(name).labels == labels, name


def test_unknown_metric_lookup_names_it() -> None:
    with pytest.raises(KeyError, match="persona_nope_total"):
        catalog.spec("persona_nope_total")


def test_recorder_exposes_exactly_the_catalog() -> None:
    registry = CollectorRegistry()
    Recorder(registry)
    exposed = {}
    for family in registry.collect():
        exposed[family.name] = family
    wanted = {spec.name.removesuffix("_total"): spec for spec in CATALOG}
    assert set(exposed) == set(wanted)
    for name, spec in wanted.items():
        family = exposed[name]
        assert family.type == spec.kind.value, name
        assert family.documentation == spec.help, name
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            extra = {"le"} if spec.kind is Kind.HISTOGRAM else set()
            assert set(s.labels) - extra == set(spec.labels), (name, s.labels)
