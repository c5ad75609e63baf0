"""End to end, with the real components on 127.0.0.1: the exporter process with the compose
stack's budgets, Prometheus with the stack's own config and the generated rules, Alertmanager
with the stack's own config, the stack's webhook receiver, and traffic through the SDK.

Only addresses and intervals differ from the stack: the intervals come from
``MixinConfig().accelerated()`` (1 s scrapes and evaluations, ``for`` durations on a 2 s step
in their real order), the same one config
the committed rules and the stack's files are checked against, so nothing here is a
hand-edited copy. Missing binaries fail the test; they never skip it.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from persona_exporter import ObservableLLM, Telemetry, load_config
from persona_exporter.bundle.mixin import MixinConfig, seconds
from persona_exporter.bundle.rules import render_rules
from persona_exporter.sdk.remote import RemoteSink

from .conftest import free_port, required
from .otlp_receiver import Receiver
from .test_dashboards import boards, panels
from .test_serve import Server, metric, running

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
STACK_CONFIG = COMPOSE / "exporter" / "config.yaml"
TOKEN = "e2e-ingest-token"  # noqa: S105 - a test value
OVER_BUDGET = "frontend-engineer"  # the stack's over-budget persona (compose/exporter/config.yaml)
REAL = MixinConfig()
FAST = REAL.accelerated()
T = TypeVar("T")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Progress:
    """One line per phase on the terminal, through pytest's terminal reporter (so it shows
    under output capture, in `make test` too): the module runs for more than a minute, and
    without it nothing says what it waits for."""

    config: pytest.Config | None = None
    started = time.monotonic()
    last = ""

    @classmethod
    def say(cls, message: str) -> None:
        # A phase waited for in a loop (the scrape of what was spent) is said once.
        if cls.config is None or message == cls.last:
            return
        cls.last = message
        plugins = cls.config.pluginmanager
        reporter, capture = (plugins.get_plugin("terminalreporter"),
                             plugins.get_plugin("capturemanager"))
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():  # what capsys.disabled() does
            reporter.write_line(f"e2e {time.monotonic() - cls.started:5.1f}s: {message}")


@pytest.fixture(scope="module", autouse=True)
def _progress(pytestconfig: pytest.Config) -> Iterator[None]:
    Progress.config = pytestconfig
    Progress.started = time.monotonic()
    Progress.last = ""
    yield
    Progress.say("done")
    Progress.config = None


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30,
             interval: float = 0.2, quiet: bool = False) -> T:
    if not quiet:  # a step of a phase already said
        Progress.say(f"waiting for {what}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (urllib.error.URLError, ConnectionError):
            result = None
        if result:  # None, False and an empty query result all mean "not yet"
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n"
                        f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(name: str, args: list[str], tmp: Path, stack: ExitStack,
          env: dict[str, str] | None = None) -> Process:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env} if env else None)
    process = Process(name, proc, log)
    stack.callback(process.stop)
    return process


# --- the stack's own configs, with addresses and intervals substituted ----------------------


def prometheus_config(addresses: dict[str, str], rules: Path) -> dict[str, Any]:
    """compose/prometheus/prometheus.yml for this test: every target through ``addresses``,
    the rule file the generator wrote for FAST, the intervals of FAST. Nothing else."""
    original: dict[str, Any] = yaml.safe_load(
        (COMPOSE / "prometheus" / "prometheus.yml").read_text())
    config = copy.deepcopy(original)
    config["global"] = {"scrape_interval": FAST.scrape_interval,
                        "evaluation_interval": FAST.evaluation_interval}
    config["rule_files"] = [str(rules)]
    for section in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
        for static in section["static_configs"]:
            static["targets"] = [addresses[target] for target in static["targets"]]
    assert original["global"] == {"scrape_interval": REAL.scrape_interval,
                                  "evaluation_interval": REAL.evaluation_interval}
    assert [j["job_name"] for j in config["scrape_configs"]] == [
        j["job_name"] for j in original["scrape_configs"]]
    return config


def alertmanager_config(webhook: str) -> dict[str, Any]:
    """alerts/alertmanager.yml for this test: webhooks to the test's receiver, timings of
    FAST. The diff against the original is checked to be exactly that."""
    original: dict[str, Any] = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    config = copy.deepcopy(original)
    root = config["route"]
    root.update(group_wait=FAST.group_wait, group_interval=FAST.group_interval,
                repeat_interval=FAST.repeat_interval)
    [watchdog] = [r for r in root["routes"] if r.get("receiver") == "deadmans-switch"]
    watchdog.update(group_interval=FAST.watchdog_interval,
                    repeat_interval=FAST.watchdog_repeat_interval)
    changed = []
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            url = urllib.parse.urlsplit(hook["url"])
            assert url.netloc == "webhook-receiver:8080", hook
            hook["url"] = webhook + url.path
            changed.append(url.path)
    assert sorted(changed) == ["/chat", "/pager", "/watchdog"]
    differences = {re.sub(r"\[\d+\]", "[]", path) for path in diff(original, config)}
    assert differences == {
        "route.group_wait", "route.group_interval", "route.routes[].group_interval",
        "route.routes[].repeat_interval", "receivers[].webhook_configs[].url"} | (
        set() if FAST.repeat_interval == REAL.repeat_interval else {"route.repeat_interval"})
    return config


def diff(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """The paths at which two YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from diff(x, y, f"{path}[{i}]")
    elif a != b:
        yield path


