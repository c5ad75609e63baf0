"""persona-exporter: Prometheus metrics (and soon traces) for LLM agents run under personas.

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

from .budgets import RunBudget
from .catalog import CATALOG, MetricSpec
from .config import Config, ConfigError, load_config, parse_config
from .context import current_chatmode, current_persona, in_current_context, persona
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
from .llm import ObservableLLM, observe_llm
from .recorder import Recorder
from .telemetry import Sink, Telemetry, configure, get_telemetry, set_default
from .usage import TokenUsage, extract_usage
from .workflow import StageHandle, WorkflowHandle, stage, workflow

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
