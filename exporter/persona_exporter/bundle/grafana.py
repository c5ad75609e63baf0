"""Building blocks for the grafanalib dashboards in ``dashboards/``, and their rendering.

    python -m persona_exporter.bundle.grafana .   # dashboards/*.dashboard.py -> *.json beside

The JSON works both for file provisioning and for Grafana's import dialog: a ``datasource``
template variable of type datasource, every panel, target and query variable pointing at
``${datasource}``, no ``__inputs``, a fixed uid and no id. grafanalib writes Grafana 6-9
JSON; ``modernise`` turns it into what Grafana 11.6/12 write themselves (schemaVersion 41,
units and thresholds in ``fieldConfig``, a ``pluginVersion`` on every panel, no nulls, no
legacy keys), so that Grafana loads it without migrating, that is rewriting, it.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from . import repo_root
from .mixin import MixinConfig

# What Grafana 11.6 to 12.1 write, and what grafana-foundation-sdk's Grafana 11.6 and 12 models
# default to. Grafana's main branch went to 42 in September 2025 (grafana/grafana#110517):
# its one migration (apps/dashboard/pkg/migration/schemaversion/v42.go) only touches
# `custom.hideFrom` overrides, which these dashboards have none of, so a newer Grafana changes
# nothing but the number. Writing 42 instead would make the backend migrator of a Grafana
# that stops at 41 refuse the dashboard ("schema version not migrated to target version",
# apps/dashboard/pkg/migration/migrate.go).
SCHEMA_VERSION = 41
# The Grafana version whose panel JSON shape the dashboards are written in; see _panel.
PLUGIN_VERSION = "12.2.0"
# Grafana adds this query to every dashboard that lacks it (addBuiltInAnnotationQuery in
# public/app/features/dashboard/state/DashboardModel.ts); written here so that loading
# changes nothing.
BUILTIN_ANNOTATION: dict[str, Any] = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
    "type": "dashboard"}
# grafanalib's keys of Grafana 4-9 models that no current model knows, and
# ``intervalFactor``: Grafana's Prometheus backend still multiplies the step by it, but the
# query editor no longer offers it, and grafanalib's 2 made the step exceed
# ``$__rate_interval`` (gaps in rate coverage); without it the step is Grafana's own.
_LEGACY_DASHBOARD_KEYS = ("__inputs", "id", "rows", "hideControls", "sharedCrosshair", "style",
                          "gnetId")
_LEGACY_PANEL_KEYS = ("span", "height", "minSpan", "editable", "error", "transparent",
                      "cacheTimeout", "hideTimeOverride", "columns", "fontSize", "mappings",
                      "color", "styles")
_LEGACY_TARGET_KEYS = ("query", "metric", "step", "target", "intervalFactor")
_LEGACY_VARIABLE_KEYS = ("tags", "tagsQuery", "tagValuesQuery", "useTags")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


def datasource_variable() -> g.Template:
    return g.Template(name="datasource", type="datasource", query="prometheus",
                      label="Data source")


def query_variable(name: str, metric: str, label: str, config: MixinConfig) -> g.Template:
    return g.Template(name=name, label=label, dataSource=DATASOURCE,
                      query=f'label_values({metric}{{{config.selector}}}, {name})',
                      multi=True, includeAll=True, allValue=".*", refresh=2, sort=1)


def target(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False,
           table: bool = False) -> g.Target:
    return g.Target(expr=expr, legendFormat=legend, refId=ref, instant=instant,
                    format="table" if table else "time_series", datasource=DATASOURCE)


def _field_config(unit: str, steps: Sequence[tuple[str, float | None]] | None,
                  min_: float | None = None, max_: float | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if steps:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": color, "value": value} for color, value in steps]}
        defaults["color"] = {"mode": "thresholds"}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {"fieldConfig": {"defaults": defaults, "overrides": []}}


def stat(title: str, description: str, targets: list[g.Target], unit: str,
         steps: Sequence[tuple[str, float | None]] | None = None) -> g.Stat:
    return g.Stat(title=title, description=description, dataSource=DATASOURCE,
                  targets=targets, reduceCalc="lastNotNull", graphMode="none",
                  extraJson=_field_config(unit, steps or [("green", None)]))


def timeseries(title: str, description: str, targets: list[g.Target], unit: str,
               steps: Sequence[tuple[str, float | None]] | None = None,
               stacked: bool = False) -> g.TimeSeries:
    extra = _field_config(unit, steps)
    if steps:
        extra["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if stacked:
        extra["fieldConfig"]["defaults"].setdefault("custom", {})["stacking"] = {
            "mode": "normal"}
    # grafanalib leaves it out; Grafana 9's legend migration (schema 37) would add it.
    extra["options"] = {"legend": {"showLegend": True}}
    return g.TimeSeries(title=title, description=description, dataSource=DATASOURCE,
                        targets=targets, unit=unit, legendDisplayMode="table",
                        legendCalcs=["lastNotNull", "max"], tooltipMode="multi",
                        extraJson=extra)


def bar_gauge(title: str, description: str, targets: list[g.Target], unit: str,
              steps: Sequence[tuple[str, float | None]], max_: float) -> g.BarGauge:
    return g.BarGauge(title=title, description=description, dataSource=DATASOURCE,
                      targets=targets, displayMode="gradient", orientation="horizontal",
                      calc="lastNotNull", min=0, max=max_,
                      extraJson=_field_config(unit, steps, 0, max_))


def table(title: str, description: str, targets: list[g.Target], unit: str) -> g.Table:
    return g.Table(title=title, description=description, dataSource=DATASOURCE,
                   targets=targets, unit=unit,
                   transformations=[{"id": "organize", "options": {
                       "excludeByName": {"Time": True}}}],
                   extraJson=_field_config(unit, None))


def layout(rows: Iterable[tuple[str, Sequence[tuple[Any, int, int]]]]) -> list[Any]:
    """Rows of (panel, width, height), placed left to right, wrapping at 24 columns."""
    panels: list[Any] = []
    y = 0
    for title, row in rows:
        panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=WIDTH, x=0, y=y)))
        y += 1
        x, row_height = 0, 0
        for panel, width, height in row:
            if x + width > WIDTH:
                x, y = 0, y + row_height
                row_height = 0
            panel.gridPos = g.GridPos(h=height, w=width, x=x, y=y)
            panels.append(panel)
            x += width
            row_height = max(row_height, height)
        y += row_height
    return panels


def dashboard(*, title: str, uid: str, description: str, variables: list[g.Template],
              panels: list[Any]) -> g.Dashboard:
    return g.Dashboard(
        title=title, uid=uid, description=description, tags=["persona-exporter"],
        timezone="browser", time=g.Time("now-6h", "now"), refresh="30s",
        templating=g.Templating(list=[datasource_variable(), *variables]),
        # Links to the project's other dashboards, carrying time range and variables.
        links=[g.DashboardLink(type="dashboards", tags=["persona-exporter"], asDropdown=False,
                               includeVars=True, keepTime=True, title="persona-exporter")],
        panels=panels, schemaVersion=SCHEMA_VERSION).auto_panel_ids()


def render(board: g.Dashboard) -> str:
    data: dict[str, Any] = json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder))
    return json.dumps(modernise(data), indent=2, sort_keys=True) + "\n"


def modernise(data: dict[str, Any]) -> dict[str, Any]:
    """grafanalib's dashboard JSON in the shape Grafana 11.6-12 writes itself, so that Grafana
    runs no migration on it: no nulls, no legacy keys, the current schemaVersion, a
    pluginVersion on every panel."""
    data = _without_nulls(data)
    for legacy in _LEGACY_DASHBOARD_KEYS:
        data.pop(legacy, None)
    # Schema 41's migration deletes it (apps/dashboard/pkg/migration/schemaversion/v41.go).
    data.get("timepicker", {}).pop("time_options", None)
    data["schemaVersion"] = SCHEMA_VERSION
    data["annotations"] = {"list": [BUILTIN_ANNOTATION]}
    data["panels"] = [_row(p) if p["type"] == "row" else _panel(p) for p in data["panels"]]
    data["templating"]["list"] = [_variable(v) for v in data["templating"]["list"]]
    return data


def _without_nulls(value: Any) -> Any:
    """grafanalib writes every unset attribute as null (~400 of them, "datasource": null on
    rows among them); Grafana's typed dashboard model refuses them, and for Grafana an absent
    key means the same. The base threshold step loses its null value too: Grafana sets the
    first step to -Infinity whatever it holds (fixThresholds in
    public/app/features/dashboard/state/PanelModel.ts, validateFieldConfig in
    packages/grafana-data/src/field/fieldOverrides.ts)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value if v is not None]
    return value


