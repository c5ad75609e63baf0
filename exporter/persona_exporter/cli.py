"""Command line: parses flags and wires the parts together; no logic of its own.

    persona-exporter serve [--web.listen-address 127.0.0.1:9464] [--config.file FILE]
                           [--storage.path DIR] [--storage.fsync]
    persona-exporter demo [--budgets FILE] [--serve 127.0.0.1:9464] [--speed 1.0]
    persona-exporter check-config FILE [--running-config FILE]
    persona-exporter metrics [--format markdown|json]
    persona-exporter webhook-receiver [--web.listen-address 127.0.0.1:8080]
    persona-exporter generate [ROOT]
    persona-exporter --version
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import catalog
from .bundle.reference import metrics_table
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from .server.serve import configure_logging, parse_address


def _listen_address(value: str) -> tuple[str, int]:
    try:
        return parse_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-exporter",
        description="Prometheus metrics, budgets and traces for LLM agents under personas.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log.format", dest="log_format", default="logfmt",
                        choices=["logfmt", "json"], help="json: one JSON object per line")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _command(
        commands, "serve", "run the exporter: event ingest over HTTP, /metrics, traces",
        "Run the exporter process: agents send events (POST /v1/events) and OTLP spans "
        "(POST /v1/traces); Prometheus scrapes /metrics; events with trace ids become "
        "traces in Langfuse or an OTLP backend. SIGHUP reloads the config, SIGTERM stops.")
    serve.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:9464; env "
                            "PERSONA_EXPORTER_WEB_LISTEN_ADDRESS)")
    serve.add_argument("--config.file", dest="config_file", type=Path,
                       help="configuration file (env PERSONA_EXPORTER_CONFIG_FILE)")
    serve.add_argument("--storage.path", dest="storage_path", type=Path, metavar="DIR",
                       help="keep the counters and remembered batch ids in DIR, so they "
                            "survive a crash or restart (env PERSONA_EXPORTER_STORAGE_PATH; "
                            "config: server.storage_path; default: memory only)")
    serve.add_argument("--storage.fsync", dest="storage_fsync", action="store_true",
                       default=None, help="sync every commit to the disk: survives a power "
                                          "loss too, at one fsync per batch "
                                          "(config: server.storage_fsync)")

    demo = _command(
        commands, "demo", "run the example workflows through the SDK against a simulated LLM",
        "Run the example workflows (package release, bug fix, feature implementation) "
        "through the SDK against a built-in simulated LLM, print each stage with its "
        "budget, then a summary per persona read back from the metrics.")
    demo.add_argument("--budgets", "--config.file", dest="config_file", type=Path,
                      help=f"configuration file (default: the packaged {DEFAULT_CONFIG_PATH.name})")
    demo.add_argument("--serve", metavar="ADDR:PORT", type=_listen_address,
                      help="serve /metrics on this address during and after the demo, "
                           "until interrupted")
    demo.add_argument("--speed", type=_non_negative, default=1.0,
                      help="scale the simulated LLM latency (0: no waiting; default 1)")
    demo.add_argument("--iterations", type=int, default=1,
                      help="run the workflows this many times (0: until interrupted)")
    demo.add_argument("--exporter-url", metavar="URL",
                      help="also send the events to a running persona-exporter serve "
                           "(token from PERSONA_EXPORTER_TOKEN)")
    demo.add_argument("--spool-dir", type=Path,
                      help="with --exporter-url: keep undeliverable batches here for later")
    demo.add_argument("--exporter-traces", action="store_true",
                      help="with --exporter-url: give the events trace and span ids, so the "
                           "exporter sends the traces (to its LANGFUSE_*/OTEL_* backends)")

    check = _command(
        commands, "check-config", "validate a configuration file as `serve` would",
        "Validate a configuration file with exactly the checks `serve` runs at start: its "
        "keys and values, the listen address (every address its host resolves to is this "
        "host's, and its port one this process may bind), the token file, the storage "
        "directory, the forwarding credentials; with "
        "--running-config also the rules of a SIGHUP reload. Exit status 0: `serve` would "
        "start; 2: it would refuse, for the reasons printed.")
    check.add_argument("file", type=Path)
    check.add_argument("--running-config", type=Path, metavar="FILE",
                       help="the file the exporter runs with now: also check that a SIGHUP "
                            "from it to FILE would be accepted")

    generate = _command(
        commands, "generate", "rebuild the generated files of the repository",
        "Rebuild the files generated from the metric catalog and the mixin config: the "
        "README's metric table, the alert and recording rules, the dashboards' JSON and "
        "deploy/kubernetes/; prints each file and whether it changed.")
    generate.add_argument("root", nargs="?", type=Path, default=Path("."),
                          help="the repository's root (default: .)")

    metrics = _command(
        commands, "metrics", "list the metric catalog",
        "List every metric family the exporter and the SDK can expose: name, type, labels "
        "and help, as the README's Markdown table or as JSON (with units and buckets).")
    metrics.add_argument("--format", choices=["markdown", "json"], default="markdown")

    receiver = _command(
        commands, "webhook-receiver", "a local Alertmanager webhook receiver",
        "A local Alertmanager webhook receiver that logs and lists the notifications it "
        "gets (the compose stack's pager): POST /RECEIVER, listed at /.")
    receiver.add_argument("--web.listen-address", dest="listen_address", type=_listen_address,
                          default="127.0.0.1:8080", metavar="HOST:PORT",
                          help="address to listen on (default 127.0.0.1:8080)")
    return parser


def _command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
             summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the main --help's list, ``description`` in its own."""
    return commands.add_parser(name, help=summary, description=description)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("persona-exporter")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # First: until then a SIGHUP (a default action) would kill the process.
        from .server.serve import ProcessSignals

        signals = ProcessSignals().install()
    configure_logging(args.log_level, args.log_format)
    try:
        if args.command == "serve":
            from .server.serve import resolve_settings, run

            return run(resolve_settings(args.listen_address, args.config_file,
                                        storage_path=args.storage_path,
                                        storage_fsync=args.storage_fsync), signals)
        if args.command == "demo":
            return _demo(args)
        if args.command == "generate":
            return _generate(args.root)
        if args.command == "check-config":
            return _check_config(args.file, args.running_config)
        if args.command == "webhook-receiver":
            from .tools.webhook_receiver import run as run_receiver

            return run_receiver(*args.listen_address)
        if args.command == "metrics":
            if args.format == "json":
                print(json.dumps([_spec_json(s) for s in catalog.CATALOG], indent=2))
            else:
                print(metrics_table())
            return 0
    except ConfigError as exc:
        # one problem a line, each prefixed: grep and a log collector see every one
        print("\n".join(f"persona-exporter: {line}" for line in str(exc).splitlines()),
              file=sys.stderr)
        return 2
    return 2


