"""persona-exporter serve runs on uvloop where it is installed (a dependency where it
installs) and on asyncio's own loop where it is not, with the same answers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from .test_serve import GEN, http, metric, post, running

BLOCKED = "raise ImportError('uvloop is not installed here (a test stand-in)')\n"


def readiness(url: str) -> dict[str, object]:
    ready: dict[str, object] = json.loads(http("GET", f"{url}/readyz")[2])
    return ready


def test_serve_runs_on_uvloop_when_it_is_installed(tmp_path: Path) -> None:
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    with running(tmp_path) as server:
        assert readiness(server.url)["event_loop"] == expected
        assert post(server, {"batch_id": "b-1", "events": [GEN, GEN]})[1]["accepted"] == 2
        assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 2


def test_without_uvloop_serve_runs_on_asyncio(tmp_path: Path) -> None:
    # A module named uvloop first on the path that fails to import, as where no wheel
    # installs: uvicorn's loop="auto" takes asyncio then (uvicorn/loops/auto.py).
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "uvloop.py").write_text(BLOCKED)
    with running(tmp_path, env={"PYTHONPATH": str(blocker)}) as server:
        assert readiness(server.url)["event_loop"] == "asyncio"
        status, answer = post(server, [GEN, {**GEN, "input_tokens": -1}])
        assert status == 422 and answer["accepted"] == 1
        assert answer["errors"][0]["index"] == 1
        assert metric(server, "persona_llm_requests_total", persona="qa-engineer") == 1


def test_the_uvicorn_range_has_the_loop_factory_serve_uses() -> None:
    """serve runs on asyncio.Runner(loop_factory=Config.get_loop_factory()), which uvicorn
    added in 0.36.0 (uvicorn/config.py: "The `setup_event_loop` method was replaced by
    `get_loop_factory` in uvicorn 0.36.0"): with an older uvicorn that pyproject allowed,
    serve stopped with an AttributeError before listening."""
    import re
    import tomllib

    import uvicorn

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    (requirement,) = [r for r in project["dependencies"]
                      if re.match(r"uvicorn\b(?!-)", r)]
    lowest = re.search(r">=\s*(\d+)\.(\d+)", requirement)
    assert lowest is not None, requirement
    assert (int(lowest[1]), int(lowest[2])) >= (0, 36), requirement
    assert callable(getattr(uvicorn.Config, "get_loop_factory", None))
