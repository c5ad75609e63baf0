"""The per-trace state of the OTLP receiver: received spans in, events out.

Spans are exported when they end, so the LLM spans of a trace usually arrive before the
agent and workflow spans above them, often in earlier requests. :class:`Traces` remembers,
per trace and within bounds, which span is whose parent and which spans name a persona or
chatmode, so that:

- an LLM span becomes one ``LLMGeneration``; one that names no persona waits (is *held*)
  until an ancestor naming one arrives, or the trace's root arrives, or ``hold_seconds``
  pass; then its persona is its nearest ancestor's, else any span's of the trace, else
  its resource's, else ``unknown`` (``persona_sources`` counts which);
- a span seen before, or a second LLM span of a trace with the same response id (a
  framework span over the provider's span), is counted once;
- an aggregate span (an agent or wrapper span that carries usage) counts as an LLM call
  only when no span below it carries usage (``../shared/notes/otlp-ingest.md`` (f));
- a root span that is an agent or workflow invocation becomes a ``WorkflowRun``, the agent
  spans right below it ``StageRun`` events, and a change of persona between consecutive
  stages a ``PersonaSwitch``.

Held spans are small JSON-ready records; :meth:`Traces.take_changes` and
:meth:`Traces.restore` let the caller keep them in durable storage next to the metrics, so
a span acknowledged to the client while held survives a restart.

>>> from persona_exporter.config import Otlp
>>> traces = Traces(Otlp())
>>> traces.held
0

Not thread-safe: the server applies batches from one thread.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final, Literal

from ..catalog import PERSONA_SOURCES
from ..config import Otlp
from ..errors import ErrorReporter
from ..events import (
    MAX_COST_USD,
    MAX_SECONDS,
    MAX_TIMESTAMP,
    MAX_TOKENS,
    Event,
    LLMGeneration,
    PersonaSwitch,
    StageRun,
    WorkflowRun,
    clean_name,
    parse_event,
)
from . import mapping
from .mapping import Call, Role
from .personas import Resolver
from .span import STATUS_ERROR, Span

Classify = Callable[[Span], Role]
ReadCall = Callable[[Span, Role], "Call | None"]

# Memory bounds besides the configured ones (max_held_spans, max_traces): the spans
# remembered for one trace, and for all traces (a multiple of max_held_spans, since
# resolving held spans is what the memory is for). About 200 bytes per remembered span.
MAX_SPANS_PER_TRACE: Final = 10_000
REMEMBERED_SPANS_PER_HELD_SPAN: Final = 10
# Parent chains longer than this are not followed (a cycle of hostile parent ids ends here).
MAX_DEPTH: Final = 256
# A workflow run's id, when an attribute names one (there is no GenAI convention for it).
RUN_ID_ATTRIBUTES: Final = ("gen_ai.workflow.run.id", "workflow.run_id", "run_id")
WORKFLOW_NAME_ATTRIBUTES: Final = ("gen_ai.workflow.name", "gen_ai.agent.name", "agent.name")
STAGE_NAME_ATTRIBUTES: Final = ("gen_ai.agent.name", "agent.name")
# The span attributes this module reads itself (the mapping and the resolver have theirs).
READ_KEYS: Final = frozenset({*RUN_ID_ATTRIBUTES, *WORKFLOW_NAME_ATTRIBUTES,
                              *STAGE_NAME_ATTRIBUTES, "gen_ai.operation.name"})
STORAGE_VERSION: Final = 1

_CHILD: Final = 1   # a span of the trace names this id as its parent
_USAGE: Final = 2   # a span below this id carries usage
_ABSENT: Final = ""  # no span id is empty (the decoders refuse one)
_ID_RE: Final = re.compile(r"[0-9a-f]+")
# The fields of an LLMGeneration a span gives (all but persona and chatmode), in _fields order.
_FIELDS: Final = ("model", "provider", "input_tokens", "output_tokens", "cache_read_tokens",
                  "reasoning_tokens", "cost_usd", "duration_seconds",
                  "time_to_first_chunk_seconds", "error_type", "start_time", "trace_id",
                  "span_id", "parent_span_id")
_INPUT: Final = _FIELDS.index("input_tokens")
_OUTPUT: Final = _FIELDS.index("output_tokens")
_PARENT: Final = _FIELDS.index("parent_span_id")
_MAX_TIMESTAMP_NS: Final = int(MAX_TIMESTAMP * 1e9)


@dataclass(slots=True)
class Result:
    """What one :meth:`Traces.add` or :meth:`Traces.expire` produced."""

    events: list[Event] = field(default_factory=list)
    # catalog.OTLP_SPAN_OUTCOMES: one per span, counted when decided (a held aggregate
    # span when it is released; every other span in the call that received it)
    outcomes: Counter[str] = field(default_factory=Counter)
    # catalog.PERSONA_SOURCES, one per LLMGeneration in ``events``
    persona_sources: Counter[str] = field(default_factory=Counter)
    # held spans released before their time (the hold window or the trace memory was full)
    released_early: int = 0


class _Held:
    """An LLM (or aggregate) span waiting for its persona or for the spans below it."""

    __slots__ = ("aggregate", "chatmode", "deadline", "frontier", "persona", "resource",
                 "response_id", "source", "span_id", "trace_id", "values")

    def __init__(self, trace_id: str, span_id: str, fields: dict[str, Any], *,
                 resource: tuple[str | None, str | None], persona: str | None, source: str,
                 chatmode: str | None, frontier: str | None, aggregate: bool,
                 response_id: str | None, deadline: float) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        # LLMGeneration keyword arguments but persona and chatmode, by _FIELDS: a tuple is
        # a quarter of a dict's size, and up to max_held_spans of these are kept
        self.values = tuple(fields.get(name) for name in _FIELDS)
        self.resource = resource      # (persona, chatmode) its resource names
        self.persona = persona        # None until found (on the span or an ancestor)
        self.source = source          # where ``persona`` came from
        self.chatmode = chatmode      # the nearest known so far
        self.frontier = frontier      # the first ancestor id not yet seen; None: not waiting
        self.aggregate = aggregate    # outcome undecided until the spans below are known
        self.response_id = response_id
        self.deadline = deadline      # on the clock; not stored (a restart waits afresh)

    def to_json(self) -> str:
        return json.dumps({"v": STORAGE_VERSION, "t": self.trace_id, "s": self.span_id,
                           "f": self.fields(), "r": list(self.resource), "p": self.persona,
                           "o": self.source, "c": self.chatmode, "w": self.frontier,
                           "a": self.aggregate, "i": self.response_id},
                          separators=(",", ":"))

    def fields(self) -> dict[str, Any]:
        return dict(zip(_FIELDS, self.values, strict=True))

    def tokens(self) -> int:
        return _count(self.values[_INPUT]) + _count(self.values[_OUTPUT])

    @classmethod
    def from_json(cls, text: str, deadline: float) -> _Held:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != STORAGE_VERSION:
            raise ValueError(f"not a version {STORAGE_VERSION} held span")
        fields = data["f"]
        if not isinstance(fields, dict):
            raise ValueError("f: not an object")
        # A stored row must still make a valid event (a row from a newer version may not).
        event = parse_event({"type": "llm_generation", "persona": "unknown", **fields})
        resource = data["r"]
        source = data["o"]
        if source not in PERSONA_SOURCES:
            raise ValueError(f"o: {source!r} is not a persona source")
        return cls(_str(data["t"]), _str(data["s"]),
                   {name: getattr(event, name) for name in _FIELDS},
                   resource=(_opt_name(resource[0]), _opt_name(resource[1])),
                   persona=_opt_name(data["p"]), source=source,
                   chatmode=_opt_name(data["c"]), frontier=_opt_str(data["w"]),
                   aggregate=bool(data["a"]), response_id=_opt_str(data["i"]),
                   deadline=deadline)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _opt_name(value: Any) -> str | None:
    return None if value is None else clean_name(_str(value))  # a label value, whatever


class _Agent:
    """An agent span of a trace whose root has not arrived: a stage candidate."""

    __slots__ = ("chatmode", "duration", "name", "outcome", "parent", "persona", "resource",
                 "span_id", "start", "status")

    def __init__(self, span: Span, persona: str | None, chatmode: str | None,
                 resource: tuple[str | None, str | None], outcome: str | None) -> None:
        self.span_id = span.span_id
        self.parent = span.parent_span_id or None
        self.name = _first_name(span.attributes, STAGE_NAME_ATTRIBUTES, span.name)
        self.persona = persona
        self.chatmode = chatmode
        self.resource = resource
        self.status = _status(span)
        self.start = span.start_unix_nano
        self.duration = _seconds(span.duration_seconds)
        self.outcome = outcome  # still to be counted: "workflow" if it proves a stage


class _Trace:
    """What is remembered of one trace. The parts most traces never need start as None."""

    __slots__ = ("agents", "calls", "chatmode", "closed", "flags", "held", "hex_id", "named",
                 "parents", "persona", "responses", "root", "waiting")

    def __init__(self, trace_id: str) -> None:
        self.hex_id = _id(trace_id, 32)  # for the events; None if the id is not valid hex
        self.parents: dict[str, str | None] = {}
        self.flags: dict[str, int] = {}  # span id -> _CHILD | _USAGE
        self.named: dict[str, tuple[str | None, str | None]] | None = None
        self.persona: str | None = None   # the first persona any span of the trace named
        self.chatmode: str | None = None
        self.root: str | None = None      # the root's span id, once it arrived
        self.closed = False               # the root was decided (workflow and stages)
        self.held: list[str] | None = None  # span ids held
        self.waiting: dict[str, list[str]] | None = None  # frontier id -> held span ids
        self.agents: dict[str, _Agent] | None = None
        self.calls: list[tuple[str, int]] | None = None  # (span id, tokens) recorded
        self.responses: set[str] | None = None


class _Seen:
    """One span of the batch being added, between the two passes."""

    __slots__ = ("call", "chatmode", "duplicate", "persona", "role", "span", "trace")

    def __init__(self, span: Span, trace: _Trace, role: Role, call: Call | None,
                 persona: str | None, chatmode: str | None) -> None:
        self.span = span
        self.trace = trace
        self.role = role
        self.call = call
        self.persona = persona
        self.chatmode = chatmode
        self.duplicate = False


class Traces:
    """The receiver's per-trace state (see the module doc).

    ``classify`` and ``read_call`` default to :mod:`.mapping`'s; ``clock`` is monotonic
    seconds (``hold_seconds`` is measured on it); ``errors`` counts and logs once what
    goes wrong inside (nothing raises into the caller).
    """

    def __init__(self, config: Otlp, *, clock: Callable[[], float] = time.monotonic,
                 classify: Classify | None = None, read_call: ReadCall | None = None,
                 errors: ErrorReporter | None = None) -> None:
        self._clock = clock
        self._classify: Classify = classify or mapping.classify
        self._read_call: ReadCall = read_call or mapping.read_call
        self._errors = errors or ErrorReporter()
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._held: dict[tuple[str, str], _Held] = {}  # insertion order: oldest first
        # traces with agent spans whose outcome waits for the root -> until when
        self._pending: OrderedDict[str, float] = OrderedDict()
        self._remembered = 0
        self._dirty: set[tuple[str, str]] = set()  # held keys changed since take_changes
        self._deleted: set[str] = set()
        self._stored: set[str] = set()  # keys the last take_changes handed out
        self._carry = Result()
        self.reconfigure(config)

    # --- the interface ---

    @property
    def held(self) -> int:
        """Spans waiting (the persona_exporter_otlp_held_spans gauge)."""
        return len(self._held)

    def reconfigure(self, config: Otlp) -> None:
        """Apply a reloaded configuration. Held spans keep their deadlines; what a smaller
        bound releases is reported by the next ``add`` or ``expire``."""
        self.config = config
        self._resolver = Resolver(config)
        self._hold = config.hold_seconds
        self._workflow_spans = frozenset(config.workflow_spans)
        self._max_remembered = config.max_held_spans * REMEMBERED_SPANS_PER_HELD_SPAN
        self._shrink(self._carry)

    def add(self, spans: Iterable[Span]) -> Result:
        """Take a batch of received spans; return the events and counts it decided."""
        result = self._take_carry()
        # Two passes: a request groups spans by resource and scope, not by end time, so a
        # parent may come before its children within one batch. The first pass notes what
        # each span says (parent, persona, usage), the second decides with all of it.
        seen: list[_Seen] = []
        responses: dict[tuple[str, str], list[_Seen]] = {}
        for span in spans:
            try:
                item = self._gather(span, result)
            except Exception as exc:  # noqa: BLE001 - one odd span must not lose the batch
                self._errors.report("otlp_traces", exc)
                result.outcomes["ignored"] += 1
                continue
            if item is None:
                continue
            seen.append(item)
            call = item.call
            if item.role is Role.LLM and call is not None and call.response_id:
                responses.setdefault((span.trace_id, call.response_id), []).append(item)
        for group in responses.values():
            if len(group) > 1:
                _keep_innermost(group)
        for item in seen:
            try:
                self._decide(item, result)
            except Exception as exc:  # noqa: BLE001
                self._errors.report("otlp_traces", exc)
                result.outcomes["ignored"] += 1
        self._shrink(result)
        return result

    def expire(self, now: float | None = None) -> Result:
        """Release the spans that waited past ``hold_seconds``."""
        result = self._take_carry()
        try:
            now = self._clock() if now is None else now
            held = self._held
            while held:
                oldest = next(iter(held.values()))
                if oldest.deadline > now:
                    break
                self._release(oldest, result)
            pending = self._pending
            while pending:
                trace_id, deadline = next(iter(pending.items()))
                if deadline > now:
                    break
                del pending[trace_id]
                trace = self._traces.get(trace_id)
                if trace is not None:
                    _count_agents(trace, result)
        except Exception as exc:  # noqa: BLE001
            self._errors.report("otlp_traces", exc)
        return result

    def take_changes(self) -> tuple[list[tuple[str, str]], list[str]]:
        """The held spans stored or changed since the last call, as (key, JSON) rows to
        upsert, and the keys of the rows handed out before that are gone since."""
        upserts = []
        for key in self._dirty:
            held = self._held.get(key)
            if held is not None:
                text = _key(*key)
                upserts.append((text, held.to_json()))
                self._stored.add(text)
        deleted = sorted(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return sorted(upserts), deleted

    def restore(self, rows: Iterable[tuple[str, str]]) -> int:
        """Hold again the spans of stored rows (after a restart); each waits a fresh
        ``hold_seconds``. Returns how many were restored; a bad row is reported, dropped
        and listed for deletion by the next ``take_changes``."""
        restored = 0
        deadline = self._clock() + self._hold
        for key, text in rows:
            try:
                held = _Held.from_json(text, deadline)
                self._restore_one(held)
            except Exception as exc:  # noqa: BLE001 - one torn row must not lose the rest
                self._errors.report("otlp_traces_restore", exc)
                self._deleted.add(key)
                continue
            if key != _key(held.trace_id, held.span_id):
                self._deleted.add(key)
            restored += 1
        return restored

    def _restore_one(self, held: _Held) -> None:
        trace = self._trace(held.trace_id, self._carry)
        if held.span_id in trace.parents:
            return
        parent = held.values[_PARENT]
        self._remember(trace, held.span_id, parent if isinstance(parent, str) else None)
        if held.response_id:
            _add_response(trace, held.response_id)
        if not held.aggregate:
            _add_call(trace, held.span_id, held.tokens())
        self._hold_span(trace, held, self._carry)
        self._dirty.discard((held.trace_id, held.span_id))  # stored as it is
        self._stored.add(_key(held.trace_id, held.span_id))

    # --- pass 1: what each span says ---

    def _gather(self, span: Span, result: Result) -> _Seen | None:
        trace_id, span_id = span.trace_id, span.span_id
        trace = self._trace(trace_id, result)
        if span_id in trace.parents:
            result.outcomes["deduplicated"] += 1
            return None
        parent = span.parent_span_id or None
        role = self._classify(span)
        call = self._read_call(span, role)  # the role known: not classified twice
        persona, chatmode = self._resolver.read(span.attributes)
        remembered = self._remember(trace, span_id, parent)
        if remembered and (persona is not None or chatmode is not None):
            named = trace.named
            if named is None:
                named = trace.named = {}
            named[span_id] = (persona, chatmode)
            if trace.persona is None:
                trace.persona = persona
            if trace.chatmode is None:
                trace.chatmode = chatmode
        flags = trace.flags
        if parent is None:
            trace.root = span_id
        elif remembered:
            flags[parent] = flags.get(parent, 0) | _CHILD
        # Usage below a span is known from its children, which end (and arrive) first;
        # marking it as they come lets an aggregate decide when it arrives.
        if (call is not None and call.has_usage) or flags.get(span_id, 0) & _USAGE:
            self._mark_usage(trace, trace_id, parent, result)
        return _Seen(span, trace, role, call, persona, chatmode)

    def _trace(self, trace_id: str, result: Result) -> _Trace:
        traces = self._traces
        trace = traces.get(trace_id)
        if trace is None:
            trace = traces[trace_id] = _Trace(trace_id)
            if len(traces) > self.config.max_traces:
                self._evict(result)
        else:
            traces.move_to_end(trace_id)
            pending = self._pending
            if trace_id in pending:  # the trace is alive: its root may still come
                pending[trace_id] = self._clock() + self._hold
                pending.move_to_end(trace_id)
        return trace

    def _remember(self, trace: _Trace, span_id: str, parent: str | None) -> bool:
        if len(trace.parents) < MAX_SPANS_PER_TRACE:
            trace.parents[span_id] = parent
            self._remembered += 1
            return True
        return False

    def _mark_usage(self, trace: _Trace, trace_id: str, node: str | None,
                    result: Result) -> None:
        flags, parents = trace.flags, trace.parents
        for _ in range(MAX_DEPTH):
            if node is None:
                return
            mark = flags.get(node, 0)
            if mark & _USAGE:
                return  # marked before, and so were its known ancestors
            if not mark and len(flags) >= 2 * MAX_SPANS_PER_TRACE:
                return  # a trace past its memory bound (each span adds one id at most)
            flags[node] = mark | _USAGE
            if trace.held:
                held = self._held.get((trace_id, node))
                if held is not None and held.aggregate:
                    result.outcomes["counted_below"] += 1
                    self._drop(held, trace)
            parent = parents.get(node, _ABSENT)
            if parent == _ABSENT:
                return
            node = parent

    # --- pass 2: what becomes of it ---

    def _decide(self, item: _Seen, result: Result) -> None:
        span, trace, role, call = item.span, item.trace, item.role, item.call
        span_id = span.span_id
        if trace.waiting and span_id in trace.waiting:
            self._advance(trace, span.trace_id, span_id, result)
        is_root = not span.parent_span_id
        if is_root and trace.held:
            # Every span of the trace ended before its root: nothing more to wait for.
            for held_id in list(trace.held):
                held = self._held.get((span.trace_id, held_id))
                if held is not None:
                    self._release(held, result)
        outcome: str | None
        if role is Role.LLM:
            if call is None:  # a model call that names no model nor usage: still a request
                item.call = Call(model="unknown", error_type=(
                    "error" if span.status_code == STATUS_ERROR else None))
            outcome = self._llm(item, result)
        elif call is not None and call.has_usage:
            outcome = self._aggregate(item, result)
        else:
            outcome = "ignored"
        if role is Role.AGENT and not is_root and not trace.closed:
            # Whether it is a stage is known when the root arrives; a call is one anyway.
            if outcome == "mapped":
                result.outcomes[outcome] += 1
                outcome = None
            self._note_agent(item, outcome, result)
        elif outcome is not None:
            if is_root and outcome != "mapped" and self._is_workflow(span, role):
                outcome = "workflow"
            result.outcomes[outcome] += 1
        if is_root and not trace.closed:
            self._close(item, role, result)

    def _llm(self, item: _Seen, result: Result) -> str:
        span, trace, call = item.span, item.trace, item.call
        assert call is not None  # noqa: S101 - checked by the caller
        response_id = call.response_id
        if item.duplicate or (response_id and trace.responses
                              and response_id in trace.responses):
            return "deduplicated"
        if trace.flags.get(span.span_id, 0) & _USAGE:
            # An LLM span over another that carries usage: a framework's span over the
            # provider instrumentation's (OpenInference's LangChain and OpenAI instrumentors
            # both write LLM spans, without a response id to match): keep the innermost.
            return "counted_below"
        if response_id:
            _add_response(trace, response_id)
        fields = _fields(span, call, trace.hex_id)
        _add_call(trace, span.span_id, _tokens(fields))
        self._resolve(item, fields, aggregate=False, result=result)
        return "mapped"

    def _aggregate(self, item: _Seen, result: Result) -> str | None:
        span, trace, call = item.span, item.trace, item.call
        assert call is not None  # noqa: S101
        mark = trace.flags.get(span.span_id, 0)
        if mark & _USAGE:
            return "counted_below"
        # Its children end first, so if one arrived, all did (within a process); with none
        # seen it is a leaf aggregate, or a root that came first: wait for the root or
        # the deadline.
        waits = (not mark & _CHILD and self._hold > 0
                 and (not span.parent_span_id or trace.root is None))
        fields = _fields(span, call, trace.hex_id)
        if not waits:
            _add_call(trace, span.span_id, _tokens(fields))
        self._resolve(item, fields, aggregate=waits, result=result)
        return None if waits else "mapped"

    def _resolve(self, item: _Seen, fields: dict[str, Any], *, aggregate: bool,
                 result: Result) -> None:
        span, trace = item.span, item.trace
        resource = self._resolver.read_resource(span.resource)
        persona, chatmode, source, frontier = item.persona, item.chatmode, "span", None
        if persona is None:
            persona, chatmode, frontier = _climb(trace, span.parent_span_id, chatmode)
            source = "ancestor"
            if persona is not None or trace.root is not None or self._hold <= 0:
                frontier = None
        elif chatmode is None:
            chatmode = _climb(trace, span.parent_span_id, None, want_persona=False)[1]
        if frontier is None and not aggregate:
            self._record(fields, persona, source, chatmode, trace, resource, result)
            return
        call = item.call
        held = _Held(span.trace_id, span.span_id, fields, resource=resource, persona=persona,
                     source=source, chatmode=chatmode, frontier=frontier, aggregate=aggregate,
                     response_id=call.response_id if call is not None else None,
                     deadline=self._clock() + self._hold)
        self._hold_span(trace, held, result)

    def _record(self, fields: dict[str, Any], persona: str | None, source: str,
                chatmode: str | None, trace: _Trace | None,
                resource: tuple[str | None, str | None], result: Result) -> None:
        if persona is None:
            if trace is not None and trace.persona is not None:
                persona, source = trace.persona, "trace"
            elif resource[0] is not None:
                persona, source = resource[0], "resource"
            else:
                persona, source = "unknown", "unknown"
        if chatmode is None:
            chatmode = (trace.chatmode if trace is not None else None) or resource[1] or "none"
        result.events.append(LLMGeneration(persona=persona, chatmode=chatmode, **fields))
        result.persona_sources[source] += 1

    # --- workflows ---

    def _is_workflow(self, span: Span, role: Role) -> bool:
        if role is Role.AGENT or span.name in self._workflow_spans:
            return True
        operation = span.attributes.get("gen_ai.operation.name")
        return isinstance(operation, str) and operation in self._workflow_spans

    def _note_agent(self, item: _Seen, outcome: str | None, result: Result) -> None:
        trace, span = item.trace, item.span
        agents = trace.agents
        if agents is None:
            agents = trace.agents = {}
        if len(agents) >= MAX_SPANS_PER_TRACE:
            if outcome is not None:
                result.outcomes[outcome] += 1
            return
        resource = self._resolver.read_resource(span.resource)
        agents[span.span_id] = _Agent(span, item.persona, item.chatmode, resource, outcome)
        if outcome is not None:
            self._pending[span.trace_id] = self._clock() + self._hold
            self._pending.move_to_end(span.trace_id)

    def _close(self, item: _Seen, role: Role, result: Result) -> None:
        """The root arrived: the trace's workflow run and stages, if it is one."""
        trace, span = item.trace, item.span
        trace.closed = True
        if self._is_workflow(span, role):
            self._workflow(item, result)
        _count_agents(trace, result)
        trace.agents = None
        trace.calls = None
        self._pending.pop(span.trace_id, None)

    def _workflow(self, item: _Seen, result: Result) -> None:
        trace, span = item.trace, item.span
        stages = _stages(trace, span.span_id)
        stage_tokens = _stage_tokens(trace, stages)
        calls = trace.calls or []
        tokens = sum(t for _, t in calls)
        call = item.call
        if not calls and call is not None and call.has_usage:
            tokens = _count(call.input_tokens) + _count(call.output_tokens)
        workflow = _first_name(span.attributes, WORKFLOW_NAME_ATTRIBUTES, span.name)
        run_id = _run_id(span.attributes)
        resource = self._resolver.read_resource(span.resource)
        personas: list[str] = []
        for agent in stages:
            persona, chatmode, _ = _climb(trace, agent.span_id, None)
            persona = persona or trace.persona or agent.resource[0] or "unknown"
            chatmode = chatmode or trace.chatmode or agent.resource[1] or "none"
            personas.append(persona)
            result.events.append(StageRun(
                workflow=workflow, stage=agent.name, persona=persona, chatmode=chatmode,
                status=agent.status, duration_seconds=agent.duration,
                tokens=min(stage_tokens.get(agent.span_id, 0), MAX_TOKENS), run_id=run_id,
                start_time=_timestamp(agent.start), trace_id=_id(span.trace_id, 32),
                span_id=_id(agent.span_id, 16), parent_span_id=_id(agent.parent, 16)))
            if agent.outcome is not None:
                result.outcomes["workflow"] += 1
                agent.outcome = None
        for before, after in pairwise(personas):
            if before != after:
                result.events.append(PersonaSwitch(workflow=workflow, from_persona=before,
                                                   to_persona=after, run_id=run_id))
        first_stage = next((p for p in personas if p != "unknown"), None)
        result.events.append(WorkflowRun(
            workflow=workflow,
            chatmode=item.chatmode or trace.chatmode or resource[1] or "none",
            status=_status(span), duration_seconds=_seconds(span.duration_seconds),
            tokens=min(tokens, MAX_TOKENS),
            persona=item.persona or first_stage or trace.persona or resource[0],
            run_id=run_id, start_time=_timestamp(span.start_unix_nano),
            trace_id=_id(span.trace_id, 32), span_id=_id(span.span_id, 16)))

    # --- held spans ---

    def _hold_span(self, trace: _Trace, held: _Held, result: Result) -> None:
        key = (held.trace_id, held.span_id)
        if key in self._held:
            return
        while len(self._held) >= self.config.max_held_spans:
            result.released_early += 1
            self._release(next(iter(self._held.values())), result)
        self._held[key] = held
        if trace.held is None:
            trace.held = []
        trace.held.append(held.span_id)
        if held.frontier is not None:
            waiting = trace.waiting
            if waiting is None:
                waiting = trace.waiting = {}
            waiting.setdefault(held.frontier, []).append(held.span_id)
        self._dirty.add(key)

    def _advance(self, trace: _Trace, trace_id: str, span_id: str, result: Result) -> None:
        """The span ``span_id`` arrived: move on the held spans that waited for it."""
        assert trace.waiting is not None  # noqa: S101 - checked by the caller
        for held_id in trace.waiting.pop(span_id):
            held = self._held.get((trace_id, held_id))
            if held is None or held.frontier != span_id:
                continue
            persona, held.chatmode, frontier = _climb(trace, span_id, held.chatmode)
            held.frontier = None
            self._dirty.add((trace_id, held_id))
            if persona is not None:
                held.persona, held.source = persona, "ancestor"
            elif frontier is not None and trace.root is None:
                held.frontier = frontier
                trace.waiting.setdefault(frontier, []).append(held_id)
                continue
            if not held.aggregate:
                self._release(held, result)

    def _release(self, held: _Held, result: Result) -> None:
        trace = self._traces.get(held.trace_id)
        if trace is not None and held.persona is None and held.frontier is not None:
            # the best resolution known: ancestors of this batch not yet reached by pass 2
            persona, held.chatmode, _ = _climb(trace, held.frontier, held.chatmode)
            if persona is not None:
                held.persona, held.source = persona, "ancestor"
        self._drop(held, trace)
        if held.aggregate:
            if trace is not None and trace.flags.get(held.span_id, 0) & _USAGE:
                result.outcomes["counted_below"] += 1
                return
            result.outcomes["mapped"] += 1
            if trace is not None:
                _add_call(trace, held.span_id, held.tokens())
        self._record(held.fields(), held.persona, held.source, held.chatmode, trace,
                     held.resource, result)

    def _drop(self, held: _Held, trace: _Trace | None) -> None:
        key = (held.trace_id, held.span_id)
        del self._held[key]
        self._dirty.discard(key)
        text = _key(*key)
        if text in self._stored:
            self._stored.discard(text)
            self._deleted.add(text)
        if trace is None:
            return
        # (a trace forgotten and seen again in one batch holds its spans in its old record)
        if trace.held is not None and held.span_id in trace.held:
            trace.held.remove(held.span_id)
        if held.frontier is not None and trace.waiting is not None:
            waiters = trace.waiting.get(held.frontier)
            if waiters is not None and held.span_id in waiters:
                waiters.remove(held.span_id)
                if not waiters:
                    del trace.waiting[held.frontier]

    # --- memory bounds ---

    def _evict(self, result: Result) -> None:
        trace_id, trace = self._traces.popitem(last=False)
        self._remembered -= len(trace.parents)
        for held_id in list(trace.held or ()):
            held = self._held.get((trace_id, held_id))
            if held is not None:
                result.released_early += 1
                self._release(held, result)
        self._pending.pop(trace_id, None)
        _count_agents(trace, result)

    def _shrink(self, result: Result) -> None:
        traces = self._traces
        while traces and (len(traces) > self.config.max_traces
                          or self._remembered > self._max_remembered):
            self._evict(result)
        while len(self._held) > self.config.max_held_spans:
            result.released_early += 1
            self._release(next(iter(self._held.values())), result)

    def _take_carry(self) -> Result:
        carry = self._carry
        self._carry = Result()
        return carry


