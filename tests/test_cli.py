"""The command line, run as a user runs it: a real process, real HTTP, real promtool."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persona_exporter.catalog import CATALOG

from .conftest import free_port
from .otlp_receiver import Receiver, refused_url

CLI = [sys.executable, "-m", "persona_exporter"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_demo_prints_each_stage_with_its_budget_and_a_summary() -> None:
    result = run("demo", "--speed", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The first seed's line: an 850-token stage of a 5000-token allocation.
    assert "version-bump" in out and "tokens    850   budget remaining 4,150" in out
    assert "⚠ RateLimitError, retrying" in out
    assert "Bug Fix: succeeded" in out and "over its allocation" in out
    assert "Feature Implementation: partial" in out
    summary = out[out.index("Summary per persona"):]
    rows = {line.split()[0]: line.split() for line in summary.splitlines()[4:] if line.strip()}
    assert set(rows) == {"backend-engineer", "devops-engineer", "frontend-engineer",
                         "qa-engineer"}
    assert rows["qa-engineer"][1:3] == ["6", "3"]  # requests, failures


def scrape(port: int, deadline: float = 30) -> str:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def test_demo_serve_exposes_every_family_with_demo_data(promtool: str) -> None:
    port = free_port()
    proc = subprocess.Popen([*CLI, "demo", "--speed", "0", "--serve", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the demo has finished and says it still serves
            if "Still serving" in line:
                break
        text = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in CATALOG:
        assert spec.name.removesuffix("_total") in families, spec.name
    assert not any(name.endswith("_created") for name in families)

    def value(name: str, **labels: str) -> float:
        matches = [s.value for f in families.values() for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert matches, (name, labels)
        return sum(matches)

    assert value("persona_llm_requests_total", persona="qa-engineer") == 6
    assert value("persona_llm_request_failures_total", error_type="RateLimitError") == 1
    assert value("persona_llm_request_failures_total", error_type="APITimeoutError") == 2
    assert value("persona_llm_tokens_total", token_type="reasoning") == 1800
    assert value("persona_llm_tokens_total", token_type="cache_read") > 0
    assert value("persona_llm_cost_usd_total") > 0
    assert value("persona_llm_time_to_first_chunk_seconds_count") == 3
    assert value("persona_token_budget_tokens", persona="backend-engineer", window="24h") == 2e6
    assert value("persona_cost_budget_usd", persona="devops-engineer", window="30d") == 150
    assert value("persona_workflow_runs_total", workflow="feature-implementation",
                 status="partial") == 1
    assert value("persona_workflow_active") == 0
    assert value("persona_stage_runs_total", stage="e2e-tests", status="failed") == 1
    assert value("persona_switches_total", workflow="package-release",
                 from_persona="backend-engineer", to_persona="qa-engineer") == 1
    assert value("persona_workflow_budget_overruns_total", workflow="bug-fix") == 1
    assert value("persona_exporter_events_accepted_total", type="llm_generation") == 12
    assert value("persona_exporter_build_info") == 1

    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint


def test_a_wrong_config_stops_the_demo_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "budgets.yaml"
    config.write_text("personas:\n  qa-engineer: {tokens: {24h: -1}}\n")
    result = run("demo", "--speed", "0", "--budgets", str(config))
    assert result.returncode == 2
    assert f"{config}: personas.qa-engineer.tokens.24h: expected a number >= 1" in result.stderr
    assert result.stdout == ""


def test_check_config() -> None:
    ok = run("check-config", "exporter/persona_exporter/default_config.yaml")
    assert ok.returncode == 0 and "OK (4 personas, 3 chatmodes, 4 models)" in ok.stdout
    missing = run("check-config", "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml: cannot read the file" in missing.stderr


@pytest.mark.parametrize("flags", [["--serve", "9464"], ["--serve", "host:99999"],
                                   ["--speed", "-1"], ["--speed", "nan"]])
def test_bad_flags_are_refused_with_usage(flags: list[str]) -> None:
    result = run("demo", *flags)
    assert result.returncode == 2 and "usage:" in result.stderr
    assert flags[0] in result.stderr


def test_a_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("demo", "--speed", "0", "--serve", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_metrics_lists_the_catalog() -> None:
    result = run("metrics", "--format", "json")
    assert result.returncode == 0
    assert result.stdout.count('"name": "persona_') == len(CATALOG)


def demo_env(**extra: str) -> dict[str, str]:
    # The autouse fixture has already cleared LANGFUSE_/OTEL_ variables from os.environ.
    return {**os.environ, **extra}


def test_demo_sends_persona_attributed_traces_to_langfuse() -> None:
    with Receiver() as langfuse:
        env = demo_env(LANGFUSE_PUBLIC_KEY="pk-lf-demo", LANGFUSE_SECRET_KEY="sk-lf-demo",
                       LANGFUSE_BASE_URL=langfuse.url)
        result = subprocess.run([*CLI, "demo", "--speed", "0"], capture_output=True, text=True,
                                timeout=60, env=env, check=False)
        assert result.returncode == 0, result.stderr
        spans = langfuse.wait_for_spans(25)
    roots = [s for s in spans if s.parent_span_id == ""]
    assert sorted(s.name for s in roots) == ["invoke_workflow bug-fix",
                                             "invoke_workflow feature-implementation",
                                             "invoke_workflow package-release"]
    assert len({s.trace_id for s in spans}) == 3
    # each span says whose it is; each trace has one user, its run's persona
    personas = {s.attributes["persona"] for s in spans}
    assert personas == {"backend-engineer", "devops-engineer", "frontend-engineer", "qa-engineer"}
    for root in roots:
        assert {s.attributes.get("user.id") for s in spans if s.trace_id == root.trace_id} \
            == {root.attributes["user.id"]}
    generations = [s for s in spans if s.name.startswith("chat ")]
    assert len(generations) == 12
    assert sum(1 for g in generations if "error.type" in g.attributes) == 3
    assert "Traces to langfuse: " in result.stdout and ", 0 failed," in result.stdout
    assert "sk-lf-demo" not in result.stdout + result.stderr


def test_demo_with_langfuse_unreachable_finishes_promptly_and_says_so() -> None:
    started = time.monotonic()
    plain = subprocess.run([*CLI, "demo", "--speed", "0"], capture_output=True, text=True,
                           timeout=60, env=demo_env(), check=False)
    plain_took = time.monotonic() - started
    env = demo_env(LANGFUSE_PUBLIC_KEY="pk", LANGFUSE_SECRET_KEY="sk",
                   LANGFUSE_BASE_URL=refused_url())
    started = time.monotonic()
    result = subprocess.run([*CLI, "demo", "--speed", "0"], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    took = time.monotonic() - started
    assert plain.returncode == result.returncode == 0, result.stderr
    assert took < plain_took + 3.5, (took, plain_took)  # the shutdown deadline is 3 s
    line = next(x for x in result.stdout.splitlines() if x.startswith("Traces to langfuse"))
    failed = int(line.split(", ")[1].split()[0])
    dropped = int(line.split(", ")[3].split()[0])
    assert failed >= 1 and dropped == 25, line


def test_the_main_job_runs_the_exporter_fed_by_the_demo() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "BIN": str(Path(sys.executable).parent),
           "PERSONA_EXPORTER_DEMO_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "budget remaining 4,150" in result.stdout
    tail = result.stdout[result.stdout.index("holds the demo's events now"):]
    assert 'persona_workflow_runs_total{status="partial",workflow="feature-implementation"} 1.0' \
        in tail
    assert "stopped" in result.stderr  # the exporter was shut down cleanly
    # The exporter says whether tracing is on; the demo process, reading the same
    # environment, does not say it a second time.
    assert result.stderr.count("Langfuse tracing is off") == 1, result.stderr
    # said once the port is bound, and never before the readiness check passed
    assert result.stderr.count("listening on") == 1


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"persona-exporter {version('persona-exporter')}"


def test_every_subcommand_help_has_a_description() -> None:
    """argparse prints a subparser's ``description`` between its usage and its options;
    without one a user learns nothing from `persona-exporter serve --help`."""
    from persona_exporter.cli import build_parser

    [commands] = [a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"serve", "demo", "check-config", "generate", "metrics",
                                     "webhook-receiver"}
    for name in commands.choices:
        result = run(name, "--help")
        assert result.returncode == 0, name
        paragraphs = result.stdout.split("\n\n")
        assert paragraphs[0].startswith(f"usage: persona-exporter {name}"), name
        assert not paragraphs[1].startswith(("options:", "positional arguments:")), name
        assert len(paragraphs[1].split()) >= 10, (name, paragraphs[1])


def test_the_reference_module_has_a_help_and_reports_a_missing_file(tmp_path: Path) -> None:
    """The module `make check-generated` runs (persona_exporter.bundle.reference) took
    ``--help`` for a file name and crashed with a traceback."""
    module = [sys.executable, "-m", "persona_exporter.bundle.reference"]
    result = subprocess.run([*module, "--help"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0 and "--check" in result.stdout, result.stderr
    missing = subprocess.run([*module, "--check", str(tmp_path / "nope.md")],
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"{tmp_path / 'nope.md'}: No such file or directory"


@pytest.mark.parametrize("module", ["rules", "grafana", "kubernetes"])
def test_the_generators_answer_help_instead_of_writing_under_a_folder_named_help(
        module: str, tmp_path: Path) -> None:
    """``python -m persona_exporter.bundle.rules --help`` took ``--help`` for the root
    and crashed; grafana's silently found nothing under it."""
    result = subprocess.run([sys.executable, "-m", f"persona_exporter.bundle.{module}",
                             "--help"], capture_output=True, text=True, timeout=30,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m persona_exporter.bundle.{module}")
    assert "ROOT" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_token_in_the_config_file_points_to_the_two_places_it_may_be(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  token: s3cret-token\n")
    result = run("check-config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"persona-exporter: {config}: server.token: ")
    assert "PERSONA_EXPORTER_TOKEN" in result.stderr and "server.token_file" in result.stderr
    assert "unknown key" not in result.stderr and "s3cret-token" not in result.stderr


def serve_verdict(config: Path, env: dict[str, str]) -> tuple[int, str]:
    """(exit status, stderr) of `serve` with ``config``, stopped once it listens."""
    proc = subprocess.Popen([*CLI, "serve", "--config.file", str(config)], env=env,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "listening on" in line:
            proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30), "".join(lines)


@pytest.mark.parametrize(("case", "server", "problem"), [
    ("unresolvable host", "listen_address: not-an-address:{port}",
     "server.listen_address: cannot resolve the host 'not-an-address'"),
    ("not this host's address", "listen_address: 192.0.2.1:{port}",
     "server.listen_address: cannot listen on '192.0.2.1'"),
    ("no address at all", "listen_address: not-an-address",
     "server.listen_address: expected HOST:PORT"),
    ("missing token file", "token_file: {tmp}/no-such-token",
     "server.token_file: cannot read {tmp}/no-such-token"),
    ("storage under a file", "storage_path: {tmp}/a-file/state",  # the key, not a flag
     "{tmp}/config.yaml: server.storage_path: cannot use the directory {tmp}/a-file/state"),
    ("gRPC on no address of this host", "grpc_listen_address: 192.0.2.1:{port}",
     "otlp.grpc_listen_address: cannot listen on '192.0.2.1'"),
    ("all fine", "listen_address: localhost:{port}", None),
])
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, case: str, server: str,
                                                 problem: str | None) -> None:
    """The one validation (serve.resolve_settings) runs for both: a host that does not
    resolve or is not this machine's used to pass check-config and stop serve at bind."""
    (tmp_path / "a-file").write_text("")
    values = {"port": str(free_port()), "tmp": str(tmp_path)}
    config = tmp_path / "config.yaml"
    section = "otlp" if server.startswith("grpc_") else "server"
    config.write_text(f"{section}:\n  " + server.format(**values) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_EXPORTER_")}
    check = subprocess.run([*CLI, "check-config", str(config)], capture_output=True,
                           text=True, timeout=30, env=env, check=False)
    status, serve_err = serve_verdict(config, env)
    if problem is None:
        assert check.returncode == status == 0, (check.stderr, serve_err)
        return
    expected = problem.format(**values)
    assert check.returncode == 2 and expected in check.stderr, check.stderr
    assert check.stderr.startswith("persona-exporter: "), check.stderr
    assert status != 0 and expected in serve_err, serve_err
    assert "listening on" not in serve_err


def test_check_config_requires_every_address_of_a_listen_host_as_serve_does() -> None:
    """A name may resolve to several addresses (localhost to 127.0.0.1 and ::1; a DNS name
    to its A and AAAA records). serve's HTTP listener is asyncio's loop.create_server
    (under uvicorn), which binds every one and fails at the first it cannot bind: check-config
    used to try only the first, so it said OK for a host whose second address is not this
    machine's, and serve then stopped at bind (seen for real with an /etc/hosts line per
    address, in a mount namespace). gRPC listens on the ones it can, so one is enough there.
    getaddrinfo's answers for two literals stand in for such a name."""
    import asyncio

    from persona_exporter.server.serve import bind_problem

    def resolved(host: str) -> list[tuple[object, ...]]:
        return list(socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE))

    local, foreign = resolved("127.0.0.1"), resolved("192.0.2.1")  # TEST-NET-1: nobody's

    async def serve_binds(hosts: list[str]) -> bool:
        try:
            server = await asyncio.get_running_loop().create_server(
                asyncio.Protocol, host=hosts, port=0)
        except OSError:
            return False
        server.close()
        return True

    assert asyncio.run(serve_binds(["127.0.0.1", "192.0.2.1"])) is False
    problem = bind_problem("two-addresses", [*local, *foreign])
    assert problem is not None and "192.0.2.1, one of its addresses" in problem, problem
    assert asyncio.run(serve_binds(["127.0.0.1"])) is True
    assert bind_problem("two-addresses", [*local, *local]) is None
    # gRPC: one address it can bind is enough; none is not
    assert bind_problem("two-addresses", [*local, *foreign], every_address=False) is None
    assert bind_problem("two-addresses", foreign, every_address=False) is not None


def test_check_config_refuses_a_privileged_port_serve_could_not_bind(tmp_path: Path) -> None:
    """Probing port 0 found a host's addresses but not a port below
    ip_unprivileged_port_start, which serve cannot bind without CAP_NET_BIND_SERVICE
    (e.g. as the image's user 10001): check-config said OK, and serve stopped at bind with
    a hint about another process holding the port. Root runs it without that capability.
    A port in use stays no problem (a running exporter holds its own)."""
    from persona_exporter.server.serve import host_problem

    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  listen_address: 127.0.0.1:{max(start - 1, 1)}\n")
    without_cap = (["setpriv", "--bounding-set=-net_bind_service"] if os.geteuid() == 0
                   else [])
    check = subprocess.run([*without_cap, *CLI, "check-config", str(config)],
                           capture_output=True, text=True, timeout=30, check=False)
    if start == 0:  # no privileged port on this host: nothing to refuse
        assert check.returncode == 0, check.stderr
    else:
        assert check.returncode == 2, (check.stdout, check.stderr)
        assert f"server.listen_address: cannot listen on port {start - 1}: Permission denied" \
            in check.stderr and "from 1024 up" in check.stderr, check.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        assert host_problem("127.0.0.1", busy.getsockname()[1]) is None


def test_generate_lists_each_file_it_writes(tmp_path: Path) -> None:
    import shutil

    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "README.md", tmp_path / "README.md")
    shutil.copytree(root / "dashboards", tmp_path / "dashboards")
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "dashboards" / "persona-overview.json").write_text("stale")
    # deploy/kubernetes: one file as committed, one stale, one no longer generated
    k8s = tmp_path / "deploy" / "kubernetes" / "base"
    k8s.mkdir(parents=True)
    shutil.copy(root / "deploy/kubernetes/base/service.yaml", k8s / "service.yaml")
    (k8s / "statefulset.yaml").write_text("stale")
    (k8s / "gone.yaml").write_text("kind: Gone")
    result = run("generate", str(tmp_path))
    assert result.returncode == 0, result.stderr
    listed = dict(line.rsplit(": ", 1) for line in result.stdout.splitlines())
    committed = sorted((root / "deploy" / "kubernetes").rglob("*.yaml"))
    assert len(committed) > 10
    kubernetes = {f"{tmp_path}/{path.relative_to(root)}": "written" for path in committed}
    kubernetes[f"{k8s}/service.yaml"] = "unchanged"
    kubernetes[f"{k8s}/gone.yaml"] = "removed"
    assert not (k8s / "gone.yaml").exists()
    assert listed == {
        **kubernetes,
        f"{tmp_path}/README.md": "unchanged",
        f"{tmp_path}/alerts/persona-exporter.rules.yml": "written",
        f"{tmp_path}/alerts/tests/non-default.rules.yml": "written",
        f"{tmp_path}/dashboards/persona-overview.json": "written",
        f"{tmp_path}/dashboards/workflow-performance.json": "unchanged",
    }
    assert all(Path(path).is_file() for path, verdict in listed.items() if verdict != "removed")


