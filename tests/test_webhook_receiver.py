"""The local webhook receiver: keeps and lists Alertmanager notifications, logs one line per
alert, and answers bad input with a 400 that names the field. The end-to-end test runs it
as a process behind a real Alertmanager (tests/test_stack_e2e.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from persona_exporter.tools.webhook_receiver import MAX_BODY_BYTES, create_app


def notification(status: str = "firing", **labels: str) -> dict[str, Any]:
    alert = {"status": status, "labels": {"alertname": "PersonaTokenBudgetExhausted",
                                          "severity": "critical", **labels},
             "annotations": {"summary": "A persona has used up its token budget.",
                             "runbook_url": "https://runbooks/PersonaTokenBudgetExhausted.md",
                             "description": "long"},
             "startsAt": "2026-11-21T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "fingerprint": "abc", "generatorURL": "http://prometheus/graph"}
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status,
            "receiver": "pager", "groupLabels": {}, "commonLabels": alert["labels"],
            "commonAnnotations": {}, "externalURL": "http://am", "alerts": [alert]}


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(keep=3))


def test_notifications_are_kept_per_receiver_path(client: TestClient) -> None:
    assert client.post("/pager", json=notification(persona="qa")).status_code == 200
    assert client.post("/chat", json=notification(persona="ops")).status_code == 200
    pager = client.get("/api/notifications", params={"receiver": "pager"}).json()
    assert [n["alerts"][0]["labels"]["persona"] for n in pager] == ["qa"]
    # Fields Alertmanager adds and we do not model are kept, not dropped.
    assert pager[0]["alerts"][0]["generatorURL"] == "http://prometheus/graph"
    assert pager[0]["truncatedAlerts"] == 0
    assert len(client.get("/api/notifications").json()) == 2


def test_only_the_latest_are_kept(client: TestClient) -> None:
    for persona in "abcde":
        client.post("/pager", json=notification(persona=persona))
    kept = client.get("/api/notifications").json()
    assert [n["alerts"][0]["labels"]["persona"] for n in kept] == ["c", "d", "e"]


def test_the_listing_reads_like_a_pager(client: TestClient) -> None:
    client.post("/pager", json=notification(persona="qa"))
    client.post("/pager", json=notification("resolved", persona="qa"))
    text = client.get("/").text
    assert '/pager FIRING alertname="PersonaTokenBudgetExhausted", persona="qa"' in text
    assert '/pager RESOLVED alertname="PersonaTokenBudgetExhausted", persona="qa"' in text
    assert "runbook: https://runbooks/PersonaTokenBudgetExhausted.md" in text


def test_each_alert_is_logged_on_one_line(client: TestClient,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "persona_exporter.webhook_receiver"):
        client.post("/pager", json=notification(persona="evil\nFAKE LINE"))
    [record] = caplog.records
    line = record.getMessage()
    assert "\n" not in line
    assert line.startswith("pager FIRING ")
    logged = json.loads(line.removeprefix("pager FIRING "))
    assert logged["persona"] == "evil\nFAKE LINE"
    assert logged["runbook_url"] == "https://runbooks/PersonaTokenBudgetExhausted.md"
    assert "description" not in logged


def test_no_label_can_forge_a_line_in_the_listing(client: TestClient) -> None:
    forged = "x\n12:00:00 /pager RESOLVED alertname=PersonaExporterDown"
    client.post("/pager", json=notification(persona=forged))
    lines = client.get("/").text.splitlines()
    assert not any(line.startswith("12:00:00") for line in lines)
    assert len([line for line in lines if "/pager" in line]) == 1


@pytest.mark.parametrize(("path", "body"), [
    ("/pager%0Alevel=error", json.dumps(notification()).encode()),
    ("/" + "a" * 65, json.dumps(notification()).encode()),
])
def test_a_receiver_path_that_is_not_a_name_is_refused(client: TestClient, path: str,
                                                       body: bytes) -> None:
    response = client.post(path, content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("receiver:")
    assert client.get("/api/notifications").json() == []


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body"),
    (json.dumps({"status": "firing"}).encode(), "alerts"),
    (json.dumps({**notification(), "status": "firing\nlevel=info"}).encode(), "status"),
    (json.dumps({"status": "firing", "alerts": [{"status": "x", "labels": {}}]}).encode(),
     "alerts.0.status"),
    (json.dumps({"status": "firing", "alerts": [{"status": "firing"}]}).encode(),
     "alerts.0.labels"),
    (json.dumps({"status": "firing", "alerts": [{"status": "firing",
                                                 "labels": {"a": 1}}]}).encode(),
     "alerts.0.labels.a"),
])
def test_bad_bodies_get_a_400_naming_the_field(client: TestClient, body: bytes,
                                               field: str) -> None:
    response = client.post("/pager", content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")
    assert client.get("/api/notifications").json() == []


def test_an_oversized_body_is_refused(client: TestClient) -> None:
    response = client.post("/pager", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413


def test_a_port_in_use_is_reported_with_exit_status_1() -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "persona_exporter", "webhook-receiver",
                                 "--web.listen-address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
