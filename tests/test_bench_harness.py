"""benchmarks/run.py, the harness behind `make bench`, driven with tiny fake benchmarks: it
runs every one even after one misses its bar or crashes, prints one table with each
figure, peer, ratio, bar and PASS/FAIL, and exits non-zero when any bar failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def fake(directory: Path, name: str, rows: list[dict[str, object]] | None, code: int) -> Path:
    """A benchmark that writes ``rows`` to --json (none: crashes first) and exits ``code``;
    it also leaves a marker, so the test sees that it ran."""
    script = directory / f"bench_{name}.py"
    write = "" if rows is None else (
        f"open(sys.argv[sys.argv.index('--json') + 1], 'w').write("
        f"json.dumps({{'benchmark': {name!r}, 'rows': {rows!r}}}))\n")
    crash = "raise RuntimeError('boom')\n" if rows is None else ""
    script.write_text("import json, sys, pathlib\n"
                      f"pathlib.Path({str(directory / (name + '.ran'))!r}).touch()\n"
                      f"{crash}{write}sys.exit({code})\n")
    return script


def row(name: str, figure: float | None, peer: float | None, bar: str) -> dict[str, object]:
    return {"name": name, "figure": figure, "unit": "ms", "peer": "the peer",
            "peer_figure": peer, "bar": bar, "note": ""}


def harness(*scripts: Path) -> subprocess.CompletedProcess[str]:
    args = [arg for script in scripts for arg in ("--benchmark", str(script))]
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def summary(stdout: str) -> list[str]:
    return stdout.split("=== summary")[1].splitlines()


def test_every_benchmark_runs_and_one_failed_bar_fails_the_run(tmp_path: Path) -> None:
    failing = fake(tmp_path, "slow", [row("scrape 10k", 40.0, 20.0, "<= 0.35")], 1)
    crashing = fake(tmp_path, "broken", None, 1)
    passing = fake(tmp_path, "fast", [row("ingest", 300.0, 100.0, ">= 2"),
                                      row("rss per series", 900.0, None, "")], 0)
    result = harness(failing, crashing, passing)
    assert result.returncode == 1, result.stdout + result.stderr
    # all three ran, although the first missed its bar and the second crashed
    assert [p.name for p in sorted(tmp_path.glob("*.ran"))] == [
        "broken.ran", "fast.ran", "slow.ran"]
    assert "RuntimeError: boom" in result.stderr
    lines = summary(result.stdout)
    scrape = next(line for line in lines if "scrape 10k" in line)
    assert "2.00x" in scrape and "<= 0.35" in scrape and scrape.endswith("FAIL")
    ingest = next(line for line in lines if line.startswith("fast") and "ingest" in line)
    assert "3.00x" in ingest and ">= 2" in ingest and ingest.endswith("PASS")
    broken = next(line for line in lines if "bench_broken.py: no results" in line)
    assert broken.endswith("FAIL")
    assert any("exited 1 without writing its rows" in line for line in lines)
    info = next(line for line in lines if "rss per series" in line)
    assert not info.endswith(("PASS", "FAIL"))  # information, no bar
    assert "1 bars passed, 2 failed" in result.stdout


def test_all_bars_met_exits_zero(tmp_path: Path) -> None:
    result = harness(fake(tmp_path, "a", [row("x", 1.0, 4.0, "<= 0.35")], 0),
                     fake(tmp_path, "b", [row("y", 5.0, 2.0, ">= 2")], 0))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 bars passed, 0 failed" in result.stdout


def test_a_bar_that_could_not_be_measured_fails(tmp_path: Path) -> None:
    """A missing peer (say the Pushgateway is not installed) must not read as a pass."""
    result = harness(fake(tmp_path, "a", [row("x", 1.0, None, "<= 0.35")], 1))
    assert result.returncode == 1
    assert next(line for line in summary(result.stdout) if " x " in line).endswith("FAIL")


def test_exit_status_counts_even_when_the_rows_pass(tmp_path: Path) -> None:
    result = harness(fake(tmp_path, "a", [row("x", 1.0, 4.0, "<= 0.35")], 3))
    assert result.returncode == 1
    assert "exited 3 with every bar met" in result.stdout
