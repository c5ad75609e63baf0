"""Workflow Performance: runs, durations, stages, budget overruns, and the exporter itself.

Generated to workflow-performance.json by `make generate`; edit this file, not the JSON.
"""

from persona_exporter.bundle.grafana import (
    dashboard as build,
)
from persona_exporter.bundle.grafana import (
    layout,
    query_variable,
    stat,
    table,
    target,
    timeseries,
)
from persona_exporter.bundle.mixin import MixinConfig

config = MixinConfig()
job = config.selector
wf = f'{job},workflow=~"$workflow"'
st = f'{wf},stage=~"$stage"'
success_steps = [("red", None), ("orange", 0.5), ("green", 0.9)]


def quantile(q: float, metric: str, by: str, selector: str, window: str = "$__rate_interval",
             ref: str = "A") -> object:
    return target(f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket"
                  f"{{{selector}}}[{window}])))", f"{{{{{by.split(', ')[0]}}}}} p{int(q * 100)}",
                  ref=ref)


runs = [
    (timeseries("Runs by status", "Finished workflow runs per minute, by final status.",
                [target(f"sum by (status) (rate(persona_workflow_runs_total{{{wf}}}"
                        f"[$__rate_interval])) * 60", "{{status}}")], "short",
                stacked=True), 12, 8),
    (stat("Success ratio", "Share of workflow runs that succeeded over the time range. "
          "Partial runs are not successes; the WorkflowFailureRateHigh alert looks at failed "
          "runs only.",
          [target(f'sum(increase(persona_workflow_runs_total{{{wf},status="succeeded"}}'
                  f"[$__range]))\n/ sum(increase(persona_workflow_runs_total{{{wf}}}"
                  f"[$__range]))")], "percentunit", success_steps), 6, 8),
    (stat("In flight", "Workflow runs started and not yet finished.",
          [target(f"sum(persona_workflow_active{{{wf}}})")], "short"), 6, 8),
    (timeseries("Workflow duration p50 / p95 / p99",
                f"Duration of finished runs. The alert target is "
                f"{config.workflow_duration_p95_seconds:g} s at p95.",
                [quantile(0.5, "persona_workflow_duration_seconds", "workflow", wf),
                 quantile(0.95, "persona_workflow_duration_seconds", "workflow", wf, ref="B"),
                 quantile(0.99, "persona_workflow_duration_seconds", "workflow", wf, ref="C")],
                "s", [("green", None), ("red", config.workflow_duration_p95_seconds)]), 12, 8),
    (timeseries("Budget overruns", "Runs that used more tokens than their chatmode allocates.",
                [target(f"sum by (workflow, chatmode) (rate("
                        f"persona_workflow_budget_overruns_total{{{wf}}}[$__rate_interval])) * 60",
                        "{{workflow}} {{chatmode}}")], "short"), 12, 8),
]

stages = [
    (timeseries("Stage duration p95", "95th percentile duration of each stage.",
                [quantile(0.95, "persona_stage_duration_seconds", "stage", st)], "s"), 12, 8),
    (table("Slowest stages", "The ten stages with the highest p95 over the time range.",
           [target(f"topk(10, histogram_quantile(0.95, sum by (workflow, stage, le) (rate("
                   f"persona_stage_duration_seconds_bucket{{{st}}}[$__range]))))",
                   instant=True, table=True)], "s"), 12, 8),
    (timeseries("Failures by stage", "Failed stages per minute, with the persona running them.",
                [target(f'sum by (stage, persona) (rate(persona_stage_runs_total{{{st},'
                        f'status="failed"}}[$__rate_interval])) * 60', "{{stage}} ({{persona}})")],
                "short"), 12, 8),
    (timeseries("Stage runs by status", "Finished stages per minute, by status.",
                [target(f"sum by (status) (rate(persona_stage_runs_total{{{st}}}"
                        f"[$__rate_interval])) * 60", "{{status}}")], "short",
                stacked=True), 12, 8),
]

