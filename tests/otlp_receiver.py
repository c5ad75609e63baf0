"""OTLP trace receivers on 127.0.0.1 for tests: they decode what the real exporters send.

``Receiver`` speaks OTLP/HTTP (the Langfuse and the generic path) and can be told to fail:
``status=503`` or ``401`` answers with that code; ``hang=True`` accepts the connection and
never answers; a GET (Langfuse's ``/api/public/health``) answers the same way.
``GrpcReceiver`` speaks OTLP/gRPC. ``refused_url()`` is an address where nothing listens.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    request: trace_service_pb2.ExportTraceServiceRequest
    raw_size: int
    raw: bytes = b""  # the body as it came on the wire (still compressed)


@dataclass
class Span:
    """One decoded span with its attributes as plain Python values."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    status_message: str
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    resource: dict[str, Any] = field(default_factory=dict)


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[Span]:
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                           s.kind, s.status.code, s.status.message, s.start_time_unix_nano,
                           s.end_time_unix_nano, {a.key: value(a.value) for a in s.attributes},
                           ss.scope.name, resource)


class Receiver:
    def __init__(self, *, status: int = 200, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.received: list[Received] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._cond = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # Langfuse's /api/public/health
                if receiver.hang:
                    receiver._release.wait(60)
                    return
                body = b'{"status":"OK","version":"test"}' if receiver.status == 200 else b""
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if receiver.hang:
                    receiver._release.wait(60)  # hold the connection, answer nothing
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.status != 200:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                raw = body
                raw_size = len(body)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/v1/metrics"):
                    with receiver._cond:
                        receiver.metrics.append(
                            metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                        receiver._cond.notify_all()
                    reply = metrics_service_pb2.ExportMetricsServiceResponse()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(reply.SerializeToString())))
                    self.end_headers()
                    self.wfile.write(reply.SerializeToString())
                    return
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver._cond:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(self.path, headers, request, raw_size,
                                                      raw))
                    receiver._cond.notify_all()
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def spans(self) -> list[Span]:
        with self._cond:
            return [s for r in self.received for s in spans_of(r.request)]

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for r in self.received for _ in spans_of(r.request)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.spans

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        import grpc

        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{port}"
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC API
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def spans(self) -> list[Span]:
        return [s for r in self.requests for s in spans_of(r)]

    def close(self) -> None:
        self._server.stop(0)


def refused_url() -> str:
    """An address on loopback where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
