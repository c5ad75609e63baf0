"""The OTLP traces receiver: ``POST /v1/traces`` and Langfuse's own path.

    POST /v1/traces                     OTLP/HTTP, protobuf or JSON, gzip or not
    POST /api/public/otel/v1/traces     the same, where the Langfuse SDKs send (Basic auth)

A request is read under the same limits as ``/v1/events`` (``body``), decoded on the
ingest thread (``genai.decode``), its spans turned into events by the per-trace state
(``genai.traces``) and applied like any batch (``Ingestor.apply_batch``): the hash of the
body is its batch id, so an OTLP client's retry of a request that was applied (the answer
lost on the way) is answered again and never counted twice, across a restart too when
the state is stored. The answer follows the OTLP/HTTP specification
(``opentelemetry-specification`` ``specification/protocol/otlp.md``): 200 with an
``ExportTraceServiceResponse`` (``partial_success`` naming how many spans were refused
and why), 400 for a body that cannot be read (not retried by clients), 401, 413, 415,
and 503 with ``Retry-After`` when the exporter is overloaded or cannot store the state
(retried). Error bodies are a ``google.rpc.Status`` in the request's encoding.

Auth: with an ingest token set, ``Authorization: Bearer <token>``, or Basic auth whose
password is the token, so a Langfuse SDK whose secret key is the token is let in (its
public key is not checked: it names a Langfuse project, which the exporter has none of).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..config import Config, Otlp, cost_usd
from ..events import LLMGeneration
from ..genai import mapping
from ..genai.decode import Decoded, DecodeError, decode_json, decode_protobuf
from ..genai.personas import Resolver
from ..genai.traces import READ_KEYS as TRACE_KEYS
from ..genai.traces import Result, Traces
from .body import BodyBudget, BodyError, read_body
from .ingest import BatchError, BatchResult, Ingestor, Rejection
from .workers import BusyError, Workers

logger = logging.getLogger("persona_exporter")

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPE = "application/json"
PROTOBUF = "protobuf"
JSON = "json"


class Forwarding(Protocol):
    """What the receiver needs of ``forward.Forwarder``."""

    enabled: bool

    def submit(self, body: bytes, headers: Any, spans: int) -> None: ...


class TraceIngest:
    """Decode OTLP trace requests and apply their spans through an :class:`Ingestor`."""

    def __init__(self, ingestor: Ingestor, config: Config, *, traces: Traces | None = None,
                 held_rows: list[tuple[str, str]] | None = None) -> None:
        self._ingestor = ingestor
        self._rates = _rates(config)
        self.recorder = ingestor.recorder
        self.traces = traces if traces is not None else Traces(config.otlp,
                                                               errors=ingestor.recorder.errors)
        if held_rows:
            self.traces.restore(held_rows)
        self._keys = read_keys(config.otlp)
        recorder = ingestor.recorder
        self._received = recorder.instrument("persona_exporter_otlp_spans_received_total")
        self._outcomes = recorder.instrument("persona_exporter_otlp_spans_total")
        self._rejected = recorder.instrument("persona_exporter_otlp_spans_rejected_total")
        self._sources = recorder.instrument("persona_exporter_otlp_persona_resolutions_total")
        self._held = recorder.instrument("persona_exporter_otlp_held_spans")
        self._errors = recorder.errors
        ingestor.held_changes = self.traces.take_changes
        self._held.set(self.traces.held)

    def ingest(self, body: bytes, encoding: str, transport: str = "http") -> BatchResult:
        """Apply one request's spans; DecodeError when the body cannot be read at all,
        BatchError (503) when its state could not be stored."""
        decoded = decode_protobuf(body, self._keys) if encoding == PROTOBUF \
            else decode_json(body)
        digest = hashlib.blake2b(body, digest_size=16).digest()
        batch_id = "otlp:" + digest.hex()

        def apply() -> BatchResult:
            self._received.labels(transport).inc(len(decoded.spans) + decoded.rejected_count)
            for reason, count in decoded.rejected.items():
                self._rejected.labels(reason).inc(count)
            self._apply(self.traces.add(decoded.spans))
            return _answer(batch_id, decoded)

        return self._ingestor.apply_batch(batch_id, digest, apply, revertible=False)

    def expire(self) -> None:
        """Release the spans that waited past the hold window; run periodically."""
        self._ingestor.run_locked(lambda: self._apply(self.traces.expire()))

    def release_all(self) -> None:
        """At a stop without durable state: record every held span now, with what is known
        of its persona (a held span would otherwise be lost with the process)."""
        self._ingestor.run_locked(lambda: self._apply(self.traces.expire(math.inf)))

    def reconfigure(self, config: Config) -> None:
        def apply() -> None:
            self._rates = _rates(config)
            self.traces.reconfigure(config.otlp)
            self._keys = read_keys(config.otlp)

        self._ingestor.run_locked(apply)

    def _apply(self, result: Result) -> None:
        rates = self._rates
        for event in result.events:
            # No cost on the span: the price table's, as the SDK computes it.
            if type(event) is LLMGeneration and event.cost_usd is None:
                rate = rates.get(event.model)
                if rate is not None:
                    event.cost_usd = cost_usd(rate, event.input_tokens, event.output_tokens,
                                              event.cache_read_tokens)
        self._ingestor.emit(result.events, from_spans=True)
        for outcome, count in result.outcomes.items():
            self._outcomes.labels(outcome).inc(count)
        for source, count in result.persona_sources.items():
            self._sources.labels(source).inc(count)
        if result.released_early:
            self._errors.report("otlp", "HoldWindowFull")
        self._held.set(self.traces.held)


def read_keys(config: Otlp) -> frozenset[str]:
    """The span attributes the mapping, the per-trace state and the resolver read: only
    these are decoded out of a protobuf request."""
    return mapping.READ_KEYS | TRACE_KEYS | Resolver(config).keys


def _rates(config: Config) -> dict[str, tuple[float, float, float]]:
    return {name: price.rates() for name, price in config.models.items()}


def _answer(batch_id: str, decoded: Decoded) -> BatchResult:
    rejected = []
    if decoded.rejected:
        reasons = ", ".join(f"{count} {reason}" for reason, count in decoded.rejected.items())
        rejected = [Rejection(0, next(iter(decoded.rejected)),
                              f"{reasons}; first: {decoded.first_error}")]
    return BatchResult(batch_id, len(decoded.spans), rejected,
                       rejected_count=decoded.rejected_count)


# --- HTTP --------------------------------------------------------------------------------

def trace_endpoint(*, traces: TraceIngest, workers: Workers, budget: BodyBudget,
                   token: Callable[[], str | None], max_body_bytes: int, body_timeout: float,
                   forwarder: Forwarding | None = None,
                   langfuse: bool = False) -> Callable[[Request], Any]:
    """The ASGI endpoint of one of the two paths (``langfuse``: the Langfuse SDK's)."""
    recorder = traces.recorder
    realm = "Basic" if langfuse else "Bearer"
    forwarding = forwarder is not None and forwarder.enabled

    def forward(raw: bytearray | None, request: Request, result: BatchResult) -> None:
        if forwarder is not None and raw is not None:
            forwarder.submit(bytes(raw), request.headers, result.accepted)

    async def endpoint(request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        encoding = PROTOBUF if media in PROTOBUF_TYPES else JSON if media == JSON_TYPE else ""
        answer_as = encoding or PROTOBUF
        if not _authorized(request, token()):
            recorder.reject("unauthorized")
            return _status(answer_as, 401, "missing or wrong credentials",
                           {"WWW-Authenticate": f'{realm} realm="persona-exporter"'})
        if not encoding:
            recorder.reject("unsupported_media_type")
            return _status(PROTOBUF, 415, f"content type {media[:60]!r} is not supported; "
                           "send application/x-protobuf or application/json")
        # The body as it came is kept only to be forwarded: it would count twice against
        # the budget of bodies in flight otherwise.
        raw: bytearray | None = bytearray() if forwarding else None
        try:
            body = await read_body(request, max_bytes=max_body_bytes, timeout=body_timeout,
                                   budget=budget, raw=raw)
            result = await workers.ingest(partial(traces.ingest, body, encoding), len(body))
        except BodyError as error:
            if error.reason is not None:
                recorder.reject(error.reason)
            return _status(encoding, error.status, str(error),
                           {**error.headers, "Connection": "close"})
        except ClientDisconnect:
            logger.warning("an OTLP client went away before its body was complete; nothing "
                           "applied")
            return Response(status_code=400)
        except BusyError as error:
            return _status(encoding, 503, str(error), {"Retry-After": "1"})
        except DecodeError as error:
            recorder.reject("malformed_body")
            return _status(encoding, 400, str(error))
        except BatchError as error:
            if error.applied is not None:
                # applied although not stored: its retry is a duplicate, never forwarded
                forward(raw, request, error.applied)
            headers = {"Retry-After": "1"} if error.status == 503 else None
            return _status(encoding, error.status, str(error), headers)
        if not result.duplicate:
            forward(raw, request, result)
        return _success(encoding, result)

    return endpoint


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(given.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    elif scheme != "bearer":
        return False
    # compare_digest takes constant time in the length of the expected token.
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _success(encoding: str, result: BatchResult) -> Response:
    if encoding == JSON:
        body: dict[str, Any] = {}
        rejected = result.rejected_count or 0
        if rejected:
            body["partialSuccess"] = {
                "rejectedSpans": str(rejected),  # int64: a string in proto3 JSON
                "errorMessage": _rejection_message(result)}
        return Response(json.dumps(body), media_type=JSON_TYPE)
    return Response(success_body(result), media_type="application/x-protobuf")


def success_body(result: BatchResult) -> bytes:
    """The ``ExportTraceServiceResponse`` of an applied request, serialised."""
    response = ExportTraceServiceResponse()
    rejected = result.rejected_count or 0
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = _rejection_message(result)
    return bytes(response.SerializeToString())


def _rejection_message(result: BatchResult) -> str:
    return result.rejected[0].message if result.rejected \
        else f"{result.rejected_count} spans refused"


# google.rpc.Code values for the HTTP statuses we answer with
_RPC_CODES = {400: 3, 401: 16, 408: 4, 409: 6, 413: 8, 415: 3, 429: 8, 503: 14}


def _status(encoding: str, status: int, message: str,
            headers: dict[str, str] | None = None) -> Response:
    code = _RPC_CODES.get(status, 2)
    if encoding == JSON:
        return Response(json.dumps({"code": code, "message": message}), status_code=status,
                        media_type=JSON_TYPE, headers=headers)
    return Response(Status(code=code, message=message).SerializeToString(),
                    status_code=status, media_type="application/x-protobuf", headers=headers)


def expire_interval(config: Otlp) -> float:
    """How often held spans are checked: a tenth of the window, between 0.2 and 5 s."""
    return min(5.0, max(0.2, config.hold_seconds / 10))
