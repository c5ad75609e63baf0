"""The compose stack, validated offline: the real Compose v2 binary and the compose-spec
schema accept it, promtool and amtool accept the configs it mounts, and its files keep the
rules a user relies on (every mount exists, images pinned, ports on loopback, healthchecks
where others wait, secrets only as marked local-only defaults). tests/test_stack_e2e.py runs
its Prometheus and Alertmanager configs for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from persona_exporter.bundle.mixin import MixinConfig
from persona_exporter.config import load_config
from persona_exporter.tracing.sink import SCOPE_NAME

from .conftest import required

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE / ".env.example"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def compose_binary() -> str:
    """The Compose v2 binary that scripts/install-compose.sh puts next to the venv's python
    (a different docker-compose on PATH, e.g. Debian's 1.29, would not do)."""
    path = Path(sys.executable).parent / "docker-compose"
    if not path.exists():
        pytest.fail("the Compose v2 binary is missing: run scripts/install-compose.sh "
                    "(make test does)")
    return str(path)


def run_compose(*args: str, cwd: Path = ROOT,
                env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The compose binary on the committed files alone: a user's compose/.env and exported
    variables (their real secrets) are kept out, so the tests check the committed defaults
    and never print a secret."""
    if env_file is None:
        env_file = Path(tempfile.gettempdir()) / "persona-exporter-empty.env"
        env_file.write_text("")
    return subprocess.run([compose_binary(), "--env-file", str(env_file), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)})


@cache
def normalised() -> dict[str, Any]:
    """``docker compose config`` as JSON: anchors merged, defaults interpolated, paths
    absolute, ports and volumes in long form."""
    result = run_compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# Every service of the stack: the loops below run over exactly these, never over nothing.
SERVICES = {"exporter", "demo-agent", "genai-agent", "webhook-receiver", "prometheus",
            "alertmanager", "grafana", "otel-collector", "langfuse-web", "langfuse-worker",
            "postgres", "clickhouse", "redis", "minio"}


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = normalised()["services"]
    return result


def test_the_stack_has_exactly_the_expected_services() -> None:
    assert set(services()) == SERVICES


def host_path(service: str, container_path: str) -> Path:
    """Where a path inside a service's container comes from on the host (its bind mounts)."""
    target = PurePosixPath(container_path)
    for volume in services()[service].get("volumes", []):
        mount = PurePosixPath(volume["target"])
        if volume["type"] == "bind" and (target == mount or mount in target.parents):
            return Path(volume["source"]) / target.relative_to(mount)
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def test_no_mount_is_nested_in_another() -> None:
    """Docker would have to create the inner mount point inside the outer (read-only) bind
    mount, which fails; and host_path above relies on mounts being disjoint."""
    checked = 0
    for name, service in services().items():
        targets = [PurePosixPath(v["target"]) for v in service.get("volumes", [])]
        for outer in targets:
            for inner in targets:
                assert outer not in inner.parents, (name, str(outer), str(inner))
                checked += 1
    assert checked >= 20


def flag(service: str, name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a service's command."""
    command = services()[service]["command"]
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return str(arg.split("=", 1)[1])
        if arg == name:
            return str(command[i + 1])
    raise AssertionError(f"{service}: no {name} in {command}")


# --- the real tools -----------------------------------------------------------------------


@pytest.mark.parametrize("cwd", ["root", "compose"])
def test_compose_v2_accepts_the_file_from_the_root_and_from_compose(cwd: str) -> None:
    args = ("-f", "compose/docker-compose.yml") if cwd == "root" else ()
    result = run_compose(*args, "config", "--quiet", cwd=ROOT if cwd == "root" else COMPOSE)
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version v2" in run_compose("version").stdout


@pytest.mark.parametrize(("old", "new"), [
    ("    restart: unless-stopped\n", "    restart: unless-stopped\n    colour: blue\n"),
    ("      alertmanager:\n        condition: service_healthy\n",
     "      alertmanagr:\n        condition: service_healthy\n"),
], ids=["unknown key", "missing dependency"])
def test_compose_v2_rejects_a_broken_file(tmp_path: Path, old: str, new: str) -> None:
    """The check above can fail."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken.write_text(text.replace(old, new, 1))
    assert run_compose("-f", str(broken), "config", "--quiet").returncode == 1


def test_the_compose_spec_schema_accepts_the_file() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_env_file_one_liner_makes_a_working_env(tmp_path: Path) -> None:
    """The README's command, run as written, gives a fresh strong value to every secret and
    a .env that compose accepts."""
    readme = (ROOT / "README.md").read_text()
    [line] = [line.strip() for line in readme.splitlines()
              if line.strip().startswith("(umask 077; python3 -c")]
    assert line in ENV_EXAMPLE.read_text(), "README and .env.example name different commands"
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / ".env.example").write_text(ENV_EXAMPLE.read_text())
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=30)
    env_file = tmp_path / "compose" / ".env"
    assert env_file.stat().st_mode & 0o077 == 0, "the .env must be readable by its owner only"
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                  if line and not line.startswith("#"))
    generated = [name for name, value in
                 (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#"))
                 if value.endswith("generate-me")]
    assert len(generated) >= 10
    secrets = [values[name] for name in generated]
    assert all(re.search(r"[0-9a-f]{64}$", value) for value in secrets), secrets
    assert len(set(secrets)) == len(secrets)
    assert values["LANGFUSE_PUBLIC_KEY"].startswith("pk-lf-")
    assert values["LANGFUSE_SECRET_KEY"].startswith("sk-lf-")
    assert re.fullmatch(r"[0-9a-f]{64}", values["LANGFUSE_ENCRYPTION_KEY"])
    result = run_compose("-f", str(COMPOSE_FILE), "config", "--format", "json",
                         env_file=env_file)
    assert result.returncode == 0, result.stderr
    web = json.loads(result.stdout)["services"]["langfuse-web"]["environment"]
    assert web["LANGFUSE_INIT_PROJECT_SECRET_KEY"] == values["LANGFUSE_SECRET_KEY"]


def test_promtool_accepts_the_stacks_prometheus_config(tmp_path: Path) -> None:
    promtool = required("promtool")
    config = yaml.safe_load(host_path("prometheus", flag("prometheus", "--config.file"))
                            .read_text())
    rule_files = [host_path("prometheus", path) for path in config["rule_files"]]
    assert rule_files == [ROOT / "alerts" / "persona-exporter.rules.yml"]
    config["rule_files"] = [str(path) for path in rule_files]  # resolved as compose mounts
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout), result.stdout


def test_amtool_accepts_the_stacks_alertmanager_config() -> None:
    amtool = required("amtool")
    config = host_path("alertmanager", flag("alertmanager", "--config.file"))
    assert config == ROOT / "alerts" / "alertmanager.yml"
    result = subprocess.run([amtool, "check-config", str(config)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules a user relies on -------------------------------------------------------------


def test_every_bind_mount_exists_and_is_read_only() -> None:
    binds = [(name, volume) for name, service in services().items()
             for volume in service.get("volumes", []) if volume["type"] == "bind"]
    assert {name for name, _ in binds} == {"exporter", "demo-agent", "prometheus",
                                           "alertmanager", "grafana", "otel-collector"}
    for name, volume in binds:
        assert Path(volume["source"]).exists(), (name, volume["source"])
        assert volume.get("read_only") is True, (name, volume["target"])


def test_every_file_a_service_is_told_to_read_is_mounted() -> None:
    checks = {
        host_path("exporter", flag("exporter", "--config.file")):
            COMPOSE / "exporter" / "config.yaml",
        host_path("demo-agent", flag("demo-agent", "--budgets")):
            COMPOSE / "exporter" / "config.yaml",
        host_path("prometheus", flag("prometheus", "--config.file")):
            COMPOSE / "prometheus" / "prometheus.yml",
        host_path("alertmanager", flag("alertmanager", "--config.file")):
            ROOT / "alerts" / "alertmanager.yml",
        host_path("otel-collector", flag("otel-collector", "--config")):
            COMPOSE / "otel-collector" / "config.yaml",
    }
    assert all(path.is_file() for path in checks), checks
    assert list(checks) == list(checks.values())
    # Grafana: the provisioning directories, the dashboards the provider reads, the home one.
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    [provider] = yaml.safe_load((provisioning / "dashboards" / "persona-exporter.yaml")
                                .read_text())["providers"]
    boards = host_path("grafana", provider["options"]["path"])
    uids = {json.loads(p.read_text())["uid"] for p in boards.glob("*.json")}
    assert uids == {MixinConfig().persona_dashboard_uid, MixinConfig().workflow_dashboard_uid}
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home) == ROOT / "dashboards" / "persona-overview.json"
    assert load_config(COMPOSE / "exporter" / "config.yaml").personas


def test_the_project_image_is_built_once_and_never_pulled() -> None:
    built = [name for name, service in services().items() if "build" in service]
    assert built == ["exporter"], "one build per image tag: parallel builds of a tag race"
    assert services()["exporter"]["build"]["context"] == str(ROOT)
    users = [name for name, service in services().items()
             if service["image"] == services()["exporter"]["image"]]
    assert sorted(users) == ["demo-agent", "exporter", "genai-agent", "webhook-receiver"]
    for name in users:
        service = services()[name]
        assert "build" in service or service["pull_policy"] == "never", name
        # The Dockerfile's HEALTHCHECK probes the exporter's port: each service either
        # probes what it serves or turns the inherited one off.
        check = service.get("healthcheck", {})
        assert check.get("disable") or any(f":{port['target']}/" in " ".join(check["test"])
                                           for port in service.get("ports", [])), name


def test_every_image_is_pinned() -> None:
    assert set(services()) == SERVICES
    for name, service in services().items():
        image = service["image"]
        if image == "persona-exporter:local":
            continue  # built here, from the Dockerfile
        digest = re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", image)
        tag = re.fullmatch(r"[\w./-]+:(v?\d+(\.\d+)+)", image)
        assert digest or tag, f"{name}: {image} is not pinned to a version or a digest"
        assert "latest" not in image, name


def test_every_published_port_is_loopback_only() -> None:
    published = [(name, port) for name, service in services().items()
                 for port in service.get("ports", [])]
    assert len(published) >= 9
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_services_waited_on_as_healthy_have_a_healthcheck() -> None:
    waited = {dependency for service in services().values()
              for dependency, how in service.get("depends_on", {}).items()
              if how["condition"] == "service_healthy"}
    assert waited >= {"exporter", "postgres", "clickhouse", "redis", "minio", "alertmanager",
                      "prometheus", "webhook-receiver"}
    for name in waited:
        check = services()[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
    # The collector's image has no shell; nothing may wait for it to be healthy.
    assert "otel-collector" not in waited


def test_every_service_has_a_memory_limit_a_restart_policy_and_log_rotation() -> None:
    assert set(services()) == SERVICES
    for name, service in services().items():
        assert int(service["deploy"]["resources"]["limits"]["memory"]) > 0, name
        assert service["restart"] == "unless-stopped", name
        assert service["logging"]["options"]["max-size"], name


def test_state_lives_in_named_volumes() -> None:
    # the exporter's durable state is where its image points PERSONA_EXPORTER_STORAGE_PATH
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PERSONA_EXPORTER_STORAGE_PATH=/var/lib/persona-exporter" in dockerfile
    assert "PERSONA_EXPORTER_STORAGE_PATH" not in services()["exporter"].get("environment", {})
    # redis: Langfuse's queued ingestion jobs, at the redis image's working directory, as
    # Langfuse's own docker-compose.yml mounts langfuse_redis_data (a plain `down` and `up`
    # would lose them).
    state = {"exporter": "/var/lib/persona-exporter",
             "prometheus": "/prometheus", "alertmanager": "/alertmanager",
             "grafana": "/var/lib/grafana", "postgres": "/var/lib/postgresql/data",
             "clickhouse": "/var/lib/clickhouse", "minio": "/data", "redis": "/data"}
    for name, target in state.items():
        [volume] = [v for v in services()[name]["volumes"] if v["target"] == target]
        assert volume["type"] == "volume", name
        assert volume["source"] in normalised()["volumes"], name
        assert not volume.get("read_only"), name


# --- secrets ------------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                if line and not line.startswith("#"))


def test_secrets_are_only_marked_local_only_defaults_that_env_overrides() -> None:
    text = COMPOSE_FILE.read_text()
    defaults: dict[str, set[str]] = {}
    for name, default in VARIABLE.findall(text):
        defaults.setdefault(name, set()).add(default)
    assert set(defaults) == set(env_example()), "compose and .env.example name other variables"
    assert len(defaults) >= 10
    for name, values in defaults.items():
        assert len(values) == 1, f"{name} has different defaults: {values}"
    secret_names = {name for name, value in env_example().items()
                    if value.endswith("generate-me")}
    assert len(secret_names) >= 10
    for name in secret_names:
        [default] = defaults[name]
        assert "local-only" in default or set(default) == {"0"}, (name, default)
    # Every setting that takes a secret goes through one of those variables.
    secret_settings = [(key, value) for service in services().values()
                       for key, value in (service.get("environment") or {}).items()
                       if re.search(r"PASSWORD|SECRET|TOKEN|_AUTH$|SALT|ENCRYPTION_KEY", key)]
    assert len(secret_settings) >= 20
    for key, value in secret_settings:
        assert value is None or "local-only" in str(value) or set(str(value)) == {
            "0"}, f"{key} has a value that is not a marked local-only default"
    assert not (COMPOSE / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()
    assert "compose/.env" in (ROOT / ".gitignore").read_text().splitlines()


# --- the services fit together --------------------------------------------------------------


def test_prometheus_scrapes_the_exporter_with_the_mixins_job_and_intervals() -> None:
    mixin = MixinConfig()
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    assert config["global"] == {"scrape_interval": mixin.scrape_interval,
                                "evaluation_interval": mixin.evaluation_interval}
    jobs = {job["job_name"]: job["static_configs"][0]["targets"]
            for job in config["scrape_configs"]}
    assert jobs[mixin.job] == ["exporter:9464"]
    assert services()["exporter"]["ports"][0]["target"] == 9464
    assert jobs["otel-collector-genai"] == ["otel-collector:8889"]
    [alerting] = config["alerting"]["alertmanagers"]
    assert alerting["static_configs"][0]["targets"] == ["alertmanager:9093"]
    datasource = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "datasources" /
                                 "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == mixin.scrape_interval
    # The dashboards' links and the alerts' dashboard_url point at this Grafana.
    grafana_port = services()["grafana"]["ports"][0]
    assert mixin.grafana_url == f"http://{grafana_port['host_ip']}:{grafana_port['published']}"


def test_grafana_has_no_anonymous_access_and_its_password_from_env() -> None:
    env = services()["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "${GRAFANA_ADMIN_PASSWORD" in COMPOSE_FILE.read_text()


def collector() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "otel-collector" / "config.yaml")
                                          .read_text())
    return data


def test_the_collector_config_is_complete_and_named_for_its_image() -> None:
    config = collector()
    version = tuple(int(n) for n in services()["otel-collector"]["image"].split(":")[1]
                    .split("."))
    otlp = config["receivers"]["otlp"]["protocols"]
    assert (otlp["grpc"]["endpoint"], otlp["http"]["endpoint"]) == ("0.0.0.0:4317",
                                                                     "0.0.0.0:4318")
    assert config["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "traces/persona-exporter", "metrics"}
    for name, pipeline in pipelines.items():
        assert pipeline["processors"][0] == "memory_limiter", name
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), (name, kind)
    used = {c for p in pipelines.values() for kind in ("receivers", "processors", "exporters")
            for c in p[kind]}
    defined = {c for kind in ("receivers", "processors", "exporters") for c in config[kind]}
    assert used == defined, "defined but unused components"
    assert set(config["service"]["extensions"]) == set(config["extensions"])
    # From 0.144 the OTLP/HTTP exporter is otlp_http; otlphttp is a deprecated alias.
    exporter_type = "otlp_http" if version >= (0, 144) else "otlphttp"
    otlp = [name for name in config["exporters"] if name.startswith(("otlp", "otlphttp"))]
    assert sorted(otlp) == ["otlp_http/langfuse", "otlp_http/persona-exporter"]
    assert {name.split("/")[0] for name in otlp} == {exporter_type}
    assert pipelines["traces"]["exporters"] == ["otlp_http/langfuse"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert config["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"


def test_the_collector_sends_to_langfuse_with_the_keys_langfuse_is_initialised_with() -> None:
    config = collector()
    exporter = config["exporters"]["otlp_http/langfuse"]
    assert exporter["endpoint"] == "http://langfuse-web:3000/api/public/otel"
    auth = config["extensions"][exporter["auth"]["authenticator"]]["client_auth"]
    assert auth == {"username": "${env:LANGFUSE_PUBLIC_KEY}",
                    "password": "${env:LANGFUSE_SECRET_KEY}"}
    env, web = services()["otel-collector"]["environment"], services()["langfuse-web"]
    assert env["LANGFUSE_PUBLIC_KEY"] == web["environment"]["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"]
    assert env["LANGFUSE_SECRET_KEY"] == web["environment"]["LANGFUSE_INIT_PROJECT_SECRET_KEY"]
    assert web["environment"]["LANGFUSE_INIT_ORG_ID"]
    assert web["ports"][0]["target"] == 3000
    assert exporter["headers"]["x-langfuse-ingestion-version"] == "4"


def test_langfuse_web_and_worker_move_together_and_match_the_sdk() -> None:
    web, worker = services()["langfuse-web"], services()["langfuse-worker"]
    assert web["image"].split(":")[1] == worker["image"].split(":")[1]
    assert web["image"].split(":")[1].startswith("4.")
    shared = {k: v for k, v in web["environment"].items()
              if not k.startswith(("LANGFUSE_INIT_", "NEXTAUTH_SECRET"))
              and k != "LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"}
    assert shared == {k: v for k, v in worker["environment"].items()
                      if k != "LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"}
    # SDK v5 speaks to server v4 (x-langfuse-ingestion-version 4): pinned together.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"langfuse==5\.\d+\.\d+"', pyproject)
    assert set(web["depends_on"]) == set(worker["depends_on"]) == {
        "postgres", "clickhouse", "redis", "minio"}


def test_the_demo_agent_reaches_the_exporter_and_the_collector() -> None:
    demo = services()["demo-agent"]
    assert flag("demo-agent", "--exporter-url") == "http://exporter:9464"
    assert flag("demo-agent", "--iterations") == "0"  # on a loop
    assert demo["environment"]["PERSONA_EXPORTER_TOKEN"] == services()["exporter"][
        "environment"]["PERSONA_EXPORTER_TOKEN"]
    # The agent's events carry trace ids; the exporter sends metrics and spans to the
    # collector, and only the collector holds Langfuse's keys.
    assert "--exporter-traces" in demo["command"]
    assert not any(name.startswith(("OTEL_", "LANGFUSE_")) for name in demo["environment"])
    assert services()["exporter"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        "http://otel-collector:4318")
    holders = {name for name, service in services().items()
               if any(re.fullmatch(r"LANGFUSE_(INIT_PROJECT_)?(PUBLIC|SECRET)_KEY", k)
                      for k in service.get("environment") or {})}
    assert holders == {"otel-collector", "langfuse-web"}
    assert demo["depends_on"]["exporter"]["condition"] == "service_healthy"


def test_the_collector_fans_other_instrumentations_out_to_the_exporters_receiver() -> None:
    config = collector()
    pipeline = config["service"]["pipelines"]["traces/persona-exporter"]
    assert pipeline["receivers"] == config["service"]["pipelines"]["traces"]["receivers"]
    assert pipeline["exporters"] == ["otlp_http/persona-exporter"]
    receiver = config["exporters"]["otlp_http/persona-exporter"]
    # the otlp_http exporter appends /v1/traces: the exporter's receiver
    assert receiver["endpoint"] == "http://exporter:9464"
    assert receiver["headers"]["Authorization"] == "Bearer ${env:PERSONA_EXPORTER_TOKEN}"
    assert services()["otel-collector"]["environment"]["PERSONA_EXPORTER_TOKEN"] == \
        services()["exporter"]["environment"]["PERSONA_EXPORTER_TOKEN"]
    # The spans the exporter makes from events were counted as events: they must not come
    # back through the receiver. The filter names the scope its trace sink really uses.
    [drop] = [p for p in pipeline["processors"] if p.startswith("filter/")]
    assert config["processors"][drop]["traces"]["span"] == [
        f'instrumentation_scope.name == "{SCOPE_NAME}"']
    assert pipeline["processors"].index(drop) < pipeline["processors"].index("batch")
    agent = services()["genai-agent"]
    assert agent["entrypoint"][-1] == "persona_exporter.tools.genai_agent"
    assert agent["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert agent["command"][agent["command"].index("--iterations") + 1] == "0"


def test_media_urls_point_the_browser_at_minios_published_port() -> None:
    """langfuse-web presigns media upload and download URLs for its
    LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT, and the browser (or an SDK on the host) uses them:
    http://minio:9000 resolves only inside the stack. As Langfuse's own docker-compose.yml
    does (langfuse-web http://localhost:9090, MinIO published 9090:9000, the worker
    http://minio:9000), the web gets the published S3 port and the worker the service."""
    web = services()["langfuse-web"]["environment"]
    worker = services()["langfuse-worker"]["environment"]
    [s3] = [port for port in services()["minio"]["ports"] if port["target"] == 9000]
    assert s3["host_ip"] == "127.0.0.1"
    assert web["LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"] == f"http://localhost:{s3['published']}"
    assert worker["LANGFUSE_S3_MEDIA_UPLOAD_ENDPOINT"] == "http://minio:9000"
    assert web["LANGFUSE_S3_EVENT_UPLOAD_ENDPOINT"] == "http://minio:9000"
    published = [int(port["published"]) for service in services().values()
                 for port in service.get("ports", [])]
    assert published.count(int(s3["published"])) == 1, "the port is taken by another service"


def test_grafanas_provisioning_has_every_folder_it_reads_and_only_valid_files() -> None:
    """Grafana logs an error at every start for a missing provisioning/alerting/ or
    provisioning/plugins/ (pkg/services/provisioning/{alerting,plugins}/config_reader.go);
    the alerting reader also refuses (older versions) or warns about (newer) any file that
    is not .yaml, .yml or .json, so each folder holds a minimal valid YAML file."""
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    folders = {path.name: sorted(path.iterdir()) for path in provisioning.iterdir()}
    assert set(folders) == {"alerting", "dashboards", "datasources", "plugins"}
    for name, files in folders.items():
        assert files, f"{name}/ is empty: git would not keep it"
        for path in files:
            assert path.suffix in (".yaml", ".yml"), path
            assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path
    plugins = yaml.safe_load(folders["plugins"][0].read_text())
    assert plugins.get("apps") in (None, [])  # nothing to install