# --- helpers on one trace ---

def _climb(trace: _Trace, node: str | None, chatmode: str | None, *,
           want_persona: bool = True) -> tuple[str | None, str | None, str | None]:
    """From ``node`` up the known parents: ``(persona, chatmode, frontier)``, the nearest
    persona and chatmode named and the first id not seen yet (None: the chain reached its
    root, or went on too long)."""
    named, parents = trace.named, trace.parents
    for _ in range(MAX_DEPTH):
        if not node:
            return None, chatmode, None
        if named is not None:
            names = named.get(node)
            if names is not None:
                if chatmode is None:
                    chatmode = names[1]
                if want_persona and names[0] is not None:
                    return names[0], chatmode, None
                if not want_persona and chatmode is not None:
                    return None, chatmode, None
        parent = parents.get(node, _ABSENT)
        if parent == _ABSENT:
            return None, chatmode, node
        node = parent
    return None, chatmode, None


def _below(trace: _Trace, node: str, ancestor: str) -> bool:
    parents = trace.parents
    current: str | None = parents.get(node)
    for _ in range(MAX_DEPTH):
        if current is None or current == _ABSENT:
            return False
        if current == ancestor:
            return True
        current = parents.get(current, _ABSENT)
    return False


def _keep_innermost(group: list[_Seen]) -> None:
    """LLM spans of one batch with one response id: a framework's span over the
    provider's. Keep the innermost (the one below the others), else the first."""
    winner = group[0]
    for other in group[1:]:
        if _below(other.trace, other.span.span_id, winner.span.span_id):
            winner.duplicate = True
            winner = other
        else:
            other.duplicate = True


