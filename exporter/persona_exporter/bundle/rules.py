"""Prometheus recording and alert rules, generated from the mixin config and the catalog.

    python -m persona_exporter.bundle.rules alerts/persona-exporter.rules.yml

Recording rules are named ``level:metric:operations``. Every alert has a ``severity``, a
static ``summary``, a templated ``description`` and a ``dashboard_url``; ``runbook_url``
is added to all of them by one pass at the end, so none can be missing. No alert can fire
for a persona without a budget (the utilisation needs the budget gauge), and counter
resets (an exporter restart) are absorbed by ``increase``/``rate``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .. import catalog
from . import repo_root
from .mixin import MixinConfig

# Every metric a rule reads, checked against the catalog when the rules are built.
_USED = (
    "persona_llm_tokens_total", "persona_llm_requests_total",
    "persona_llm_request_failures_total", "persona_llm_cost_usd_total",
    "persona_token_budget_tokens", "persona_cost_budget_usd", "persona_workflow_runs_total",
    "persona_workflow_duration_seconds", "persona_exporter_trace_exports_total",
    "persona_exporter_trace_export_failures_total",
    "persona_exporter_trace_export_duration_seconds", "persona_exporter_trace_export_bytes_total",
    "persona_exporter_events_accepted_total", "persona_exporter_events_rejected_total",
    "persona_exporter_label_overflow_total", "persona_exporter_series_overflow_total",
)
for _name in _USED:
    catalog.spec(_name)  # a rename in the catalog fails here, not in production


def _string(value: str) -> str:
    """A PromQL string literal's content."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _regex(values: list[str]) -> str:
    """Names as one RE2 alternation that matches them literally, as a string's content."""
    return _string("|".join(re.escape(value) for value in values))


def recording_rules(c: MixinConfig) -> list[dict[str, Any]]:
    s, rate = c.selector, c.rate_interval
    billed = f'{s},token_type=~"input|output"'
    rules: list[dict[str, Any]] = [
        {"record": f"persona:persona_llm_tokens:rate{rate}",
         "expr": f"sum by (persona) (rate(persona_llm_tokens_total{{{billed}}}[{rate}]))"},
        {"record": f"persona:persona_llm_requests:rate{rate}",
         "expr": f"sum by (persona) (rate(persona_llm_requests_total{{{s}}}[{rate}]))"},
        {"record": f"persona:persona_llm_request_failures:rate{rate}",
         "expr": f"sum by (persona) (rate(persona_llm_request_failures_total{{{s}}}[{rate}]))"},
        {"record": f"persona:persona_llm_request_failures:ratio_rate{rate}",
         "expr": f"persona:persona_llm_request_failures:rate{rate}\n"
                 f"/ persona:persona_llm_requests:rate{rate}"},
        {"record": f"persona:persona_llm_cost_usd:rate{rate}",
         "expr": f"sum by (persona) (rate(persona_llm_cost_usd_total{{{s}}}[{rate}]))"},
    ]
    for window in c.budget_windows:
        # group_right keeps the budget's labels (persona, window). Several exporter
        # replicas each export the budget: max, never sum, takes it once.
        # The static window label tells the rules of each window apart (promtool requires
        # it); the series carry the same value from the budget gauge.
        # The numerator's range outlives a scrape gap; last_over_time lets the budget do the
        # same for budget_lookback, so an exporter outage keeps the alerts firing (and
        # inhibited) rather than resolving them.
        for record, spent, gauge in (
                ("persona_token_budget", f"persona_llm_tokens_total{{{billed}}}",
                 "persona_token_budget_tokens"),
                ("persona_cost_budget", f"persona_llm_cost_usd_total{{{s}}}",
                 "persona_cost_budget_usd")):
            budget = f'{gauge}{{{s},window="{window}"}}[{c.budget_lookback}]'
            rules.append({
                "record": f"persona_window:{record}:utilisation",
                "expr": f"sum by (persona) (increase({spent}[{window}]))\n"
                        f"/ on (persona) group_right\n"
                        f"max by (persona, window) (last_over_time({budget}))",
                "labels": {"window": window},
            })
    w = c.workflow_failure_window
    rules.append({
        "record": f"workflow:persona_workflow_runs_failed:ratio_rate{w}",
        "expr": f'sum by (workflow) (rate(persona_workflow_runs_total{{{s},status="failed"}}[{w}]))'
                f"\n/ sum by (workflow) (rate(persona_workflow_runs_total{{{s}}}[{w}]))",
    })
    return rules


