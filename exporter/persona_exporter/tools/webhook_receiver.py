"""A local Alertmanager webhook receiver: where the stack's pages, chat notifications and
Watchdog heartbeats land when no PagerDuty or Slack is wired, so paging is visible with no
account. The end-to-end test uses it as its webhook too.

    persona-exporter webhook-receiver [--web.listen-address 127.0.0.1:8080]

    POST /{receiver}           an Alertmanager webhook notification (payload version 4)
    GET  /api/notifications    what arrived, oldest first (?receiver=pager to filter)
    GET  /                     the same as text, one line per alert
    GET  /healthz              the process is alive

Every alert of a notification is also logged as one line, so
``docker compose logs webhook-receiver`` reads like a pager. Only the latest notifications
are kept (``keep``), so a long-running stack's memory stays flat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections import deque
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

logger = logging.getLogger("persona_exporter.webhook_receiver")

# A notification of a few hundred alerts is well under this; with DEFAULT_KEEP of them the
# receiver stays within the stack's 128M memory limit.
MAX_BODY_BYTES = 262_144
DEFAULT_KEEP = 200
RECEIVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


Status = Literal["firing", "resolved"]


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Status
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""  # noqa: N815 - Alertmanager's field names
    endsAt: str = ""  # noqa: N815
    fingerprint: str = ""


class Notification(BaseModel):
    """Alertmanager's webhook body; unknown fields are kept, as newer versions add some."""

    model_config = ConfigDict(extra="allow")
    version: str = "4"
    status: Status
    receiver: str = ""
    alerts: list[Alert]
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815


def _text(value: str) -> str:
    """A caller's string made safe for one line of a log or the listing."""
    return json.dumps(value)[1:-1]


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def create_app(*, keep: int = DEFAULT_KEEP) -> Starlette:
    """The receiver's ASGI app; it holds the last ``keep`` notifications in memory."""
    received: deque[dict[str, Any]] = deque(maxlen=keep)

    async def notify(request: Request) -> Response:
        path = request.path_params["receiver"]
        if not RECEIVER_NAME.match(path):
            return JSONResponse({"error": "receiver: the path must be a name of letters, "
                                          "digits, '-' and '_' (e.g. /pager)"}, status_code=400)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"},
                                    status_code=413)
        try:
            notification = Notification.model_validate_json(bytes(body))
        except ValidationError as error:
            return JSONResponse({"error": _problem(error)}, status_code=400)
        entry = {"path": path, "received_at": time.time(),
                 **notification.model_dump(mode="json")}
        received.append(entry)
        for alert in notification.alerts:
            # A pager's view: who, what, where to look. Label values are the caller's, so
            # they go through json.dumps (no forged log lines from a newline in a label).
            logger.info("%s %s %s", path, alert.status.upper(), json.dumps(
                {**alert.labels, **{k: v for k, v in alert.annotations.items()
                                    if k in ("summary", "runbook_url")}}, sort_keys=True))
        return JSONResponse({"status": "received"})

    async def notifications(request: Request) -> Response:
        wanted = request.query_params.get("receiver")
        return JSONResponse([n for n in received if wanted in (None, n["path"])])

    async def listing(request: Request) -> Response:
        lines = [f"{len(received)} notifications (the last {keep} are kept)", ""]
        for entry in received:
            stamp = time.strftime("%H:%M:%S", time.localtime(entry["received_at"]))
            for alert in entry["alerts"]:
                # Label values are the caller's: quoted and escaped, like PromQL's, so none
                # can start a line of its own.
                labels = ", ".join(f"{_text(k)}={json.dumps(v)}"
                                   for k, v in sorted(alert["labels"].items()))
                lines.append(f"{stamp} /{entry['path']} {alert['status'].upper()} {labels}")
                if "runbook_url" in alert["annotations"]:
                    lines.append(f"         runbook: {_text(alert['annotations']['runbook_url'])}")
        return PlainTextResponse("\n".join(lines) + "\n")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/notifications", notifications, methods=["GET"]),
        Route("/", listing, methods=["GET"]),
        Route("/{receiver:str}", notify, methods=["POST"]),
    ])


def run(host: str, port: int, keep: int = DEFAULT_KEEP) -> int:
    import signal

    import uvicorn

    # As in serve: uvicorn re-raises SIGTERM after its graceful stop; a no-op handler makes
    # `docker stop` an exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(
        create_app(keep=keep), host=host, port=port, log_config=None, access_log=False,
        lifespan="off", timeout_keep_alive=5, limit_concurrency=100))
    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
        server.run()
    if not server.started:
        logger.error("cannot listen on %s:%d", host, port)
        return 1
    return 0
