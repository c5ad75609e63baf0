"""persona-exporter: metrics, budgets and traces for LLM agents that work under personas.

This module is the SDK's public face (``import persona_exporter as pe``). The package
underneath: the core here (``catalog``, ``events``, ``config``, ``errors``, ``sink``), then
``metrics/``, ``tracing/``, ``sdk/``, ``server/``, ``bundle/`` and ``tools/``, each saying
in its docstring what it holds and what it may import.

The SDK in one screen::

    from prometheus_client import REGISTRY
    import persona_exporter as pe

    pe.configure(registry=REGISTRY, config=pe.load_config("budgets.yaml"))

    llm = pe.ObservableLLM(call_model, model="gpt-4o", provider="openai")
    with pe.workflow("package-release", chatmode="package-release") as run:
        with pe.stage("version-bump", persona="backend-engineer"):
            llm("Update version to 1.2.0")
        print(run.remaining)
"""

from .catalog import CATALOG, MetricSpec
from .config import Config, ConfigError, load_config, parse_config
from .events import (
    Event,
    EventError,
    LLMGeneration,
    Observation,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    WorkflowStart,
    parse_event,
)
from .metrics.recorder import Recorder
from .sdk.budgets import RunBudget
from .sdk.context import current_chatmode, current_persona, in_current_context, persona
from .sdk.handles import StageHandle, WorkflowHandle
from .sdk.llm import ObservableLLM, observe_llm
from .sdk.telemetry import Telemetry, configure, get_telemetry, set_default
from .sdk.usage import TokenUsage, extract_usage
from .sdk.workflow import stage, workflow
from .sink import Sink

__all__ = [
    "CATALOG",
    "Config",
    "ConfigError",
    "Event",
    "EventError",
    "LLMGeneration",
    "MetricSpec",
    "ObservableLLM",
    "Observation",
    "PersonaSwitch",
    "Recorder",
    "RunBudget",
    "Sink",
    "StageHandle",
    "StageRun",
    "Telemetry",
    "TokenUsage",
    "WorkflowHandle",
    "WorkflowRun",
    "WorkflowStart",
    "configure",
    "current_chatmode",
    "current_persona",
    "extract_usage",
    "get_telemetry",
    "in_current_context",
    "load_config",
    "observe_llm",
    "parse_config",
    "parse_event",
    "persona",
    "set_default",
    "stage",
    "workflow",
]
