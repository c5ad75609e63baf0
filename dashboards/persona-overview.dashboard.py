"""Persona Overview: tokens, cost, budgets, latency and errors per persona.

Generated to persona-overview.json by `make generate`; edit this file, not the JSON.
"""

from persona_exporter.bundle.grafana import (
    bar_gauge,
    layout,
    query_variable,
    stat,
    table,
    target,
    timeseries,
)
from persona_exporter.bundle.grafana import (
    dashboard as build,
)
from persona_exporter.bundle.mixin import MixinConfig

config = MixinConfig()
job = config.selector
llm = f'{job},persona=~"$persona",chatmode=~"$chatmode",model=~"$model"'
billed = f'{llm},token_type=~"input|output"'
latency = f'{job},persona=~"$persona",model=~"$model"'
budget_steps = [("green", None), ("orange", config.budget_warning_ratio),
                ("red", config.budget_critical_ratio)]
error_steps = [("green", None), ("orange", config.llm_error_warning_ratio),
               ("red", config.llm_error_critical_ratio)]

headline = [
    (stat("Tokens", "Input + output tokens over the time range.",
          [target(f"sum(increase(persona_llm_tokens_total{{{billed}}}[$__range]))")],
          "short"), 6, 4),
    (stat("Cost", "Cost over the time range, from the configured price table.",
          [target(f"sum(increase(persona_llm_cost_usd_total{{{llm}}}[$__range]))")],
          "currencyUSD"), 6, 4),
    (stat("Requests", "LLM requests over the time range, failed ones included.",
          [target(f"sum(increase(persona_llm_requests_total{{{llm}}}[$__range]))")],
          "short"), 6, 4),
    (stat("Error ratio", "Share of LLM requests that failed over the time range.",
          [target(f"sum(increase(persona_llm_request_failures_total{{{llm}}}[$__range]))\n"
                  f"/ sum(increase(persona_llm_requests_total{{{llm}}}[$__range]))")],
          "percentunit", error_steps), 6, 4),
]

usage = [
    (timeseries("Tokens per persona by type",
                "Token rate per persona and token type. input includes cache_read and output "
                "includes reasoning.",
                [target(f"sum by (persona, token_type) (rate(persona_llm_tokens_total{{{llm}}}"
                        f"[$__rate_interval]))", "{{persona}} {{token_type}}")],
                "short"), 12, 8),
    (bar_gauge("Token budget utilisation",
               "Input + output tokens over each budget window, as a share of the persona's "
               f"budget. Alerts at {config.budget_warning_ratio:.0%} and "
               f"{config.budget_critical_ratio:.0%}. Personas without a budget are not shown.",
               [target("sum by (persona, window) (persona_window:persona_token_budget:"
                       'utilisation{persona=~"$persona"})', "{{persona}} {{window}}",
                       instant=True)],
               "percentunit", budget_steps, 1.2), 12, 8),
    (timeseries("Cost by persona and model", "Spend per hour, per persona and model.",
                [target(f"sum by (persona, model) (rate(persona_llm_cost_usd_total{{{llm}}}"
                        f"[$__rate_interval])) * 3600", "{{persona}} {{model}}")],
                "currencyUSD"), 12, 8),
    (bar_gauge("Cost budget utilisation",
               "Cost over each budget window as a share of the persona's cost budget.",
               [target("sum by (persona, window) (persona_window:persona_cost_budget:"
                       'utilisation{persona=~"$persona"})', "{{persona}} {{window}}",
                       instant=True)],
               "percentunit", budget_steps, 1.2), 12, 8),
    (table("Top models", "The ten models with the most tokens over the time range.",
           [target(f"topk(10, sum by (model, provider) (increase(persona_llm_tokens_total"
                   f"{{{billed}}}[$__range])))", instant=True, table=True)], "short"), 12, 8),
    # Every replica exports the budgets: taken once, as the recording rules do.
    (timeseries("Budget limits", "The configured token budgets per persona and window.",
                [target(f'max by (persona, window) (persona_token_budget_tokens'
                        f'{{{job},persona=~"$persona"}})', "{{persona}} {{window}}"),
                 target(f'max by (persona, window) (persona_cost_budget_usd'
                        f'{{{job},persona=~"$persona"}})', "{{persona}} {{window}} USD",
                        ref="B")], "short"), 12, 8),
]

quality = [
    (timeseries("Latency p50 / p95 per persona",
                "LLM request duration, to the last chunk when streaming.",
                [target(f"histogram_quantile(0.5, sum by (persona, le) (rate("
                        f"persona_llm_request_duration_seconds_bucket{{{latency}}}"
                        f"[$__rate_interval])))", "{{persona}} p50"),
                 target(f"histogram_quantile(0.95, sum by (persona, le) (rate("
                        f"persona_llm_request_duration_seconds_bucket{{{latency}}}"
                        f"[$__rate_interval])))", "{{persona}} p95", ref="B")], "s"), 12, 8),
    (timeseries("Time to first chunk p95", "Streaming requests: time to the first chunk.",
                [target(f"histogram_quantile(0.95, sum by (persona, le) (rate("
                        f"persona_llm_time_to_first_chunk_seconds_bucket{{{latency}}}"
                        f"[$__rate_interval])))", "{{persona}}")], "s"), 12, 8),
    (timeseries("Errors by type", "Failed LLM requests per second, by the error's type.",
                [target(f"sum by (persona, error_type) (rate(persona_llm_request_failures_total"
                        f"{{{llm}}}[$__rate_interval]))", "{{persona}} {{error_type}}")],
                "reqps"), 12, 8),
    (timeseries("Persona switches",
                "Changes of persona between consecutive stages of a workflow run, per minute.",
                [target(f"sum by (from_persona, to_persona) (rate(persona_switches_total"
                        f'{{{job},from_persona=~"$persona"}}[$__rate_interval])) * 60',
                        "{{from_persona}} → {{to_persona}}")],
                "short"), 12, 8),
]

dashboard = build(
    title="Persona Overview", uid=config.persona_dashboard_uid,
    description="Tokens, cost, budgets, latency and errors of LLM agents per persona.",
    variables=[query_variable("persona", "persona_llm_requests_total", "Persona", config),
               query_variable("chatmode", "persona_llm_requests_total", "Chatmode", config),
               query_variable("model", "persona_llm_requests_total", "Model", config)],
    panels=layout([("Headline", headline), ("Tokens, budgets and cost", usage),
                   ("Latency and errors", quality)]))
