"""The sink seam: what receives the events the SDK produces or the server ingests.

It lives in the core because both sides use it and neither may import the other: the
SDK's :class:`~persona_exporter.sdk.telemetry.Telemetry` fans events out to sinks, and the
server's ingestor forwards what it applied to one. The
:class:`~persona_exporter.metrics.recorder.Recorder` (metrics), the tracing sink and the
SDK's remote sink are the implementations.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .events import Event


@runtime_checkable
class Sink(Protocol):
    """Receives events. ``emit`` must be fast and must not block: a sink that does I/O
    queues the event and ships it from its own thread."""

    def emit(self, event: Event) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def shutdown(self, timeout: float | None = None) -> None: ...
