"""What a span says about an LLM call, read by the precedence of
``../shared/notes/otlp-ingest.md`` for every ecosystem it covers.

STUB: the contract other modules rely on; the helper implementing it keeps these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .span import Span


class Role(Enum):
    LLM = "llm"            # one model call (chat, completion, embeddings, doGenerate, ...)
    AGENT = "agent"        # an agent or agent step (invoke_agent, agent_step, AGENT kind, ...)
    WORKFLOW = "workflow"  # a workflow / chain wrapper (invoke_workflow, traceloop workflow,
                           # OpenInference CHAIN, the AI SDK's outer ai.generateText, ...)
    OTHER = "other"        # tools, retrieval, HTTP, anything else


@dataclass(slots=True)
class Call:
    """The LLM-call fields of a span, in the GenAI meaning: ``input_tokens`` includes the
    cache reads, ``output_tokens`` includes reasoning."""

    model: str                     # request model, else response model, else "unknown"
    provider: str = "unknown"
    operation: str = "chat"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    has_usage: bool = False        # any token count was present on the span
    cost_usd: float | None = None  # from the span; None: the price table decides
    time_to_first_chunk_seconds: float | None = None
    error_type: str | None = None  # set when the call failed
    response_id: str | None = None  # gen_ai.response.id, to deduplicate within a trace


def classify(span: Span) -> Role:
    """The span's role, by the note's section (b) order."""
    raise NotImplementedError


def read_call(span: Span) -> Call | None:
    """The call fields of an LLM span, or of any other span that carries a model and usage
    (an aggregate); ``None`` when the span carries neither."""
    raise NotImplementedError
