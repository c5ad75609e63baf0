"""The README stays true: its metric table is the catalog's, its commands exist."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
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


def _check_config(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """check-config as a user runs it, without the environment's token or trace keys."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PERSONA_EXPORTER_", "LANGFUSE_", "OTEL_"))}
    return subprocess.run([sys.executable, "-m", "persona_exporter", "check-config",
                           str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_the_config_files_the_readmes_commands_name_exist_and_are_accepted() -> None:
    """`budgets.yaml` in the SDK snippet and the `serve` command did not exist."""
    named = set(re.findall(r'load_config\("([^"]+)"\)', README))
    named |= set(re.findall(r"(?:--config\.file|--budgets|persona-exporter check-config) "
                            r"([\w./-]+\.ya?ml)\b", README))
    relative = {name for name in named if not name.startswith("/")}
    assert "examples/budgets.yaml" in relative, named
    for name in sorted(relative):
        assert (ROOT / name).is_file(), f"README names {name}: no such file"
        result = _check_config(ROOT / name, ROOT)
        assert result.returncode == 0, (name, result.stderr)


def test_the_readmes_configuration_example_is_one_serve_accepts(tmp_path: Path) -> None:
    """The example showed a token_file that does not exist: `serve` (and check-config)
    refused it as written."""
    section = README[README.index("\n## Configuration\n"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert example is not None
    assert "token_file" in example.group(1) and "server:" in example.group(1)
    (tmp_path / "config.yaml").write_text(example.group(1))
    result = _check_config(tmp_path / "config.yaml", tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_check_config_errors_the_readme_shows_are_what_it_prints(tmp_path: Path) -> None:
    shown = [line.strip() for line in README.splitlines()
             if line.startswith("    persona-exporter: budgets.yaml: ")]
    assert len(shown) == 2, shown
    (tmp_path / "budgets.yaml").write_text(
        "personas:\n  backend-engineer:\n    tokens: {24h: -5}\n    tokenz: 1\n")
    result = _check_config(Path("budgets.yaml"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == shown


def test_the_readme_documents_every_subcommand_and_the_version_flag() -> None:
    from persona_exporter.cli import build_parser

    [commands] = [a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction)]
    assert len(commands.choices) >= 6
    for name in commands.choices:
        assert f"persona-exporter {name}" in README, f"the README never shows `{name}`"
    assert "persona-exporter --version" in README
    # what a call outside any persona or workflow is recorded under
    assert "persona `unknown`" in README and "chatmode `none`" in README
