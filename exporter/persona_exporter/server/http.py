"""The exporter's HTTP interface: ``create_app(...)`` builds the ASGI app; tests call it too.

    POST /v1/events   a batch of events (JSON or NDJSON); per-event results
    GET  /metrics     Prometheus exposition (OpenMetrics when asked for)
    GET  /healthz     the process is alive
    GET  /readyz      config loaded, tracing backends
    GET  /v1/schema   JSON Schema of one event
    GET  /            a page linking the above

Statuses: 200 all events applied; 422 some or all events rejected (the valid ones are
applied, the response lists each rejected index and why); 400 a body that is not a batch;
401 a missing or wrong bearer token; 408 a body that does not arrive within its deadline;
413 a body or batch over the limits; 415 a content
type other than JSON/NDJSON. Ingest is applied before the response is sent, so an accepted
event is in ``/metrics`` when the client hears back.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..events import events_json_schema, short_repr
from .ingest import BatchError, Ingestor

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


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                        headers={"WWW-Authenticate": 'Bearer realm="persona-exporter"'})


def create_app(*, registry: CollectorRegistry, ingestor: Ingestor,
               token: str | Callable[[], str | None] | None = None,
               protect_metrics: bool = False, max_body_bytes: int = 1_048_576,
               body_timeout: float = 30.0,
               readiness: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    """The exporter's ASGI app.

    ``token`` guards ingest (and ``/metrics`` with ``protect_metrics``); a callable is
    asked on every request, so a reload can rotate it. ``readiness`` returns the details
    ``/readyz`` reports, with ``"ready": False`` for a 503.
    """
    current_token = token if callable(token) else lambda: token

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
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            ingestor.recorder.reject("body_too_large")
            return JSONResponse({"error": f"body of {declared} bytes is over the limit of "
                                          f"{max_body_bytes}"}, status_code=413)
        body = bytearray()

        async def read() -> bool:
            async for chunk in request.stream():  # a chunked body is capped as it arrives
                body.extend(chunk)
                if len(body) > max_body_bytes:
                    return False
            return True

        try:
            within_limit = await asyncio.wait_for(read(), body_timeout)
        except TimeoutError:
            ingestor.recorder.reject("malformed_body")
            return JSONResponse({"error": f"the body did not arrive within {body_timeout:g} s"},
                                status_code=408)
        if not within_limit:
            ingestor.recorder.reject("body_too_large")
            return JSONResponse({"error": f"body over the limit of {max_body_bytes} bytes"},
                                status_code=413)
        try:
            result = ingestor.ingest(bytes(body), ndjson=media_type in NDJSON_TYPES,
                                     batch_id=request.headers.get("idempotency-key"))
        except BatchError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return JSONResponse(result.to_json(), status_code=422 if result.rejected else 200)

    async def metrics(request: Request) -> Response:
        if protect_metrics and not _bearer_ok(request, current_token()):
            return _unauthorized()
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

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

    return Starlette(routes=[
        Route("/v1/events", events, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/schema", schema_endpoint, methods=["GET"]),
        Route("/", landing, methods=["GET"]),
    ])
