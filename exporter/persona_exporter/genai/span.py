"""One received span as plain Python values, whatever encoding it arrived in.

The OTLP protobuf and OTLP/JSON decoders (``decode``) both produce these, so the mapping
reads one shape. Attribute values are ``str``, ``bool``, ``int``, ``float``, ``bytes``,
``list`` or ``dict`` (an OTLP ``kvlist``), as the sender typed them: the mapping coerces
("12" tokens from an exporter that sends strings is 12), the decoder does not guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# OTLP Status.StatusCode
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """A span of a received batch. ``resource`` is shared by the spans of one resource
    (do not mutate it); ids are lower-case hex, ``parent_span_id`` is ``None`` for a root."""

    trace_id: str                 # 32 hex digits
    span_id: str                  # 16 hex digits
    parent_span_id: str | None
    name: str
    kind: int                     # OTLP SpanKind: 1 internal, 2 server, 3 client, ...
    start_unix_nano: int
    end_unix_nano: int
    status_code: int = STATUS_UNSET
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    scope_name: str = ""

    @property
    def duration_seconds(self) -> float:
        return max(0, self.end_unix_nano - self.start_unix_nano) / 1e9
