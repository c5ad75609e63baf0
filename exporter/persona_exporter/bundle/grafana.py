"""Building blocks for the grafanalib dashboards in ``dashboards/``, and their rendering.

    python -m persona_exporter.bundle.grafana .   # dashboards/*.dashboard.py -> *.json beside

The JSON works both for file provisioning and for Grafana's import dialog: a ``datasource``
template variable of type datasource, every panel, target and query variable pointing at
``${datasource}``, no ``__inputs``, a fixed uid, ``id: null`` and a modern
``schemaVersion``. Units and thresholds are written as ``fieldConfig`` (grafanalib's own
layout for them is Grafana 6's).
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

from .mixin import MixinConfig

SCHEMA_VERSION = 39
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
    data["id"] = None
    data["schemaVersion"] = SCHEMA_VERSION
    data.pop("__inputs", None)
    for panel in data["panels"]:
        # grafanalib's legacy keys; Grafana ignores them, and they make diffs noisy.
        for legacy in ("span", "height", "minSpan", "editable", "error", "transparent",
                       "cacheTimeout", "hideTimeOverride"):
            panel.pop(legacy, None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


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
    raise SystemExit(main(sys.argv[1:]))
