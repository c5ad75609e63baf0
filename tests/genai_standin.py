"""A small stand-in for genai/mapping.py's classify/read_call, injected into Traces so the
tests of the per-trace state do not depend on the full mapping. It reads the same
attributes the real instrumentations write (../shared/notes/otlp-ingest.md (a), (b)),
with a fraction of the precedence rules; and span builders for the tests."""

from __future__ import annotations

from typing import Any

from persona_exporter.genai.mapping import Call, Role
from persona_exporter.genai.span import STATUS_ERROR, STATUS_UNSET, Span

_LLM_OPERATIONS = {"chat", "text_completion", "generate_content", "embeddings"}
_AGENT_OPERATIONS = {"invoke_agent", "agent_step", "create_agent"}
_AI_SDK_CALLS = {"ai.generateText.doGenerate", "ai.streamText.doStream"}


def classify(span: Span) -> Role:
    a = span.attributes
    kind = a.get("openinference.span.kind")
    if kind in ("LLM", "EMBEDDING"):
        return Role.LLM
    if kind == "AGENT":
        return Role.AGENT
    if kind == "CHAIN":
        return Role.WORKFLOW
    operation = a.get("gen_ai.operation.name")
    if operation in _LLM_OPERATIONS:
        return Role.LLM
    if operation in _AGENT_OPERATIONS:
        return Role.AGENT
    if operation == "invoke_workflow":
        return Role.WORKFLOW
    operation_id = a.get("ai.operationId")
    if operation_id in _AI_SDK_CALLS:
        return Role.LLM
    if isinstance(operation_id, str):
        return Role.WORKFLOW
    return Role.OTHER


def _first(a: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in a:
            return a[key]
    return None


def read_call(span: Span, role: Role | None = None) -> Call | None:
    a = span.attributes
    model = _first(a, "gen_ai.request.model", "ai.model.id", "llm.model_name")
    tokens_in = _first(a, "gen_ai.usage.input_tokens", "llm.token_count.prompt",
                       "ai.usage.inputTokens")
    tokens_out = _first(a, "gen_ai.usage.output_tokens", "llm.token_count.completion",
                        "ai.usage.outputTokens")
    has_usage = tokens_in is not None or tokens_out is not None
    if classify(span) is not Role.LLM and not has_usage:
        return None
    error = None
    if span.status_code == STATUS_ERROR:
        error = a.get("error.type", "error")
    return Call(
        model=model or "unknown",
        provider=_first(a, "gen_ai.provider.name", "gen_ai.system", "llm.provider") or "unknown",
        input_tokens=tokens_in or 0, output_tokens=tokens_out or 0, has_usage=has_usage,
        cost_usd=_first(a, "llm.cost.total", "gen_ai.usage.cost"),
        time_to_first_chunk_seconds=a.get("gen_ai.response.time_to_first_chunk"),
        error_type=error, response_id=a.get("gen_ai.response.id"))


START = 1_780_000_000_000_000_000  # 2026-05-28, in unix nanoseconds


def tid(n: int) -> str:
    return f"{n:032x}"


def sid(n: int) -> str:
    return f"{n:016x}"


def span(trace: int, span_id: int, parent: int | None, *, name: str = "span",
         attributes: dict[str, Any] | None = None, resource: dict[str, Any] | None = None,
         start: float = 0.0, duration: float = 1.0, error: bool = False) -> Span:
    """A span; ``start``/``duration`` in seconds from START."""
    begin = START + int(start * 1e9)
    return Span(trace_id=tid(trace), span_id=sid(span_id),
                parent_span_id=None if parent is None else sid(parent), name=name, kind=1,
                start_unix_nano=begin, end_unix_nano=begin + int(duration * 1e9),
                status_code=STATUS_ERROR if error else STATUS_UNSET,
                attributes=attributes or {}, resource=resource or {})


def chat(trace: int, span_id: int, parent: int | None, *, tokens: tuple[int, int] = (10, 5),
         model: str = "gpt-4o", **kwargs: Any) -> Span:
    """A GenAI-convention chat span (SC spans.yaml: `{operation} {model}`, CLIENT)."""
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                  "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": tokens[0],
                  "gen_ai.usage.output_tokens": tokens[1], **kwargs.pop("attributes", {})}
    return span(trace, span_id, parent, name=f"chat {model}", attributes=attributes, **kwargs)
