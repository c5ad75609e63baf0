"""The dashboards: generated from their sources, importable by provisioning and by the
import dialog, loaded by Grafana 11/12 as written (its typed model takes every key; none of
its migrations changes them), and in step with the catalog (every query names catalog
metrics; every catalog family is on a dashboard)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from grafanalib._gen import DashboardEncoder

from persona_exporter.bundle.grafana import (
    DATASOURCE,
    PLUGIN_VERSION,
    SCHEMA_VERSION,
    load,
    render,
    sources,
)
from persona_exporter.bundle.mixin import MixinConfig
from persona_exporter.catalog import CATALOG, Kind

from .test_rules import metric_names

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sources(ROOT)
# Families deliberately not on any dashboard, with the reason. Empty today: all are shown.
NOT_SHOWN: dict[str, str] = {}
# What the loops below walk over, spelled out so that an empty collection fails them.
PANEL_TITLES = {
    "persona-overview.dashboard.py": [
        "Tokens", "Cost", "Requests", "Error ratio", "Tokens per persona by type",
        "Token budget utilisation", "Cost by persona and model", "Cost budget utilisation",
        "Top models", "Budget limits", "Latency p50 / p95 per persona",
        "Time to first chunk p95", "Errors by type", "Persona switches"],
    "workflow-performance.dashboard.py": [
        "Runs by status", "Success ratio", "In flight", "Workflow duration p50 / p95 / p99",
        "Budget overruns", "Stage duration p95", "Slowest stages", "Failures by stage",
        "Stage runs by status", "Events accepted and rejected", "Label overflow",
        "Trace export failures", "Spans dropped", "Trace export latency p95", "Trace volume",
        "Exporter health", "OTLP spans received", "OTLP forwarding", "Build"],
}
VARIABLES = {"persona-overview.dashboard.py": ["datasource", "persona", "chatmode", "model"],
             "workflow-performance.dashboard.py": ["datasource", "workflow", "stage"]}
BAR_GAUGES = {"Token budget utilisation", "Cost budget utilisation"}
# Each panel type and the typed options / custom field config grafana-foundation-sdk decodes
# it into (None: the type has no custom field config).
TYPED: dict[str, tuple[type, type | None]] = {
    "stat": (stat.Options, None),
    "timeseries": (timeseries.Options, timeseries.FieldConfig),
    "bargauge": (bargauge.Options, None),
    "table": (table.Options, table.FieldConfig),
}

register_default_plugins()


def boards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.with_name(p.name.replace(".dashboard.py", ".json"))
                                .read_text()) for p in SOURCES}
    assert set(found) == set(PANEL_TITLES)
    return found


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = [p for p in board["panels"] if p["type"] != "row"]
    assert [p["title"] for p in found] in PANEL_TITLES.values(), board["title"]
    return found


def queries(board: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    assert len(found) >= len(panels(board)), board["title"]  # every panel has a query
    return found


def test_there_are_the_two_dashboards() -> None:
    config = MixinConfig()
    assert {b["uid"] for b in boards().values()} == {config.persona_dashboard_uid,
                                                     config.workflow_dashboard_uid}
    for name, board in boards().items():
        assert [p["title"] for p in panels(board)] == PANEL_TITLES[name]
        assert [v["name"] for v in board["templating"]["list"]] == VARIABLES[name]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_committed_json_is_what_the_source_generates(source: Path) -> None:
    committed = source.with_name(source.name.replace(".dashboard.py", ".json")).read_text()
    assert committed == render(load(source)), f"{source.name}: run `make generate`"


@pytest.mark.parametrize("name", [p.name for p in SOURCES])
def test_importable_by_provisioning_and_by_the_import_dialog(name: str) -> None:
    board = boards()[name]
    # No id (Grafana takes an absent one as null: a new dashboard) and a fixed uid.
    assert "id" not in board and board["uid"] and board["schemaVersion"] == SCHEMA_VERSION
    assert "__inputs" not in board
    # The annotation query Grafana would otherwise add on load, changing the dashboard.
    assert [a["name"] for a in board["annotations"]["list"] if a["builtIn"] == 1] == [
        "Annotations & Alerts"]
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == VARIABLES[name]
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
    board = boards()[name]
    assert len(board["panels"]) == len(panels(board)) + 3  # three rows each
    for panel in board["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_links_between_the_dashboards_keep_time_and_variables() -> None:
    assert len(boards()) == 2
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
    assert "persona_llm_tokens_total" in known
    for name, board in boards().items():
        for expr in queries(board):
            parsed = promql_parser.parse(_executable(expr))
            unknown = metric_names(parsed) - known
            assert not unknown, (name, expr, unknown)
        assert [v["name"] for v in board["templating"]["list"]] == VARIABLES[name]
        for variable in board["templating"]["list"][1:]:
            metric = re.search(r"label_values\((\w+)", variable["query"])
            assert metric and metric.group(1) in known


def test_every_catalog_family_is_on_a_dashboard() -> None:
    shown: set[str] = set()
    for board in boards().values():
        for expr in queries(board):
            shown |= metric_names(promql_parser.parse(_executable(expr)))
    assert len(CATALOG) > 20 and "persona_llm_tokens_total" in shown
    for spec in CATALOG:
        names = {spec.name, f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        if spec.name == "persona_llm_tokens_total":  # also read through its recording rules
            names.add("persona_window:persona_token_budget:utilisation")
        assert names & shown or spec.name in NOT_SHOWN, f"{spec.name} is on no dashboard"


# The one panel that lists every replica on purpose: which version each one runs.
PER_REPLICA_PANELS = {"Build"}
# Aggregations that keep the labels of the series they pick.
_SELECTING = {"topk", "bottomk", "limitk", "limit_ratio"}


def per_target(expr: Any) -> bool:
    """Whether a parsed query returns a series per scraped replica (its instance, pod
    labels kept): a selector of a raw family reached without an aggregation ``by`` labels
    that leave the target's out. Recording rules (``a:b:c``) are aggregated already."""
    kind = type(expr).__name__
    if kind in ("VectorSelector", "MatrixSelector"):
        selector = getattr(expr, "vector_selector", expr)  # a MatrixSelector wraps one
        return ":" not in (selector.name or "")
    if kind == "AggregateExpr":
        modifier = expr.modifier
        if str(expr.op) in _SELECTING:
            return per_target(expr.expr)
        if modifier is not None and "Without" in str(modifier.type):
            return per_target(expr.expr) and not {"instance", "pod"} <= set(modifier.labels)
        return bool(modifier is not None and {"instance", "pod"} & set(modifier.labels))
    if kind == "BinaryExpr":
        return per_target(expr.lhs) or per_target(expr.rhs)
    if kind == "Call":
        return any(per_target(arg) for arg in expr.args)
    inner = getattr(expr, "expr", None)
    return inner is not None and per_target(inner)


