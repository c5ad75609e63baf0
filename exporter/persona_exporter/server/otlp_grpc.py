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

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NoReturn

import grpc

from ..genai.decode import DecodeError
from .ingest import BatchError, BatchResult
from .otlp import PROTOBUF, Forwarding, TraceIngest, success_body
from .workers import BusyError, Workers

logger = logging.getLogger("persona_exporter")

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class GrpcListener:
    """A gRPC server with the OTLP TraceService; ``start()`` binds (raising OSError when it
    cannot), ``stop(grace)`` drains."""

    def __init__(self, address: str, traces: TraceIngest, workers: Workers, *, token: Any,
                 max_message_bytes: int, forwarder: Forwarding | None = None) -> None:
        self.address = address
        self._traces = traces
        self._workers = workers
        self._token = token
        self._forwarder = forwarder
        self._loop: asyncio.AbstractEventLoop | None = None
        # Two threads: the batches themselves go to the ingest thread (``attach``), in
        # order with the HTTP ones. Past 8 requests in flight (8 message sizes of memory)
        # gRPC answers RESOURCE_EXHAUSTED itself.
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="otlp-grpc")
        self._server = grpc.server(pool, maximum_concurrent_rpcs=8,
                                   options=[("grpc.max_receive_message_length",
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

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand batches to the ingest thread through ``loop`` (the server's event loop)
        from now on; until then requests are answered UNAVAILABLE (retried)."""
        self._loop = loop

    def stop(self, grace: float = 5.0) -> None:
        self._server.stop(grace).wait(grace + 1)

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if not self._authorized(context):
            self._traces.recorder.reject("unauthorized")
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        loop = self._loop
        if loop is None or loop.is_closed():
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the exporter is starting or stopping")
        # On the ingest thread like every HTTP batch: a batch applied here would hold the
        # ingest lock while a small HTTP batch waits for it on the event loop.
        apply = partial(self._traces.ingest, body, PROTOBUF, "grpc")
        try:
            result = asyncio.run_coroutine_threadsafe(
                self._workers.ingest(apply), loop).result()
        except DecodeError as error:
            self._traces.recorder.reject("malformed_body")
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except BusyError as error:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except BatchError as error:
            if error.applied is not None:
                self._forward(body, error.applied)
            code = (grpc.StatusCode.UNAVAILABLE if error.status == 503
                    else grpc.StatusCode.INVALID_ARGUMENT)
            _abort(context, code, str(error))
        if not result.duplicate:
            self._forward(body, result)
        return success_body(result)

    def _forward(self, body: bytes, result: BatchResult) -> None:
        if self._forwarder is not None and self._forwarder.enabled:
            self._forwarder.submit(body, {"content-type": "application/x-protobuf"},
                                   result.accepted)

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        token = self._token()
        if token is None:
            return True
        metadata = dict(context.invocation_metadata())
        scheme, _, given = str(metadata.get("authorization", "")).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  token.encode())


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)  # raises, ending the RPC with that status
    raise AssertionError("grpc's abort returned")