def _stages(trace: _Trace, root_id: str) -> list[_Agent]:
    """The agent spans right below the root: no other agent span between them and it."""
    agents = trace.agents or {}
    parents = trace.parents
    stages = []
    for agent in agents.values():
        node = agent.parent
        for _ in range(MAX_DEPTH):
            if node == root_id:
                stages.append(agent)
                break
            if node is None or node == _ABSENT or node in agents:
                break
            node = parents.get(node, _ABSENT)
    stages.sort(key=lambda agent: agent.start)
    return stages


def _stage_tokens(trace: _Trace, stages: list[_Agent]) -> dict[str, int]:
    """Tokens of the calls recorded below each stage (a call at most in one stage)."""
    if not stages or not trace.calls:
        return {}
    ids = {agent.span_id for agent in stages}
    parents = trace.parents
    tokens: dict[str, int] = {}
    for span_id, count in trace.calls:
        node: str | None = span_id
        for _ in range(MAX_DEPTH):
            if node is None or node == _ABSENT:
                break
            if node in ids:
                tokens[node] = tokens.get(node, 0) + count
                break
            node = parents.get(node, _ABSENT)
    return tokens


def _count_agents(trace: _Trace, result: Result) -> None:
    for agent in (trace.agents or {}).values():
        if agent.outcome is not None:
            result.outcomes[agent.outcome] += 1
            agent.outcome = None


