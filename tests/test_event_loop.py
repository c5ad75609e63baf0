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
