"""The dashboards: generated from their sources, importable by provisioning and by the
import dialog, and in step with the catalog (every query names catalog metrics; every
catalog family is on a dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from persona_exporter.bundle.grafana import DATASOURCE, load, render, sources
from persona_exporter.bundle.mixin import MixinConfig
from persona_exporter.catalog import CATALOG, Kind

from .test_rules import metric_names

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sources(ROOT)
# Families deliberately not on any dashboard, with the reason. Empty today: all are shown.
NOT_SHOWN: dict[str, str] = {}


def boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.with_name(p.name.replace(".dashboard.py", ".json"))
                               .read_text()) for p in SOURCES}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def queries(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def test_there_are_the_two_dashboards() -> None:
    config = MixinConfig()
    assert {b["uid"] for b in boards().values()} == {config.persona_dashboard_uid,
                                                     config.workflow_dashboard_uid}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_committed_json_is_what_the_source_generates(source: Path) -> None:
    committed = source.with_name(source.name.replace(".dashboard.py", ".json")).read_text()
    assert committed == render(load(source)), f"{source.name}: run `make generate`"


@pytest.mark.parametrize("name", [p.name for p in SOURCES])
def test_importable_by_provisioning_and_by_the_import_dialog(name: str) -> None:
    board = boards()[name]
    assert board["id"] is None and board["uid"] and board["schemaVersion"] >= 39
    assert "__inputs" not in board
    variables = board["templating"]["list"]
    assert variables[0] == {**variables[0], "name": "datasource", "type": "datasource",
                            "query": "prometheus"}
    for variable in variables[1:]:
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    text = json.dumps(board)
    assert "DS_PROMETHEUS" not in text
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        for query in panel["targets"]:
            assert query["datasource"] == DATASOURCE, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


@pytest.mark.parametrize("name", [p.name for p in SOURCES])
def test_panels_do_not_overlap(name: str) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in boards()[name]["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_links_between_the_dashboards_keep_time_and_variables() -> None:
    for board in boards().values():
        (link,) = board["links"]
        assert link["type"] == "dashboards" and link["includeVars"] and link["keepTime"]
        assert set(link["tags"]) <= set(board["tags"])  # so each finds the other


def _executable(expr: str) -> str:
    # Grafana's variables, replaced as Grafana would before the query reaches Prometheus.
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "6h")
            .replace("$__interval", "1m"))


def known_metrics() -> set[str]:
    known: set[str] = set()
    for spec in CATALOG:
        known.add(spec.name)
        if spec.kind is Kind.HISTOGRAM:
            known |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
    rules = yaml.safe_load((ROOT / "alerts" / "persona-exporter.rules.yml").read_text())
    known |= {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    return known


def test_every_query_parses_and_names_only_known_metrics() -> None:
    known = known_metrics()
    for name, board in boards().items():
        for expr in queries(board):
            parsed = promql_parser.parse(_executable(expr))
            unknown = metric_names(parsed) - known
            assert not unknown, (name, expr, unknown)
        for variable in board["templating"]["list"][1:]:
            metric = re.search(r"label_values\((\w+)", variable["query"])
            assert metric and metric.group(1) in known


def test_every_catalog_family_is_on_a_dashboard() -> None:
    shown: set[str] = set()
    for board in boards().values():
        for expr in queries(board):
            shown |= metric_names(promql_parser.parse(_executable(expr)))
    for spec in CATALOG:
        names = {spec.name, f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        if spec.name == "persona_llm_tokens_total":  # also read through its recording rules
            names.add("persona_window:persona_token_budget:utilisation")
        assert names & shown or spec.name in NOT_SHOWN, f"{spec.name} is on no dashboard"


def test_thresholds_come_from_the_mixin_config() -> None:
    config = MixinConfig()
    board = boards()["persona-overview.dashboard.py"]
    budget = next(p for p in panels(board) if p["title"] == "Token budget utilisation")
    steps = [s["value"] for s in budget["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, config.budget_warning_ratio, config.budget_critical_ratio]
