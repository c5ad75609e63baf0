"""The one shape every benchmark reports in, and the peers several of them measure against.

Each benchmark prints its own human table and, given ``--json PATH``, writes its rows there
for benchmarks/run.py, which prints them all in one table. A row is a figure of ours, the
peer's figure measured in the same run, and a bar on their ratio (figure / peer): absolute
figures flip on a shared machine, ratios measured side by side much less.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    name: str
    figure: float | None  # None: not measured, ``note`` says why
    unit: str
    peer: str = ""
    peer_figure: float | None = None
    bar: str = ""  # "<= 0.35" or ">= 2": on figure / peer_figure; "" for information
    note: str = ""


def write_json(path: str | None, benchmark: str, rows: list[Row]) -> None:
    if path:
        Path(path).write_text(json.dumps({"benchmark": benchmark,
                                          "rows": [asdict(row) for row in rows]}, indent=1))


def passed(rows: list[Row]) -> bool:
    """What a benchmark run alone exits with: every bar met (run.py judges the same way)."""
    return all(verdict(row) != "FAIL" for row in rows)


def verdict(row: Row) -> str:
    if not row.bar:
        return ""
    if row.figure is None or not row.peer_figure:
        return "FAIL"  # a bar that could not be measured is not met
    op, _, value = row.bar.partition(" ")
    try:
        limit = float(value)
    except ValueError:
        return "FAIL"  # "finishes" (run.py's row for a benchmark that did not) or a typo
    ratio = row.figure / row.peer_figure
    ok = (op == "<=" and ratio <= limit) or (op == ">=" and ratio >= limit)
    return "PASS" if ok else "FAIL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def best_get_seconds(port: int, path: str, rounds: int,
                     headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Best of ``rounds`` wall times of one GET (request sent to last byte read), as a
    scraper sees it, over one keep-alive connection; and the last body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    best, body = float("inf"), b""
    for _ in range(rounds):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        best = min(best, time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET {path} on port {port}: {response.status} {body[:200]!r}")
    connection.close()
    return best, body


PUSHGATEWAY_MISSING = ("Pushgateway not installed: run scripts/install-prometheus.sh "
                       "--pushgateway (Debian's prometheus-pushgateway)")


def pushgateway_binary() -> str | None:
    return shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


@contextmanager
def pushgateway() -> Iterator[tuple[int, int]]:
    """A fresh Prometheus Pushgateway on a free loopback port, no persistence: (port, pid)."""
    binary = pushgateway_binary()
    if binary is None:
        raise FileNotFoundError(PUSHGATEWAY_MISSING)
    port = free_port()
    # An empty --persistence.file keeps it in memory: Debian's build defaults to
    # /var/lib/prometheus/pushgateway.data, so each run would load (and slowly re-persist)
    # every series an earlier run pushed.
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}",
                             "--persistence.file=", "--log.level=warn"],
                            stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{binary} exited with {proc.returncode}") from None
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def environment() -> str:
    """One line on where the figures come from (they are only comparable within a run)."""
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
