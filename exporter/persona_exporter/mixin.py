"""The monitoring mixin's one config: selectors, thresholds, windows, ``for`` durations,
dashboard uids and the runbook URL pattern. Alert rules, recording rules and dashboards are
all generated from it and from the metric catalog, so a threshold changes in one place.

    rules = render_rules(MixinConfig(budget_warning_ratio=0.9))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from . import catalog

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


@dataclass(frozen=True)
class MixinConfig:
    job: str = "persona-exporter"
    runbook_url_pattern: str = (
        "https://github.com/persona-exporter/persona-exporter/blob/main/runbooks/{alertname}.md")
    grafana_url: str = "http://127.0.0.1:3000"
    persona_dashboard_uid: str = "persona-overview"
    workflow_dashboard_uid: str = "workflow-performance"
    rate_interval: str = "5m"
    budget_windows: tuple[str, ...] = catalog.BUDGET_WINDOWS

    budget_warning_ratio: float = 0.8
    budget_warning_for: str = "5m"
    budget_critical_ratio: float = 1.0
    budget_critical_for: str = "1m"

    llm_error_window: str = "15m"
    llm_error_min_requests: float = 10
    llm_error_warning_ratio: float = 0.05
    llm_error_warning_for: str = "15m"
    llm_error_critical_ratio: float = 0.25
    llm_error_critical_for: str = "5m"

    workflow_failure_window: str = "30m"
    workflow_failure_min_runs: float = 3
    workflow_failure_ratio: float = 0.2
    workflow_failure_for: str = "15m"
    workflow_duration_window: str = "30m"
    workflow_duration_p95_seconds: float = 1800
    # (workflow, seconds) pairs whose p95 target differs from the default
    workflow_duration_targets: tuple[tuple[str, float], ...] = ()
    workflow_duration_for: str = "15m"

    exporter_down_for: str = "5m"
    replica_down_for: str = "10m"

    trace_export_window: str = "5m"
    trace_export_failure_ratio: float = 0.9
    trace_export_failing_for: str = "5m"
    trace_export_latency_window: str = "10m"
    trace_export_latency_p95_seconds: float = 0.5
    trace_export_latency_for: str = "10m"
    trace_volume_bytes_per_day: float = 1e9
    trace_volume_window: str = "1h"
    trace_volume_for: str = "30m"

    rejected_window: str = "10m"
    rejected_ratio: float = 0.05
    rejected_for: str = "15m"
    label_overflow_window: str = "30m"
    label_overflow_for: str = "5m"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name.endswith(("_for", "_window", "_interval")) and isinstance(value, str)
                    and not _DURATION.match(value)):
                raise ValueError(f"MixinConfig.{f.name}: {value!r} is not a Prometheus "
                                 "duration (e.g. 5m)")
            if f.name.endswith(("_ratio", "_seconds", "_per_day")) and not value > 0:
                raise ValueError(f"MixinConfig.{f.name}: expected a number > 0, got {value!r}")
        unknown = set(self.budget_windows) - set(catalog.BUDGET_WINDOWS)
        if unknown:
            raise ValueError(f"MixinConfig.budget_windows: {sorted(unknown)} are not budget "
                             f"windows ({', '.join(catalog.BUDGET_WINDOWS)})")
        if "{alertname}" not in self.runbook_url_pattern:
            raise ValueError("MixinConfig.runbook_url_pattern must contain {alertname}")

    @property
    def selector(self) -> str:
        return f'job="{self.job}"'

    def runbook_url(self, alertname: str) -> str:
        return self.runbook_url_pattern.format(alertname=alertname)

    def dashboard_url(self, uid: str, **labels: str) -> str:
        """A dashboard link; ``labels`` maps variables to alert labels, URL-escaped by the
        template (a workflow may be called "nightly+backfill")."""
        query = "&".join(f"var-{name}={{{{ $labels.{label} | urlquery }}}}"
                         for name, label in labels.items())
        return f"{self.grafana_url}/d/{uid}" + (f"?{query}" if query else "")
