"""How the Langfuse server turns the spans of one trace into the trace's user, session,
name, tags and metadata: both of its write paths, as test oracles.

Read from langfuse/langfuse at 62751446149b702b419a9292ddfc2280cdf74b8c (2026-08-22). Our
exporter sends ``x-langfuse-ingestion-version: 4``, so the worker writes the v4 events
table directly, and it also keeps the legacy traces table unless the deployment runs
events-only (``worker/src/queues/otelIngestionQueue.ts``). A layout must hold on both.

Legacy path (:func:`legacy_trace`), ``packages/shared/src/server/otel/OtelIngestionProcessor.ts``:
- ``processSpan``: a span makes a trace-create event when it is a root (no parent),
  has trace updates, or is the trace's first span seen; ``hasTraceUpdates`` is true for a
  truthy ``user.id``, ``session.id``, ``langfuse.trace.name``, ``langfuse.trace.tags``, ...
  or any key starting with ``langfuse.trace.metadata``.
- ``createTraceEvent``: the event's timestamp is the span's *start*; a root sets name
  (``langfuse.trace.name`` else the span name), userId, sessionId, tags, metadata; a
  non-root with updates the same, name only from ``langfuse.trace.name``; a shallow one
  none of them.
- ``extractUserId`` / ``extractSessionId`` / ``extractTags``: the first truthy key of
  ``langfuse.user.id, user.id, ...`` / ``langfuse.session.id, session.id,
  gen_ai.conversation.id, ...`` / ``langfuse.trace.tags, ...``.
Then ``worker/src/services/IngestionService/index.ts``: every trace event of the trace,
sorted by timestamp (``toTimeSortedEventList``, a stable sort), folded with
``overwriteObject`` (``worker/src/services/IngestionService/utils.ts``): an undefined
value keeps the earlier one, anything else overwrites; tags are the sorted union;
metadata a deep merge, later wins per key.

v4 events path (:func:`events_trace`): one row per span with its own userId, sessionId,
tags and trace name (``OtelIngestionProcessor.processToEvent``) and ``event_ts`` = the
write time (``IngestionService/index.ts``: ``const now = ...``, ``event_ts: now``), so
arrival order. The trace is aggregated by
``packages/shared/src/server/queries/clickhouse-sql/event-query-builder.ts``:
``argMaxIf(user_id, event_ts, user_id <> '')``, the same for ``session_id``,
``argMaxIf(tags, event_ts, notEmpty(tags))`` (latest non-empty, not a union),
``argMaxIf(metadata, event_ts, parent_span_id = '')`` (the root's); the name is
``COALESCE(argMaxIf(trace_name, ...), argMaxIf(name, ..., root))``
(``packages/shared/src/eventsTable.ts``).

Both take "latest wins" over different orders (span start vs arrival): the user is stable
in every arrival order only if every span carries the same user, or none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.otlp_receiver import Span

USER_KEYS = ("langfuse.user.id", "user.id", "langfuse.observation.metadata.langfuse_user_id",
             "langfuse.trace.metadata.langfuse_user_id", "ai.telemetry.metadata.userId")
SESSION_KEYS = ("langfuse.session.id", "session.id", "gen_ai.conversation.id",
                "langfuse.observation.metadata.langfuse_session_id",
                "langfuse.trace.metadata.langfuse_session_id", "ai.telemetry.metadata.sessionId")
TAG_KEYS = ("langfuse.trace.tags", "langfuse.tags", "langfuse.observation.metadata.langfuse_tags",
            "langfuse.trace.metadata.langfuse_tags", "ai.telemetry.metadata.tags", "tag.tags")
TRACE_UPDATE_KEYS = (
    "langfuse.trace.name", "langfuse.trace.input", "langfuse.trace.output",
    "langfuse.trace.metadata", "user.id", "session.id", "langfuse.trace.public",
    "langfuse.trace.tags", "langfuse.user.id", "langfuse.session.id",
    "langfuse.observation.metadata.langfuse_user_id",
    "langfuse.observation.metadata.langfuse_session_id",
    "langfuse.observation.metadata.langfuse_tags", "langfuse.trace.metadata.langfuse_session_id",
    "langfuse.trace.metadata.langfuse_user_id", "langfuse.trace.metadata.langfuse_tags",
    "ai.telemetry.metadata.sessionId", "ai.telemetry.metadata.userId",
    "ai.telemetry.metadata.tags", "tag.tags")
TRACE_METADATA = "langfuse.trace.metadata"


def _first(attributes: dict[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = attributes.get(key)
        if value:
            return value if isinstance(value, str) else json.dumps(value)
    return None


def _tags(attributes: dict[str, Any]) -> list[str]:
    value = next((attributes[k] for k in TAG_KEYS if attributes.get(k)), None)
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(tag) for tag in value]
    return [str(value)]  # (the server also splits JSON arrays and commas; we never send those)


def _trace_metadata(attributes: dict[str, Any]) -> dict[str, Any]:
    prefix = TRACE_METADATA + "."
    return {k.removeprefix(prefix): v for k, v in attributes.items() if k.startswith(prefix)}


def _is_root(span: Span) -> bool:
    as_root = span.attributes.get("langfuse.internal.as_root")
    return not span.parent_span_id or str(as_root) == "true"


def _has_trace_updates(attributes: dict[str, Any]) -> bool:
    return (any(attributes.get(k) for k in TRACE_UPDATE_KEYS)
            or any(k.startswith(TRACE_METADATA) for k in attributes))


def legacy_trace(spans: Sequence[Span]) -> dict[str, Any]:
    """The traces-table record after every span of ``spans`` (in arrival order) is in."""
    seen: set[str] = set()
    events: list[dict[str, Any]] = []
    for span in spans:
        root, updates = _is_root(span), _has_trace_updates(span.attributes)
        if not (root or updates or span.trace_id not in seen):
            continue
        seen.add(span.trace_id)
        event: dict[str, Any] = {"timestamp": span.start}
        if root or updates:
            a = span.attributes
            event.update(userId=_first(a, USER_KEYS), sessionId=_first(a, SESSION_KEYS),
                         name=a.get("langfuse.trace.name") or (span.name if root else None),
                         tags=_tags(a), metadata=_trace_metadata(a))
        events.append(event)
    merged: dict[str, Any] = {"tags": [], "metadata": {}}
    for event in sorted(events, key=lambda e: e["timestamp"]):  # stable, as JS sort is
        for key, value in event.items():
            if key == "tags":
                merged["tags"] = sorted(set(merged["tags"]) | set(value))
            elif key == "metadata":
                merged["metadata"] = {**merged["metadata"], **value}
            elif value is not None:  # undefined keeps the earlier value
                merged[key] = value
    return merged


def events_trace(spans: Sequence[Span]) -> dict[str, Any]:
    """The v4 events-table trace after ``spans`` were written in this order."""
    rows = list(enumerate(spans))  # event_ts = the write index

    def latest(value: Any) -> Any:
        found = [(ts, v) for ts, span in rows if (v := value(span))]
        return max(found, key=lambda pair: pair[0])[1] if found else None

    return {
        "userId": latest(lambda s: _first(s.attributes, USER_KEYS)),
        "sessionId": latest(lambda s: _first(s.attributes, SESSION_KEYS)),
        "tags": latest(lambda s: _tags(s.attributes)) or [],
        "name": (latest(lambda s: s.attributes.get("langfuse.trace.name"))
                 or latest(lambda s: s.name if not s.parent_span_id else None)),
        "metadata": latest(lambda s: _trace_metadata(s.attributes) or None
                           if not s.parent_span_id else None) or {},
    }
