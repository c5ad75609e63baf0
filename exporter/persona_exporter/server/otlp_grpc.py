"""OTLP/gRPC on a second listener (``otlp.grpc_listen_address``), off unless configured.

It comes with what we already depend on: grpcio (the OTLP gRPC exporter's dependency) and
the service's name and method from ``opentelemetry/proto/collector/trace/v1/
trace_service.proto``. The request is taken as raw bytes (no deserialiser) and goes
through the same decoder, per-trace state and batch ids as OTLP/HTTP; gRPC's own
compression and message-size limit replace the body reader's. Status codes follow the
OTLP specification: INVALID_ARGUMENT for a body that cannot be read (not retried),
UNAUTHENTICATED, and UNAVAILABLE when the state could not be stored (retried).
"""

from __future__ import annotations

import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from ..genai.decode import DecodeError
from .ingest import BatchError
from .otlp import PROTOBUF, Forwarding, TraceIngest, success_body

logger = logging.getLogger("persona_exporter")

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class GrpcListener:
    """A gRPC server with the OTLP TraceService; ``start()`` binds (raising OSError when it
    cannot), ``stop(grace)`` drains."""

    def __init__(self, address: str, traces: TraceIngest, *, token: Any,
                 max_message_bytes: int, forwarder: Forwarding | None = None) -> None:
        self.address = address
        self._traces = traces
        self._token = token
        self._forwarder = forwarder
        # Two threads: decoding holds the GIL, so more would only queue behind the lock.
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="otlp-grpc")
        self._server = grpc.server(pool, options=[("grpc.max_receive_message_length",
                                                   max_message_bytes)])
        handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None, response_serializer=None)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),))
        self.port = 0

    def start(self) -> None:
        port = self._server.add_insecure_port(self.address)
        if not port:
            raise OSError(f"otlp.grpc_listen_address {self.address}: cannot listen there")
        self.port = port
        self._server.start()

    def stop(self, grace: float = 5.0) -> None:
        self._server.stop(grace).wait(grace + 1)

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if not self._authorized(context):
            self._traces.recorder.reject("unauthorized")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            result = self._traces.ingest(body, PROTOBUF, transport="grpc")
        except DecodeError as error:
            self._traces.recorder.reject("malformed_body")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except BatchError as error:
            code = (grpc.StatusCode.UNAVAILABLE if error.status == 503
                    else grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(code, str(error))
        if self._forwarder is not None and self._forwarder.enabled and not result.duplicate:
            self._forwarder.submit(body, {"content-type": "application/x-protobuf"},
                                   result.accepted)
        return success_body(result)

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        token = self._token()
        if token is None:
            return True
        metadata = dict(context.invocation_metadata())
        scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  token.encode())