# --- the running stack ----------------------------------------------------------------------


@dataclass
class Stack:
    exporter: Server
    prometheus: str
    alertmanager: str
    receiver: str
    processes: list[Process]
    collector: Receiver

    def alive(self) -> None:
        for process in self.processes:
            process.alive()

    def query(self, expr: str) -> list[Any]:
        body = get_json(f"{self.prometheus}/api/v1/query?"
                        + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", (expr, body)
        result: list[Any] = body["data"]["result"]
        return result

    def notifications(self, receiver: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = get_json(
            f"{self.receiver}/api/notifications?receiver={receiver}")
        return result

    def notified(self, receiver: str, alertname: str, status: str = "firing",
                 **labels: str) -> list[dict[str, Any]]:
        return [alert for n in self.notifications(receiver) for alert in n["alerts"]
                if alert["labels"]["alertname"] == alertname and alert["status"] == status
                and all(alert["labels"].get(k) == v for k, v in labels.items())]

    def held(self, alertname: str) -> list[dict[str, Any]]:
        """What Alertmanager holds for an alert name, with its inhibition status."""
        query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
        result: list[dict[str, Any]] = get_json(f"{self.alertmanager}/api/v2/alerts?{query}")
        return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = required("prometheus")
    alertmanager_bin = required("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("stack")
    Progress.say("starting the webhook receiver, the exporter, Alertmanager and Prometheus")
    with ExitStack() as stack:
        receiver_port, am_port, prom_port = free_port(), free_port(), free_port()
        receiver = start("webhook-receiver", [
            sys.executable, "-m", "persona_exporter", "webhook-receiver",
            "--web.listen-address", f"127.0.0.1:{receiver_port}"], tmp, stack)
        # The collector's OTLP receiver, played by a real OTLP/HTTP server on 127.0.0.1.
        collector = stack.enter_context(Receiver())
        exporter = stack.enter_context(running(tmp, STACK_CONFIG.read_text(), env={
            "PERSONA_EXPORTER_TOKEN": TOKEN, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_METRIC_EXPORT_INTERVAL": str(int(seconds(FAST.scrape_interval) * 1000))}))

        (tmp / "alertmanager.yml").write_text(yaml.safe_dump(
            alertmanager_config(f"http://127.0.0.1:{receiver_port}")))
        alertmanager = start("alertmanager", [
            alertmanager_bin, f"--config.file={tmp / 'alertmanager.yml'}",
            f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address="], tmp, stack)

        rules = tmp / "persona-exporter.rules.yml"
        rules.write_text(render_rules(FAST))
        nowhere = f"127.0.0.1:{free_port()}"  # the collector does not run here
        addresses = {"exporter:9464": exporter.url.removeprefix("http://"),
                     "alertmanager:9093": f"127.0.0.1:{am_port}",
                     "localhost:9090": f"127.0.0.1:{prom_port}",
                     "otel-collector:8888": nowhere, "otel-collector:8889": nowhere}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(addresses, rules)))
        prometheus = start("prometheus", [
            prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            # Alerts evaluated before Prometheus has discovered Alertmanager are dropped and
            # re-sent after the resend delay (1m by default, as in the stack): on the test
            # clock, one evaluation.
            f"--rules.alert.resend-delay={FAST.evaluation_interval}"], tmp, stack)

        result = Stack(exporter, f"http://127.0.0.1:{prom_port}",
                       f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{receiver_port}",
                       [receiver, alertmanager, prometheus], collector)
        for url in (f"{result.prometheus}/-/ready", f"{result.alertmanager}/-/ready",
                    f"{result.receiver}/healthz"):
            def ready(url: str = url) -> bool:
                result.alive()
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            wait_for(f"{url} to answer", ready)

        # The demo's workflows through the SDK to the exporter, as the stack's demo-agent
        # runs them, while Prometheus scrapes: rates need samples before and during.
        wait_for("a first scrape", lambda: result.query(f'up{{job="{REAL.job}"}} == 1'))
        # And, as the stack's genai-agent through the collector, an agent traced with plain
        # OpenTelemetry GenAI spans to the exporter's OTLP receiver, at the same time. Its
        # batch span processor exports every 5 s by default (OTEL_BSP_SCHEDULE_DELAY), as
        # long as the whole demo here: on the test clock, once per scrape.
        result.processes.append(start("genai-agent", [
            sys.executable, "-m", "persona_exporter.tools.genai_agent", "--endpoint",
            f"{exporter.url}/v1/traces", "--token", TOKEN, "--iterations", "0",
            "--speed", "1"], tmp, stack, env={
                "OTEL_BSP_SCHEDULE_DELAY": str(int(seconds(FAST.scrape_interval) * 1000))}))
        Progress.say("running the demo workflows three times through the SDK")
        demo = subprocess.run(
            [sys.executable, "-m", "persona_exporter", "demo", "--speed", "0.5",
             "--iterations", "3", "--budgets", str(STACK_CONFIG),
             "--exporter-url", exporter.url, "--exporter-traces"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PERSONA_EXPORTER_TOKEN": TOKEN})
        assert demo.returncode == 0, demo.stderr
        assert "not all delivered" not in demo.stdout
        yield result


def grafana(expr: str) -> str:
    """A panel query as Grafana sends it with every variable at All."""
    expr = (expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
            .replace("$__interval", "15s"))
    return re.sub(r"\$(persona|chatmode|model|workflow|stage)\b", ".*", expr)


def finite(result: list[Any]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_the_exporter_target_is_up_and_no_dashboard_panel_is_empty(stack: Stack) -> None:
    def up() -> bool:
        targets = get_json(f"{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
        return any(t["labels"]["job"] == REAL.job and t["health"] == "up" for t in targets)

    wait_for("the exporter target to be up", up)
    # Rates need a few scrapes after the demo; the budget series come from the rules. The
    # OTLP span counters appear with the genai-agent's first export, which nothing above
    # waits for.
    job = REAL.selector
    wait_for("scrapes after the demo", lambda: all(finite(stack.query(expr)) for expr in (
        f"count_over_time(persona_llm_requests_total{{{job}}}[1m]) >= 4",
        f"count_over_time(persona_exporter_otlp_spans_received_total{{{job}}}[1m]) >= 4",
        "persona_window:persona_token_budget:utilisation")))
    empty = []
    for name, board in boards().items():
        for panel in panels(board):
            if not any(finite(stack.query(grafana(t["expr"]))) for t in panel["targets"]):
                empty.append(f"{name}: {panel['title']}")
    assert not empty, f"panels without a finite value: {empty}"


def test_the_exporter_sends_the_demos_traces_with_the_persona_as_user(stack: Stack) -> None:
    # Three demo runs of three workflows: nine traces, each one run (session).
    wait_for("nine workflow spans", lambda: sum(
        s.name.startswith("invoke_workflow") for s in stack.collector.spans) >= 9)
    spans = stack.collector.spans
    personas = {s.attributes.get("persona") for s in spans}  # each span's own
    assert personas >= {"backend-engineer", "frontend-engineer", "qa-engineer",
                        "devops-engineer"}, personas
    users: dict[str, set[str]] = {}  # and one user per trace: its run's persona
    for s in spans:
        if s.attributes.get("user.id"):  # spans rebuilt from wire events may have none
            users.setdefault(s.trace_id, set()).add(s.attributes["user.id"])
    assert all(len(u) == 1 for u in users.values()), users
    assert {s.name for s in spans} >= {"invoke_workflow package-release", "version-bump"}
    runs = {s.trace_id: s.attributes.get("session.id") for s in spans
            if s.name.startswith("invoke_workflow")}
    assert len(runs) == 9 and len(set(runs.values())) == 9


def utilisation(stack: Stack) -> float | None:
    result = stack.query(f'persona_window:persona_token_budget:utilisation'
                         f'{{persona="{OVER_BUDGET}",window="1h"}}')
    return float(result[0]["value"][1]) if result else None


def sent_and_scraped(stack: Stack) -> bool:
    """Prometheus' last scrape holds every token the exporter has counted for the persona."""
    selector = f'persona="{OVER_BUDGET}",token_type="input"'
    counted = metric(stack.exporter, "persona_llm_tokens_total", persona=OVER_BUDGET,
                     token_type="input")
    scraped = stack.query(f"sum(persona_llm_tokens_total{{{selector}}})")
    return bool(scraped) and float(scraped[0]["value"][1]) == counted


def spend(stack: Stack, llm: ObservableLLM, sink: RemoteSink, tokens: int) -> None:
    """Spend through the SDK, then wait until Prometheus has scraped it and evaluated the
    rules once more, so the utilisation read next includes it."""
    llm(tokens=tokens)
    assert sink.flush(5)
    wait_for("the scrape of what was spent", lambda: sent_and_scraped(stack), quiet=True)
    time.sleep(2 * seconds(FAST.evaluation_interval))


def drive(stack: Stack, llm: ObservableLLM, sink: RemoteSink, budget: int,
          at_least: float) -> float:
    """Spend until Prometheus' utilisation of the persona's 1h budget reaches ``at_least``;
    returns it. Each step spends half of what is missing, so the level approaches from
    below: increase() extrapolates a little, and no step can jump past the next threshold."""
    Progress.say(f"spending until {at_least:.0%} of the persona's 1h budget is used")
    deadline = time.monotonic() + 60
    while True:
        level = utilisation(stack) or 0.0
        if level >= at_least:
            return level
        assert time.monotonic() < deadline, f"utilisation stuck at {level}"
        spend(stack, llm, sink, max(int((at_least - level) * budget * 0.5), budget // 100))


def test_budget_alerts_page_and_exporter_down_inhibits_them(stack: Stack) -> None:
    budget = load_config(STACK_CONFIG).personas[OVER_BUDGET].tokens["1h"]
    sink = RemoteSink(stack.exporter.url, token=TOKEN)
    telemetry = Telemetry(config=load_config(STACK_CONFIG), sinks=[sink])

    def call_model(tokens: int) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": tokens, "completion_tokens": 0}}

    llm = ObservableLLM(call_model, model="gpt-4o", provider="openai", persona=OVER_BUDGET,
                        telemetry=telemetry)
    try:
        # The direct calls make a new series (chatmode "none"); a series' first sample is
        # not an increase, so it starts with one token, before anything is measured.
        spend(stack, llm, sink, 1)
        # 1. Past 80%, under 100%: the warning, to chat, with its runbook.
        level = drive(stack, llm, sink, budget, at_least=REAL.budget_warning_ratio + 0.05)
        assert level < REAL.budget_critical_ratio, level
        [warning] = wait_for("the warning at /chat", lambda: stack.notified(
            "chat", "PersonaTokenBudgetNearlyExhausted", persona=OVER_BUDGET) or None)
        assert warning["labels"]["severity"] == "warning"
        assert warning["labels"]["window"] == "1h"
        assert warning["annotations"]["runbook_url"] == REAL.runbook_url(
            "PersonaTokenBudgetNearlyExhausted")
        assert not stack.notified("pager", "PersonaTokenBudgetExhausted", persona=OVER_BUDGET)

        # 2. Past 100%: the page, and the warning inhibited by it.
        drive(stack, llm, sink, budget, at_least=REAL.budget_critical_ratio + 0.1)
        [page] = wait_for("the page at /pager", lambda: stack.notified(
            "pager", "PersonaTokenBudgetExhausted", persona=OVER_BUDGET) or None)
        assert page["labels"]["severity"] == "critical"
        assert page["annotations"]["runbook_url"] == REAL.runbook_url(
            "PersonaTokenBudgetExhausted")
        assert page["annotations"]["summary"] == "A persona has used up its token budget."
        assert stack.notified("chat", "PersonaTokenBudgetExhausted", persona=OVER_BUDGET)

        def inhibited(alertname: str, by: str) -> bool:
            sources = [a for a in stack.held(by) if a["status"]["state"] == "active"]
            if len(sources) != 1:
                return False  # not (yet) held and active
            [source] = sources
            targets = [a for a in stack.held(alertname)
                       if a["labels"].get("persona", OVER_BUDGET) == OVER_BUDGET]
            return bool(targets) and all(
                a["status"]["state"] == "suppressed"
                and source["fingerprint"] in a["status"]["inhibitedBy"] for a in targets)

        wait_for("the warning to be inhibited", lambda: inhibited(
            "PersonaTokenBudgetNearlyExhausted", "PersonaTokenBudgetExhausted"))
        assert len(stack.notified("chat", "PersonaTokenBudgetNearlyExhausted",
                                  persona=OVER_BUDGET)) == 1
    finally:
        sink.shutdown()

    # 3. The exporter dies: PersonaExporterDown pages, and the persona alerts, still firing
    # in Prometheus, are inhibited rather than resolved.
    killed = time.time()
    stack.exporter.proc.kill()
    stack.exporter.proc.wait(10)
    [down] = wait_for("PersonaExporterDown at /pager", lambda: stack.notified(
        "pager", "PersonaExporterDown") or None)
    assert down["labels"]["job"] == REAL.job
    assert down["annotations"]["runbook_url"] == REAL.runbook_url("PersonaExporterDown")
    for alertname in ("PersonaTokenBudgetExhausted", "PersonaExporterReplicaDown"):
        def by_down(name: str = alertname) -> bool:
            return inhibited(name, "PersonaExporterDown")

        wait_for(f"{alertname} to be inhibited by PersonaExporterDown", by_down)
    # Alertmanager names the first inhibiting alert it finds: for the warning, that may
    # still be the critical.
    assert all(a["status"]["state"] == "suppressed"
               for a in stack.held("PersonaTokenBudgetNearlyExhausted"))
    firing = {(series["metric"]["alertname"], series["metric"].get("persona"))
              for series in stack.query('ALERTS{alertstate="firing"}')}
    assert ("PersonaTokenBudgetExhausted", OVER_BUDGET) in firing
    time.sleep(3)  # a resolution or an uninhibited page would have arrived by now
    assert not stack.notified("pager", "PersonaTokenBudgetExhausted", status="resolved")
    assert not stack.notified("chat", "PersonaTokenBudgetExhausted", status="resolved")
    assert not stack.notified("chat", "PersonaExporterReplicaDown")  # a warning: chat only
    pages_after = [a for n in stack.notifications("pager") if n["received_at"] > killed
                   for a in n["alerts"] if a["labels"]["alertname"] != "PersonaExporterDown"]
    assert pages_after == [], pages_after

    # 4. The dead man's switch kept arriving all along, the outage included.
    stack.alive()
    beats = [n["received_at"] for n in stack.notifications("watchdog")
             if n["status"] == "firing" and n["alerts"][0]["labels"]["alertname"] == "Watchdog"]
    assert beats, "Watchdog never arrived"
    assert beats[-1] > killed
    # Once per watchdog_interval (1 s here); 5 s of silence would be an outage.
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 5 * seconds(FAST.watchdog_interval), f"the Watchdog stopped for " \
        f"{max(gaps):.1f} s"
    assert len(beats) >= (time.time() - beats[0]) / (2 * seconds(FAST.watchdog_interval))
