"""Pipeline tracing with governance ids: observability that never takes part in the run.

For deterministic pipelines (the second seed, its ``observability.py``): the run id is
derived from the inputs hash *before* tracing starts and is passed *to* tracing; trace ids
flow the other way only into the run manifest's root (see :mod:`.manifest`), never into
the inputs hash or the input snapshots. The signatures are the seed's, positional and
keyword alike; every function also takes ``None``, a trace id string, the
``(trace, trace_id)`` pair or anything else for the trace, and none raises: a tracing fault
is counted and logged once, like everywhere else.

    run_id = derive_run_id(inputs_hash)                                  # 1. determinism first
    trace, trace_id = trace_pipeline_execution(job_id, run_id, job_type, brand, inputs_hash)
    with trace_step(trace_id, "generate_captions"):                      # 2. then tracing
        trace_llm_call(trace_id, "caption_generation", "gpt-4", prompt, response,
                       usage={"prompt_tokens": 500, "completion_tokens": 150})
    finalize_trace(trace, "succeeded", artifacts=["captions.json"])
    manifest = manifest.with_trace(trace_id)                             # root only

A pipeline run is a workflow run (``job_type`` is its workflow name), so it is also in
the workflow metrics; steps are stages, and nested steps are nested stages. The governance
ids go, exactly as given, into the run's metadata.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NamedTuple

from ..events import MAX_COST_USD, MAX_SECONDS, LLMGeneration, Observation, clean_name
from ..tracing.content import CallContent
from . import telemetry as _telemetry
from .context import SCOPE
from .handles import StageHandle, Status, WorkflowHandle
from .telemetry import Telemetry, get_telemetry
from .trace_ids import new_span_id, sampled
from .usage import MAX_COUNT, TokenUsage, extract_usage
from .workflow import finish_run, stage, start_run

GOVERNANCE_KEYS = ("job_id", "run_id", "job_type", "brand", "inputs_hash", "queue_job_id")
_VALUE_MAX = 1000  # an event's metadata value limit (events.Metadata)
_ITEMS_MAX = 32  # events.METADATA_MAX_ITEMS
_CONFIGURE_LOCK = threading.Lock()

# Status words of both seeds ("success" is the first seed's end_trace) onto ours.
_STATUS_WORDS: dict[str, Status] = {
    "succeeded": "succeeded", "success": "succeeded", "successful": "succeeded",
    "ok": "succeeded", "completed": "succeeded", "complete": "succeeded", "done": "succeeded",
    "failed": "failed", "failure": "failed", "error": "failed", "errored": "failed",
    "partial": "partial",
}


# --- turning anything a caller passes into something safe ---


def _exact(value: object) -> str | None:
    """The value as the exact text to record: a str unchanged (never cleaned or cut),
    None as None, numbers and containers as JSON, anything else as its ``str`` (a UUID or
    a path as the manifest writes it, as the run's own ids are; ``handles.exact_text``).
    Never raises, even for objects whose ``__str__`` or ``__repr__`` does."""
    if value is None or isinstance(value, str):
        return value
    try:
        if isinstance(value, int | float | list | tuple | dict):
            return json.dumps(value, default=str, ensure_ascii=False)
        return str(value)
    except Exception:  # noqa: BLE001 - a hostile __str__, a cycle
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return f"<unrepresentable {type(value).__name__}>"


def _name(value: object, default: str) -> str:
    """A valid event name from anything (``clean_name`` would call a hostile ``__str__``)."""
    return clean_name(_exact(value) or "", default)


def _truthy(value: object) -> bool:
    try:
        return bool(value)
    except Exception:  # noqa: BLE001
        return True


def _metadata(metadata: object) -> dict[str, str]:
    """A caller's metadata as an event's: names for keys, text of at most 1000 characters
    for values, at most 32 items; anything that is not a mapping is ignored."""
    if not isinstance(metadata, Mapping):
        return {}
    out: dict[str, str] = {}
    try:
        for key, value in metadata.items():
            if len(out) >= _ITEMS_MAX:
                break
            out[_name(key, "key")] = (_exact(value) or "")[:_VALUE_MAX]
    except Exception:  # noqa: BLE001, S110 - a mapping whose iteration fails: keep what was read
        pass
    return out


def _int(value: object) -> int:
    try:
        count: int = int(value)  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001
        return 0
    return min(max(0, count), MAX_COUNT)


def _seconds(value: object) -> float:
    """A duration from a caller: within an event's bounds (this API skips validation)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        return 0.0
    return seconds if 0.0 <= seconds <= MAX_SECONDS else 0.0


def _content(tel: Telemetry, input: object, output: object) -> CallContent | None:
    """What a call site hands over as an observation's input and output (prompts,
    completions, queries): the one place content leaves this module, and only to the
    sinks that capture it (``tracing/content.py``); nothing is built when none does."""
    if not tel.captures_content or (input is None and output is None):
        return None
    return CallContent(input=input, output=output)


def _emit(tel: Telemetry, event: LLMGeneration | Observation,
          content: CallContent | None) -> None:
    """Emit an event with its content (see :func:`_content`)."""
    tel.emit(event, content)


# --- the trace objects ---


@dataclass(frozen=True, eq=False)
class PipelineTrace:
    """A traced pipeline run. ``trace_id`` is the Langfuse/OpenTelemetry trace id;
    ``metadata`` holds the governance ids exactly as given."""

    run: WorkflowHandle
    job_id: str | None = None
    job_type: str | None = None
    inputs_hash: str | None = None
    brand: str | None = None
    queue_job_id: str | None = None
    governance: Mapping[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.governance.get("run_id") or self.run.run_id

    @property
    def trace_id(self) -> str | None:
        return self.run.trace_id

    @property
    def id(self) -> str | None:
        return self.run.trace_id

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.governance)


class TraceHolder:
    """Anything that stands for a run (the first seed's ``TraceContext``): governance
    functions accept it where they take a trace."""

    _pipeline: PipelineTrace | None = None


# Runs by trace id, so that the seed's ``trace_step(trace_id, ...)`` finds its run. Weak:
# the caller's trace object keeps a run alive, this table never does.
_LIVE: weakref.WeakValueDictionary[str, PipelineTrace] = weakref.WeakValueDictionary()


# The seed's callers may keep only the trace id string (``trace, trace_id = ...`` and then
# pass ``trace_id`` around): the newest unfinished runs are also held strongly, so an id is
# enough. Bounded in number and age: a run never finished and pushed out is left to the
# weak table, to be collected (its root then goes out as abandoned).
RECENT_RUNS = 10_000
RECENT_SECONDS = 3600.0
_RECENT: OrderedDict[str, tuple[PipelineTrace, float]] = OrderedDict()
_RECENT_LOCK = threading.Lock()


def register(trace: PipelineTrace) -> None:
    trace_id = trace.run.trace_id
    if trace_id is not None:
        _LIVE[trace_id] = trace
        now = time.monotonic()
        with _RECENT_LOCK:
            _RECENT[trace_id] = (trace, now)
            # the oldest leave first: past the bounds, or finished some other way
            while _RECENT:
                oldest, since = next(iter(_RECENT.values()))
                if (len(_RECENT) <= RECENT_RUNS and now - since <= RECENT_SECONDS
                        and not oldest.run.finished):
                    break
                _RECENT.popitem(last=False)


def release(run: WorkflowHandle) -> None:
    """Forget a finished run's strong hold (its id still resolves while it lives)."""
    if run.trace_id is not None:
        with _RECENT_LOCK:
            _RECENT.pop(run.trace_id, None)


_TRACE_FIELDS = frozenset({"run", "job_id", "job_type", "inputs_hash", "brand", "queue_job_id",
                           "run_id", "trace_id", "id"})


class PipelineStart(NamedTuple):
    """What :func:`trace_pipeline_execution` returns: ``(trace, trace_id)`` as the seed
    unpacks it, both None when nothing is traced. Attribute access reaches the trace
    (``start.run_id``), and ``with`` finishes the run: failed if the block raised."""

    trace: PipelineTrace | None
    trace_id: str | None

    def __getattr__(self, name: str) -> Any:
        trace = self[0]
        if name.startswith("__"):
            raise AttributeError(name)
        if trace is None:  # nothing traced: the trace's attributes read as absent
            if name == "metadata":
                return {}
            if name in _TRACE_FIELDS:
                return None
            raise AttributeError(name)
        return getattr(trace, name)

    def __bool__(self) -> bool:
        return self[0] is not None

    def __enter__(self) -> PipelineStart:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        trace = self[0]
        if trace is not None:
            finish_run(trace.run, failed=exc_type is not None)
            release(trace.run)


def resolve(trace: object) -> PipelineTrace | None:
    """The run a caller's trace argument stands for, or None (a no-op)."""
    if isinstance(trace, PipelineTrace):
        return trace
    if isinstance(trace, PipelineStart):
        return trace[0]
    if isinstance(trace, TraceHolder):
        return trace._pipeline
    if isinstance(trace, str):
        try:
            found = _LIVE.get(trace)
            if found is None:
                held = _RECENT.get(trace)
                found = held[0] if held is not None else None
        except Exception as err:  # noqa: BLE001 - a str subclass with a hostile hash
            get_telemetry().errors.report("governance", err)
            return None
        if found is None:
            get_telemetry().errors.report("governance", "UnknownTraceId")
        return found
    return None


def _telemetry_of(telemetry: object) -> Telemetry:
    return telemetry if isinstance(telemetry, Telemetry) else ensure_configured()


def _env_configures_tracing() -> bool:
    env = os.environ
    langfuse = (bool(env.get("LANGFUSE_PUBLIC_KEY", "").strip())
                and bool(env.get("LANGFUSE_SECRET_KEY", "").strip())
                and env.get("LANGFUSE_TRACING_ENABLED", "true").strip().lower() != "false")
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    return langfuse or otlp


def ensure_configured() -> Telemetry:
    """The default telemetry; configured from the environment first when nothing was
    configured yet and the environment asks for tracing (as the seeds' clients are)."""
    tel = _telemetry._default
    if tel is not _telemetry.DISABLED or not _env_configures_tracing():
        return tel
    with _CONFIGURE_LOCK:
        if _telemetry._default is _telemetry.DISABLED:
            try:
                _telemetry.configure(tracing=True)
            except Exception as err:  # noqa: BLE001 - a broken env never breaks the caller
                _telemetry.DISABLED.errors.report("langfuse_compat", err)
    return _telemetry._default




# --- the seed's nine functions ---


def is_observability_enabled(telemetry: Telemetry | None = None, *_: object,
                             **__: object) -> bool:
    """Whether traces are being sent anywhere (a tracing backend is configured)."""
    try:  # configured from the environment like the other entry points
        return bool(_telemetry_of(telemetry).needs_trace_context)
    except Exception:  # noqa: BLE001 - a question must not raise
        return False


def trace_pipeline_execution(job_id: object = None, run_id: object = None,
                             job_type: object = None, brand: object = None,
                             inputs_hash: object = None, queue_job_id: object = None, *,
                             metadata: Mapping[str, object] | None = None,
                             persona: str | None = None, chatmode: str | None = None,
                             enabled: bool = True,
                             telemetry: Telemetry | None = None) -> PipelineStart:
    """Start the trace of one pipeline run, after its run id was derived.

    Returns ``(trace, trace_id)``; both are None - and nothing is traced - when tracing is
    not configured, when this run opts out (``enabled=False``), or when the sample rate
    leaves it out. The governance ids go, exactly as given, into the run's metadata;
    ``run_id`` is the trace's session id and ``job_type`` the workflow's name.
    """
    tel = get_telemetry()
    try:
        tel = _telemetry_of(telemetry)
        if not _truthy(enabled) or not tel.needs_trace_context or not sampled(tel):
            return PipelineStart(None, None)
        given = dict(zip(GOVERNANCE_KEYS,
                         (job_id, run_id, job_type, brand, inputs_hash, queue_job_id),
                         strict=True))
        governance = {key: text for key, value in given.items()
                      if (text := _exact(value)) is not None}
        extra = _metadata(metadata)
        for key in governance:
            extra.pop(key, None)  # a governance id given as an argument wins
        extra = dict(list(extra.items())[:_ITEMS_MAX - len(governance)])
        run = start_run(_name(job_type, "pipeline"),
                        chatmode=_name(chatmode, "none") if chatmode is not None else None,
                        persona=_name(persona, "unknown") if persona is not None else None,
                        run_id=governance.get("run_id"), telemetry=tel,
                        metadata={**governance, **extra}, sample=False)
        trace = PipelineTrace(run, governance.get("job_id"), governance.get("job_type"),
                              governance.get("inputs_hash"), governance.get("brand"),
                              governance.get("queue_job_id"), governance)
        register(trace)
        return PipelineStart(trace, run.trace_id)
    except Exception as err:  # noqa: BLE001 - observability never breaks the pipeline
        tel.errors.report("governance", err)
        return PipelineStart(None, None)


class trace_step:  # noqa: N801 - a context manager used like contextlib's
    """A step of a traced pipeline (a stage of its run, nested in the enclosing step);
    with no trace it does nothing and yields None. Exceptions from the block pass through
    untouched (the step is failed)."""

    def __init__(self, trace: object = None, step_name: object = None,
                 metadata: Mapping[str, object] | None = None, *,
                 persona: str | None = None, name: object = None) -> None:
        self._stage: stage | None = None
        try:
            pipeline = resolve(trace)
            if pipeline is not None:
                self._stage = stage(
                    _name(step_name if step_name is not None else name, "step"),
                    persona=_name(persona, "unknown") if persona is not None else None,
                    run=pipeline.run, metadata=_metadata(metadata) or None)
        except Exception as err:  # noqa: BLE001
            get_telemetry().errors.report("governance", err)

    def __enter__(self) -> StageHandle | None:
        if self._stage is None:
            return None
        try:
            return self._stage.__enter__()
        except Exception as err:  # noqa: BLE001
            get_telemetry().errors.report("governance", err)
            self._stage = None
            return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._stage is not None:
            try:
                self._stage.__exit__(exc_type, exc, tb)
            except Exception as err:  # noqa: BLE001
                get_telemetry().errors.report("governance", err)

    async def __aenter__(self) -> StageHandle | None:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def _parent(trace: PipelineTrace) -> tuple[StageHandle | None, str | None, str | None]:
    """(open step, persona, parent span id) of the step currently open in this run."""
    step = SCOPE.get().stage
    if step is not None and step.run is trace.run:
        return step, step.persona, step.span_id or trace.run.span_id
    return None, trace.run.persona, trace.run.span_id


def _usage(input_tokens: object, output_tokens: object, cache_read_tokens: object,
           reasoning_tokens: object, usage: object) -> TokenUsage:
    """Explicit counts when given, else the seed's ``usage`` dict (any shape
    :func:`~.usage.extract_usage` reads: OpenAI, Anthropic, Gemini...)."""
    if input_tokens is None and output_tokens is None and usage is not None:
        try:
            found = extract_usage({"usage": usage})
        except Exception:  # noqa: BLE001 - a hostile usage object
            found = None
        if found is not None:
            return found
    return TokenUsage(_int(input_tokens), _int(output_tokens), _int(cache_read_tokens),
                      _int(reasoning_tokens))


def record_llm_call(trace: object = None, name: object = None, model: object = None,
                    prompt: object = None, response: object = None, usage: object = None,
                    metadata: Mapping[str, object] | None = None, *,
                    provider: object = "unknown", persona: object = None,
                    input_tokens: object = None, output_tokens: object = None,
                    cache_read_tokens: object = 0, reasoning_tokens: object = 0,
                    duration_seconds: object = 0.0, cost_usd: object = None,
                    error_type: object = None) -> tuple[str | None, str | None]:
    """:func:`trace_llm_call` returning the generation's (span id, trace id)."""
    pipeline = resolve(trace)
    if pipeline is None:
        return None, None
    tel = pipeline.run.telemetry
    try:
        step, step_persona, parent = _parent(pipeline)
        counts = _usage(input_tokens, output_tokens, cache_read_tokens, reasoning_tokens,
                        usage)
        if step is not None:
            step.consume(counts.billed)
        else:
            pipeline.run.budget.consume(counts.billed)
        duration = _seconds(duration_seconds)
        model_name = _name(model, "unknown")
        cost: float | None = None
        if cost_usd is not None:
            try:
                cost = float(cost_usd)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001
                cost = None
            if cost is not None and not 0.0 <= cost <= MAX_COST_USD:
                cost = None  # as if not given: priced from the config, if at all
        meta = _metadata(metadata)
        if name is not None:
            meta.setdefault("name", _name(name, "generation"))
        run = pipeline.run
        span_id = new_span_id() if run.trace_id is not None else None
        event = LLMGeneration(
            persona=_name(persona, "unknown") if persona is not None
            else (step_persona or "unknown"),
            chatmode=step.chatmode if step is not None else run.chatmode,
            model=model_name, provider=_name(provider, "unknown"),
            input_tokens=counts.input, output_tokens=counts.output,
            cache_read_tokens=counts.cache_read, reasoning_tokens=counts.reasoning,
            cost_usd=cost if cost is not None else tel.cost_usd(model_name, counts),
            duration_seconds=duration,
            error_type=_name(error_type, "Exception") if error_type is not None else None,
            workflow=run.name, stage=step.name if step is not None else None,
            run_id=run.run_id, start_time=time.time() - duration, trace_id=run.trace_id,
            span_id=span_id, parent_span_id=parent if span_id is not None else None,
            metadata=meta or None)
        event.trace = run.trace_attributes  # the run's trace-level attributes
        _emit(tel, event, _content(tel, prompt, response))
        return span_id, run.trace_id
    except Exception as err:  # noqa: BLE001
        tel.errors.report("governance", err)
        return None, None


def trace_llm_call(trace: object = None, name: object = None, model: object = None,
                   prompt: object = None, response: object = None, usage: object = None,
                   metadata: Mapping[str, object] | None = None, *,
                   provider: object = "unknown", persona: object = None,
                   input_tokens: object = None, output_tokens: object = None,
                   cache_read_tokens: object = 0, reasoning_tokens: object = 0,
                   duration_seconds: object = 0.0, cost_usd: object = None,
                   error_type: object = None) -> None:
    """Record an LLM call made without the ObservableLLM wrapper, in the open step.

    The seed's ``(trace_id, name, model, prompt, response, usage=None, metadata=None)``:
    token counts come from ``input_tokens``/``output_tokens`` when given, else from
    ``usage`` (``{"prompt_tokens": 500, "completion_tokens": 150}``)."""
    record_llm_call(trace, name, model, prompt, response, usage, metadata, provider=provider,
                    persona=persona, input_tokens=input_tokens, output_tokens=output_tokens,
                    cache_read_tokens=cache_read_tokens, reasoning_tokens=reasoning_tokens,
                    duration_seconds=duration_seconds, cost_usd=cost_usd,
                    error_type=error_type)


def _observation(trace: object, kind: Literal["retrieval", "artifact", "event"],
                 name: str, duration_seconds: object, metadata: Mapping[str, object] | None,
                 content: tuple[object, object] | None = None) -> None:
    """``content``: the observation's (input, output), captured only where it is on."""
    pipeline = resolve(trace)
    if pipeline is None:
        return
    tel = pipeline.run.telemetry
    try:
        step, persona, parent = _parent(pipeline)
        duration = _seconds(duration_seconds)
        run = pipeline.run
        span_id = new_span_id() if run.trace_id is not None else None
        event = Observation(
            kind=kind, name=name, persona=persona, workflow=run.name,
            stage=step.name if step is not None else None, duration_seconds=duration,
            run_id=run.run_id, start_time=time.time() - duration, trace_id=run.trace_id,
            span_id=span_id, parent_span_id=parent if span_id is not None else None,
            metadata=_metadata(metadata) or None)
        event.trace = run.trace_attributes  # the run's trace-level attributes
        _emit(tel, event, _content(tel, *content) if content is not None else None)
    except Exception as err:  # noqa: BLE001
        tel.errors.report("governance", err)


def trace_retrieval(trace: object = None, name: object = None, *,
                    duration_seconds: object = 0.0,
                    metadata: Mapping[str, object] | None = None) -> None:
    """Record a retrieval (documents, a search) in the open step."""
    _observation(trace, "retrieval", _name(name, "retrieval"), duration_seconds, metadata)


def trace_artifact(trace: object = None, name: object = None, *,
                   metadata: Mapping[str, object] | None = None) -> None:
    """Record an output artifact the run wrote (its path, hash, size in ``metadata``)."""
    _observation(trace, "artifact", _name(name, "artifact"), 0.0, metadata)


def trace_doctrine_load(trace: object = None, doctrine_id: object = None,
                        version: object = None, path: object = None,
                        sha256: object = None) -> None:
    """Record that a doctrine was loaded (``load_doctrine``): its id and version, and the
    file and hash it came from."""
    fields = {"doctrine_id": doctrine_id, "version": version, "path": path, "sha256": sha256}
    _observation(trace, "event", "load_doctrine", 0.0,
                 {k: v for k, v in fields.items() if v is not None},
                 ({"doctrine_id": doctrine_id, "version": version},
                  {"path": path, "sha256": sha256}))


def trace_context_retrieval(trace: object = None, mode: object = None,
                            files_retrieved: object = None, query: object = None,
                            top_k: object = None, retrieval_method: object = None) -> None:
    """Record a context retrieval (``retrieve_context``). The query is content: it is
    never put in metadata."""
    files = files_retrieved if isinstance(files_retrieved, list | tuple) else None
    fields = {"mode": mode, "top_k": top_k, "method": retrieval_method,
              "files_retrieved": len(files) if files is not None else None}
    _observation(trace, "retrieval", "retrieve_context", 0.0,
                 {k: v for k, v in fields.items() if v is not None},
                 ({"mode": mode, "query": query, "top_k": top_k},
                  {"files_retrieved": files_retrieved, "method": retrieval_method}))


def trace_snapshot_creation(trace: object = None, snapshot_name: object = None,
                            hash: object = None, bytes: object = None) -> None:
    """Record an input snapshot (``snapshot_<name>``) with its hash and size, in the open
    step (``create_snapshots`` in the seed)."""
    fields = {"sha256": hash, "bytes": bytes}
    _observation(trace, "event", f"snapshot_{_name(snapshot_name, 'input')}", 0.0,
                 {k: v for k, v in fields.items() if v is not None},
                 (None, fields))


def trace_output_generation(trace: object = None, output_files: object = None,
                            total_bytes: object = None,
                            metadata: Mapping[str, object] | None = None) -> None:
    """Record the outputs the run wrote (``generate_outputs``): files and total size."""
    fields = {"files": output_files, "bytes": total_bytes}
    _observation(trace, "event", "generate_outputs", 0.0,
                 {**{k: v for k, v in fields.items() if v is not None},
                  **_metadata(metadata)}, (None, fields))


def status_of(status: object) -> tuple[Status, bool]:
    """Our status for a seed's status word, and whether the word was known."""
    word = _exact(status) or ""
    known = _STATUS_WORDS.get(word.strip().lower())
    return (known, True) if known is not None else ("partial", False)


def finalize_trace(trace: object = None, status: object = "succeeded", error: object = None,
                   artifacts: object = None, *,
                   metadata: Mapping[str, object] | None = None) -> None:
    """End the pipeline's trace with ``status`` (succeeded, failed or partial; the first
    seed's success/error words too), once. ``error`` and ``artifacts`` are recorded on
    the run (its metadata); an unknown status ends it partial and is counted."""
    pipeline = resolve(trace)
    if pipeline is None:
        return
    run = pipeline.run
    try:
        final, known = status_of(status)
        if not known:
            run.telemetry.errors.report("governance", "UnknownStatus")
        extra = _metadata(metadata)
        if error is not None:
            extra["error"] = (_exact(error) or "")[:_VALUE_MAX]
        if artifacts is not None:
            extra["artifacts"] = (_exact(artifacts) or "")[:_VALUE_MAX]
        if extra:
            merged = dict(run.metadata or {})  # governance ids first: never replaced, kept
            merged.update((k, v) for k, v in extra.items() if k not in GOVERNANCE_KEYS)
            run.metadata = dict(list(merged.items())[:_ITEMS_MAX])
        # The root observation's output, as the seed's hierarchy shows it (S4:518-521).
        output = {"status": final, **({"artifacts": artifacts} if artifacts is not None else {}),
                  **({"error": error} if error is not None else {})}
        run.content = _content(run.telemetry, None, output)
        finish_run(run, status=final)
        release(run)
    except Exception as err:  # noqa: BLE001
        run.telemetry.errors.report("governance", err)
