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
from .sdk.governance import (
    PipelineStart,
    PipelineTrace,
    finalize_trace,
    is_observability_enabled,
    trace_artifact,
    trace_context_retrieval,
    trace_doctrine_load,
    trace_llm_call,
    trace_output_generation,
    trace_pipeline_execution,
    trace_retrieval,
    trace_snapshot_creation,
    trace_step,
)
from .sdk.handles import StageHandle, WorkflowHandle
from .sdk.langfuse_compat import (
    GenerationContext,
    LangfuseClient,
    LangfuseIntegration,
    SpanContext,
    TraceContext,
    check_langfuse_health,
    generation,
    get_langfuse,
    get_langfuse_integration,
    span_context,
    trace_context,
    trace_function,
)
from .sdk.llm import ObservableLLM, observe_llm
from .sdk.manifest import InputSnapshot, RunManifest, compute_inputs_hash, derive_run_id
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
    "GenerationContext",
    "InputSnapshot",
    "LLMGeneration",
    "LangfuseClient",
    "LangfuseIntegration",
    "MetricSpec",
    "ObservableLLM",
    "Observation",
    "PersonaSwitch",
    "PipelineStart",
    "PipelineTrace",
    "Recorder",
    "RunBudget",
    "RunManifest",
    "Sink",
    "SpanContext",
    "StageHandle",
    "StageRun",
    "Telemetry",
    "TokenUsage",
    "TraceContext",
    "WorkflowHandle",
    "WorkflowRun",
    "WorkflowStart",
    "check_langfuse_health",
    "compute_inputs_hash",
    "configure",
    "current_chatmode",
    "current_persona",
    "derive_run_id",
    "extract_usage",
    "finalize_trace",
    "generation",
    "get_langfuse",
    "get_langfuse_integration",
    "get_telemetry",
    "in_current_context",
    "is_observability_enabled",
    "load_config",
    "observe_llm",
    "parse_config",
    "parse_event",
    "persona",
    "set_default",
    "span_context",
    "stage",
    "trace_artifact",
    "trace_context",
    "trace_context_retrieval",
    "trace_doctrine_load",
    "trace_function",
    "trace_llm_call",
    "trace_output_generation",
    "trace_pipeline_execution",
    "trace_retrieval",
    "trace_snapshot_creation",
    "trace_step",
    "workflow",
]
