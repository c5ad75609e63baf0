"""The generated Prometheus rules: valid, unit-tested with promtool, in step with the
generator, the catalog and the runbooks."""

from __future__ import annotations

import re
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from persona_exporter.bundle.mixin import MixinConfig, seconds
from persona_exporter.bundle.rules import GENERATED, render_rules
from persona_exporter.catalog import CATALOG, Kind

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "persona-exporter.rules.yml"
ALERT_NAME = re.compile(r"^([A-Z]+[a-z0-9]+)+$")
# What the loops below walk over, spelled out so that an empty collection fails them.
GENERATED_FILES = {"alerts/persona-exporter.rules.yml", "alerts/tests/non-default.rules.yml"}
ALERTS = {
    "PersonaTokenBudgetNearlyExhausted", "PersonaTokenBudgetExhausted",
    "PersonaCostBudgetExhausted", "PersonaLLMErrorRateHigh", "WorkflowFailureRateHigh",
    "WorkflowDurationHigh", "PersonaExporterDown", "PersonaExporterReplicaDown",
    "TraceExportFailing", "OtlpForwardingFailing",
    "TraceExportLatencyHigh", "TraceVolumeHigh", "PersonaExporterEventsRejected",
    "PersonaLabelOverflow", "PersonaSeriesOverflow", "Watchdog"}


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_committed_rules_are_what_the_generator_writes(path: str) -> None:
    assert (ROOT / path).read_text() == render_rules(GENERATED[path]), (
        f"{path} is stale: run `make generate`")


def test_promtool_accepts_the_rules(promtool: str) -> None:
    assert set(GENERATED) == GENERATED_FILES
    for path in GENERATED:
        result = subprocess.run([promtool, "check", "rules", str(ROOT / path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    tests = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
    assert len(tests) >= 3
    result = subprocess.run([promtool, "test", "rules", *map(str, tests)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_follows_the_mixin_conventions() -> None:
    config = MixinConfig()
    names = set()
    assert {a["alert"] for a in alerts()} == ALERTS
    for alert in alerts():
        name = alert["alert"]
        names.add(name)
        assert ALERT_NAME.match(name), name
        assert alert["labels"]["severity"] in ("critical", "warning", "info", "none"), name
        annotations = alert["annotations"]
        summary = annotations["summary"]
        assert "{{" not in summary and summary[0].isupper() and summary.endswith("."), name
        assert annotations["runbook_url"] == config.runbook_url(name)
        assert annotations["dashboard_url"].startswith(f"{config.grafana_url}/d/")
        if name != "Watchdog":
            assert "{{" in annotations["description"], name
    assert names == ALERTS
    severities = {a["labels"]["severity"] for a in alerts()
                  if a["alert"] == "PersonaLLMErrorRateHigh"}
    assert severities == {"warning", "critical"}


def metric_names(expr: Any) -> set[str]:
    """Every metric name a parsed PromQL expression selects."""
    found: set[str] = set()
    name = getattr(expr, "name", None)
    if isinstance(name, str) and type(expr).__name__ in ("VectorSelector", "MatrixSelector"):
        found.add(name)
    for child in ("expr", "lhs", "rhs", "param", "vector_selector"):
        value = getattr(expr, child, None)
        if value is not None and not isinstance(value, (str, int, float)):
            found |= metric_names(value)
    for arg in getattr(expr, "args", None) or []:
        found |= metric_names(arg)
    return found


def test_every_metric_a_rule_reads_is_in_the_catalog_or_recorded() -> None:
    known = {"up"}
    for spec in CATALOG:
        known.add(spec.name)
        if spec.kind is Kind.HISTOGRAM:
            known |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
    recorded = {r["record"] for r in rules() if "record" in r}
    assert "persona_window:persona_token_budget:utilisation" in recorded
    assert {r["alert"] for r in rules() if "alert" in r} == ALERTS
    seen: set[str] = set()
    for rule in rules():
        names = metric_names(promql_parser.parse(rule["expr"]))
        seen |= names
        assert names <= known | recorded, (rule.get("alert") or rule.get("record"),
                                           names - known - recorded)
    assert "persona_token_budget_tokens" in seen and "up" in seen  # the walk finds selectors


def test_the_runbooks_match_the_alerts_one_to_one() -> None:
    runbooks = {p.stem for p in (ROOT / "runbooks").glob("*.md")}
    assert runbooks == {a["alert"] for a in alerts()} == ALERTS
    for name in runbooks:
        text = (ROOT / "runbooks" / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), name
        headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
        assert headings == ["Meaning", "Impact", "Diagnosis", "Mitigation"], (name, headings)


@pytest.mark.parametrize(("change", "message"), [
    ({"budget_warning_for": "5 minutes"}, "budget_warning_for"),
    ({"budget_warning_ratio": 0}, "budget_warning_ratio"),
    ({"budget_windows": ("2d",)}, "budget_windows"),
    ({"runbook_url_pattern": "https://x/"}, "{alertname}"),
    ({"group_wait": "soon"}, "group_wait"),
    ({"scrape_interval": "1m", "rate_interval": "2m"}, "rate_interval"),
    ({"budget_lookback": "5m"}, "budget_lookback"),
])
def test_a_wrong_mixin_config_fails_loudly(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MixinConfig(**change)


def test_accelerated_shortens_clocks_and_keeps_every_threshold() -> None:
    real = MixinConfig()
    fast = real.accelerated("1s", "2s")
    changed = {f.name for f in fields(real) if getattr(real, f.name) != getattr(fast, f.name)}
    durations = {f.name for f in fields(real) if f.name.endswith("_for")}
    assert {"budget_warning_for", "budget_critical_for", "exporter_down_for",
            "replica_down_for"} <= durations
    assert changed == durations | {"scrape_interval", "evaluation_interval", "group_wait",
                                   "group_interval", "watchdog_interval"}
    assert fast.repeat_interval == real.repeat_interval
    # Shorter, on the 2 s step, and in the same order as the real durations: a warning
    # still waits longer than its critical, a replica longer than the whole job.
    for a in durations:
        assert seconds(getattr(fast, a)) % 2 == 0 and seconds(getattr(fast, a)) <= 10, a
        for b in durations:
            real_order = seconds(getattr(real, a)) - seconds(getattr(real, b))
            fast_order = seconds(getattr(fast, a)) - seconds(getattr(fast, b))
            assert (real_order > 0) == (fast_order > 0) and (real_order == 0) == (
                fast_order == 0), (a, b)
    assert fast.budget_critical_for == "2s"
    assert seconds(fast.budget_warning_for) > seconds(fast.budget_critical_for)
    assert seconds(fast.replica_down_for) > seconds(fast.exporter_down_for)


def test_the_watchdog_repeats_at_every_flush() -> None:
    for config in (MixinConfig(), MixinConfig().accelerated()):
        assert seconds(config.watchdog_repeat_interval) < seconds(config.watchdog_interval)
        assert seconds(config.watchdog_repeat_interval) > seconds(config.watchdog_interval) / 2
    assert MixinConfig().accelerated().watchdog_repeat_interval == "800ms"


@pytest.mark.parametrize(("text", "value"), [("1h30m", 5400), ("500ms", 0.5), ("2d", 172800)])
def test_durations_in_seconds(text: str, value: float) -> None:
    assert seconds(text) == value
