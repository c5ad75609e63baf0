"""deploy/kubernetes/: in step with the generator, valid against the Kubernetes API (strict,
an old and the newest supported version) and the CRDs, and wired together as the Prometheus
Operator, Grafana and the exporter itself will read it.

No kustomize binary is in CI, so :func:`build` renders a kustomization the way
``kustomize build`` does for the few fields these files use: ``resources`` (files and
directories), ``components``, ``configMapGenerator`` (create and ``behavior: replace``,
without the content-hash suffix kustomize adds to the name and to every reference) and
``patches`` with a ``path`` (a strategic merge: maps merge, lists of named items merge by
name, as for containers, env and volumes). What it cannot render fails the test. (Its
output for the base and each overlay was compared, once, with ``kubectl kustomize``'s
(kustomize v5.5.0): the same objects but for the ConfigMap's hash suffix.)
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from persona_exporter.bundle import kubernetes
from persona_exporter.bundle.mixin import MixinConfig
from persona_exporter.bundle.rules import NON_DEFAULT, render_rules
from persona_exporter.config import load_config
from persona_exporter.tracing.sink import DEFAULT_SHUTDOWN_TIMEOUT

from .conftest import free_port
from .test_serve import CLI, http, wait_serving

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / kubernetes.OUT
SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
VALIDATOR = SCHEMAS / "validate_manifests.py"
# The oldest Kubernetes the manifests promise to fit (and kubernetes-validate still knows),
# and the newest it knows.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.latest_version())
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))


# -- a minimal kustomize build ----------------------------------------------------------

def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _merge(target: Any, patch: Any) -> Any:
    """A strategic merge patch for maps and lists of named items (merge key ``name``)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = _merge(target[key], value) if key in target else value
        return merged
    if (isinstance(target, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in target + patch)):
        by_name = {item["name"]: item for item in target}
        merged_list = [_merge(by_name[i["name"]], i) if i["name"] in by_name else i
                       for i in patch]
        patched = {i["name"] for i in patch}
        return [i for i in target if i["name"] not in patched] + merged_list
    return patch


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects of that kind and name"
    return found[0]


def _existing(folder: Path, entry: str, field: str) -> Path:
    path = (folder / entry).resolve()
    assert path.exists(), f"{folder / 'kustomization.yaml'}: {field}: {entry} does not exist"
    return path


