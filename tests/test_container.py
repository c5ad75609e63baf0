"""The Dockerfile, checked without a Docker engine (none runs on the project's machines):
multi-stage, pinned, non-root, with a healthcheck that probes what serve answers."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def test_multi_stage_from_pinned_images() -> None:
    bases = [line.split()[1] for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert len(bases) == 2
    for image in bases:
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), image


def test_runs_as_a_numeric_non_root_user() -> None:
    runtime = DOCKERFILE.split("FROM ")[-1]
    users = [line.split()[1] for line in INSTRUCTIONS if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "USER 10001:10001" in runtime
    assert "useradd --system --uid 10001" in runtime


def test_healthcheck_probes_healthz_on_the_listen_port() -> None:
    health = next(line for line in INSTRUCTIONS if line.startswith("HEALTHCHECK "))
    assert "http://127.0.0.1:9464/healthz" in health
    assert "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS=0.0.0.0:9464" in DOCKERFILE
    assert "EXPOSE 9464" in INSTRUCTIONS


def test_the_build_context_has_what_the_dockerfile_copies() -> None:
    for line in INSTRUCTIONS:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["persona-exporter"]' in INSTRUCTIONS


def test_the_image_keeps_its_state_in_a_volume_the_runtime_user_owns() -> None:
    runtime = DOCKERFILE.split("FROM ")[-1]
    assert "PERSONA_EXPORTER_STORAGE_PATH=/var/lib/persona-exporter" in runtime
    assert "VOLUME /var/lib/persona-exporter" in INSTRUCTIONS
    owner = next(line for line in INSTRUCTIONS if "chown" in line and "/var/lib/persona" in line)
    assert "chown 10001:10001 /var/lib/persona-exporter" in owner
    # created before USER: the runtime user could not create it under /var/lib
    assert INSTRUCTIONS.index(owner) < INSTRUCTIONS.index("USER 10001:10001")
