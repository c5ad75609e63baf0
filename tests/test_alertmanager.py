"""alerts/alertmanager.yml: amtool validates it and resolves the routes we expect, its YAML
keeps to the conventions (``matchers:``, secrets from files), and a real Alertmanager applies
its inhibition rules and delivers to the local webhook receiver."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from persona_exporter.bundle.mixin import MixinConfig

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG_RELATIVE = "alerts/alertmanager.yml"
CONFIG = ROOT / CONFIG_RELATIVE
ROUTING_KEY_FILE = "/etc/alertmanager/secrets/pagerduty_routing_key"

T = TypeVar("T")


def load_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return data


def walk(node: object, path: str = "") -> Iterator[tuple[str, str, object]]:
    """Every (path, key, value) of every mapping in a YAML document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from routes(child)


# --- amtool -------------------------------------------------------------------------------


def test_amtool_check_config_accepts_the_config(amtool: str) -> None:
    result = subprocess.run([amtool, "check-config", CONFIG_RELATIVE], cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "expected"), [
    # `continue: true` on the pager route: amtool prints both receivers, in route order.
    (["alertname=PersonaTokenBudgetExhausted", "severity=critical", "persona=qa", "window=24h"],
     "pager,chat"),
    (["alertname=PersonaTokenBudgetNearlyExhausted", "severity=warning", "persona=qa",
      "window=24h"], "chat"),
    (["alertname=SomethingInformational", "severity=info"], "null"),
    (["alertname=SomethingQuiet", "severity=none"], "null"),
    (["alertname=Watchdog", "severity=none"], "deadmans-switch"),
], ids=["critical", "warning", "info", "none", "watchdog"])
def test_amtool_routes_alerts_by_severity(amtool: str, labels: list[str], expected: str) -> None:
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={CONFIG}",
         f"--verify.receivers={expected}", *labels],
        capture_output=True, text=True, timeout=30, check=False)
    # amtool exits 1 (and prints a warning) when the resolved receivers differ.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == expected, result.stdout


# --- the YAML itself ----------------------------------------------------------------------


def test_no_deprecated_match_keys() -> None:
    config = load_config()
    deprecated = {"match", "match_re", "source_match", "source_match_re", "target_match",
                  "target_match_re"}
    found = [f"{path}.{key}" for path, key, _ in walk(config) if key in deprecated]
    assert found == [], f"use matchers/source_matchers/target_matchers instead: {found}"
    children = list(routes(config["route"]))[1:]
    assert len(children) == 5 and len(config["inhibit_rules"]) == 3  # so the loops check some
    for route in children:
        assert route.get("matchers"), f"child route without matchers: {route}"
    for rule in config["inhibit_rules"]:
        assert rule.get("source_matchers") and rule.get("target_matchers"), rule


def test_every_routed_receiver_exists_and_is_used() -> None:
    config = load_config()
    defined = [receiver["name"] for receiver in config["receivers"]]
    assert len(defined) == len(set(defined)), f"duplicate receiver names: {defined}"
    referenced = {route["receiver"] for route in routes(config["route"]) if "receiver" in route}
    assert referenced <= set(defined), f"routes name missing receivers: {referenced - set(defined)}"
    assert set(defined) == referenced == {"pager", "chat", "deadmans-switch", "null"}
    null = next(r for r in config["receivers"] if r["name"] == "null")
    assert null == {"name": "null"}, "the null receiver must have no configs"


def test_every_receiver_notifies_the_local_webhook_receiver() -> None:
    receivers = {r["name"]: r for r in load_config()["receivers"]}
    hooks = {r: [h["url"] for h in receivers[r]["webhook_configs"]]
             for r in ("pager", "chat", "deadmans-switch")}
    assert hooks == {"pager": ["http://webhook-receiver:8080/pager"],
                     "chat": ["http://webhook-receiver:8080/chat"],
                     "deadmans-switch": ["http://webhook-receiver:8080/watchdog"]}
    # No integration that needs an account is active: the stack pages with none.
    assert {key for r in receivers.values() for key in r if key.endswith("_configs")} == {
        "webhook_configs"}