def _check_config(path: Path, running_path: Path | None) -> int:
    """Exactly the validation of ``serve`` (start, and reload with ``running_path``), in the
    same environment: what it accepts, ``serve`` accepts."""
    from .server.serve import resolve_settings, restart_only_changes

    running = resolve_settings(None, running_path) if running_path is not None else None
    settings = resolve_settings(None, path, running=running)
    config = settings.config
    auth = ("none" if settings.token is None else "PERSONA_EXPORTER_TOKEN"
            if os.environ.get("PERSONA_EXPORTER_TOKEN") else "server.token_file")
    print(f"{path}: OK ({len(config.personas)} personas, {len(config.chatmodes)} chatmodes, "
          f"{len(config.models)} models); serve would listen on "
          f"{_url_host(settings.host)}:{settings.port}, ingest token: {auth}, /metrics "
          f"{'protected' if config.server.protect_metrics else 'open'}")
    if config.otlp_forward:
        from .server.forward import describe_upstreams

        for line in describe_upstreams(config.otlp_forward):
            print(f"{path}: {line}")
    if running is not None:
        print(f"{path}: a reload from {running_path} would be accepted")
        for key in restart_only_changes(settings, running):
            print(f"{path}: {key} changed: in force only after a restart")
    return 0


def _generate(root: Path) -> int:
    from .bundle import grafana, kubernetes, reference, rules

    if not (root / "README.md").is_file() or not (root / "dashboards").is_dir():
        print(f"persona-exporter: {root} is not the repository's root", file=sys.stderr)
        return 2
    written = [root / "README.md", *(root / path for path in rules.GENERATED),
               *(source.with_name(source.name.replace(".dashboard.py", ".json"))
                 for source in grafana.sources(root))]
    before = {path: _read(path) for path in written}
    reference.main([str(root / "README.md")])
    rules.main([str(root)])
    grafana.main([str(root)])
    k8s_dir = root / kubernetes.OUT
    before.update({path: _read(path) for path in k8s_dir.rglob("*.yaml")}
                  if k8s_dir.is_dir() else {})
    k8s_written, k8s_removed = kubernetes.write(root)  # after grafana: it wraps their JSON
    for path in [*written, *k8s_written]:
        print(f"{path}: {'unchanged' if _read(path) == before.get(path) else 'written'}")
    for path in k8s_removed:
        print(f"{path}: removed")
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _spec_json(spec: catalog.MetricSpec) -> dict[str, object]:
    return {"name": spec.name, "type": spec.kind.value, "help": spec.help,
            "labels": list(spec.labels), "unit": spec.unit, "buckets": list(spec.buckets)}