def _alert(name: str, severity: str, expr: str, for_: str, summary: str, description: str,
           dashboard: str) -> dict[str, Any]:
    alert: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        alert["for"] = for_
    alert["labels"] = {"severity": severity}
    alert["annotations"] = {"summary": summary, "description": description,
                            "dashboard_url": dashboard}
    return alert


def alert_rules(c: MixinConfig) -> list[dict[str, Any]]:
    s = c.selector
    persona_dash = c.dashboard_url(c.persona_dashboard_uid, persona="persona")
    workflow_dash = c.dashboard_url(c.workflow_dashboard_uid, workflow="workflow")
    exporter_dash = c.dashboard_url(c.workflow_dashboard_uid)
    utilisation = "persona_window:persona_token_budget:utilisation"
    budget_text = ("Persona {{ $labels.persona }} has used {{ $value | humanizePercentage }} "
                   "of its {{ $labels.window }} token budget.")
    e = c.llm_error_window

    def error_ratio(threshold: float) -> str:
        return (f"(\n  sum by (persona) (increase(persona_llm_request_failures_total{{{s}}}[{e}]))"
                f"\n/ sum by (persona) (increase(persona_llm_requests_total{{{s}}}[{e}]))\n)"
                f" > {threshold:g}\nand sum by (persona) "
                f"(increase(persona_llm_requests_total{{{s}}}[{e}])) >= "
                f"{c.llm_error_min_requests:g}")

    def workflow_p95(target: float, workflows: str) -> str:
        return (f"histogram_quantile(0.95, sum by (workflow, le) (rate("
                f"persona_workflow_duration_seconds_bucket{{{s}{workflows}}}"
                f"[{c.workflow_duration_window}])))\n> {target:g}")

    wf, tw, rw = c.workflow_failure_window, c.trace_export_window, c.rejected_window
    alerts = [
        _alert("PersonaTokenBudgetNearlyExhausted", "warning",
               f"{utilisation} >= {c.budget_warning_ratio:g}", c.budget_warning_for,
               "A persona has used most of its token budget.", budget_text, persona_dash),
        _alert("PersonaTokenBudgetExhausted", "critical",
               f"{utilisation} >= {c.budget_critical_ratio:g}", c.budget_critical_for,
               "A persona has used up its token budget.", budget_text, persona_dash),
        _alert("PersonaCostBudgetExhausted", "critical",
               f"persona_window:persona_cost_budget:utilisation >= {c.budget_critical_ratio:g}",
               c.budget_critical_for, "A persona has spent its cost budget.",
               "Persona {{ $labels.persona }} has spent {{ $value | humanizePercentage }} of "
               "its {{ $labels.window }} cost budget.", persona_dash),
        _alert("PersonaLLMErrorRateHigh", "warning", error_ratio(c.llm_error_warning_ratio),
               c.llm_error_warning_for, "A persona's LLM requests fail often.",
               "{{ $value | humanizePercentage }} of the LLM requests of persona "
               f"{{{{ $labels.persona }}}} failed over the last {e}.", persona_dash),
        _alert("PersonaLLMErrorRateHigh", "critical", error_ratio(c.llm_error_critical_ratio),
               c.llm_error_critical_for, "A persona's LLM requests fail often.",
               "{{ $value | humanizePercentage }} of the LLM requests of persona "
               f"{{{{ $labels.persona }}}} failed over the last {e}.", persona_dash),
        _alert("WorkflowFailureRateHigh", "critical",
               f"(\n  sum by (workflow) (increase(persona_workflow_runs_total"
               f'{{{s},status="failed"}}[{wf}]))\n/ sum by (workflow) '
               f"(increase(persona_workflow_runs_total{{{s}}}[{wf}]))\n) > "
               f"{c.workflow_failure_ratio:g}\nand sum by (workflow) "
               f"(increase(persona_workflow_runs_total{{{s}}}[{wf}])) >= "
               f"{c.workflow_failure_min_runs:g}",
               c.workflow_failure_for, "A workflow's runs fail often.",
               "{{ $value | humanizePercentage }} of the runs of workflow "
               f"{{{{ $labels.workflow }}}} failed over the last {wf}.", workflow_dash),
    ]
    # One rule: the default target for every workflow without its own, then one term per
    # workflow that has one (two rules of one name and labels is a promtool lint error).
    named = [name for name, _ in c.workflow_duration_targets]
    duration = [workflow_p95(c.workflow_duration_p95_seconds,
                             f',workflow!~"{_regex(named)}"' if named else "")]
    duration += [workflow_p95(target, f',workflow="{_string(name)}"')
                 for name, target in c.workflow_duration_targets]
    alerts.append(_alert(
        "WorkflowDurationHigh", "warning", "\nor\n".join(f"({term})" if named else term
                                                          for term in duration),
        c.workflow_duration_for, "A workflow runs slower than its target.",
        "The 95th percentile duration of workflow {{ $labels.workflow }} is "
        "{{ $value | humanizeDuration }}, over its target.", workflow_dash))
    alerts += [
        # The whole job: with several replicas, the fleet's metrics stay right while one is
        # down, so only this (and not a replica's outage) inhibits the alerts on them.
        _alert("PersonaExporterDown", "critical",
               f"sum by (job) (up{{{s}}}) == 0\nor absent(up{{{s}}})", c.exporter_down_for,
               "The persona exporter cannot be scraped.",
               "No target of job {{ $labels.job }} is up, or Prometheus has none: persona, "
               "workflow and trace metrics are not being collected.", exporter_dash),
        _alert("PersonaExporterReplicaDown", "warning", f"up{{{s}}} == 0",
               c.replica_down_for, "A persona exporter replica cannot be scraped.",
               "Prometheus cannot scrape {{ $labels.instance }} of job "
               f"{c.job}; the other replicas keep the fleet's metrics.", exporter_dash),
        _alert("TraceExportFailing", "warning",
               f"sum by (backend) (rate(persona_exporter_trace_export_failures_total{{{s}}}"
               f"[{tw}]))\n/ sum by (backend) (rate(persona_exporter_trace_exports_total"
               f"{{{s}}}[{tw}]))\n> {c.trace_export_failure_ratio:g}",
               c.trace_export_failing_for, "Trace exports are failing.",
               "{{ $value | humanizePercentage }} of the trace exports to {{ $labels.backend }} "
               f"failed over the last {tw}.", exporter_dash),
        _alert("OtlpForwardingFailing", "warning",
               f"sum by (upstream) (increase(persona_exporter_otlp_forward_spans_total"
               f'{{{s},outcome=~"failed|dropped"}}[{tw}])) > 0',
               c.trace_export_failing_for, "Received traces are not reaching an upstream.",
               "{{ $value | humanize }} spans the exporter received were refused by or "
               f"dropped before {{{{ $labels.upstream }}}} over the last {tw}.",
               exporter_dash),
        _alert("TraceExportLatencyHigh", "warning",
               f"histogram_quantile(0.95, sum by (backend, le) (rate("
               f"persona_exporter_trace_export_duration_seconds_bucket{{{s}}}"
               f"[{c.trace_export_latency_window}])))\n> {c.trace_export_latency_p95_seconds:g}",
               c.trace_export_latency_for, "Trace exports are slow.",
               "The 95th percentile of trace exports to {{ $labels.backend }} takes "
               "{{ $value | humanizeDuration }}.", exporter_dash),
        _alert("TraceVolumeHigh", "warning",
               f"sum by (backend) (rate(persona_exporter_trace_export_bytes_total{{{s}}}"
               f"[{c.trace_volume_window}]))"
               f" * 86400\n> {c.trace_volume_bytes_per_day:g}", c.trace_volume_for,
               "Trace volume is high.",
               "Traces to {{ $labels.backend }} run at {{ $value | humanize1024 }}B a day.",
               exporter_dash),
        _alert("PersonaExporterEventsRejected", "warning",
               f"sum(rate(persona_exporter_events_rejected_total{{{s}}}[{rw}]))\n/ ("
               f"sum(rate(persona_exporter_events_accepted_total{{{s}}}[{rw}]))\n"
               f"+ sum(rate(persona_exporter_events_rejected_total{{{s}}}[{rw}])))\n"
               f"> {c.rejected_ratio:g}", c.rejected_for,
               "The exporter rejects many events.",
               "{{ $value | humanizePercentage }} of the events sent to the exporter were "
               f"rejected over the last {rw}.", exporter_dash),
        _alert("PersonaLabelOverflow", "warning",
               f"sum by (label) (increase(persona_exporter_label_overflow_total{{{s}}}"
               f"[{c.label_overflow_window}])) > 0", c.label_overflow_for,
               "A label's cardinality cap has been reached.",
               "New values of label {{ $labels.label }} are recorded as __overflow__: its "
               "cap in the exporter's limits is reached.", exporter_dash),
        _alert("PersonaSeriesOverflow", "warning",
               f"sum by (family) (increase(persona_exporter_series_overflow_total{{{s}}}"
               f"[{c.label_overflow_window}])) > 0", c.label_overflow_for,
               "A metric family holds as many label combinations as its cap allows.",
               "New label combinations of {{ $labels.family }} are recorded in one "
               "all-__overflow__ series: limits.series is reached.", exporter_dash),
        _alert("Watchdog", "none", "vector(1)", "",
               "An alert that always fires, to prove the alerting pipeline works.",
               "This alert is always firing. If it stops arriving, alerting is broken.",
               exporter_dash),
    ]
    for alert in alerts:  # the one pass that gives every alert its runbook
        alert["annotations"]["runbook_url"] = c.runbook_url(alert["alert"])
    return alerts


