# splitserve: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
# The interpreter: PYTHON= when given; else the one an existing .venv was built with (a set-up tree
# keeps its interpreter until `make clean` or PYTHON=); else the newest CPython from 3.11 to 3.13
# (the versions constraints.txt is checked on) that runs, on PATH or under ~/.pyenv/versions.
PYTHON ?= $(shell scripts/find_python.sh $(VENV))
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
RUST_SOURCES := $(shell find rust -name '*.rs') Cargo.toml Cargo.lock
HOST ?= 127.0.0.1
PORT ?= 8080
STATE_DIR ?= ./.splitserve
SOAK_SECONDS ?= 600
DEMO_OUTPUT ?= ./demo-output
# cargo would look for make's jobserver in MAKEFLAGS, which make does not hand to plain recipes:
# under `make -j` (test-fast) it warns. An empty CARGO_MAKEFLAGS, read first, tells it there is none.
export CARGO_MAKEFLAGS :=

.PHONY: help setup build run demo test test-fast fast-ray fast-workers fast-others-a fast-others-b lint test-rust test-python test-python-e2e test-python-e2e-a test-python-e2e-b test-python-rest test-python-fast bench bench-load soak clean lock

# run, test and demo first (what a newcomer wants), then the rest in alphabetical order.
FIRST_TARGETS := run test demo
help: ## list the targets and what each does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' -v first="$(FIRST_TARGETS)" \
		'BEGIN { n = split(first, order, " "); for (i = 1; i <= n; i++) rank[order[i]] = i } \
		{ printf "%02d %s\t%s\n", ($$1 in rank) ? rank[$$1] : 99, $$1, $$2 }' \
		| sort | cut -c4- | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'

# One stamp names the interpreter's version. A .venv of another version (or of none) is removed
# and everything after it rebuilt; a .venv already of this version is kept as it is, the stamp
# dated 1970 so that nothing after it counts as out of date.
$(STAMPS)/python-$(PYTHON_VERSION):
	@if [ -z "$(PYTHON_VERSION)" ]; then \
		echo "no usable Python: '$(PYTHON)' does not run; install CPython 3.11 to 3.13 or set PYTHON=" >&2; \
		exit 1; fi
	@mkdir -p $(STAMPS)
	@rm -f $(STAMPS)/python-*
	@if [ "$$($(BIN)/python -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" = "$(PYTHON_VERSION)" ]; then \
		touch -d @0 $@; \
	else \
		echo "building $(VENV) with Python $(PYTHON_VERSION) ($(PYTHON))"; \
		rm -rf $(VENV) $(STAMPS)/venv $(STAMPS)/deps $(STAMPS)/build; touch $@; \
	fi

$(STAMPS)/venv: $(STAMPS)/python-$(PYTHON_VERSION)
	@mkdir -p $(STAMPS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@touch $@

$(STAMPS)/deps: $(STAMPS)/venv pyproject.toml constraints.txt
	$(BIN)/python scripts/requirements.py test lint plot ray | $(BIN)/pip install --quiet -c constraints.txt -r /dev/stdin
	@touch $@

$(STAMPS)/build: $(STAMPS)/deps $(RUST_SOURCES)
	$(BIN)/maturin develop --release --quiet
	@touch $@

# The end-to-end metrics test starts a real Prometheus server of its own (never the Debian service).
$(STAMPS)/prometheus:
	@mkdir -p $(STAMPS)
	command -v prometheus || (apt-get update && apt-get install -y --no-install-recommends prometheus)
	@touch $@

# The 30-second soak test (tests/e2e/test_soak.py) drives its load with wrk, from Debian.
$(STAMPS)/wrk:
	@mkdir -p $(STAMPS)
	command -v wrk || (apt-get update && apt-get install -y --no-install-recommends wrk)
	@touch $@

# tests/e2e/test_deploy_haproxy.py runs deploy/haproxy.cfg in front of two gateways.
# Debian's service is kept from starting as for PostgreSQL below.
$(STAMPS)/haproxy:
	@mkdir -p $(STAMPS)
	command -v haproxy >/dev/null || { \
		policy=/usr/sbin/policy-rc.d; added=; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && added=1; fi; \
		apt-get update && apt-get install -y --no-install-recommends haproxy; status=$$?; \
		if [ -n "$$added" ]; then rm -f $$policy; fi; exit $$status; }
	@touch $@

# The state-database tests start a private PostgreSQL server of their own (tests/support/postgres.py:
# initdb in a temporary directory, a free port), never the system service: a policy-rc.d that
# refuses every start is in place while the package installs, so Debian does not start its cluster.
$(STAMPS)/postgresql:
	@mkdir -p $(STAMPS)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		policy=/usr/sbin/policy-rc.d; added=; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && added=1; fi; \
		apt-get update && apt-get install -y --no-install-recommends postgresql; status=$$?; \
		if [ -n "$$added" ]; then rm -f $$policy; fi; exit $$status; }
	@touch $@

setup: $(STAMPS)/build ## create .venv, install the locked dependencies, build the extension (release)

build: setup ## same as setup: rebuild the Rust extension when its sources changed

# Run as root, the gateway runs its workers as `nobody` (--worker-user), who must be able to run this
# venv's Python. Where nobody cannot (a Python installed under /root, say), `make run` and `make demo`
# keep workers as root, and the gateway's log warns of it. WORKER_USER=NAME overrides the choice.
WORKER_USER ?= $(shell if [ "$$(id -u)" = 0 ] && ! runuser -u nobody -- $(abspath $(BIN))/python -c '' 2>/dev/null; then echo root; else echo nobody; fi)

