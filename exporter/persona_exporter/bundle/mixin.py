"""The monitoring mixin's one config: selectors, thresholds, windows, ``for`` durations,
dashboard uids and the runbook URL pattern. Alert rules, recording rules and dashboards are
all generated from it and from the metric catalog, so a threshold changes in one place.

    rules = render_rules(MixinConfig(budget_warning_ratio=0.9))

It also holds the intervals the stack's Prometheus and Alertmanager configs use (checked
against them by the tests), and ``accelerated()`` derives the test clock from it: the
end-to-end test runs those same configs with 1 s intervals and short ``for`` durations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from .. import catalog

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                 "y": 31536000}


def _duration(value: float) -> str:
    """Seconds as a Prometheus duration (whole seconds, else milliseconds)."""
    return f"{value:g}s" if value == int(value) else f"{round(value * 1000)}ms"


def seconds(duration: str) -> float:
    """A Prometheus duration (``1h30m``) in seconds."""
    if not _DURATION.match(duration):
        raise ValueError(f"{duration!r} is not a Prometheus duration (e.g. 5m)")
    return sum(int(number) * _UNIT_SECONDS[unit]
               for number, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


@dataclass(frozen=True)
class MixinConfig:
    job: str = "persona-exporter"
    runbook_url_pattern: str = (
        "https://github.com/persona-exporter/persona-exporter/blob/main/runbooks/{alertname}.md")
    grafana_url: str = "http://127.0.0.1:3000"
    persona_dashboard_uid: str = "persona-overview"
    workflow_dashboard_uid: str = "workflow-performance"
    # Prometheus: how often it scrapes and evaluates (compose/prometheus/prometheus.yml
    # uses these; a test checks it). rate() windows must span at least four scrapes.
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    rate_interval: str = "5m"
    budget_windows: tuple[str, ...] = catalog.BUDGET_WINDOWS

    budget_warning_ratio: float = 0.8
    budget_warning_for: str = "5m"
    budget_critical_ratio: float = 1.0
    budget_critical_for: str = "1m"
    # How long a budget gauge counts after its last scrape. Longer than exporter_down_for,
    # so when the exporter dies the budget alerts stay firing (inhibited by
    # PersonaExporterDown) instead of sending a misleading "resolved".
    budget_lookback: str = "15m"

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

    # Alertmanager notification timing (alerts/alertmanager.yml uses these; a test checks
    # it): wait to batch a group's first alerts, then send changes at most every
    # group_interval, and repeat a still-firing group every repeat_interval. The Watchdog
    # route is flushed and repeated every watchdog_interval.
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"
    watchdog_interval: str = "1m"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name.endswith(("_for", "_window", "_interval", "_lookback", "_wait"))
                    and isinstance(value, str) and not _DURATION.match(value)):
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
        if seconds(self.rate_interval) < 4 * seconds(self.scrape_interval):
            raise ValueError(f"MixinConfig.rate_interval: {self.rate_interval} spans fewer than "
                             f"4 scrapes of {self.scrape_interval}; rate() would have gaps")
        if seconds(self.budget_lookback) <= seconds(self.exporter_down_for):
            raise ValueError(f"MixinConfig.budget_lookback: {self.budget_lookback} must be "
                             f"longer than exporter_down_for ({self.exporter_down_for})")

    def accelerated(self, interval: str = "1s", step: str = "2s") -> MixinConfig:
        """This config on a test clock: Prometheus scrapes and evaluates every ``interval``;
        the distinct ``for`` durations, shortest first, become ``step``, 2 x ``step``, ...,
        so their order survives (a warning still waits longer than its critical, a replica
        longer than the whole job); Alertmanager groups, flushes and repeats the Watchdog
        every ``interval``. Thresholds, windows and selectors stay, so a test of the
        accelerated config tests the real one."""
        durations = {f.name: seconds(getattr(self, f.name)) for f in fields(self)
                     if f.name.endswith("_for") and getattr(self, f.name)}
        rank = {d: i for i, d in enumerate(sorted(set(durations.values())))}
        base = seconds(step)
        fors: dict[str, Any] = {name: _duration(base * (rank[d] + 1))
                                for name, d in durations.items()}
        return replace(self, scrape_interval=interval, evaluation_interval=interval,
                       group_wait=interval, group_interval=interval,
                       watchdog_interval=interval, **fors)

    @property
    def watchdog_repeat_interval(self) -> str:
        """Just under watchdog_interval: Alertmanager checks repeat_interval only when it
        flushes a group (every group_interval), so equal values would repeat every other
        flush."""
        return _duration(seconds(self.watchdog_interval) * 0.8)

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
