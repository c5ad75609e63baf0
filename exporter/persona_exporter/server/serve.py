"""``persona-exporter serve``: the exporter process around :func:`.http.create_app`.

Settings come from, in order: flags, environment (``PERSONA_EXPORTER_WEB_LISTEN_ADDRESS``,
``PERSONA_EXPORTER_CONFIG_FILE``, ``PERSONA_EXPORTER_TOKEN``), the config file's
``server:`` section, defaults (``127.0.0.1:9464``, no token). A config that is wrong stops
start-up with the file and the key; ``check-config`` runs the same :func:`resolve_settings`.
SIGHUP reloads the config (budgets, prices, caps) and the token file in place, counters
untouched; a wrong new config or token file is logged and the old ones kept. SIGTERM stops
accepting, lets requests in flight finish, flushes traces within their deadline, exits 0.
Signals are handled from before the config is read until exit (see ProcessSignals).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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
    listen_flag: str | None = None  # a reload resolves the address as the start did
    storage_path: Path | None = None
    storage_fsync: bool = False


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; ValueError names what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def resolve_settings(listen_flag: str | None, config_flag: Path | None,
                     running: Settings | None = None, *, storage_path: Path | None = None,
                     storage_fsync: bool | None = None) -> Settings:
    """Flags, then environment, then the config file, then defaults. Raises ConfigError.

    The one validation of ``serve``: its start, its reload (``running`` is then what runs
    now, and the reload rules apply) and ``check-config`` all call this."""
    env_config = os.environ.get("PERSONA_EXPORTER_CONFIG_FILE")
    config_file = config_flag or (Path(env_config) if env_config else None)
    config = load_config(config_file) if config_file else Config()
    address = (listen_flag or os.environ.get("PERSONA_EXPORTER_WEB_LISTEN_ADDRESS")
               or config.server.listen_address or DEFAULT_LISTEN_ADDRESS)
    source = ("--web.listen-address" if listen_flag else
              "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS"
              if os.environ.get("PERSONA_EXPORTER_WEB_LISTEN_ADDRESS")
              else f"{config_file}: server.listen_address")
    try:
        host, port = parse_address(address)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    if running is None or (host, port) != (running.host, running.port):
        problem = host_problem(host, port)
        if problem is not None:
            raise ConfigError(f"{source}: {problem}")
    token = _token(config_file, config)
    if config.server.protect_metrics and token is None:
        raise ConfigError(f"{config_file}: server.protect_metrics: true needs a token, or "
                          "/metrics would be open: set server.token_file or "
                          "PERSONA_EXPORTER_TOKEN")
    env_storage = os.environ.get("PERSONA_EXPORTER_STORAGE_PATH", "").strip()
    storage_source = "--storage.path"
    if storage_path is None and (env_storage or config.server.storage_path):
        storage_path = Path(env_storage or config.server.storage_path or "")
        storage_source = ("PERSONA_EXPORTER_STORAGE_PATH" if env_storage
                          else f"{config_file}: server.storage_path")
    fsync = config.server.storage_fsync if storage_fsync is None else storage_fsync
    if storage_path is not None and running is None:
        _check_storage_path(storage_path, storage_source)
    _check_forwarding(config_file, config, (host, port))
    if config.otlp.grpc_listen_address is not None:
        try:
            grpc_host, grpc_port = parse_address(config.otlp.grpc_listen_address)
        except ValueError as error:
            raise ConfigError(f"{config_file}: otlp.grpc_listen_address: {error}") from None
        problem = (host_problem(grpc_host, grpc_port, every_address=False) if running is None
                   else None)
        if problem is not None:
            raise ConfigError(f"{config_file}: otlp.grpc_listen_address: {problem}")
    settings = Settings(host, port, config_file, config, token, listen_flag, storage_path,
                        fsync)
    if running is not None:
        _check_reload(settings, running)
    return settings


def host_problem(host: str, port: int, *, every_address: bool = True) -> str | None:
    """Why ``serve`` could not listen on ``host``:``port`` (a name that does not resolve, an
    address that is not this machine's, a privileged port without the privilege), or None.
    A port in use (by a running exporter, say) is no problem here: that is not the config's
    fault, and check-config runs beside the exporter it checks for.

    A name may resolve to several addresses. The HTTP listener (uvicorn, through its loop's
    create_server: asyncio/base_events.py and uvloop/loop.pyx alike) binds every one and
    stops at the first it cannot bind, so all must bind (``every_address``); gRPC listens
    when at least one binds (it logs "Only 1 addresses added out of total 2 resolved"), so
    one is enough there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        return f"cannot resolve the host {host!r}: {getattr(error, 'strerror', error)}"
    return bind_problem(host, infos, every_address=every_address)


def bind_problem(host: str, infos: list[Any], *, every_address: bool = True) -> str | None:
    """What :func:`host_problem` finds for ``host`` resolved to ``infos`` (getaddrinfo's
    answer): the first address that cannot be bound, or None."""
    problems: list[str] = []
    bound = 0
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # a family this host cannot open: asyncio skips it too
        with probe:
            try:
                probe.bind(address)
                bound += 1
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    bound += 1  # the address is this host's; its port is busy for now
                elif error.errno == errno.EACCES:
                    problems.append(f"cannot listen on port {address[1]}: {error.strerror} "
                                    "(a privileged port: choose one from 1024 up, or give "
                                    "the process CAP_NET_BIND_SERVICE)")
                else:
                    where = ("not an address of this host" if address[0] == host
                             else f"{address[0]}, one of its addresses, is not this host's")
                    problems.append(f"cannot listen on {host!r}: {error.strerror} ({where})")
    if problems and (every_address or not bound):
        return problems[0]
    if not bound and not problems:
        return f"cannot listen on {host!r}: no address of it can be opened here"
    return None


def _check_storage_path(path: Path, source: str) -> None:
    """What Store.open would refuse for want of a usable directory, checked without
    creating or locking anything (check-config runs beside a running exporter). ``source``
    is where the path was set: the flag, the variable or the config file's key."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{source}: cannot use the directory {path}: {existing} is not a "
                          "directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{source}: cannot use the directory {path}: {existing} is not "
                          "writable")


def _check_forwarding(config_file: Path | None, config: Config,
                      listen: tuple[str, int]) -> None:
    """Each otlp_forward upstream's credentials are in the environment (or its file), and
    none is this exporter itself."""
    if config.otlp_forward:
        from .forward import check_upstreams

        check_upstreams(config.otlp_forward, config_file, listen=listen)


_TOKEN_RE = re.compile(r"[!-~]+")  # what a bearer token in an HTTP header can carry


def _token(config_file: Path | None, config: Config) -> str | None:
    token = os.environ.get("PERSONA_EXPORTER_TOKEN") or None
    source = "PERSONA_EXPORTER_TOKEN"
    if token is None and config.server.token_file:
        path = Path(config.server.token_file)
        source = f"{config_file}: server.token_file: {path}"
        try:
            token = path.read_text(encoding="utf-8").strip() or None
        except OSError as error:
            raise ConfigError(f"{config_file}: server.token_file: cannot read {path}: "
                              f"{error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        if token is None:
            raise ConfigError(f"{source} is empty")
    if token is not None and not _TOKEN_RE.fullmatch(token):
        # never quoted: it is a secret, even when malformed
        raise ConfigError(f"{source}: the token must be printable ASCII without spaces "
                          "(one line)")
    return token


def _check_reload(new: Settings, running: Settings) -> None:
    """What a reload refuses beyond what the start refuses."""
    if new.config_file is not None:
        _refuse_incomplete(new.config_file, new.config, running.config)
    if running.token is not None and new.token is None:
        raise ConfigError(f"{new.config_file}: server.token_file: removed while the exporter "
                          "runs with a token; a reload never turns authentication off "
                          "(restart to do so)")


# Read once at start: a reload that changes them says so, and they wait for a restart.
# Seconds between writes of the counters that change outside batches (durable state).
SAVE_INTERVAL = 5.0

_RESTART_ONLY = ("listen_address", "protect_metrics", "max_body_bytes",
                 "max_events_per_batch", "remembered_batches", "storage_path", "storage_fsync",
                 "header_timeout_seconds", "keepalive_timeout_seconds", "body_timeout_seconds",
                 "max_connections", "max_queued_batches", "inline_batch_bytes")
_RESTART_ONLY_OTLP = ("max_body_bytes", "grpc_listen_address")


def restart_only_changes(new: Settings, started: Settings) -> list[str]:
    """The ``server.*`` keys (and ``otlp_forward``) ``new`` changes that only a restart
    applies."""
    changed = [f"server.{key}" for key in _RESTART_ONLY
               if getattr(new.config.server, key) != getattr(started.config.server, key)]
    changed += [f"otlp.{key}" for key in _RESTART_ONLY_OTLP
                if getattr(new.config.otlp, key) != getattr(started.config.otlp, key)]
    if (new.host, new.port) != (started.host, started.port) \
            and "server.listen_address" not in changed:
        changed.insert(0, "server.listen_address")
    if new.config.otlp_forward != started.config.otlp_forward:
        changed.append("otlp_forward")  # the forwarder's queues and threads are built once
    return changed


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


def run(settings: Settings, signals: ProcessSignals | None = None) -> int:
    """Serve until SIGTERM/SIGINT. ``signals``: the handlers installed at the very start
    (the CLI does it before reading the config); installed here when not given."""
    signals = signals or ProcessSignals().install()
    import uvicorn
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from ..metrics.recorder import Recorder
    from ..tracing.backends import tracing_from_env
    from .bridge import metrics_bridge_from_env
    from .forward import Forwarder, spool_root
    from .http import create_app
    from .ingest import Ingestor, RememberedBatches
    from .otlp import TraceIngest, expire_interval
    from .protocol import ConnectionStats, connection_cap, guarded_protocol
    from .storage import StorageError, Store
    from .workers import Workers

    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    recorder = Recorder(registry, config=settings.config)
    server_config = settings.config.server
    store = None
    if settings.storage_path is not None:
        try:
            store = Store.open(settings.storage_path, fsync=settings.storage_fsync,
                               remembered=server_config.remembered_batches)
        except StorageError as error:
            logger.error("%s", error)
            signals.ignore_until_exit()
            return 1
    else:
        logger.info("no --storage.path: counters and remembered batch ids are kept in memory "
                    "only; a restart resets them and a batch retried across it may count twice")
    # Events that carry trace ids become spans, to Langfuse and/or OTLP as configured
    # (started once the state could be opened: a refused start leaves no export threads).
    trace_sink = tracing_from_env(recorder)
    bridge = metrics_bridge_from_env(recorder)
    sinks: list[Any] = [sink for sink in (trace_sink, bridge) if sink is not None]
    def refuse_start(error: Exception) -> int:
        """Log why, release what was opened, and end without serving."""
        logger.error("%s", error)
        if store is not None:
            store.close()
        for sink in sinks:
            sink.shutdown(1)
        signals.ignore_until_exit()
        return 1

    # The stored state (and the spans held for their persona) is loaded here, before the
    # port opens: nothing is served from zero.
    try:
        ingestor = Ingestor(recorder, sinks=sinks,
                            max_events=server_config.max_events_per_batch,
                            remembered=RememberedBatches(server_config.remembered_batches),
                            store=store)
        traces = TraceIngest(ingestor, settings.config,
                             held_rows=store.held_rows() if store is not None else None)
    except StorageError as error:
        return refuse_start(error)
    # Received OTLP requests passed on to Langfuse or a collector, spooled beside the state.
    forwarder = Forwarder.from_config(
        settings.config.otlp_forward, recorder=recorder,
        spool_dir=spool_root(settings.storage_path) if store is not None
        and settings.storage_path is not None else None)
    forwarder.start()
    state: dict[str, Any] = {"config_file": str(settings.config_file or ""),
                             "reloads": 0, "failed_reloads": 0, "last_reload_error": None}

    # The ingest and render threads hold the GIL for up to the switch interval each time
    # the event loop wakes; 1 ms instead of 5 keeps /healthz far under 100 ms during a big
    # scrape (measured: p99 75 -> 13 ms).
    sys.setswitchinterval(0.001)
    # With --storage.fsync each commit waits for the disk: never on the event loop.
    workers = Workers(server_config.max_queued_batches,
                      0 if store is not None and settings.storage_fsync
                      else server_config.inline_batch_bytes)
    connections = ConnectionStats()

    def readiness() -> dict[str, Any]:
        # pid: a client that started this process (scripts/demo.sh) checks that the one
        # answering on the port is its own, not an older exporter still holding it.
        return {"ready": True, "pid": os.getpid(), **state,
                "tracing": list(trace_sink.backends) if trace_sink else [],
                "otlp_metrics": bridge is not None,
                "storage": str(settings.storage_path) if store is not None else "memory",
                "otlp": {"held_spans": traces.traces.held,
                         "forward": [u.name for u in settings.config.otlp_forward],
                         "grpc": settings.config.otlp.grpc_listen_address},
                "connections": connections.counts, "queued_batches": workers.queued}

    # The settings in force: a reload swaps them, and the app reads the token from here.
    live = {"settings": settings}
    app = create_app(registry=registry, ingestor=ingestor,
                     token=lambda: live["settings"].token,
                     protect_metrics=server_config.protect_metrics,
                     max_body_bytes=server_config.max_body_bytes,
                     body_timeout=server_config.body_timeout_seconds, readiness=readiness,
                     workers=workers, traces=traces,
                     max_trace_body_bytes=settings.config.otlp.max_body_bytes,
                     forwarder=forwarder)

    def reload() -> None:
        signals.reload_started()
        running = live["settings"]
        if running.config_file is None:
            logger.info("SIGHUP: no config file to reload")
            return
        try:
            new = resolve_settings(running.listen_flag, running.config_file, running=running)
        except ConfigError as error:
            state["last_reload_error"] = str(error)
            state["failed_reloads"] += 1
            logger.error("reload failed, keeping the running config and token: %s", error)
            return
        recorder.apply_config(new.config)
        traces.reconfigure(new.config)
        live["settings"] = new
        state["reloads"] += 1
        state["last_reload_error"] = None
        logger.info("config reloaded from %s", new.config_file,
                    extra={"personas": len(new.config.personas),
                           "token_changed": new.token != running.token})
        if new.token != running.token:
            logger.info("ingest token reloaded: the previous one no longer works")
        waiting = restart_only_changes(new, settings)
        if waiting:
            logger.warning("%s changed; read only at start, so in force after a restart",
                           ", ".join(waiting))

    def schedule_reload() -> None:
        # Called on the event loop (ProcessSignals wakes it; a burst of SIGHUPs is one
        # reload); the reload itself runs on the ingest thread, between two batches, so it
        # never changes the config under a batch half-way applied.
        workers.submit(reload)

    max_connections = connection_cap(server_config.max_connections)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # exits (SystemExit) when it cannot bind
            if self.started:  # said only once the port is really ours
                logger.info("listening on %s:%d", settings.host, settings.port,
                            extra={"config_file": state["config_file"],
                                   "auth": settings.token is not None,
                                   "tracing": list(trace_sink.backends) if trace_sink else [],
                                   "max_connections": max_connections})

    uvicorn_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="off", timeout_graceful_shutdown=10,
        # uvloop when it is installed (a dependency where it installs: 1.1-1.2x ingest),
        # else asyncio's loop. uvicorn only uses this in Server.run, so the loop below is
        # made with it. HTTP stays h11 (not httptools): the header deadline and connection
        # cap are a subclass of uvicorn's H11Protocol (protocol.py).
        loop="auto",
        # uvicorn annotates an int but only hands it to loop.call_later: a float works.
        timeout_keep_alive=server_config.keepalive_timeout_seconds,  # type: ignore[arg-type]
        # uvicorn's limit_concurrency would count idle connections and answer 503 to all;
        # the protocol closes idle ones instead, and the ingest queue pushes back.
        limit_concurrency=None, backlog=2048,
        http=guarded_protocol(header_timeout=server_config.header_timeout_seconds,
                              max_connections=max_connections,
                              stats=connections))
    server = Server(uvicorn_config)
    grpc_listener = None
    if settings.config.otlp.grpc_listen_address:
        from .otlp_grpc import GrpcListener

        grpc_listener = GrpcListener(settings.config.otlp.grpc_listen_address, traces, workers,
                                     token=lambda: live["settings"].token,
                                     max_message_bytes=settings.config.otlp.max_body_bytes,
                                     forwarder=forwarder)
        try:
            grpc_listener.start()
        except OSError as error:
            workers.close()
            forwarder.close(1)
            return refuse_start(error)
        logger.info("OTLP/gRPC listening on %s", grpc_listener.address)

    # A full garbage collection holds the GIL, so the event loop, for as long as it walks
    # every object: the modules imported at start-up made gen-2 passes 60-130 ms during a
    # 100k-series scrape. Objects that live as long as the process need no walking.
    gc.freeze()

    def stop() -> None:
        server.should_exit = True

    async def save_periodically() -> None:
        # Whole requests refused (401, 413, ...) change counters outside any batch: they
        # reach the disk within this period, or with the next batch.
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            workers.submit(ingestor.save_state)

    async def expire_periodically() -> None:
        # Spans held for their persona are released on the ingest thread, between batches.
        while True:
            await asyncio.sleep(expire_interval(live["settings"].config.otlp))
            if traces.traces.held:
                workers.submit(traces.expire)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state["event_loop"] = type(loop).__module__.partition(".")[0]  # uvloop or asyncio
        signals.attach(loop, on_reload=schedule_reload, on_stop=stop)
        saver = asyncio.ensure_future(save_periodically()) if store is not None else None
        expirer = asyncio.ensure_future(expire_periodically())
        if grpc_listener is not None:
            grpc_listener.attach(loop)
        try:
            if not signals.stop_requested:
                await server.serve()
        finally:
            if grpc_listener is not None:
                # Requests in flight finish through this loop, so it must keep running.
                await loop.run_in_executor(None, grpc_listener.stop, 5)
            expirer.cancel()
            if saver is not None:
                saver.cancel()

    try:
        # uvicorn exits (status 3) when it cannot bind
        with contextlib.suppress(SystemExit), \
                asyncio.Runner(loop_factory=uvicorn_config.get_loop_factory()) as runner:
            runner.run(main())
    finally:
        signals.detach()
        workers.close()  # a batch already read is applied before the process goes on
        forwarder.close(5)  # what it cannot deliver in time stays spooled for the next start
        if store is None:  # held spans stay held across a restart only with durable state
            traces.release_all()
        if store is not None:
            ingestor.save_state()
            store.close()  # then the last state, checkpointed; marks a clean stop
    if not server.started and not signals.stop_requested:
        # uvicorn logged the bind error just before; this line says what to do about it.
        logger.error("cannot listen on %s:%d: another process may hold the port (a "
                     "persona-exporter still running?); stop it or choose another address "
                     "with --web.listen-address or PERSONA_EXPORTER_WEB_LISTEN_ADDRESS",
                     settings.host, settings.port)
        signals.ignore_until_exit()
        return 1
    if trace_sink is not None:
        trace_sink.shutdown()
    if bridge is not None:
        bridge.shutdown(3)  # a last export, within a deadline
    logger.info("stopped")
    signals.ignore_until_exit()
    return 0


class ProcessSignals:
    """SIGHUP, SIGTERM and SIGINT for the whole life of ``serve``.

    ``install()`` runs before the config is read and the handlers stay until the process
    exits, so no signal meets its default action (which kills): not during start-up, not
    while traces are flushed at shutdown. (asyncio's ``add_signal_handler`` would not do:
    closing the loop puts SIG_DFL back.) The handlers only set a flag and wake the loop
    if one is attached. A reload runs on the loop, never inside a handler, so it cannot
    interrupt ingest half-way; a burst of SIGHUPs is one reload; one during start-up is a
    reload once the server runs; one during shutdown is ignored. SIGTERM or SIGINT before
    the server runs means no serving at all. While uvicorn serves it holds SIGTERM and
    SIGINT (its graceful stop) and gives them back afterwards.
    """

    def __init__(self) -> None:
        self.reload_pending = False
        self.stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_reload: Callable[[], None] | None = None
        self._on_stop: Callable[[], None] | None = None

    def install(self) -> ProcessSignals:
        signal.signal(signal.SIGHUP, self._hangup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._terminate)
        return self

    def attach(self, loop: asyncio.AbstractEventLoop, *, on_reload: Callable[[], None],
               on_stop: Callable[[], None]) -> None:
        """Wake ``loop`` from now on; a signal that came before is acted on now."""
        self._loop, self._on_reload, self._on_stop = loop, on_reload, on_stop
        if self.reload_pending:
            loop.call_soon(on_reload)
        if self.stop_requested:
            loop.call_soon(on_stop)

    def detach(self) -> None:
        """The loop is done: later signals only set their flag."""
        self._loop = self._on_reload = self._on_stop = None

    def ignore_until_exit(self) -> None:
        """The last step of ``serve``: Python's finalisation puts SIG_DFL back for every
        signal with a Python handler (a SIGHUP then would kill with status -1), but leaves
        SIG_IGN in place."""
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)

    def reload_started(self) -> None:
        self.reload_pending = False

    def _hangup(self, signum: int, frame: FrameType | None) -> None:
        if self.reload_pending or self.stop_requested:
            return  # one reload for a burst; none once stopping
        self.reload_pending = True
        self._wake(self._on_reload)

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        self._wake(self._on_stop)

    def _wake(self, callback: Callable[[], None] | None) -> None:
        loop = self._loop
        if loop is None or callback is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed after the check
            loop.call_soon_threadsafe(callback)