def _panel(panel: dict[str, Any]) -> dict[str, Any]:
    for legacy in _LEGACY_PANEL_KEYS:
        panel.pop(legacy, None)
    options = panel.get("options", {})
    legacy_field_options = options.pop("fieldOptions", None)
    if legacy_field_options is not None:
        # grafanalib's BarGauge writes Grafana 6's options.fieldOptions (unit "none", one red
        # step at 80). Left in, Grafana's bar gauge migration (sharedSingleStatMigrationHandler
        # in packages/grafana-ui/src/components/SingleStatShared/SingleStatBaseOptions.ts, its
        # `< 7.0` step) merges it over fieldConfig.defaults: percentunit became none and the
        # 0.8/1.0 thresholds one red step at 80. Only its reducer is kept, the modern way.
        options["reduceOptions"] = {"calcs": legacy_field_options.get("calcs", ["lastNotNull"]),
                                    "fields": "", "values": False}
        # The gauge's options, which grafanalib writes on bar gauges too.
        options.pop("showThresholdLabels", None)
        options.pop("showThresholdMarkers", None)
    custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
    if panel["type"] == "table" and "displayMode" in custom:
        # Grafana 10 replaced the table's displayMode by cellOptions (schema 38's migration).
        custom["cellOptions"] = {"type": custom.pop("displayMode")}
    for query in panel.get("targets", []):
        for legacy in _LEGACY_TARGET_KEYS:
            query.pop(legacy, None)
    # Grafana runs a panel plugin's migration handler when the saved pluginVersion differs from
    # its own, and the single-stat handlers treat a missing one as 6.1, running every step
    # from Grafana 6 on (PanelModel.pluginLoaded; SingleStatBaseOptions.ts above). The JSON
    # is already in this version's shape, so every version-gated step is skipped.
    panel["pluginVersion"] = PLUGIN_VERSION
    return panel


def _row(row: dict[str, Any]) -> dict[str, Any]:
    # A row is no plugin panel: Grafana's row model has only these keys.
    return {k: row[k] for k in ("type", "id", "title", "collapsed", "gridPos", "panels")
            if k in row}


def _variable(variable: dict[str, Any]) -> dict[str, Any]:
    for legacy in _LEGACY_VARIABLE_KEYS:
        variable.pop(legacy, None)
    if variable["type"] != "interval":
        for key in ("auto", "auto_count", "auto_min"):
            variable.pop(key, None)
    current = variable.get("current", {})
    if "value" not in current:
        # Nothing selected: Grafana chooses the default on load.
        variable.pop("current", None)
    return variable


def sources(root: Path) -> list[Path]:
    return sorted((root / "dashboards").glob("*.dashboard.py"))


def load(source: Path) -> g.Dashboard:
    board: g.Dashboard = runpy.run_path(str(source))["dashboard"]
    return board


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".")
    for source in sources(root):
        source.with_name(source.name.replace(".dashboard.py", ".json")).write_text(
            render(load(source)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    ROOT = repo_root(sys.argv[1:], "grafana", "each dashboards/*.dashboard.py's JSON")
    raise SystemExit(main([str(ROOT)]))
