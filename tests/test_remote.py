"""The SDK's remote sink against a real exporter process: delivered once, never blocking,
and spooled across an exporter outage for a later process to deliver."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import ObservableLLM, Telemetry
from persona_exporter.sdk.remote import RemoteSink

from .conftest import free_port, sample
from .otlp_receiver import Receiver, refused_url
from .test_serve import CLI, metric, running, wait_until

SENDER = """
import sys
import pytest
from prometheus_client import CollectorRegistry
from persona_exporter import ObservableLLM, Telemetry
from persona_exporter.sdk.remote import RemoteSink

url, spool, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
remote = RemoteSink(url, spool_dir=spool, shutdown_timeout=5)
tel = Telemetry(sinks=[remote])
llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                    model="gpt-4o", provider="openai", persona="qa-engineer", telemetry=tel)
for _ in range(count):
    llm()
if count == 0:  # a later process: deliver the spool, then exit
    import time
    deadline = time.monotonic() + 20
    while any(Path(spool).glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def send(url: str, spool: Path, count: int) -> subprocess.CompletedProcess[str]:
    script = "from pathlib import Path\n" + SENDER
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), url, str(spool),
                           str(count)], capture_output=True, text=True, timeout=60, check=False)


REQUESTS = {"persona": "qa-engineer", "chatmode": "none", "model": "gpt-4o",
            "provider": "openai"}


def test_events_spooled_during_an_outage_are_counted_exactly_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The exporter is down: 1,000 events go to the spool when the process exits.
    result = send(url, spool, 1000)
    assert result.returncode == 0, result.stderr
    assert sum(1 for _ in spool.glob("*.json")) >= 1
    # The exporter comes back; a later process delivers the spool, twice over.
    with running(tmp_path, config="", args=()) as server:
        target = server.url
        for _ in range(2):
            result = send(target, spool, 0)
            assert result.returncode == 0, result.stderr
        assert not list(spool.glob("*.json"))
        assert metric(server, "persona_llm_requests_total", **REQUESTS) == 1000


def test_a_demo_fills_the_exporter(tmp_path: Path) -> None:
    with running(tmp_path, config="") as server:
        result = subprocess.run([*CLI, "demo", "--speed", "0", "--exporter-url", server.url],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert f"Events sent to {server.url}\n" in result.stdout
        assert metric(server, "persona_llm_requests_total", persona="qa-engineer") is not None
        total = sum(metric(server, "persona_llm_requests_total", persona=p) or 0
                    for p in ("qa-engineer", "backend-engineer", "devops-engineer",
                              "frontend-engineer"))
        assert total == 12
        assert metric(server, "persona_workflow_runs_total", workflow="feature-implementation",
                      status="partial") == 1
        assert metric(server, "persona_switches_total", workflow="package-release",
                      from_persona="backend-engineer", to_persona="qa-engineer") == 1
        assert metric(server, "persona_workflow_budget_overruns_total",
                      workflow="bug-fix") == 1


def test_emit_never_waits_for_a_hanging_exporter(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with Receiver(hang=True) as hanging:
        base = Telemetry(registry=registry)
        remote = RemoteSink(hanging.url, recorder=base.recorder, spool_dir=tmp_path / "spool",
                            request_timeout=1, batch_size=50, flush_interval=0.01,
                            shutdown_timeout=1)
        tel = Telemetry(recorder=base.recorder, sinks=[remote])
        llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 1}}, model="m", telemetry=tel)
        worst = 0.0
        for _ in range(500):
            started = time.perf_counter()
            llm()
            worst = max(worst, time.perf_counter() - started)
        started = time.monotonic()
        remote.shutdown()
        took = time.monotonic() - started
    assert worst < 0.05
    assert took < 1.5
    spooled = sum(len(__import__("json").loads(p.read_text())["events"])
                  for p in (tmp_path / "spool").glob("*.json"))
    assert spooled >= 450  # what was not sent is on disk, none silently lost
    dropped = sample(registry, "persona_exporter_remote_events_dropped_total",
                     reason="undeliverable") or 0
    assert dropped == 0


def test_without_a_spool_undeliverable_events_are_counted() -> None:
    registry = CollectorRegistry()
    base = Telemetry(registry=registry)
    remote = RemoteSink(refused_url(), recorder=base.recorder, retries=0, flush_interval=0.01,
                        queue_size=100)
    tel = Telemetry(recorder=base.recorder, sinks=[remote])
    llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 1}}, model="m", telemetry=tel)
    for _ in range(300):
        llm()
    remote.shutdown(2)
    undeliverable = sample(registry, "persona_exporter_remote_events_dropped_total",
                           reason="undeliverable") or 0
    full = sample(registry, "persona_exporter_remote_events_dropped_total",
                  reason="queue_full") or 0
    assert undeliverable + full == 300


