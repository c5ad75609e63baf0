"""Runs every benchmark, even after one misses its bar, then prints one table of them all.

    python benchmarks/run.py [--benchmark PATH ...] [--keep DIR]

Each benchmark runs as its own process with ``--json FILE`` and prints its own detail as
it goes; its rows (benchmarks/results.py) are then gathered into one table: each figure,
its peer measured in the same run, the ratio, the bar on that ratio and PASS/FAIL. A
benchmark that crashes or writes no rows is a failed row of its own. Exits 1 if any bar
failed or any benchmark did not finish, else 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Row, environment, verdict

HERE = Path(__file__).resolve().parent
# Quick ones first: a long one that crashes late costs the least this way.
BENCHMARKS = ["bench_metrics_path.py", "bench_openlit.py", "bench_tracing.py",
              "bench_ingest.py", "bench_otlp_ingest.py", "bench_exposition.py"]


def run_one(script: Path, out: Path) -> tuple[list[Row], int, float]:
    started = time.monotonic()
    print(f"\n=== {script.name} ===", flush=True)
    code = subprocess.run([sys.executable, str(script), "--json", str(out)],
                          check=False).returncode
    elapsed = time.monotonic() - started
    rows: list[Row] = []
    if out.exists():
        try:
            rows = [Row(**row) for row in json.loads(out.read_text())["rows"]]
        except (ValueError, KeyError, TypeError) as exc:
            rows = [Row(f"{script.name}: unreadable results", None, "", bar="finishes",
                        note=f"{out}: {exc}")]
    if not rows:
        rows = [Row(f"{script.name}: no results", None, "", bar="finishes",
                    note=f"exited {code} without writing its rows")]
    elif code != 0 and all(verdict(row) != "FAIL" for row in rows):
        rows.append(Row(f"{script.name}: exit status", None, "", bar="finishes",
                        note=f"exited {code} with every bar met"))
    return rows, code, elapsed


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(results: dict[str, list[Row]]) -> tuple[str, bool]:
    """The one table and whether every bar was met (a row whose bar is "finishes" stands
    for a benchmark that did not finish: always FAIL)."""
    header = ("benchmark", "figure", "value", "unit", "peer (same run)", "peer value", "ratio",
              "bar", "result")
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    ok = True
    for benchmark, rows in results.items():
        for row in rows:
            result = verdict(row)
            ok = ok and result != "FAIL"
            ratio = (row.figure / row.peer_figure
                     if row.figure is not None and row.peer_figure else None)
            name = row.name
            if row.note:
                notes.append(f"[{len(notes) + 1}] {row.note}")
                name += f" [{len(notes)}]"
            lines.append((benchmark, name, fmt(row.figure), row.unit, row.peer,
                          fmt(row.peer_figure), "-" if ratio is None else f"{ratio:.2f}x",
                          row.bar, result))
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    numeric = {2, 5, 6}
    out = []
    for cells in [header, *lines]:
        out.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                   .rstrip())
        if cells is header:
            out.append("  ".join("-" * w for w in widths))
    out += notes
    failed = sum(1 for cells in lines if cells[-1] == "FAIL")
    passed = sum(1 for cells in lines if cells[-1] == "PASS")
    out.append(f"\n{passed} bars passed, {failed} failed")
    return "\n".join(out), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", action="append", type=Path,
                        help="a benchmark script to run instead of the default list "
                             "(repeatable); it must accept --json PATH")
    parser.add_argument("--keep", type=Path, help="keep each benchmark's JSON rows here")
    args = parser.parse_args()
    scripts = args.benchmark or [HERE / name for name in BENCHMARKS]
    results: dict[str, list[Row]] = {}
    took: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for script in scripts:
            out = directory / f"{script.stem}.json"
            out.unlink(missing_ok=True)
            rows, _code, elapsed = run_one(script, out)
            results[script.stem.removeprefix("bench_")] = rows
            took.append(f"{script.name} {elapsed:.0f} s")
    text, ok = table(results)
    print(f"\n=== summary ({environment()}; each ratio is ours / the peer's, both measured "
          "in this run, best of rounds) ===")
    print(text)
    print("took: " + ", ".join(took))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
