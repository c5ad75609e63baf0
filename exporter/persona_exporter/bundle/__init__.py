"""The configuration bundle's generators: the mixin config, the Prometheus alert and
recording rules, the grafanalib dashboard helpers, the Kubernetes manifests, and the
README's metric table.

May import: the core only (the catalog above all), so everything generated derives from
the one declaration of each metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def repo_root(argv: list[str], module: str, writes: str) -> Path:
    """The repository root a generator's ``python -m`` command line names (default .), so
    ``--help`` answers instead of being taken for a directory."""
    parser = argparse.ArgumentParser(
        prog=f"python -m persona_exporter.bundle.{module}",
        description=f"Write {writes} under ROOT; `persona-exporter generate` runs it with "
                    "the other generators.")
    parser.add_argument("root", nargs="?", type=Path, default=Path("."), metavar="ROOT",
                        help="the repository's root (default: .)")
    root: Path = parser.parse_args(argv).root
    return root
