"""Shared fixtures: a fresh registry per test, and helpers to read it back."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from persona_exporter import Config, Telemetry, parse_config, set_default
from persona_exporter.sdk.telemetry import get_telemetry

CONFIG_YAML = """
personas:
  backend-engineer: {tokens: {24h: 100000, 7d: 500000}, cost_usd: {30d: 50}}
  qa-engineer: {tokens: {24h: 20000}}
chatmodes:
  package-release: {tokens_per_run: 5000}
  bug-fix: {tokens_per_run: 1000}
models:
  gpt-4o: {provider: openai, input: 2.5, output: 10, cache_read: 1.25}
"""


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG_YAML)


@pytest.fixture
def telemetry(registry: CollectorRegistry, config: Config) -> Telemetry:
    return Telemetry(registry=registry, config=config)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests configure tracing through the environment themselves; a developer's own
    # LANGFUSE_*/OTEL_* must never send test traces anywhere, nor leak between tests.
    for name in list(os.environ):
        if name.startswith(("LANGFUSE_", "OTEL_", "PERSONA_EXPORTER_")):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_default_telemetry() -> Iterator[None]:
    # configure() sets a process default; no test may leak one into the next.
    previous = get_telemetry()
    yield
    set_default(previous)


def required(binary: str) -> str:
    """The path of a binary the tests need: a missing one fails, never skips."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run scripts/install-prometheus.sh "
                    "(make test does)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return required("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return required("amtool")


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    return required("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)
