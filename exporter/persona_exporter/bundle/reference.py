"""The README's metric reference, rendered from the catalog.

``python -m persona_exporter.bundle.reference README.md`` rewrites the block between the markers;
``--check`` exits 1 instead when the block is stale (a test does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..catalog import CATALOG, LABEL_DIMENSIONS

BEGIN = "<!-- metrics-table:begin (generated from the catalog; `make generate`) -->"
END = "<!-- metrics-table:end -->"


def metrics_table() -> str:
    rows = ["| Metric | Type | Labels | OTLP bridge | Description |", "|---|---|---|---|---|"]
    for spec in CATALOG:
        labels = ", ".join(
            f"`{label}`" + ("\\*" if label in LABEL_DIMENSIONS else "") for label in spec.labels)
        otel = f"`{spec.otel_name}` ({spec.otel_unit})" if spec.otel_name else "-"
        rows.append(f"| `{spec.name}` | {spec.kind.value} | {labels or '-'} | {otel} "
                    f"| {spec.help} |")
    rows.append("")
    rows.append("\\* bounded by a cardinality cap (`limits:` in the config); values past the cap "
                "are recorded as `__overflow__` and counted in "
                "`persona_exporter_label_overflow_total`.")
    return "\n".join(rows)


def render_into(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the metrics-table markers are missing; expected {BEGIN} ... {END}")
    return text[: start + len(BEGIN)] + "\n" + metrics_table() + "\n" + text[end:]


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m persona_exporter.bundle.reference",
        description="Rewrite the metric table (between its markers) in each Markdown FILE "
                    "from the metric catalog; `persona-exporter generate` runs it for the "
                    "README.")
    parser.add_argument("files", nargs="*", metavar="FILE", default=["README.md"],
                        help="default: README.md")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    check = args.check
    stale = False
    for name in args.files:
        path = Path(name)
        try:
            current = path.read_text(encoding="utf-8")
            wanted = render_into(current)
        except (OSError, ValueError) as error:
            print(f"{path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
            return 2
        if wanted != current:
            stale = True
            if not check:
                path.write_text(wanted, encoding="utf-8")
    if check and stale:
        print("the metric table is stale: run `make generate`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
