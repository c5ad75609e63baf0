"""The exporter's HTTP interface: ``create_app(...)`` builds the ASGI app; tests call it too.

    POST /v1/events   a batch of events (JSON or NDJSON); per-event results
    POST /v1/traces   OTLP/HTTP trace requests (and the Langfuse SDKs' path): see ``otlp``
    GET  /metrics     Prometheus exposition (OpenMetrics when asked for)
    GET  /healthz     the process is alive
    GET  /readyz      config loaded, tracing backends
    GET  /v1/schema   JSON Schema of one event
    GET  /            a page linking the above

Statuses: 200 all events applied; 422 some or all events rejected (the valid ones are
applied, the response lists each rejected index and why); 400 a body that is not a batch;
401 a missing or wrong bearer token; 408 a body that does not arrive within its deadline;
409 a batch id applied before with another body; 413 a body or batch over the limits (a
gzip body: once decompressed); 415 a content type other than JSON/NDJSON or a content
encoding other than gzip; 503 (with ``Retry-After``) too many batches waiting to be
applied, or a batch whose state could not be stored. A batch is applied (on the ingest
thread, or on the loop when it is small and the thread idle: see ``workers``) before the
response is sent, so an accepted event is in ``/metrics`` when the client hears back.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..events import events_json_schema, short_repr
from ..metrics.exposition import choose_encoder
from .body import BodyBudget, BodyError, read_body
from .ingest import BatchError, Ingestor
from .otlp import Forwarding, TraceIngest, trace_endpoint
from .workers import BusyError, Workers

logger = logging.getLogger("persona_exporter")

BODY_BUDGET_BATCHES = 64  # max_body_bytes each: 64 MiB with the default 1 MiB
TRACE_BODY_BUDGET_BODIES = 8  # otlp.max_body_bytes each: 64 MiB with the default 8 MiB

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson")

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>persona-exporter</title></head>
<body><h1>persona-exporter</h1>
<p>Persona token, cost, budget and workflow metrics for LLM agents.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus exposition</li>
<li><a href="healthz">/healthz</a>: liveness</li>
<li><a href="readyz">/readyz</a>: readiness</li>
<li><a href="v1/schema">/v1/schema</a>: JSON Schema of the events to POST to /v1/events</li>
<li>/v1/traces and /api/public/otel/v1/traces: OTLP/HTTP spans from any GenAI
instrumentation or Langfuse SDK</li>
</ul></body></html>
"""


def _bearer_ok(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest takes constant time in the length of the expected token.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "(unknown)"


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                        headers={"WWW-Authenticate": 'Bearer realm="persona-exporter"'})


def create_app(*, registry: CollectorRegistry, ingestor: Ingestor,
               token: str | Callable[[], str | None] | None = None,
               protect_metrics: bool = False, max_body_bytes: int = 1_048_576,
               body_timeout: float = 30.0,
               readiness: Callable[[], dict[str, Any]] | None = None,
               workers: Workers | None = None, traces: TraceIngest | None = None,
               max_trace_body_bytes: int = 8 * 1_048_576,
               forwarder: Forwarding | None = None) -> Starlette:
    """The exporter's ASGI app.

    ``token`` guards ingest (and ``/metrics`` with ``protect_metrics``); a callable is
    asked on every request, so a reload can rotate it. ``readiness`` returns the details
    ``/readyz`` reports, with ``"ready": False`` for a 503; ``workers`` runs ingest and
    rendering off the event loop (its own when not given). ``traces`` enables the OTLP
    receiver, ``forwarder`` passes what it accepts on.
    """
    current_token = token if callable(token) else lambda: token
    workers = workers or Workers()
    # Bodies still arriving hold at most this much; the ingest queue bounds the rest.
    budget = BodyBudget(BODY_BUDGET_BATCHES * max_body_bytes)

    async def events(request: Request) -> Response:
        if not _bearer_ok(request, current_token()):
            ingestor.recorder.reject("unauthorized")
            return _unauthorized()
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in JSON_TYPES + NDJSON_TYPES:
            ingestor.recorder.reject("unsupported_media_type")
            return JSONResponse(
                {"error": f"content type {short_repr(media_type or '(none)')} is not "
                          "supported; send "
                          "application/json or application/x-ndjson"}, status_code=415)
        try:
            body = await read_body(request, max_bytes=max_body_bytes, timeout=body_timeout,
                                   budget=budget)
            result = await workers.ingest(partial(
                ingestor.ingest, body, ndjson=media_type in NDJSON_TYPES,
                batch_id=request.headers.get("idempotency-key")), len(body))
        except BodyError as error:
            if error.reason is not None:
                ingestor.recorder.reject(error.reason)
            # The rest of the body may still be on its way: close rather than read it.
            return JSONResponse({"error": str(error)}, status_code=error.status,
                                headers={**error.headers, "Connection": "close"})
        except ClientDisconnect:
            logger.warning("client %s went away before its body was complete; nothing "
                           "applied", _peer(request))
            return Response(status_code=400)  # nobody is left to read it
        except BusyError as error:
            return JSONResponse({"error": str(error)}, status_code=503,
                                headers={"Retry-After": "1"})
        except BatchError as error:
            headers = {"Retry-After": "1"} if error.status == 503 else None
            return JSONResponse({"error": str(error)}, status_code=error.status,
                                headers=headers)
        return JSONResponse(result.to_json(), status_code=422 if result.rejected else 200)

    async def metrics(request: Request) -> Response:
        if protect_metrics and not _bearer_ok(request, current_token()):
            return _unauthorized()
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await workers.render(content_type, partial(encoder, registry))
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        details = readiness() if readiness is not None else {"ready": True}
        return JSONResponse(details, status_code=200 if details.get("ready") else 503)

    schema = json.dumps(events_json_schema(), indent=2).encode()

    async def schema_endpoint(request: Request) -> Response:
        return Response(schema, media_type="application/schema+json")

    async def landing(request: Request) -> Response:
        return HTMLResponse(LANDING)

    routes = []
    if traces is not None:
        # Trace bodies have their own budget: one may be larger than the events' whole
        # budget (and would get 503 forever); this fits a few, received and decompressed.
        trace_budget = BodyBudget(TRACE_BODY_BUDGET_BODIES * max_trace_body_bytes)
        endpoint = partial(trace_endpoint, traces=traces, workers=workers, budget=trace_budget,
                           token=current_token, max_body_bytes=max_trace_body_bytes,
                           body_timeout=body_timeout, forwarder=forwarder)
        routes += [Route("/v1/traces", endpoint(), methods=["POST"]),
                   Route("/api/public/otel/v1/traces", endpoint(langfuse=True),
                         methods=["POST"])]
    return Starlette(routes=[
        *routes,
        Route("/v1/events", events, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/schema", schema_endpoint, methods=["GET"]),
        Route("/", landing, methods=["GET"]),
    ])
