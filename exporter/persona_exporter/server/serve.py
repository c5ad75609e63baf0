"""``persona-exporter serve``: the exporter process around :func:`.http.create_app`.

Settings come from, in order: flags, environment (``PERSONA_EXPORTER_WEB_LISTEN_ADDRESS``,
``PERSONA_EXPORTER_CONFIG_FILE``, ``PERSONA_EXPORTER_TOKEN``), the config file's
``server:`` section, defaults (``127.0.0.1:9464``, no token). A config that is wrong stops
start-up with the file and the key. SIGHUP reloads the config (budgets, prices, caps) in
place, counters untouched; a wrong new config is logged and the old one kept. SIGTERM stops
accepting, lets requests in flight finish, flushes traces within their deadline, exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config

logger = logging.getLogger("persona_exporter")

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9464"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class Settings:
    host: str
    port: int
    config_file: Path | None
    config: Config
    token: str | None


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; ValueError names what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def resolve_settings(listen_flag: str | None, config_flag: Path | None) -> Settings:
    """Flags, then environment, then the config file, then defaults. Raises ConfigError."""
    env_config = os.environ.get("PERSONA_EXPORTER_CONFIG_FILE")
    config_file = config_flag or (Path(env_config) if env_config else None)
    config = load_config(config_file) if config_file else Config()
    address = (listen_flag or os.environ.get("PERSONA_EXPORTER_WEB_LISTEN_ADDRESS")
               or config.server.listen_address or DEFAULT_LISTEN_ADDRESS)
    try:
        host, port = parse_address(address)
    except ValueError as error:
        source = ("--web.listen-address" if listen_flag else
                  "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS"
                  if os.environ.get("PERSONA_EXPORTER_WEB_LISTEN_ADDRESS")
                  else f"{config_file}: server.listen_address")
        raise ConfigError(f"{source}: {error}") from None
    token = os.environ.get("PERSONA_EXPORTER_TOKEN") or None
    if token is None and config.server.token_file:
        path = Path(config.server.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip() or None
        except OSError as error:
            raise ConfigError(f"{config_file}: server.token_file: cannot read {path}: "
                              f"{error.strerror}") from None
        if token is None:
            raise ConfigError(f"{config_file}: server.token_file: {path} is empty")
    return Settings(host, port, config_file, config, token)


def _refuse_incomplete(path: Path, new: Config, running: Config) -> None:
    """A file caught half-written by an editor parses as fewer (or no) sections; reloading
    it would drop every budget gauge and so resolve their alerts. A reload must name each
    section the running config uses; ``personas: {}`` says "none" on purpose."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for section in ("personas", "chatmodes", "models"):
        if getattr(running, section) and data.get(section) is None:
            raise ConfigError(f"{path}: {section}: missing or empty while the running config "
                              f"has {section}; write '{section}: {{}}' to remove them all")


def run(settings: Settings) -> int:
    import uvicorn
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from ..metrics.recorder import Recorder
    from ..tracing.backends import tracing_from_env
    from .bridge import metrics_bridge_from_env
    from .http import create_app
    from .ingest import Ingestor, RememberedBatches
    from .protocol import ConnectionStats, connection_cap, guarded_protocol
    from .workers import Workers

    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    recorder = Recorder(registry, config=settings.config)
    # Events that carry trace ids become spans, to Langfuse and/or OTLP as configured.
    trace_sink = tracing_from_env(recorder)
    bridge = metrics_bridge_from_env(recorder)
    sinks: list[Any] = [sink for sink in (trace_sink, bridge) if sink is not None]
    server_config = settings.config.server
    ingestor = Ingestor(recorder, sinks=sinks,
                        max_events=server_config.max_events_per_batch,
                        remembered=RememberedBatches(server_config.remembered_batches))
    state: dict[str, Any] = {"config_file": str(settings.config_file or ""),
                             "reloads": 0, "last_reload_error": None, "reload_pending": False}

    # The ingest and render threads hold the GIL for up to the switch interval each time
    # the event loop wakes; 1 ms instead of 5 keeps /healthz far under 100 ms during a big
    # scrape (measured: p99 75 -> 13 ms).
    sys.setswitchinterval(0.001)
    workers = Workers(server_config.max_queued_batches)
    connections = ConnectionStats()

    def readiness() -> dict[str, Any]:
        return {"ready": True, **{k: v for k, v in state.items() if k != "reload_pending"},
                "tracing": list(trace_sink.backends) if trace_sink else [],
                "otlp_metrics": bridge is not None,
                "connections": connections.counts, "queued_batches": workers.queued}

    app = create_app(registry=registry, ingestor=ingestor, token=settings.token,
                     protect_metrics=server_config.protect_metrics,
                     max_body_bytes=server_config.max_body_bytes,
                     body_timeout=server_config.body_timeout_seconds, readiness=readiness,
                     workers=workers)

    def reload() -> None:
        state["reload_pending"] = False
        if settings.config_file is None:
            logger.info("SIGHUP: no config file to reload")
            return
        try:
            config = load_config(settings.config_file)
            _refuse_incomplete(settings.config_file, config, recorder.config)
        except ConfigError as error:
            state["last_reload_error"] = str(error)
            logger.error("config reload failed, keeping the running config: %s", error)
            return
        recorder.apply_config(config)
        state["reloads"] += 1
        state["last_reload_error"] = None
        logger.info("config reloaded from %s", settings.config_file,
                    extra={"personas": len(config.personas)})

    def schedule_reload() -> None:
        # Runs on the ingest thread, not inside a signal handler: a reload can neither
        # interrupt a batch half-way nor itself, and a burst of SIGHUPs is one reload.
        if not state["reload_pending"]:
            state["reload_pending"] = True
            workers.submit(reload)  # on the ingest thread, between two batches

    # uvicorn captures SIGTERM/SIGINT for its graceful stop, then restores the handlers it
    # found and raises the signal again. With the default handlers that kills the process
    # before traces are flushed (and the exit status is not 0); these make it a no-op.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    max_connections = connection_cap(server_config.max_connections)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="off", timeout_graceful_shutdown=10,
        # uvicorn annotates an int but only hands it to loop.call_later: a float works.
        timeout_keep_alive=server_config.keepalive_timeout_seconds,  # type: ignore[arg-type]
        # uvicorn's limit_concurrency would count idle connections and answer 503 to all;
        # the protocol closes idle ones instead, and the ingest queue pushes back.
        limit_concurrency=None, backlog=2048,
        http=guarded_protocol(header_timeout=server_config.header_timeout_seconds,
                              max_connections=max_connections,
                              stats=connections)))
    logger.info("listening on %s:%d", settings.host, settings.port,
                extra={"config_file": state["config_file"], "auth": settings.token is not None,
                       "tracing": list(trace_sink.backends) if trace_sink else [],
                       "max_connections": max_connections})

    # A full garbage collection holds the GIL, so the event loop, for as long as it walks
    # every object: the modules imported at start-up made gen-2 passes 60-130 ms during a
    # 100k-series scrape. Objects that live as long as the process need no walking.
    gc.freeze()

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, schedule_reload)
        await server.serve()

    with contextlib.suppress(SystemExit):  # uvicorn exits (status 3) when it cannot bind
        asyncio.run(main())
    workers.close()  # a batch already read is applied before the process goes on
    if not server.started:
        return 1  # uvicorn logged why (e.g. the address is in use)
    if trace_sink is not None:
        trace_sink.shutdown()
    if bridge is not None:
        bridge.shutdown(3)  # a last export, within a deadline
    logger.info("stopped")
    return 0