def _add_call(trace: _Trace, span_id: str, tokens: int) -> None:
    if trace.closed:
        return  # no workflow left to sum them for
    calls = trace.calls
    if calls is None:
        calls = trace.calls = []
    if len(calls) < MAX_SPANS_PER_TRACE:
        calls.append((span_id, tokens))


def _add_response(trace: _Trace, response_id: str) -> None:
    responses = trace.responses
    if responses is None:
        responses = trace.responses = set()
    if len(responses) < MAX_SPANS_PER_TRACE:
        responses.add(response_id)


def _key(trace_id: str, span_id: str) -> str:
    return f"{trace_id}:{span_id}"


# --- span values into event fields (valid by events.py, whatever the span holds) ---

def _fields(span: Span, call: Call, trace_id: str | None) -> dict[str, Any]:
    # On the path of every LLM span: the common case (ints, None) is tested inline.
    start, end = span.start_unix_nano, span.end_unix_nano
    cost, ttft, error = call.cost_usd, call.time_to_first_chunk_seconds, call.error_type
    parent = span.parent_span_id
    return {
        "model": _name(call.model),
        "provider": _name(call.provider),
        "input_tokens": _count(call.input_tokens),
        "output_tokens": _count(call.output_tokens),
        "cache_read_tokens": _count(call.cache_read_tokens),
        "reasoning_tokens": _count(call.reasoning_tokens),
        "cost_usd": None if cost is None else _number(cost, MAX_COST_USD),
        "duration_seconds": _duration(start, end),
        "time_to_first_chunk_seconds": None if ttft is None else _number(ttft, MAX_SECONDS),
        "error_type": _name(error) if error else None,
        "start_time": _timestamp(start),
        "trace_id": trace_id,
        "span_id": _id(span.span_id, 16),
        "parent_span_id": _id(parent, 16) if parent else None,
    }