def run_demo_script(address: str) -> tuple[subprocess.CompletedProcess[str], float]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "BIN": str(Path(sys.executable).parent),
           "PERSONA_EXPORTER_DEMO_ADDRESS": address}
    started = time.monotonic()
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    return result, time.monotonic() - started


def test_the_demo_refuses_an_exporter_it_did_not_start() -> None:
    """Another persona-exporter on the port answers /healthz too: the demo used to send it
    its events and print success. /readyz names the pid, and the demo checks it is the one
    of the process it started."""
    port = free_port()
    other = subprocess.Popen([*CLI, "serve", "--web.listen-address", f"127.0.0.1:{port}"],
                             stderr=subprocess.PIPE, text=True)
    try:
        assert other.stderr is not None
        for line in other.stderr:
            if "listening on" in line:
                break
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                                  timeout=5).read())
        assert ready["pid"] == other.pid
        result, _ = run_demo_script(f"127.0.0.1:{port}")
        text = scrape(port)
    finally:
        other.terminate()
        other.wait(timeout=30)
    assert result.returncode == 1
    # Which comes first depends on timing: the other exporter answering, or ours dying
    # because the port is taken. Either way: refused, saying why and what to do.
    assert ("another process answers on" in result.stderr
            or "the exporter exited (status 1) before it listened" in result.stderr), \
        result.stderr
    assert "PERSONA_EXPORTER_DEMO_ADDRESS=127.0.0.1:PORT" in result.stderr
    assert "budget remaining" not in result.stdout  # the workflows never ran
    requests = [s for f in text_string_to_metric_families(text)
                if f.name == "persona_llm_requests" for s in f.samples
                if s.name == "persona_llm_requests_total"]
    assert sum(s.value for s in requests) == 0