exporter = [
    (timeseries("Events accepted and rejected", "Events applied, by type, and refused, by reason.",
                [target(f"sum by (type) (rate(persona_exporter_events_accepted_total{{{job}}}"
                        f"[$__rate_interval]))", "accepted {{type}}"),
                 target(f"sum by (reason) (rate(persona_exporter_events_rejected_total{{{job}}}"
                        f"[$__rate_interval]))", "rejected {{reason}}", ref="B")], "ops"), 12, 8),
    (timeseries("Label overflow", "Recordings per minute whose label value went to "
                "__overflow__ (a label's cap), or whose label combination went to the "
                "all-__overflow__ series (a family's series cap).",
                [target(f"sum by (label) (rate(persona_exporter_label_overflow_total{{{job}}}"
                        f"[$__rate_interval])) * 60", "{{label}}"),
                 target(f"sum by (family) (rate(persona_exporter_series_overflow_total"
                        f"{{{job}}}[$__rate_interval])) * 60", "series cap: {{family}}",
                        ref="B")], "short"), 12, 8),
    (timeseries("Trace export failures", "Share of trace exports failing, per backend.",
                [target(f"sum by (backend) (rate(persona_exporter_trace_export_failures_total"
                        f"{{{job}}}[$__rate_interval]))\n/ sum by (backend) (rate("
                        f"persona_exporter_trace_exports_total{{{job}}}[$__rate_interval]))",
                        "{{backend}}")],
                "percentunit", [("green", None), ("red", config.trace_export_failure_ratio)]),
     12, 8),
    (timeseries("Spans dropped", "Spans that will never arrive (queue full, export failed, left "
                "at shutdown), per second and backend; and prompts or completions cut to the "
                "trace content size cap.",
                [target(f"sum by (backend) (rate(persona_exporter_trace_spans_dropped_total"
                        f"{{{job}}}[$__rate_interval]))", "{{backend}}"),
                 target(f"sum by (backend) (rate("
                        f"persona_exporter_trace_content_truncated_total{{{job}}}"
                        f"[$__rate_interval]))", "content truncated {{backend}}",
                        ref="B")], "ops"), 12, 8),
    (timeseries("Trace export latency p95", "95th percentile duration of trace exports.",
                [quantile(0.95, "persona_exporter_trace_export_duration_seconds", "backend",
                          job)],
                "s", [("green", None), ("red", config.trace_export_latency_p95_seconds)]), 12, 8),
    (timeseries("Trace volume", "Bytes of trace data sent per day, per backend.",
                [target(f"sum by (backend) (rate(persona_exporter_trace_export_bytes_total"
                        f"{{{job}}}[$__rate_interval])) * 86400", "{{backend}}")],
                "bytes", [("green", None), ("red", config.trace_volume_bytes_per_day)]), 12, 8),
    (timeseries("Exporter health",
                "Errors caught inside the instrumentation, OTLP metric export failures and "
                "remote-sink drops.",
                [target(f"sum by (component, kind) (rate("
                        f"persona_exporter_internal_errors_total{{{job}}}[$__rate_interval])) * 60",
                        "{{component}} {{kind}}"),
                 target(f"sum(rate(persona_exporter_otlp_metric_export_failures_total"
                        f"{{{job}}}[$__rate_interval])) / sum(rate("
                        f"persona_exporter_otlp_metric_exports_total{{{job}}}"
                        f"[$__rate_interval]))", "OTLP metric export failure ratio", ref="B"),
                 target(f"sum by (reason) (rate(persona_exporter_remote_events_dropped_total"
                        f"{{{job}}}[$__rate_interval])) * 60", "remote drops {{reason}}", ref="C"),
                 target(f"sum by (outcome) (rate(persona_exporter_remote_batches_total"
                        f"{{{job}}}[$__rate_interval])) * 60", "remote batches {{outcome}}",
                        ref="D")], "short"), 12, 8),
    (timeseries("OTLP spans received", "Spans per second the OTLP traces receiver took in, by "
                "what became of them; refused spans by reason; LLM spans by where their "
                "persona came from (unknown: no attribute named one within the hold window).",
                [target(f"sum by (outcome) (rate(persona_exporter_otlp_spans_total{{{job}}}"
                        f"[$__rate_interval]))", "{{outcome}}"),
                 target(f"sum by (reason) (rate(persona_exporter_otlp_spans_rejected_total"
                        f"{{{job}}}[$__rate_interval]))", "refused {{reason}}", ref="B"),
                 target(f"sum by (source) (rate("
                        f"persona_exporter_otlp_persona_resolutions_total{{{job}}}"
                        f"[$__rate_interval]))", "persona from {{source}}", ref="C"),
                 target(f"sum by (transport) (rate("
                        f"persona_exporter_otlp_spans_received_total{{{job}}}"
                        f"[$__rate_interval]))", "received over {{transport}}", ref="D")],
                "ops"), 12, 8),
    (timeseries("OTLP forwarding", "Spans per second passed on to each upstream, by outcome; "
                "spans held for their persona; bytes waiting to be forwarded.",
                [target(f"sum by (upstream, outcome) (rate("
                        f"persona_exporter_otlp_forward_spans_total{{{job}}}"
                        f"[$__rate_interval]))", "{{upstream}} {{outcome}}"),
                 target(f"sum(persona_exporter_otlp_held_spans{{{job}}})", "held spans",
                        ref="B"),
                 target(f"sum by (upstream) (persona_exporter_otlp_forward_queue_bytes"
                        f"{{{job}}})", "{{upstream}} queued bytes", ref="C")], "short"), 12, 8),
    (table("Build", "Exporter versions running.",
           [target(f"persona_exporter_build_info{{{job}}}", instant=True, table=True)],
           "short"), 24, 5),
]

dashboard = build(
    title="Workflow Performance", uid=config.workflow_dashboard_uid,
    description="Multi-stage agent workflows: runs, durations, stages, budget overruns, and "
                "the persona exporter itself.",
    variables=[query_variable("workflow", "persona_workflow_runs_total", "Workflow", config),
               query_variable("stage", "persona_stage_runs_total", "Stage", config)],
    panels=layout([("Runs", runs), ("Stages", stages), ("Exporter", exporter)]))