def render_rules(config: MixinConfig | None = None) -> str:
    config = config or MixinConfig()
    # One group: rules in a group are evaluated in order, so the alerts read what the
    # recording rules wrote in the same evaluation. In two groups that is a race, and an
    # alert's value (and its description) can lag one interval behind, or not.
    document = {"groups": [
        {"name": "persona-exporter", "rules": recording_rules(config) + alert_rules(config)},
    ]}
    header = ("# Generated by `make generate` (persona_exporter.bundle.rules) from the mixin "
              "config and the metric catalog.\n# Do not edit: change exporter/persona_exporter/"
              "bundle/mixin.py and regenerate.\n")
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1_000,
                              allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as hand-written rule files have them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


# A config with every kind of value changed, for the promtool test that proves no threshold,
# window or selector is a literal in the generator.
NON_DEFAULT = MixinConfig(job="agents", budget_warning_ratio=0.5, budget_warning_for="2m",
                          budget_critical_ratio=0.75, budget_windows=("1h",),
                          rate_interval="1m", trace_volume_window="30m",
                          workflow_duration_targets=(("nightly+backfill", 7200),),
                          runbook_url_pattern="https://runbooks.example/{alertname}",
                          grafana_url="https://grafana.example")

GENERATED = {
    "alerts/persona-exporter.rules.yml": MixinConfig(),
    "alerts/tests/non-default.rules.yml": NON_DEFAULT,
}


def main(argv: list[str]) -> int:
    """Write the generated rule files under the repository root ``argv[0]`` (default .)."""
    root = Path(argv[0] if argv else ".")
    for path, config in GENERATED.items():
        (root / path).write_text(render_rules(config), encoding="utf-8")
    return 0


if __name__ == "__main__":
    ROOT = repo_root(sys.argv[1:], "rules", "the generated alert and recording rule files")
    raise SystemExit(main([str(ROOT)]))