_NAMES: dict[Any, str] = {}


def _name(value: Any) -> str:
    """clean_name, remembered: a batch names the same few models and providers."""
    try:
        return _NAMES[value]
    except (KeyError, TypeError):
        name = clean_name(value)
        if len(_NAMES) >= 4096:
            _NAMES.clear()  # hostile cardinality: start over rather than grow
        if isinstance(value, str):
            _NAMES[value] = name
        return name


def _tokens(fields: Mapping[str, Any]) -> int:
    return _count(fields.get("input_tokens")) + _count(fields.get("output_tokens"))


def _count(value: Any) -> int:
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    if type(value) is not int:
        number = _number(value, float(MAX_TOKENS))
        value = 0 if number is None else int(number)
    return value if 0 <= value <= MAX_TOKENS else (0 if value < 0 else MAX_TOKENS)


def _number(value: Any, bound: float) -> float | None:
    """A finite number within 0..bound, else None (the price table or nothing decides)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if 0 <= value <= bound else None  # NaN fails both


def _seconds(value: Any) -> float:
    number = _number(value, math.inf)
    return 0.0 if number is None else min(number, MAX_SECONDS)


def _duration(start: Any, end: Any) -> float:
    if type(start) is int and type(end) is int:
        return 0.0 if end <= start else min((end - start) / 1e9, MAX_SECONDS)
    end_ns, start_ns = _number(end, math.inf), _number(start, math.inf)
    if end_ns is None or start_ns is None:
        return 0.0
    return _seconds((end_ns - start_ns) / 1e9)


def _timestamp(unix_nano: Any) -> float | None:
    if type(unix_nano) is int:
        return unix_nano / 1e9 if 0 < unix_nano <= _MAX_TIMESTAMP_NS else None
    seconds = _number(unix_nano, math.inf)
    if seconds is None:
        return None
    seconds /= 1e9
    return seconds if 0 < seconds <= MAX_TIMESTAMP else None


def _id(value: Any, length: int) -> str | None:
    if isinstance(value, str) and len(value) == length and _ID_RE.fullmatch(value):
        return value
    return None


def _status(span: Span) -> Literal["succeeded", "failed"]:
    return "failed" if span.status_code == STATUS_ERROR else "succeeded"


def _first_name(attributes: Mapping[str, Any], keys: tuple[str, ...], default: str) -> str:
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, str) and value.strip():
            return clean_name(value)
    return clean_name(default)


def _run_id(attributes: Mapping[str, Any]) -> str | None:
    for key in RUN_ID_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return clean_name(value)
    return None
