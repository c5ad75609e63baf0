"""Several exporter replicas behind a load balancer: a real Prometheus scrapes both and
PromQL gives correct fleet totals (counters summed per instance; the budget, exported by
every replica, taken once with max)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, required
from .test_serve import GEN, post, running

CONFIG = "personas:\n  qa-engineer: {tokens: {24h: 5000}}\n"


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
        return result


def test_two_replicas_give_correct_fleet_totals(tmp_path: Path) -> None:
    binary = required("prometheus")
    for replica in ("a", "b"):
        (tmp_path / replica).mkdir()
    with running(tmp_path / "a", CONFIG) as a, running(tmp_path / "b", CONFIG) as b:
        # A load balancer spreads one client's batches over the replicas.
        for i in range(5):
            assert post(a if i % 2 else b, {"batch_id": f"lb-{i}", "events": [GEN] * 10})[0] \
                == 200
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: persona-exporter
    static_configs:
      - targets: ["{a.url.removeprefix('http://')}", "{b.url.removeprefix('http://')}"]
""")
        prom = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    total = query(url, 'sum(persona_llm_requests_total{persona="qa-engineer"})')
                    per_instance = query(url, "persona_token_budget_tokens")
                except OSError:
                    total, per_instance = [], []
                if total and float(total[0]["value"][1]) == 50 and len(per_instance) == 2:
                    break
                assert time.monotonic() < deadline, (total, per_instance)
                time.sleep(0.5)
            # Each replica exports the budget: summing it would double the limit...
            doubled = query(url, 'sum by (persona) (persona_token_budget_tokens{window="24h"})')
            assert float(doubled[0]["value"][1]) == 10000
            # ...so utilisation divides the fleet's tokens by the budget taken once.
            utilisation = query(url, """
                sum by (persona) (persona_llm_tokens_total{token_type=~"input|output"})
              / on (persona)
                max by (persona) (persona_token_budget_tokens{window="24h"})""")
            assert utilisation[0]["metric"] == {"persona": "qa-engineer"}
            assert float(utilisation[0]["value"][1]) == pytest.approx(50 * 120 / 5000)
        finally:
            prom.terminate()
            prom.wait(15)