def test_flush_is_false_when_nothing_reached_the_exporter(tmp_path: Path) -> None:
    remote = RemoteSink(refused_url(), spool_dir=tmp_path, retries=0, flush_interval=10)
    tel = Telemetry(sinks=[remote])
    ObservableLLM(lambda: {"usage": {"prompt_tokens": 1}}, model="m", telemetry=tel)()
    assert remote.flush(5) is False
    assert list(tmp_path.glob("*.json"))
    remote.shutdown(1)


def test_a_corrupt_spool_file_is_set_aside_and_delivery_goes_on(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "00000000000000000001-x.json").write_text("{}")
    (spool / "00000000000000000002-y.json").write_text('{"batch_id": "y", "ev')
    (spool / "00000000000000000003-z.json").write_text(json.dumps(
        {"batch_id": "z", "events": [{"type": "llm_generation", "persona": "qa-engineer",
                                      "model": "gpt-4o", "provider": "openai",
                                      "duration_seconds": 1}]}))
    registry = CollectorRegistry()
    with running(tmp_path, config="") as server:
        base = Telemetry(registry=registry)
        remote = RemoteSink(server.url, recorder=base.recorder, spool_dir=spool,
                            flush_interval=0.05)
        deadline = time.monotonic() + 10
        while list(spool.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote.flush(5)
        # The two lost files are reported to the exporter with the next batch.
        wait_until(lambda: metric(server, "persona_exporter_remote_events_dropped_total",
                                  reason="spool_corrupt") == 2)
        remote.shutdown(2)
        assert metric(server, "persona_llm_requests_total", **REQUESTS) == 1
    assert sorted(p.name for p in spool.iterdir()) == ["00000000000000000001-x.json.bad",
                                                       "00000000000000000002-y.json.bad"]
    assert sample(registry, "persona_exporter_remote_events_dropped_total",
                  reason="spool_corrupt") == 2


def test_one_spool_delivered_by_two_processes_to_two_replicas_counts_once(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert send(refused_url(), spool, 1000).returncode == 0  # everything spooled
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running(tmp_path / "a", config="") as a, running(tmp_path / "b", config="") as b:
        both = [subprocess.Popen([sys.executable, "-c", "from pathlib import Path\n" + SENDER,
                                  target.url, str(spool), "0"]) for target in (a, b)]
        for proc in both:
            assert proc.wait(60) == 0
        total = sum(metric(s, "persona_llm_requests_total", **REQUESTS) or 0 for s in (a, b))
    assert total == 1000


def test_with_trace_context_the_exporter_makes_the_spans(tmp_path: Path) -> None:
    """The SDK traces nothing itself; the events carry ids and the exporter, which has the
    trace backend, sends one span tree per run with the persona as the user."""
    from persona_exporter import stage, workflow

    with Receiver() as receiver, running(
            tmp_path, env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces",
                           "PERSONA_EXPORTER_TRACE_FLUSH_INTERVAL": "0.05"}) as server:
        for traced in (False, True):
            if traced:  # nothing of the untraced run may arrive, however late
                assert receiver.wait_for_spans(1, timeout=1) == []
            remote = RemoteSink(server.url, trace_context=traced)
            tel = Telemetry(sinks=[remote])
            llm = ObservableLLM(lambda: {"usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                                model="gpt-4o", provider="openai", telemetry=tel)
            with workflow("bug-fix", chatmode="bug-fix", telemetry=tel), stage(
                    "fix", persona="qa-engineer"):
                llm()
            assert remote.flush(5)
            remote.shutdown()
        receiver.wait_for_spans(3)
        spans = receiver.wait_for_spans(4, timeout=1)  # and no more than the three
        assert metric(server, "persona_llm_requests_total", **REQUESTS | {
            "chatmode": "bug-fix"}) == 2
    # Only the traced run made spans: one workflow, one stage, one generation, one trace.
    assert sorted(s.name for s in spans) == ["chat gpt-4o", "fix", "invoke_workflow bug-fix"]
    assert len({s.trace_id for s in spans}) == 1
    # The trace's user is the run's persona, on its root; spans rebuilt from events that
    # came over the wire do not know the run's persona, so they carry no user of their own
    # (tests/test_trace_fidelity.py: why a per-span user is wrong).
    assert {s.attributes.get("user.id") for s in spans} == {"qa-engineer", None}
    root = next(s for s in spans if not s.parent_span_id)
    assert root.attributes["user.id"] == "qa-engineer"


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_a_sample_rate_outside_0_to_1_is_refused_by_name(rate: float) -> None:
    with pytest.raises(ValueError, match=r"RemoteSink\.sample_rate"):
        RemoteSink("http://127.0.0.1:9", trace_context=True, sample_rate=rate)


def test_exporter_traces_needs_an_exporter_url() -> None:
    result = subprocess.run([*CLI, "demo", "--exporter-traces"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "--exporter-traces needs --exporter-url" in result.stderr
