"""The README stays true: its metric table is the catalog's, its commands exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from persona_exporter.bundle.reference import render_into

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_metric_table_is_generated_from_the_catalog() -> None:
    assert render_into(README) == README, "stale metric table: run `make generate`"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]
    # the quick start's test command, as a new user would copy it
    assert re.search(r"^\s+make test(\s+#.*)?$", README, re.MULTILINE)


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.MULTILINE))
    for target in set(re.findall(r"\bmake ([a-z-]+)", README)):
        assert target in targets, f"README mentions `make {target}`, the Makefile lacks it"


def test_the_readmes_file_links_exist() -> None:
    links = [link for link in re.findall(r"\]\(([^)#]+)\)", README)
             if not link.startswith(("http://", "https://"))]
    assert links, "the README links to the package's files"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == [], f"README links to files that do not exist: {missing}"


def test_the_modules_the_readme_names_exist() -> None:
    named = set(re.findall(r"(?:python -m|from|import) (persona_exporter(?:\.\w+)+)", README))
    assert named, "the README names modules (python -m ..., from ... import)"
    for module in sorted(named):
        assert importlib.util.find_spec(module) is not None, f"README names {module}: gone"
