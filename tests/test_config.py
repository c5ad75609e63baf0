"""The configuration file: valid files load; wrong ones name the file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_exporter.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config


def test_the_packaged_default_loads() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.personas["backend-engineer"].tokens["24h"] == 2_000_000
    assert config.allocation("package-release") == 5000
    assert config.models["gpt-4o"].provider == "openai"


def test_an_empty_file_is_an_empty_config() -> None:
    config = parse_config("")
    assert config.personas == {} and config.allocation("anything") is None
    assert parse_config("personas:\n").personas == {}


def test_cost_uses_the_cache_read_rate_for_cached_tokens() -> None:
    price = parse_config("models: {m: {input: 2, output: 10, cache_read: 0.5}}").models["m"]
    # 1M input of which 400k cached, 100k output
    assert price.cost_usd(1_000_000, 100_000, 400_000) == pytest.approx(
        0.6 * 2 + 0.4 * 0.5 + 0.1 * 10)
    no_cache_price = parse_config("models: {m: {input: 2, output: 10}}").models["m"]
    assert no_cache_price.cost_usd(1_000_000, 0, 400_000) == pytest.approx(2)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("personas:\n  backend-engineer:\n    tokens: {24h: -5}\n",
     "personas.backend-engineer.tokens.24h: expected a number >= 1, got -5"),
    ("personas:\n  backend-engineer:\n    tokens: {24h: 1.5}\n",
     "personas.backend-engineer.tokens.24h: expected an integer, got 1.5"),
    ("personas:\n  backend-engineer:\n    tokens: {24h: true}\n",
     "personas.backend-engineer.tokens.24h: expected an integer, got True"),
    ("personas:\n  backend-engineer:\n    tokens: {2d: 100}\n",
     "personas.backend-engineer.tokens.2d: unknown budget window '2d' (expected one of: 1h, 24h"),
    ("personas:\n  backend-engineer:\n    tokenz: {24h: 100}\n",
     "personas.backend-engineer.tokenz: unknown key (expected one of: tokens, cost_usd)"),
    ("persona:\n  backend-engineer: {}\n",
     "persona: unknown key (expected one of: personas, chatmodes, models, limits, server, "
     "otlp, otlp_forward)"),
    ("chatmodes:\n  bug-fix: {tokens_per_run: 0}\n",
     "chatmodes.bug-fix.tokens_per_run: expected a number >= 1, got 0"),
    ("models:\n  gpt-4o: {input: .nan}\n",
     "models.gpt-4o.input: expected a finite number"),
    ("limits: {persona: many}\n", "limits.persona: expected an integer, got 'many'"),
    ("limits: {personas: 5}\n", "limits.personas: unknown key (expected one of: persona,"),
    ("personas: [backend-engineer]\n", "personas: expected a mapping, got a list"),
    ("- just a list\n", "expected a mapping at the top level, got a list"),
    ("personas:\n  \"dév\": {}\n", "personas.dév: 'dév' is not a valid name"),
    ("personas:\n  [a, b]: {}\n", "not valid YAML: found unhashable key"),
    ("personas: {{x: 1}: {}}\n", "not valid YAML: found unhashable key"),
    ("personas: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
])
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message, message


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "personas:\n  a: {tokens: {24h: 5}\n  b: [\n")
    with pytest.raises(ConfigError,
                       match=r"budgets.yaml: not valid YAML: .*\(line \d+, column \d+\)"):
        load_config(path)


def test_duplicate_keys_are_refused_not_silently_merged(tmp_path: Path) -> None:
    path = write(tmp_path, "personas:\n  qa: {tokens: {24h: 5}}\n  qa: {tokens: {24h: 9}}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'qa'.*line 3"):
        load_config(path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "personas:\n  a: {tokens: {24h: -1}}\n  b: {tokens: {24h: -2}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "personas.a.tokens.24h" in str(caught.value)
    assert "personas.b.tokens.24h" in str(caught.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the file: No such file"):
        load_config(tmp_path / "nope.yaml")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "budgets.yaml"


def test_the_example_budgets_file_is_one_check_config_and_the_demo_accept() -> None:
    """The README's SDK snippet and `serve` command name examples/budgets.yaml: it must
    exist and be accepted as it is, in an environment without a token (no token_file to
    create first), with the demo's personas so the demo's events have budgets."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_EXPORTER_")}
    result = subprocess.run([sys.executable, "-m", "persona_exporter", "check-config",
                             str(EXAMPLE)], capture_output=True, text=True, timeout=30,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK (4 personas, 3 chatmodes, 4 models)" in result.stdout
    example, default = load_config(EXAMPLE), load_config(DEFAULT_CONFIG_PATH)
    assert example.personas == default.personas and example.models == default.models
    assert example.chatmodes == default.chatmodes
    assert example.server.token_file is None  # a token file must exist: commented out


def test_a_token_under_server_names_where_the_token_goes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("server: {token: abc, listen_address: 1}\n", source="c.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("c.yaml: server.listen_address: expected a string")
    assert lines[1] == ("c.yaml: server.token: the token is never written in the config "
                        "file: set PERSONA_EXPORTER_TOKEN, or put it alone in a file and "
                        "name that file in server.token_file")
