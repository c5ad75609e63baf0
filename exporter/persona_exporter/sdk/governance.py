"""Pipeline tracing with governance ids: observability that never takes part in the run.

For deterministic pipelines (the second seed): the run id is derived from the inputs hash
*before* tracing starts and is passed *to* tracing; trace ids flow the other way only into
the run manifest's root (see :mod:`.manifest`), never into the inputs hash or the input
snapshots. Every function here accepts ``None`` for the trace and then does nothing, and
none raises: a tracing fault is counted and logged once, like everywhere else.

    run_id = derive_run_id(inputs_hash)                      # 1. determinism first
    trace = trace_pipeline_execution(job_id, run_id, "caption", inputs_hash)   # 2. then tracing
    with trace_step(trace, "draft", persona="copywriter"):
        trace_llm_call(trace, model="gpt-4o", input_tokens=900, output_tokens=200,
                       duration_seconds=1.2)
    trace_artifact(trace, "captions.json", metadata={"sha256": digest})
    finalize_trace(trace, "succeeded")
    manifest = manifest.with_trace(trace)                    # trace id at the root only

A pipeline run is a workflow run (``job_type`` is its workflow name), so it is also in
the workflow metrics; steps are stages.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from ..events import MAX_COST_USD, MAX_SECONDS, LLMGeneration, Observation, clean_name
from .context import SCOPE
from .handles import STATUSES, StageHandle, WorkflowHandle
from .telemetry import Telemetry, get_telemetry
from .trace_ids import new_span_id, sampled
from .usage import MAX_COUNT, TokenUsage
from .workflow import finish_run, stage, start_run


@dataclass(frozen=True)
class PipelineTrace:
    """A traced pipeline run. ``trace_id`` is the Langfuse/OpenTelemetry trace id."""

    run: WorkflowHandle
    job_id: str
    job_type: str
    inputs_hash: str

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def trace_id(self) -> str | None:
        return self.run.trace_id


def is_observability_enabled(telemetry: Telemetry | None = None) -> bool:
    """Whether traces are being sent anywhere (a tracing backend is configured)."""
    return (telemetry or get_telemetry()).needs_trace_context


def trace_pipeline_execution(job_id: str, run_id: str, job_type: str, inputs_hash: str, *,
                             metadata: Mapping[str, str] | None = None,
                             persona: str | None = None, chatmode: str | None = None,
                             enabled: bool = True,
                             telemetry: Telemetry | None = None) -> PipelineTrace | None:
    """Start the trace of one pipeline run, after its run id was derived.

    Returns None - and nothing is traced - when tracing is not configured, when this run
    opts out (``enabled=False``), or when the sample rate leaves it out. The governance ids
    go into the trace's metadata; ``run_id`` becomes the trace's session id.
    """
    tel = telemetry or get_telemetry()
    try:
        if not enabled or not tel.needs_trace_context or not sampled(tel):
            return None
        governance = {"job_id": clean_name(job_id), "run_id": clean_name(run_id),
                      "job_type": clean_name(job_type), "inputs_hash": clean_name(inputs_hash),
                      **{clean_name(k): str(v)[:1000] for k, v in (metadata or {}).items()}}
        run = start_run(job_type, chatmode=chatmode, persona=persona, run_id=run_id,
                        telemetry=tel, metadata=governance, sample=False)
        return PipelineTrace(run, governance["job_id"], governance["job_type"],
                             governance["inputs_hash"])
    except Exception as err:  # noqa: BLE001 - observability never breaks the pipeline
        tel.errors.report("governance", err)
        return None


class trace_step:  # noqa: N801 - a context manager used like contextlib's
    """A step of a traced pipeline (a stage); with a ``None`` trace it does nothing and
    yields None. Exceptions from the block pass through untouched (the step is failed)."""

    def __init__(self, trace: PipelineTrace | None, name: str, *, persona: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self._stage = (stage(name, persona=persona, run=trace.run, metadata=metadata)
                       if trace is not None else None)

    def __enter__(self) -> StageHandle | None:
        return self._stage.__enter__() if self._stage is not None else None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._stage is not None:
            self._stage.__exit__(exc_type, exc, tb)


def _parent(trace: PipelineTrace) -> tuple[str | None, str | None, str | None]:
    """(stage name, persona, parent span id) of the step currently open in this trace."""
    step = SCOPE.get().stage
    if step is not None and step.run is trace.run:
        return step.name, step.persona, step.span_id or trace.run.span_id
    return None, trace.run.persona, trace.run.span_id


def trace_llm_call(trace: PipelineTrace | None, *, model: str, provider: str = "unknown",
                   persona: str | None = None, input_tokens: int = 0, output_tokens: int = 0,
                   cache_read_tokens: int = 0, reasoning_tokens: int = 0,
                   duration_seconds: float = 0.0, cost_usd: float | None = None,
                   error_type: str | None = None,
                   metadata: Mapping[str, str] | None = None) -> None:
    """Record an LLM call made without the ObservableLLM wrapper, in the open step."""
    if trace is None:
        return
    tel = trace.run.telemetry
    try:
        stage_name, step_persona, parent = _parent(trace)
        usage = TokenUsage(*(min(max(0, int(n)), MAX_COUNT) for n in (
            input_tokens, output_tokens, cache_read_tokens, reasoning_tokens)))
        step = SCOPE.get().stage
        if step is not None and step.run is trace.run:
            step.consume(usage.billed)
        else:
            trace.run.budget.consume(usage.billed)
        duration = _seconds(duration_seconds)
        model = clean_name(model)
        if cost_usd is not None and not 0.0 <= float(cost_usd) <= MAX_COST_USD:
            cost_usd = None  # as if not given: priced from the config, if at all
        event = LLMGeneration(
            persona=clean_name(persona) if persona else (step_persona or "unknown"),
            chatmode=trace.run.chatmode, model=model, provider=clean_name(provider),
            input_tokens=usage.input, output_tokens=usage.output,
            cache_read_tokens=usage.cache_read, reasoning_tokens=usage.reasoning,
            cost_usd=cost_usd if cost_usd is not None else tel.cost_usd(model, usage),
            duration_seconds=duration,
            error_type=clean_name(error_type) if error_type else None,
            workflow=trace.run.name, stage=stage_name, run_id=trace.run.run_id,
            start_time=time.time() - duration, trace_id=trace.run.trace_id,
            span_id=new_span_id(), parent_span_id=parent,
            metadata=dict(metadata) if metadata else None)
        event.trace = trace.run.trace_attributes  # the run's trace-level attributes
        tel.emit(event)
    except Exception as err:  # noqa: BLE001
        tel.errors.report("governance", err)


def _observation(trace: PipelineTrace | None, kind: Literal["retrieval", "artifact", "event"],
                 name: str, duration_seconds: float,
                 metadata: Mapping[str, str] | None) -> None:
    if trace is None:
        return
    tel = trace.run.telemetry
    try:
        stage_name, persona, parent = _parent(trace)
        duration = _seconds(duration_seconds)
        event = Observation(
            kind=kind, name=clean_name(name), persona=persona, workflow=trace.run.name,
            stage=stage_name, duration_seconds=duration, run_id=trace.run.run_id,
            start_time=time.time() - duration, trace_id=trace.run.trace_id,
            span_id=new_span_id(), parent_span_id=parent,
            metadata={clean_name(k): str(v)[:1000] for k, v in (metadata or {}).items()}
            or None)
        event.trace = trace.run.trace_attributes  # the run's trace-level attributes
        tel.emit(event)
    except Exception as err:  # noqa: BLE001
        tel.errors.report("governance", err)


def _seconds(value: float) -> float:
    """A duration from a caller: within an event's bounds (this API skips validation)."""
    seconds = float(value)
    return seconds if 0.0 <= seconds <= MAX_SECONDS else 0.0


def trace_retrieval(trace: PipelineTrace | None, name: str, *, duration_seconds: float = 0.0,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Record a retrieval (documents, a search) in the open step."""
    _observation(trace, "retrieval", name, duration_seconds, metadata)


def trace_artifact(trace: PipelineTrace | None, name: str, *,
                   metadata: Mapping[str, str] | None = None) -> None:
    """Record an output artifact the run wrote (its path, hash, size in ``metadata``)."""
    _observation(trace, "artifact", name, 0.0, metadata)


def finalize_trace(trace: PipelineTrace | None, status: str = "succeeded", *,
                   metadata: Mapping[str, str] | None = None) -> None:
    """End the pipeline's trace with ``status`` (succeeded, failed or partial); once."""
    if trace is None:
        return
    run = trace.run
    try:
        if metadata:
            run.metadata = {**(run.metadata or {}),
                            **{clean_name(k): str(v)[:1000] for k, v in metadata.items()}}
        if status not in STATUSES:
            run.telemetry.errors.report("governance", f"UnknownStatus:{clean_name(status)}")
            finish_run(run, status="partial")
        else:
            finish_run(run, status=status)
    except Exception as err:  # noqa: BLE001
        run.telemetry.errors.report("governance", err)