def _demo(args: argparse.Namespace) -> int:
    if args.exporter_traces and not args.exporter_url:
        print("persona-exporter: --exporter-traces needs --exporter-url", file=sys.stderr)
        return 2
    # Imported here so `check-config` and `metrics` stay quick to start.
    from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

    from .metrics.recorder import Recorder
    from .sdk.telemetry import Telemetry
    from .tools.demo import format_summary, format_trace_summary, run_demo, summarise
    from .tracing.backends import tracing_from_env

    config: Config = load_config(args.config_file or DEFAULT_CONFIG_PATH)
    # This process owns its exposition: the *_created series only double the series count.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    recorder = Recorder(registry, config=config)
    # Langfuse and/or OTLP tracing when the standard variables configure them.
    trace_sink = tracing_from_env(recorder)
    remote = None
    if args.exporter_url:
        from .sdk.remote import RemoteSink

        remote = RemoteSink(args.exporter_url, token=os.environ.get("PERSONA_EXPORTER_TOKEN"),
                            recorder=recorder, spool_dir=args.spool_dir,
                            trace_context=args.exporter_traces)
    telemetry = Telemetry(recorder=recorder, config=config,
                          sinks=[s for s in (trace_sink, remote) if s is not None])

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    server = None
    if args.serve:
        host, port = args.serve
        try:
            server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            print(f"persona-exporter: cannot listen on {host}:{port}: {exc.strerror}",
                  file=sys.stderr)
            return 1
        print(f"Serving metrics on http://{_url_host(host)}:{port}/metrics", flush=True)

    iteration = 0
    while not stop.is_set() and (args.iterations <= 0 or iteration < args.iterations):
        iteration += 1
        run_demo(telemetry, speed=args.speed, out=sys.stdout)
    print("\nSummary per persona (read back from the metrics registry)\n")
    print(format_summary(summarise(telemetry)), flush=True)
    if remote is not None:
        delivered = remote.flush()
        remote.shutdown()
        print(f"\nEvents sent to {args.exporter_url}"
              + ("" if delivered else " (not all delivered: see the spool or the log)"),
              flush=True)
    if trace_sink is not None:
        # Deliver what is queued, waiting at most the shutdown deadline (a few seconds) even
        # when the backend is down or hanging; then say what happened to the traces.
        trace_sink.shutdown()
        print("\n" + format_trace_summary(registry, trace_sink.backends), flush=True)

    if server is not None:
        print(f"\nStill serving http://{_url_host(args.serve[0])}:{args.serve[1]}/metrics;"
              " press Ctrl-C to stop.", flush=True)
        stop.wait()
        server.shutdown()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
