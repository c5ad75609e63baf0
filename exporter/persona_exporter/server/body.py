"""Reading a request body under limits: size (after decompression), time, encoding.

``read_body(...)`` returns the body's bytes or raises :class:`BodyError` with the status to
answer: 408 (not complete within its deadline), 413 (over ``max_bytes`` on the wire or once
decompressed), 415 (a ``Content-Encoding`` other than gzip or identity), 400 (not valid
gzip). A client that goes away mid-body raises starlette's ``ClientDisconnect``.

gzip is decompressed chunk by chunk with a cap on each step's output, so a gzip bomb costs
at most ``max_bytes`` (plus one chunk) of memory before it is refused. A
:class:`BodyBudget` shared by all requests bounds the bytes held by bodies still arriving:
past it a request gets 503 with ``Retry-After`` rather than the process growing by
connections x ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import Request

ENCODINGS = {"": None, "identity": None, "gzip": "gzip", "x-gzip": "gzip"}


class BodyError(Exception):
    """The body cannot be used; ``status``, and ``reason`` for the rejected counter (None:
    nothing was wrong with the request, e.g. 503)."""

    def __init__(self, status: int, reason: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Gunzip:
    """Incremental gzip decoding (one or more members) that stops past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.output = bytearray()
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._mid_member = False

    def feed(self, data: bytes) -> bool:
        """Decode ``data``; False once the output is over the limit."""
        while data:
            room = self.limit - len(self.output) + 1  # one byte more tells "over"
            try:
                self.output += self._member.decompress(data, room)
            except zlib.error as error:
                raise BodyError(400, "malformed_body",
                                f"the body is not valid gzip: {error}") from None
            if len(self.output) > self.limit:
                return False
            self._mid_member = not self._member.eof
            data = self._member.unconsumed_tail
            if self._member.eof:
                data = self._member.unused_data  # the next member, if any
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return True

    def finish(self) -> bytes:
        if self._mid_member:
            raise BodyError(400, "malformed_body",
                            "the body is not valid gzip: it ends in the middle of a member")
        return bytes(self.output)


class BodyBudget:
    """Bytes held by all bodies still being read, at most ``limit``; loop thread only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise BodyError(503, None, f"the exporter holds {self.used} bytes of bodies still "
                            f"arriving (at most {self.limit}); retry shortly",
                            headers={"Retry-After": "1"})
        self.used += size


def content_decoder(request: Request, max_bytes: int) -> Gunzip | None:
    """The decoder for the request's Content-Encoding; BodyError 415 naming one we lack."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise BodyError(415, "unsupported_media_type",
                        f"content encoding {encoding!r} is not supported; send gzip or "
                        "identity", headers={"Accept-Encoding": "gzip"})
    return Gunzip(max_bytes) if ENCODINGS[encoding] == "gzip" else None


async def read_body(request: Request, *, max_bytes: int, timeout: float,
                    budget: BodyBudget | None = None, raw: bytearray | None = None) -> bytes:
    """The whole body, decoded; the limit holds for the bytes on the wire and decoded.
    ``raw``, when given, receives the bytes as they came (to forward them unchanged)."""
    decoder = content_decoder(request, max_bytes)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, "body_too_large",
                        f"body of {declared} bytes is over the limit of {max_bytes}")
    budget = budget or BodyBudget(max_bytes + 1)
    kept = bytearray()  # the body as it came, when it is not encoded
    wire = held = 0

    async def read() -> bool:
        nonlocal wire, held
        async for chunk in request.stream():  # a chunked body is capped as it arrives
            wire += len(chunk)
            if wire > max_bytes:
                return False
            if decoder is None:
                kept.extend(chunk)
            else:
                if raw is not None:
                    raw.extend(chunk)
                if not decoder.feed(chunk):
                    return False
            size = len(kept) if decoder is None else len(decoder.output)
            if raw is not None and decoder is not None:
                size += len(raw)
            budget.take(size - held)
            held = size
        return True

    try:
        within_limit = await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise BodyError(408, "malformed_body",
                        f"the body did not arrive within {timeout:g} s") from None
    finally:
        budget.used -= held  # from here on the ingest queue's bound takes over
    if not within_limit:
        what = "once decompressed " if decoder is not None and wire <= max_bytes else ""
        raise BodyError(413, "body_too_large",
                        f"body {what}over the limit of {max_bytes} bytes")
    if decoder is not None:
        return decoder.finish()
    body = bytes(kept)
    if raw is not None:
        raw.extend(body)
    return body
