"""uvicorn's h11 protocol with a header deadline and a connection cap that evicts idle ones.

uvicorn (0.54) arms no timer on a fresh connection, cancels its keep-alive timer on any
byte, and its ``limit_concurrency`` counts idle connections, so 1,000 silent or
1-byte-every-4-s sockets answer every real client 503. :func:`guarded_protocol` returns an
``H11Protocol`` subclass (for ``uvicorn.Config(http=...)``) where:

- a connection that has no request in flight must deliver a complete request line and
  headers within ``header_timeout`` of being accepted (or of its previous response), or it
  is closed; trickling bytes does not extend the deadline;
- beyond ``max_connections`` a new connection closes the one idle the longest; a request
  in flight (headers in, response not finished) is never cut. With nothing idle, the new
  connection is refused.

The subclass touches uvicorn internals (``conn``, ``cycle``, ``connections``,
``on_response_complete``), hence the upper bound on uvicorn in pyproject.toml and the tests
that trickle headers at the real process.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("persona_exporter")

# File descriptors kept for everything that is not a client connection (the listening
# socket, logs, the storage, outgoing trace exports).
RESERVED_FDS = 64
MAX_CONNECTIONS_CEILING = 4096


def connection_cap(wanted: int | None = None) -> int:
    """The most client connections this process can hold: raise the soft RLIMIT_NOFILE as
    far as the hard limit allows (up to 65,536), keep RESERVED_FDS spare, and take
    ``wanted`` when it fits (default: up to MAX_CONNECTIONS_CEILING)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have; the cap below follows it
    available = (1 << 20 if soft == resource.RLIM_INFINITY else soft) - RESERVED_FDS
    cap = min(wanted or MAX_CONNECTIONS_CEILING, max(available, 1))
    if wanted is not None and cap < wanted:
        logger.warning("server.max_connections: %d is over what the file descriptor limit "
                       "allows (ulimit -n %d); using %d", wanted, soft, cap)
    return cap


class ConnectionStats:
    """What the guard did, for ``/readyz``; each kind is logged the first time only, since
    an attack would otherwise flood the log."""

    def __init__(self) -> None:
        self.counts = {"header_timeouts": 0, "evicted": 0, "refused": 0}

    def count(self, kind: str, message: str, *args: Any) -> None:
        if self.counts[kind] == 0:
            logger.warning(message + "; further ones are counted in /readyz, not logged",
                           *args)
        self.counts[kind] += 1


def guarded_protocol(*, header_timeout: float, max_connections: int,
                     stats: ConnectionStats | None = None) -> type[H11Protocol]:
    """A protocol class per server, so that its table of idle connections is its own."""
    idle: OrderedDict[H11Protocol, None] = OrderedDict()  # no request in flight, oldest first
    seen = stats or ConnectionStats()

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                victim = next(iter(idle), None)
                if victim is None:
                    seen.count("refused", "%d connections, each with a request in flight: "
                               "refusing a new one", max_connections)
                    transport.close()
                    return
                seen.count("evicted", "%d connections open: closing the one idle the longest",
                           max_connections)
                _close(victim)
            self._guard()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # cancels uvicorn's keep-alive timer, not ours
            self._guard()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            if not self.transport.is_closing():
                self._guard()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _guard(self) -> None:
            # Armed once per idle spell: bytes that trickle in do not push the deadline.
            in_flight = self.cycle is not None and not self.cycle.response_complete
            if in_flight:
                self._disarm()  # the body and the app have their own deadlines
            elif self._deadline is None:
                idle[self] = None
                self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            idle.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            seen.count("header_timeouts", "closing a connection that sent no complete request "
                       "headers within %g s (server.header_timeout_seconds)", header_timeout)
            _close(self)

    def _close(protocol: H11Protocol) -> None:
        # No response: there is no request to answer yet (RFC 9112 lets a server close an
        # idle connection at any time).
        protocol._disarm()  # type: ignore[attr-defined]
        if not protocol.transport.is_closing():
            protocol.transport.close()

    return GuardedH11Protocol