run: setup ## set up, then start the gateway (127.0.0.1:8080, state in ./.splitserve; HOST, PORT, STATE_DIR override)
	$(BIN)/splitserve serve --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR) --model-store $(STATE_DIR)/models --worker-user $(WORKER_USER)

demo: setup ## the A/B walkthrough against a gateway it starts (2 minutes), then the loop closed (labels fed back, winner promoted, about 1 more); files in ./demo-output/ (DEMO_OUTPUT)
	$(BIN)/python examples/walkthrough.py --start --worker-user $(WORKER_USER) --output $(DEMO_OUTPUT)

lint: setup ## ruff (lint + format check), import contracts, mypy, stubtest, cargo fmt --check, cargo clippy -D warnings
	$(BIN)/ruff check python tests benches scripts examples
	$(BIN)/ruff format --check python tests benches scripts examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest splitserve._router
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings

test-rust: ## cargo test of the pure Rust routing core
	cargo test --quiet

test-python: setup $(STAMPS)/prometheus $(STAMPS)/wrk $(STAMPS)/postgresql $(STAMPS)/haproxy ## pytest (benchmarks run once each as smoke tests)
	@$(MAKE) --no-print-directory -j3 --output-sync=target test-python-e2e-a test-python-e2e-b test-python-rest

# test-python in three parts side by side: the end-to-end tests spend most of their time waiting
# for processes they start (gateways, workers, PostgreSQL, Ray, alarms' evaluation periods), so
# they run in two halves (of about equal time: these files, and the others) beside the rest.
E2E_A := $(addprefix tests/e2e/,test_cloudwatch.py test_ray_placement.py test_guardrails.py \
	test_replicas_postgres.py test_postgres_state.py test_replicas.py test_feedback.py \
	test_deploy_haproxy.py)

test-python-e2e: setup ## the end-to-end tier alone, in one process
	$(BIN)/pytest -q -p no:cacheprovider -m e2e

test-python-e2e-a: setup
	$(BIN)/pytest -q -p no:cacheprovider -m e2e $(E2E_A)

test-python-e2e-b: setup
	$(BIN)/pytest -q -p no:cacheprovider -m e2e $(addprefix --ignore=,$(E2E_A))

test-python-rest: setup
	$(BIN)/pytest -q -p no:cacheprovider -m "not e2e"

FAST_PYTEST := $(BIN)/pytest -q -p no:cacheprovider -m "not e2e"

test-python-fast: setup ## pytest's unit and HTTP tiers: no end-to-end tests, no benchmark smoke runs, no root
	$(FAST_PYTEST) tests

# test-python-fast in four shards for test-fast. Alone, the tier keeps the CPU busy only about half
# of the time (it waits on the processes and the Ray cluster it starts), so four side by side use
# both cores: the Ray placement tests, the other worker tests, FAST_OTHERS_A, and everything else
# (a new test folder lands in that last shard by itself).
FAST_OTHERS_A := tests/wiring tests/cluster tests/database tests/cloudwatch tests/evaluation
fast-ray: setup
	$(FAST_PYTEST) tests/workers/test_ray_placement.py

fast-workers: setup
	$(FAST_PYTEST) tests/workers --ignore=tests/workers/test_ray_placement.py

fast-others-a: setup
	$(FAST_PYTEST) $(FAST_OTHERS_A)

fast-others-b: setup
	$(FAST_PYTEST) tests --ignore=tests/workers $(addprefix --ignore=,$(FAST_OTHERS_A))

test: setup lint test-rust test-python ## set up, lint, cargo test, pytest: what CI runs (apt-get installs prometheus, wrk, postgresql and haproxy when missing)

# The edit loop: the four pytest shards start first, lint and then cargo test run beside them.
# Each target's output is printed when it ends.
test-fast: setup ## lint, cargo test and the unit + HTTP tiers side by side, no e2e, no root: the edit loop
	@$(MAKE) --no-print-directory -j5 --output-sync=target fast-ray fast-workers fast-others-a fast-others-b lint test-rust

bench: setup ## pytest-benchmark suites, enabled, against the release build
	@mkdir -p .benchmarks
	$(BIN)/pytest benches -q --benchmark-enable --benchmark-only --benchmark-columns=median,mean,stddev,rounds,ops --benchmark-json=.benchmarks/latest.json

bench-load: setup ## gateway vs nginx, HAProxy, plain aiohttp under wrk and oha (installs them; QUICK=1: CI size)
	$(BIN)/python -m benches.load bench $(if $(QUICK),--quick)

soak: setup $(STAMPS)/wrk ## hold the gateway at 80% of its maximum for 10 minutes (SOAK_SECONDS overrides)
	$(BIN)/python -m benches.load soak --seconds $(SOAK_SECONDS)

lock: $(STAMPS)/venv ## re-resolve the dependencies and rewrite constraints.txt
	$(BIN)/python scripts/requirements.py test lint plot ray | $(BIN)/pip install --quiet --upgrade -r /dev/stdin
	$(BIN)/pip freeze --exclude-editable | grep -v '^splitserve' > constraints.txt

clean: ## remove the virtualenv, build output and stamps
	rm -rf $(VENV) $(STAMPS) target python/splitserve/*.so