def uncommented(text: str) -> str:
    """The config with its commented-out integration blocks (``# slack_configs:`` and the
    lines indented under it) turned on, as the README tells users to do."""
    lines, block = [], None
    for line in text.splitlines():
        start = re.match(r"^(\s*)# ([a-z]+_configs:)$", line)
        if start:
            block = start.group(1)
            lines.append(block + start.group(2))
        elif block is not None and line.startswith(block + "#   "):
            lines.append(block + line[len(block) + 2:])
        else:
            block = None
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_commented_pagerduty_and_slack_blocks_are_valid_once_uncommented(
        amtool: str, tmp_path: Path) -> None:
    enabled = yaml.safe_load(uncommented(CONFIG.read_text()))
    receivers = {r["name"]: r for r in enabled["receivers"]}
    assert receivers["pager"]["pagerduty_configs"] == [
        {"routing_key_file": ROUTING_KEY_FILE, "send_resolved": True}]
    [slack] = receivers["chat"]["slack_configs"]
    # Secrets from the directory compose mounts from the git-ignored compose/secrets/.
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/slack_webhook_url"
    assert slack["send_resolved"] is True
    # The webhooks stay: the local receiver keeps showing what was paged.
    assert receivers["pager"]["webhook_configs"] == load_config()["receivers"][0][
        "webhook_configs"]
    path = tmp_path / "alertmanager.yml"
    path.write_text(uncommented(CONFIG.read_text()))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    assert "./secrets:/etc/alertmanager/secrets:ro" in compose["services"]["alertmanager"][
        "volumes"]
    assert (ROOT / "compose" / "secrets" / ".gitignore").read_text().splitlines()[1:] == [
        "*", "!.gitignore"]


def test_timings_are_the_mixin_configs() -> None:
    config, mixin = load_config(), MixinConfig()
    root = config["route"]
    assert (root["group_wait"], root["group_interval"], root["repeat_interval"]) == (
        mixin.group_wait, mixin.group_interval, mixin.repeat_interval)
    [watchdog] = [r for r in root["routes"] if r["matchers"] == ['alertname="Watchdog"']]
    assert (watchdog["group_interval"], watchdog["repeat_interval"]) == (
        mixin.watchdog_interval, mixin.watchdog_repeat_interval)
    # No other route overrides a timing: accelerating the root's accelerates them all.
    assert len(root["routes"]) == 5
    for route in root["routes"]:
        if route is not watchdog:
            assert not {"group_wait", "group_interval", "repeat_interval"} & set(route), route


# Alertmanager settings that hold a secret inline; each has a `<name>_file` twin (or should
# not be used at all). The raw-text check also covers commented-out examples.
SECRET_KEYS = ("routing_key", "service_key", "api_url", "slack_api_url", "api_key",
               "opsgenie_api_key", "victorops_api_key", "user_key", "token", "bot_token",
               "api_secret", "wechat_api_secret", "auth_password", "auth_secret", "password",
               "credentials", "bearer_token", "client_secret", "secret_key", "webhook_url")
SECRET_KEY_TEXT = re.compile(rf"\b(?:{'|'.join(SECRET_KEYS)})\s*:")
SECRET_VALUE = re.compile(
    r"hooks\.slack\.com/services/"      # a Slack incoming-webhook URL
    r"|\bxox[abposr]-"                  # a Slack token
    r"|\b[0-9a-fA-F]{32}\b"             # a PagerDuty integration/routing key
    r"|://[^/\s:@]+:[^/\s@]+@"          # credentials in a URL
    r"|\bBearer\s+\S")


def test_no_secret_literals() -> None:
    text = CONFIG.read_text()
    assert SECRET_KEY_TEXT.findall(text) == [], "secrets belong in *_file settings"
    assert SECRET_VALUE.findall(text) == [], "the config holds something that looks like a secret"
    config = load_config()
    keys = [f"{path}.{key}" for path, key, _ in walk(config) if key in SECRET_KEYS]
    assert keys == []
    strings = [value for _, _, value in walk(config) if isinstance(value, str)]
    assert [s for s in strings if SECRET_VALUE.search(s)] == []
    assert "routing_key_file" in text


# --- a real Alertmanager ------------------------------------------------------------------


class Webhook:
    """The stack's webhook-receiver, played on 127.0.0.1: it records every notification."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with webhook._cond:
                    webhook.received.append((self.path, json.loads(body)))
                    webhook._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, path: str) -> list[tuple[str, str]]:
        """(alertname, status) of every alert notified at `path` so far."""
        with self._cond:
            return [(alert["labels"]["alertname"], alert["status"])
                    for got, body in self.received if got == path for alert in body["alerts"]]

    def all_alertnames(self) -> set[str]:
        with self._cond:
            return {alert["labels"]["alertname"] for _, body in self.received
                    for alert in body["alerts"]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    def __init__(self, url: str, webhook: Webhook, log: Path) -> None:
        self.url = url
        self.webhook = webhook
        self.log = log

    def post(self, *alerts: dict[str, str]) -> None:
        body = json.dumps([{"labels": labels, "annotations": {"summary": "A test alert."}}
                           for labels in alerts]).encode()
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def alerts(self, **query: str) -> dict[str, dict[str, Any]]:
        """The alerts Alertmanager holds, by alertname (the tests use each name once)."""
        url = f"{self.url}/api/v2/alerts?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return {a["labels"]["alertname"]: a for a in json.loads(response.read())}

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 20) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; notifications "
                            f"{self.webhook.received}\nalertmanager log:\n{self.log.read_text()}")
            time.sleep(0.1)

    def wait_held(self, count: int) -> dict[str, dict[str, Any]]:
        def check() -> dict[str, dict[str, Any]] | None:
            held = self.alerts()
            return held if len(held) == count else None

        return self.wait(f"{count} alerts in the API", check)

    def wait_notified(self, path: str, alertname: str) -> None:
        self.wait(f"{alertname} at {path}",
                  lambda: True if (alertname, "firing") in self.webhook.alerts(path) else None)


def local_copy(config: dict[str, Any], webhook_url: str) -> dict[str, Any]:
    """The config with webhooks sent to the test's receiver, no PagerDuty, no group_wait."""
    local = copy.deepcopy(config)
    for receiver in local["receivers"]:
        receiver.pop("pagerduty_configs", None)
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url + urllib.parse.urlsplit(hook["url"]).path
    for route in routes(local["route"]):
        route["group_wait"] = "0s"
    assert "webhook-receiver" not in json.dumps(local)
    return local