def test_with_several_replicas_each_panel_shows_the_fleet_once() -> None:
    """Every replica exports every family (the budget gauges too) and in Kubernetes each
    series also carries its pod: a query that does not aggregate them draws one line per
    replica, all with the same legend (deploy/kubernetes runs N replicas, README "Several
    replicas"). Only the build table lists the replicas, on purpose."""
    assert per_target(promql_parser.parse('persona_token_budget_tokens{window="1h"}'))
    assert not per_target(promql_parser.parse("max by (persona) (persona_token_budget_tokens)"))
    checked = 0
    for name, board in boards().items():
        for panel in panels(board):
            for query in panel.get("targets", []):
                if panel["title"] in PER_REPLICA_PANELS:
                    continue
                checked += 1
                assert not per_target(promql_parser.parse(_executable(query["expr"]))), (
                    name, panel["title"], query["expr"])
    assert checked > 40


def test_thresholds_come_from_the_mixin_config() -> None:
    config = MixinConfig()
    board = boards()["persona-overview.dashboard.py"]
    budget = next(p for p in panels(board) if p["title"] == "Token budget utilisation")
    steps = [s.get("value") for s in budget["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, config.budget_warning_ratio, config.budget_critical_ratio]


# --- what Grafana 11/12 does with them ---------------------------------------------------


def typed(board: dict[str, Any]) -> Dashboard:
    return Dashboard.from_json(copy.deepcopy(board))


def as_json(model: Dashboard) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return decoded


def lost(written: Any, kept: Any, path: str = "") -> Iterator[str]:
    """The paths of ``written`` that ``kept`` lacks or holds otherwise. Keys ``kept`` adds
    (the typed model's defaults) do not count."""
    if isinstance(written, dict):
        if not isinstance(kept, dict):
            yield path
            return
        for key, value in written.items():
            if key in kept:
                yield from lost(value, kept[key], f"{path}.{key}")
            else:
                yield f"{path}.{key}"
    elif isinstance(written, list):
        if not isinstance(kept, list) or len(kept) != len(written):
            yield path
            return
        for i, (a, b) in enumerate(zip(written, kept, strict=True)):
            yield from lost(a, b, f"{path}[{i}]")
    elif written != kept:
        yield f"{path}: {written!r} became {kept!r}"


def nulls(value: Any, path: str = "") -> Iterator[str]:
    if value is None:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nulls(item, f"{path}[{i}]")


def test_the_pinned_typed_model_is_the_one_for_this_schema_version() -> None:
    """grafana-foundation-sdk's builds are numbered so that a plain install takes an old one;
    the pinned build writes schemaVersion 41, the version the dashboards claim."""
    assert Dashboard().schema_version == SCHEMA_VERSION == 41


@pytest.mark.parametrize("name", sorted(PANEL_TITLES))
def test_every_panel_parses_into_its_typed_model(name: str) -> None:
    board = boards()[name]
    model = typed(board)
    assert model.schema_version == 41 and model.uid == board["uid"]
    assert len(model.panels or []) == len(board["panels"])
    titles = []
    for panel in model.panels or []:
        if isinstance(panel, RowPanel):
            continue
        assert isinstance(panel, Panel)
        options_type, custom_type = TYPED[panel.type_val]
        assert isinstance(panel.options, options_type), panel.title
        assert panel.field_config is not None, panel.title
        if custom_type is not None:
            assert isinstance(panel.field_config.defaults.custom, custom_type), panel.title
        assert panel.targets, panel.title
        for query in panel.targets:
            assert isinstance(query, prometheus.Dataquery), panel.title
        titles.append(panel.title)
    assert titles == PANEL_TITLES[name]
    assert len([p for p in model.panels or [] if isinstance(p, RowPanel)]) == 3


@pytest.mark.parametrize("name", sorted(PANEL_TITLES))
def test_the_typed_model_knows_every_key(name: str) -> None:
    """A key the typed model does not know is dropped when it re-encodes the dashboard: so
    nothing dropped means no unknown or legacy key (grafanalib's `span`, `fieldOptions`,
    `rows`, the table's `styles`, a target's `step`...)."""
    board = boards()[name]
    assert list(lost(board, as_json(typed(board)))) == []
    assert len(board["panels"]) == len(PANEL_TITLES[name]) + 3


@pytest.mark.parametrize("name", sorted(PANEL_TITLES))
def test_no_null_anywhere(name: str) -> None:
    board = boards()[name]
    assert list(nulls(board)) == []
    assert "null" not in json.dumps(board)
    assert board["panels"]


@pytest.mark.parametrize("name", sorted(PANEL_TITLES))
def test_every_panel_has_a_plugin_version(name: str) -> None:
    board = boards()[name]
    for panel in panels(board):
        assert panel["pluginVersion"] == PLUGIN_VERSION, panel["title"]
    # Rows are no plugin panels: Grafana's row model has no pluginVersion.
    assert [p for p in board["panels"] if p["type"] == "row" and "pluginVersion" in p] == []


def test_the_bar_gauges_keep_their_unit_and_thresholds() -> None:
    config = MixinConfig()
    board = boards()["persona-overview.dashboard.py"]
    gauges = [p for p in panels(board) if p["type"] == "bargauge"]
    assert {p["title"] for p in gauges} == BAR_GAUGES
    for panel in gauges:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit", panel["title"]
        assert defaults["thresholds"] == {"mode": "absolute", "steps": [
            {"color": "green"},
            {"color": "orange", "value": config.budget_warning_ratio},
            {"color": "red", "value": config.budget_critical_ratio}]}, panel["title"]
        assert (config.budget_warning_ratio, config.budget_critical_ratio) == (0.8, 1.0)
        assert panel["options"]["reduceOptions"] == {"calcs": ["lastNotNull"], "fields": "",
                                                     "values": False}
    # And so the typed model reads them.
    typed_gauges = [p for p in typed(board).panels or []
                    if isinstance(p, Panel) and p.type_val == "bargauge"]
    assert len(typed_gauges) == 2
    for gauge in typed_gauges:
        assert gauge.field_config is not None
        defaults_model = gauge.field_config.defaults
        assert defaults_model.unit == "percentunit" and defaults_model.thresholds is not None
        assert [s.value for s in defaults_model.thresholds.steps] == [None, 0.8, 1.0]


def single_stat_migration(panel: dict[str, Any]) -> dict[str, Any]:
    """What Grafana does to a stat or bar gauge panel's fieldConfig when it loads it: the
    steps of sharedSingleStatMigrationHandler (grafana/grafana
    packages/grafana-ui/src/components/SingleStatShared/SingleStatBaseOptions.ts) that touch
    it, ported. Grafana runs them from the panel's pluginVersion, 6.1 when there is none
    (PanelModel.pluginLoaded, public/app/features/dashboard/state/PanelModel.ts)."""
    panel = copy.deepcopy(panel)
    version = re.match(r"\d+(?:\.\d+)?", panel.get("pluginVersion") or "6.1")
    previous = float(version.group()) if version else 0.0
    options = panel.get("options")
    if not options:
        return panel
    field_options = options.get("fieldOptions")
    if previous < 6.6 and field_options:
        thresholds = field_options.get("defaults", {}).pop("thresholds", None)
        if not thresholds:
            thresholds = field_options.pop("thresholds", None)
        if thresholds:
            field_options.setdefault("defaults", {})["thresholds"] = {"mode": "absolute",
                                                                      "steps": thresholds}
    if previous < 7.0:
        config = panel.get("fieldConfig") or {"defaults": {}, "overrides": []}
        defaults = config.get("defaults", {})
        if field_options and field_options.get("defaults"):
            defaults = {**defaults, **field_options["defaults"]}
        panel["fieldConfig"] = {"defaults": defaults, "overrides": config.get("overrides", [])}
        if field_options:
            options["reduceOptions"] = {"values": field_options.get("values"),
                                        "limit": field_options.get("limit"),
                                        "calcs": field_options.get("calcs")}
        options.pop("fieldOptions", None)
    if previous < 8.0:
        defaults = panel["fieldConfig"]["defaults"]
        if defaults.get("unit") == "percentunit":
            defaults.setdefault("min", 0)
            defaults.setdefault("max", 1)
    return panel


def test_grafanas_single_stat_migration_changes_none_of_the_panels() -> None:
    migrated = 0
    for board in boards().values():
        for panel in panels(board):
            assert "fieldOptions" not in panel.get("options", {}), panel["title"]
            if panel["type"] in ("stat", "bargauge"):
                assert single_stat_migration(panel) == panel, panel["title"]
                migrated += 1
    assert migrated == 8  # six stats, two bar gauges
    assert all("fieldOptions" not in json.dumps(b) for b in boards().values())


def test_the_migration_would_break_grafanalibs_own_bar_gauge() -> None:
    """The issue the dashboards had, reproduced on grafanalib's unprocessed output: so the
    check above can fail."""
    source = ROOT / "dashboards" / "persona-overview.dashboard.py"
    raw = json.loads(json.dumps(load(source).to_json_data(), cls=DashboardEncoder))
    gauges = [p for p in raw["panels"] if p["type"] == "bargauge"]
    assert {p["title"] for p in gauges} == BAR_GAUGES
    for panel in gauges:
        assert "fieldOptions" in panel["options"] and "pluginVersion" not in panel
        after = single_stat_migration(panel)["fieldConfig"]["defaults"]
        assert after["unit"] == "none"
        assert [s["value"] for s in after["thresholds"]["steps"]] == ["null", 80.0]


def test_schema_42s_migration_would_change_nothing() -> None:
    """Grafana's main writes schemaVersion 42; its one migration sets hideFrom.tooltip in
    `custom.hideFrom` overrides (apps/dashboard/pkg/migration/schemaversion/v42.go). With none
    of those, a Grafana past 41 loads the dashboards unchanged but for the number."""
    overrides = {p["title"]: p["fieldConfig"]["overrides"] for b in boards().values()
                 for p in panels(b)}
    assert len(overrides) == sum(map(len, PANEL_TITLES.values()))
    assert {title: o for title, o in overrides.items() if o} == {}