def build(folder: Path, parent: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What ``kustomize build folder`` gives, for the fields these kustomizations use. A
    Component works on its ``parent``'s objects, as kustomize applies one: after the
    parent's resources, before the parent's own generators and patches."""
    kustomization = _docs(folder / "kustomization.yaml")[0]
    known = {"apiVersion", "kind", "resources", "components", "configMapGenerator", "patches"}
    assert set(kustomization) <= known, (
        f"{folder}: {sorted(set(kustomization) - known)}: not rendered by this test's build")
    assert (kustomization["kind"] == "Component") == (parent is not None), folder
    objects: list[dict[str, Any]] = parent if parent is not None else []
    for entry in kustomization.get("resources", []):
        path = _existing(folder, entry, "resources")
        objects += build(path) if path.is_dir() else _docs(path)
    for entry in kustomization.get("components", []):
        objects = build(_existing(folder, entry, "components"), objects)
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: _existing(folder, f, "configMapGenerator").read_text()
                for f in generator["files"]}
        if generator.get("behavior") == "replace":
            _find(objects, "ConfigMap", generator["name"])["data"] = data
        else:
            metadata = {"name": generator["name"],
                        **({"labels": generator["options"]["labels"]}
                           if "labels" in generator.get("options", {}) else {})}
            objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
                            "data": data})
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{folder}: {patch_entry}: only path patches"
        for patch in _docs(_existing(folder, patch_entry["path"], "patches")):
            target = _find(objects, patch["kind"], patch["metadata"]["name"])
            objects[objects.index(target)] = _merge(target, patch)
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (exporter,) = pod_spec(objects)["containers"]
    return dict(exporter)


def arg(objects: list[dict[str, Any]], flag: str) -> str:
    values = [str(a).split("=", 1)[1] for a in container(objects)["args"]
              if a.startswith(f"{flag}=")]
    assert len(values) == 1, f"{flag}: {values}"
    return values[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def operator_job(monitor: dict[str, Any], service: dict[str, Any]) -> str:
    """The ``job`` label the Prometheus Operator gives the series scraped through this
    ServiceMonitor: the value of the Service's label named by ``jobLabel``, else the
    Service's name (the ``jobLabel`` description in prometheus-operator's
    monitoring.coreos.com_servicemonitors.yaml, vendored in tests/k8s_schemas)."""
    job_label = monitor["spec"].get("jobLabel")
    labels = service["metadata"].get("labels", {})
    return str(labels[job_label]) if job_label and job_label in labels \
        else str(service["metadata"]["name"])


RENDERS = {"base": DEPLOY / "base", **{f"overlays/{p.name}": p for p in OVERLAYS}}


@pytest.fixture(scope="module", params=sorted(RENDERS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(RENDERS[request.param])


# -- generated, complete, valid ---------------------------------------------------------

def test_committed_files_are_what_the_generator_writes() -> None:
    wanted = kubernetes.render(ROOT)
    committed = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
                 for p in sorted(DEPLOY.rglob("*")) if p.is_file()}
    assert sorted(committed) == sorted(wanted), "deploy/kubernetes/: run `make generate`"
    for path, text in wanted.items():
        assert committed[path] == text, f"{path} is stale: run `make generate`"
        assert not re.search(r"[&*]id\d", text), f"{path}: a YAML alias; write values out"


def test_generate_writes_the_tree_and_removes_what_is_no_longer_generated(
        tmp_path: Path) -> None:
    """`persona-exporter generate` on a copy of the repository's generated inputs."""
    for folder in ("dashboards", "alerts"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    stale = tmp_path / kubernetes.OUT / "base" / "removed.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("kind: ConfigMap\n")
    result = subprocess.run([*CLI, "generate", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    written = {str(p.relative_to(tmp_path)): p.read_text() for p in
               sorted((tmp_path / kubernetes.OUT).rglob("*")) if p.is_file()}
    assert written == kubernetes.render(ROOT)


def test_overlays_cover_the_common_variants() -> None:
    assert {p.name for p in OVERLAYS} == {"kube-prometheus-stack", "grafana-operator",
                                          "external-langfuse"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomization_entry_exists(path: Path) -> None:
    """Also for a component no overlay uses: build() asserts each referenced path."""
    component = _docs(path)[0]["kind"] == "Component"
    build(path.parent, build(DEPLOY / "base") if component else None)


def test_every_file_is_used_by_a_kustomization() -> None:
    used = set()
    for path in KUSTOMIZATIONS:
        kustomization = _docs(path)[0]
        entries = [*kustomization.get("resources", []), *kustomization.get("components", []),
                   *(p["path"] for p in kustomization.get("patches", [])),
                   *(f for g in kustomization.get("configMapGenerator", []) for f in g["files"])]
        used |= {(path.parent / e).resolve() for e in entries}
    files = {p.resolve() for p in DEPLOY.rglob("*") if p.is_file()}
    assert files - used - {p.resolve() for p in KUSTOMIZATIONS} == set()


def _validate(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(VALIDATOR), "--strict", "-k", version,
                           *map(str, files)], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_is_valid(version: str, tmp_path: Path) -> None:
    """Each render (the base, each overlay with its patches applied, the component through
    its overlay) in one file per render, strict: unknown fields are errors."""
    files = []
    for name, folder in sorted(RENDERS.items()):
        path = tmp_path / f"{name.replace('/', '-')}.yaml"
        path.write_text(yaml.safe_dump_all(build(folder), sort_keys=False))
        files.append(path)
    result = _validate(files, version)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = result.stdout.count("\nok ") + result.stdout.startswith("ok ")
    assert checked == sum(len(build(f)) for f in RENDERS.values())
    assert "GrafanaDashboard/" in result.stdout and "PrometheusRule/" in result.stdout


def test_the_validator_rejects_what_the_api_server_would() -> None:
    """Against the vendored examples: a wrong type and an unknown field fail, per kind, so a
    schema that stopped being strict (or a validator that stopped looking) fails here."""
    examples = sorted((SCHEMAS / "examples").glob("*.yaml"))
    result = _validate(examples, KUBERNETES_VERSIONS[0])
    for example in examples:
        lines = [line for line in result.stdout.splitlines() if f"{example}[" in line]
        assert lines, example.name
        wanted = "ok " if example.name.endswith("-valid.yaml") else "INVALID "
        assert all(line.startswith(wanted) for line in lines), (example.name, lines)
    assert "invalid-type" in result.stdout and "unknown-field" in result.stdout
    unknown = _validate([SCHEMAS / "examples" / "deployment-valid.yaml"], "1.25")
    assert unknown.returncode == 0
    no_schema = subprocess.run([sys.executable, str(VALIDATOR), "--strict", "-"],
                               input="apiVersion: example.com/v1\nkind: Widget\n"
                                     "metadata: {name: w}\n",
                               capture_output=True, text=True, timeout=60, check=False)
    assert no_schema.returncode == 1 and "no schema" in no_schema.stdout


# -- wiring the schemas cannot see ------------------------------------------------------

def test_the_servicemonitor_scrapes_the_service_as_the_rules_job(
        rendered: list[dict[str, Any]]) -> None:
    service, monitor = one(rendered, "Service"), one(rendered, "ServiceMonitor")
    pod_labels = one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace: the Service's
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert matches(service["spec"]["selector"], pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
        assert container_ports[port["targetPort"]] == int(arg(rendered, "--web.listen-address")
                                                          .rpartition(":")[2])
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    assert {e["interval"] for e in monitor["spec"]["endpoints"]} == {
        MixinConfig().scrape_interval}
    job = operator_job(monitor, service)
    selected = set(re.findall(r'job="([^"]*)"', yaml.safe_dump(
        one(rendered, "PrometheusRule")["spec"])))
    assert selected == {job} == {MixinConfig().job}


def test_a_name_prefix_would_not_change_the_job() -> None:
    """kustomize's namePrefix renames the Service; jobLabel keeps the job the rules'."""
    objects = build(DEPLOY / "base")
    service = copy.deepcopy(one(objects, "Service"))
    service["metadata"]["name"] = "team-a-" + service["metadata"]["name"]
    assert operator_job(one(objects, "ServiceMonitor"), service) == MixinConfig().job


def test_a_non_default_job_is_wired_through() -> None:
    files = kubernetes.render(ROOT, NON_DEFAULT)
    base = {Path(p).name: [d for d in yaml.safe_load_all(t) if d] for p, t in files.items()
            if "/base/" in p and p.endswith(".yaml") and not p.endswith("/config.yaml")}
    service, monitor = base["service.yaml"][0], base["servicemonitor.yaml"][0]
    assert operator_job(monitor, service) == NON_DEFAULT.job == "agents"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    rule = base["prometheusrule.yaml"][0]
    assert rule["spec"]["groups"] == yaml.safe_load(render_rules(NON_DEFAULT))["groups"]


def test_the_prometheusrule_holds_exactly_the_generated_rules() -> None:
    rule = one(build(DEPLOY / "base"), "PrometheusRule")
    committed = yaml.safe_load((ROOT / "alerts" / "persona-exporter.rules.yml").read_text())
    assert rule["spec"] == committed


def test_the_prometheusrule_passes_promtool_and_the_rule_tests(promtool: str,
                                                               tmp_path: Path) -> None:
    """The groups written out as a rule file replace alerts/persona-exporter.rules.yml (and
    those of a non-default render replace non-default.rules.yml) in every promtool test."""
    extracted = {}
    for name, config in (("persona-exporter.rules.yml", MixinConfig()),
                         ("non-default.rules.yml", NON_DEFAULT)):
        text = kubernetes.render(ROOT, config)[str(kubernetes.OUT / "base/prometheusrule.yaml")]
        groups = yaml.safe_load(text)["spec"]["groups"]
        extracted[name] = tmp_path / f"extracted-{name}"
        extracted[name].write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", *map(str, extracted.values())],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = []
    for source in sorted((ROOT / "alerts" / "tests").glob("*.test.yml")):
        document = yaml.safe_load(source.read_text())
        replaced = [str(extracted[Path(f).name]) for f in document["rule_files"]]
        assert all("extracted-" in f for f in replaced), source.name
        document["rule_files"] = replaced
        tests.append(tmp_path / source.name)
        tests[-1].write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", *map(str, tests)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(tests) >= 4 and result.stdout.count("SUCCESS") == len(tests)


def test_the_dashboards_are_byte_identical_and_found_by_grafana() -> None:
    objects = build(DEPLOY / "overlays" / "grafana-operator")
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"}
    dashboards = sorted((ROOT / "dashboards").glob("*.json"))
    assert len(dashboards) == len(maps) == 2
    contents = {key: value for m in maps.values() for key, value in m["data"].items()}
    assert contents == {d.name: d.read_text(encoding="utf-8") for d in dashboards}
    # Their queries select the job the ServiceMonitor produces, as the rules do.
    job = operator_job(one(objects, "ServiceMonitor"), one(objects, "Service"))
    assert set(re.findall(r'job=\\"([^"\\]*)\\"', "".join(contents.values()))) == {job}
    for resource in (o for o in objects if o["kind"] == "GrafanaDashboard"):
        ref = resource["spec"]["configMapRef"]
        assert ref["key"] in maps[ref["name"]]["data"]
    assert len([o for o in objects if o["kind"] == "GrafanaDashboard"]) == len(dashboards)


def test_every_mounted_key_exists_and_the_token_is_a_reference(
        rendered: list[dict[str, Any]]) -> None:
    spec, exporter = pod_spec(rendered), container(rendered)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in exporter["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in
              one(rendered, "StatefulSet")["spec"]["volumeClaimTemplates"]}
    assert set(mounts) == set(volumes) | claims
    config_maps = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "ConfigMap"}
    for volume in volumes.values():
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]["data"]
            keys = [i["key"] for i in volume["configMap"].get("items", [])] or list(data)
            assert set(keys) <= set(data)
    # The config file serve is given is a key of the mounted ConfigMap.
    config_path = Path(arg(rendered, "--config.file"))
    (config_volume,) = [n for n, p in mounts.items() if Path(p) == config_path.parent]
    config_text = config_maps[volumes[config_volume]["configMap"]["name"]]["data"][
        config_path.name]
    # The token: a file of the Secret's volume, named in the config; no Secret shipped.
    (token_volume,) = [v for v in volumes.values() if "secret" in v]
    (item,) = token_volume["secret"]["items"]
    token_file = Path(mounts[token_volume["name"]]) / item["path"]
    assert token_volume["secret"]["secretName"] == kubernetes.TOKEN_SECRET
    assert item["key"] == kubernetes.TOKEN_KEY
    assert token_volume["secret"].get("optional") is not True  # no token: no start
    assert yaml.safe_load(config_text)["server"]["token_file"] == str(token_file)
    assert not [o for o in rendered if o["kind"] == "Secret"]
    for variable in exporter.get("env", []):  # credentials only by reference
        if re.search(r"KEY|TOKEN|SECRET|PASSWORD", variable["name"]):
            assert set(variable) == {"name", "valueFrom"}, variable["name"]
    # The durable state is on the replica's own claim, where serve keeps it.
    state_mount = Path(arg(rendered, "--storage.path"))
    assert {n for n, p in mounts.items() if Path(p) == state_mount} <= claims


def test_the_configs_are_accepted_by_serve(rendered: list[dict[str, Any]],
                                           tmp_path: Path) -> None:
    """check-config, the validation of serve itself, with the token file and the overlay's
    environment (secret values stand in) as in the pod."""
    config_path = Path(arg(rendered, "--config.file"))
    text = next(o["data"][config_path.name] for o in rendered if o["kind"] == "ConfigMap"
                and config_path.name in o.get("data", {}))
    token = tmp_path / "token"
    token.write_text("a-test-token\n")
    local = tmp_path / "config.yaml"
    local.write_text(text.replace(yaml.safe_load(text)["server"]["token_file"], str(token)))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LANGFUSE_", "OTEL_", "PERSONA_EXPORTER_"))}
    for variable in container(rendered).get("env", []):
        env[variable["name"]] = variable.get("value", "stand-in-secret")
    result = subprocess.run([*CLI, "check-config", str(local)], capture_output=True, text=True,
                            env=env, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "ingest token: server.token_file" in result.stdout
    assert load_config(local).personas


def _shutdown_deadline() -> float:
    """The longest a SIGTERM'd serve takes by its own deadlines, read from serve.py (a
    changed or new deadline there fails this test until it is counted): uvicorn's graceful
    shutdown, the gRPC listener's stop (+1 s of its wait), the forwarder's close, the trace
    sink's shutdown (tracing/sink.py) and the metrics bridge's, one after the other."""
    source = (ROOT / "exporter/persona_exporter/server/serve.py").read_text()
    found = {name: re.findall(pattern, source) for name, pattern in (
        ("uvicorn", r"timeout_graceful_shutdown=(\d+)"),
        ("grpc", r"grpc_listener\.stop, (\d+)\)"),
        ("forwarder", r"forwarder\.close\((\d+)\)"),
        ("bridge", r"bridge\.shutdown\((\d+)\)"))}
    assert all(len(v) >= 1 for v in found.values()), found
    return (float(found["uvicorn"][0]) + float(found["grpc"][0]) + 1
            + max(map(float, found["forwarder"])) + DEFAULT_SHUTDOWN_TIMEOUT
            + max(map(float, found["bridge"])))


def test_the_grace_period_outlasts_the_shutdown() -> None:
    spec = pod_spec(build(DEPLOY / "base"))
    pre_stop = container(build(DEPLOY / "base"))["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    deadline = _shutdown_deadline()
    assert deadline >= 20  # the sum really was read
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + deadline


def test_the_pod_is_locked_down(rendered: list[dict[str, Any]]) -> None:
    spec, exporter = pod_spec(rendered), container(rendered)
    pod, own = spec["securityContext"], exporter["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert set(exporter["resources"]) == {"requests", "limits"}
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/readyz"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in dockerfile
    assert f"mkdir -p {arg(rendered, '--storage.path')}" in dockerfile


def test_policy_and_budget_select_the_pods(rendered: list[dict[str, Any]]) -> None:
    pod_labels = one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    policy, budget = one(rendered, "NetworkPolicy"), one(rendered, "PodDisruptionBudget")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert matches(budget["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in container(rendered)["ports"]}
    sources = []
    for rule in policy["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= port_names
        sources += [f["namespaceSelector"]["matchLabels"] for f in rule["from"]]
    assert {kubernetes.INGEST_NAMESPACE_LABEL: "true"} in sources
    assert {"kubernetes.io/metadata.name": kubernetes.MONITORING_NAMESPACE} in sources
    for obj in rendered:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "persona-exporter", obj["kind"]


def test_replicas_keep_their_own_state_and_clients_their_replica() -> None:
    """The multi-replica story: a claim per replica where serve keeps its state, a
    client's retries sent to the replica that remembers its batch ids, and drains that
    take one replica at a time but never block on a single one."""
    objects = build(DEPLOY / "base")
    spec = one(objects, "StatefulSet")["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == arg(objects, "--storage.path")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one(objects, "Service")["spec"]["sessionAffinity"] == "ClientIP"
    assert spec["podManagementPolicy"] == "Parallel"
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": spec["selector"]["matchLabels"]}}


def test_the_kube_prometheus_stack_overlay_sets_the_release_label() -> None:
    base = build(DEPLOY / "base")
    overlay = build(DEPLOY / "overlays" / "kube-prometheus-stack")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        patched, original = one(overlay, kind), one(base, kind)
        assert patched["metadata"]["labels"] == {**original["metadata"]["labels"],
                                                 "release": kubernetes.RELEASE}
        assert patched["spec"] == original["spec"]


def test_the_external_langfuse_overlay_forwards_with_referenced_keys() -> None:
    objects = build(DEPLOY / "overlays" / "external-langfuse")
    env = {v["name"]: v for v in container(objects)["env"]}
    assert {"LANGFUSE_BASE_URL", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"} <= set(env)
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == kubernetes.LANGFUSE_SECRET
    config = yaml.safe_load(next(o["data"]["config.yaml"] for o in objects
                                 if o["kind"] == "ConfigMap" and "config.yaml" in o["data"]))
    assert config["otlp_forward"] == [{"name": "langfuse", "kind": "langfuse"}]
    # The rest of the pod is the base's.
    assert container(objects)["args"] == container(build(DEPLOY / "base"))["args"]


COMPONENTS = sorted(p.parent for p in (DEPLOY / "components").glob("*/kustomization.yaml"))


def test_the_variants_combine_in_one_kustomization(tmp_path: Path) -> None:
    """A cluster with kube-prometheus-stack, the Grafana Operator and an external Langfuse
    lists the base and the three components. (Two overlays cannot be combined: each brings
    the base, and kustomize refuses the second StatefulSet, "may not add resource with an
    already registered id"; kubectl kustomize v5.5.0 builds this combination.)"""
    assert {p.name for p in COMPONENTS} == {p.name for p in OVERLAYS}
    mine = tmp_path / "my-cluster"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "base", mine)],
        "components": [os.path.relpath(c, mine) for c in COMPONENTS]}))
    combined, base = build(mine), build(DEPLOY / "base")
    for overlay in OVERLAYS:  # what each variant changes or adds, the combination has too
        changed = [o for o in build(overlay) if o not in base]
        assert changed, overlay.name
        assert all(o in combined for o in changed), overlay.name
    assert len(combined) == len(base) + len(sorted((ROOT / "dashboards").glob("*.json")))
    rendered = tmp_path / "combined.yaml"
    rendered.write_text(yaml.safe_dump_all(combined, sort_keys=False))
    for version in KUBERNETES_VERSIONS:
        result = _validate([rendered], version)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_args_serve_the_probes_and_stop_within_the_grace_period(
        tmp_path: Path) -> None:
    """serve started with the StatefulSet's own arguments (paths and address moved to this
    machine) answers each probe's path on the probe's port, and a SIGTERM ends it well
    inside the grace period."""
    objects = build(DEPLOY / "base")
    exporter = container(objects)
    port = free_port()
    token = tmp_path / "token"
    token.write_text("a-test-token\n")
    config_path = Path(arg(objects, "--config.file"))
    text = next(o["data"][config_path.name] for o in objects
                if o["kind"] == "ConfigMap" and config_path.name in o.get("data", {}))
    local = tmp_path / "config.yaml"
    local.write_text(text.replace(str(yaml.safe_load(text)["server"]["token_file"]), str(token)))
    moved = {"--config.file": str(local), "--storage.path": str(tmp_path / "state"),
             "--web.listen-address": f"127.0.0.1:{port}"}
    args = [f"{a.split('=', 1)[0]}={moved[a.split('=', 1)[0]]}"
            if a.split("=", 1)[0] in moved else a for a in exporter["args"]]
    assert args != exporter["args"] and len(args) == len(exporter["args"])
    # As in the pod: the working directory read-only, no home, only /tmp and the state
    # writable.
    readonly = tmp_path / "root"
    readonly.mkdir(mode=0o555)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LANGFUSE_", "OTEL_", "PERSONA_EXPORTER_"))}
    env.update(HOME="/nonexistent", TMPDIR=str(tmp_path))
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=readonly)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, url)
        named = {p["name"]: p["containerPort"] for p in exporter["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = exporter[probe]["httpGet"]
            assert named[get["port"]] == int(arg(objects, "--web.listen-address")
                                             .rpartition(":")[2])
            status, _, _ = http("GET", f"{url}{get['path']}")
            assert status == 200, (probe, get["path"])
        assert (tmp_path / "state").is_dir()  # the durable state is where the claim is
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=pod_spec(objects)["terminationGracePeriodSeconds"])
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