def test_the_demo_reports_a_port_held_by_something_else_at_once() -> None:
    """The exporter dies at once when it cannot bind; the demo sees the exit instead of
    waiting 10 s for an answer, and the exporter never says it is listening."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result, took = run_demo_script(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert (f"the exporter exited (status 1) before it listened on 127.0.0.1:{port}"
            in result.stderr), result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: another process may hold the port" \
        in result.stderr
    assert "PERSONA_EXPORTER_DEMO_ADDRESS=127.0.0.1:PORT" in result.stderr
    assert "listening on" not in result.stderr
    assert took < 8, took  # the exporter's start-up, not the 10 s wait


def test_make_install_says_what_it_installs(tmp_path: Path) -> None:
    """A first `make demo` or `make test` spends about a minute in pip: a line says what is
    being installed first, and pip's per-package lines are not silenced."""
    root = Path(__file__).resolve().parent.parent
    plan = subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}"], cwd=root,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    lines = plan.splitlines()
    [pip] = [i for i, line in enumerate(lines) if " -m pip install " in line]
    assert any(line.startswith("echo ") and "installing persona-exporter" in line
               for line in lines[:pip]), plan
    assert "--quiet" not in lines[pip] and " -q " not in lines[pip], lines[pip]


def test_every_line_of_a_config_error_is_prefixed(tmp_path: Path) -> None:
    config = tmp_path / "budgets.yaml"
    config.write_text("personas:\n  backend-engineer:\n    tokens: {24h: -5}\n    tokenz: 1\n")
    result = run("check-config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"persona-exporter: {config}: personas.backend-engineer.tokens.24h: expected a "
        "number >= 1, got -5",
        f"persona-exporter: {config}: personas.backend-engineer.tokenz: unknown key "
        "(expected one of: tokens, cost_usd)"]