@pytest.fixture
def alertmanager(tmp_path: Path, alertmanager_binary: str) -> Iterator[Alertmanager]:
    webhook = Webhook()
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(local_copy(load_config(), webhook.url)))
    log = tmp_path / "alertmanager.log"
    port = free_port()
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [alertmanager_binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log_file, stderr=subprocess.STDOUT)
    am = Alertmanager(f"http://127.0.0.1:{port}", webhook, log)
    try:
        def ready() -> bool | None:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{am.url}/-/ready", timeout=2) as response:
                    return True if response.status == 200 else None
            except (urllib.error.URLError, ConnectionError):
                return None

        am.wait("/-/ready", ready)
        yield am
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        webhook.close()


def test_exhausted_budget_inhibits_nearly_exhausted(alertmanager: Alertmanager) -> None:
    critical = {"alertname": "PersonaTokenBudgetExhausted", "severity": "critical",
                "persona": "qa", "window": "24h"}
    warning = {"alertname": "PersonaTokenBudgetNearlyExhausted", "severity": "warning",
               "persona": "qa", "window": "24h"}
    # The critical first, and only once it has paged the warning: then the inhibitor surely
    # knows the critical when the warning's group is flushed, and "never notified" below is
    # a fair assertion.
    alertmanager.post(critical)
    alertmanager.wait_notified("/pager", "PersonaTokenBudgetExhausted")
    alertmanager.wait_notified("/chat", "PersonaTokenBudgetExhausted")  # continue: true
    alertmanager.post(warning)

    held = alertmanager.wait_held(2)
    exhausted, nearly = held["PersonaTokenBudgetExhausted"], held[
        "PersonaTokenBudgetNearlyExhausted"]
    assert nearly["status"]["state"] == "suppressed"
    assert nearly["status"]["inhibitedBy"] == [exhausted["fingerprint"]]
    assert exhausted["status"]["state"] == "active"
    assert exhausted["status"]["inhibitedBy"] == []
    assert set(alertmanager.alerts(inhibited="false")) == {"PersonaTokenBudgetExhausted"}

    time.sleep(2)  # an uninhibited warning would have reached /chat within milliseconds
    assert "PersonaTokenBudgetNearlyExhausted" not in alertmanager.webhook.all_alertnames()
    assert alertmanager.webhook.alerts("/pager") == [("PersonaTokenBudgetExhausted", "firing")]


def test_exporter_down_inhibits_the_alerts_built_on_its_data(alertmanager: Alertmanager) -> None:
    alertmanager.post({"alertname": "PersonaExporterDown", "severity": "critical",
                       "job": "persona-exporter"})
    alertmanager.wait_notified("/pager", "PersonaExporterDown")
    alertmanager.post(
        {"alertname": "WorkflowFailureRateHigh", "severity": "critical", "workflow": "bug-fix"},
        {"alertname": "TraceExportFailing", "severity": "warning", "backend": "langfuse"},
        {"alertname": "PersonaLLMErrorRateHigh", "severity": "critical", "persona": "qa"},
        {"alertname": "Watchdog", "severity": "none"})
    alertmanager.wait_notified("/watchdog", "Watchdog")

    held = alertmanager.wait_held(5)
    down = held["PersonaExporterDown"]["fingerprint"]
    inhibited = {name: alert["status"]["inhibitedBy"] for name, alert in held.items()}
    assert inhibited == {"PersonaExporterDown": [], "Watchdog": [],
                         "WorkflowFailureRateHigh": [down], "TraceExportFailing": [down],
                         "PersonaLLMErrorRateHigh": [down]}

    time.sleep(2)  # uninhibited, the two criticals would have paged within milliseconds
    assert alertmanager.webhook.alerts("/pager") == [("PersonaExporterDown", "firing")]
    assert alertmanager.webhook.all_alertnames() == {"PersonaExporterDown", "Watchdog"}
