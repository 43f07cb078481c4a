# Hookstream: `make run` and `make test` set everything up from a fresh clone.
# The caller's environment wins over every default here (HOOKSTREAM_API_KEY=... make run).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh

export HOOKSTREAM_PG_PORT ?= 55432
export HOOKSTREAM_REDIS_PORT ?= 56379
export HOOKSTREAM_KAFKA_PORT ?= 59092
export HOOKSTREAM_DATABASE_URL ?= postgresql+asyncpg://hookstream@127.0.0.1:$(HOOKSTREAM_PG_PORT)/hookstream
export HOOKSTREAM_REDIS_URL ?= redis://127.0.0.1:$(HOOKSTREAM_REDIS_PORT)/0
# HOOKSTREAM_KAFKA_BROKERS=3: a 3-node Kafka cluster instead of the single node
# (deploy/local/stack.sh), and the bootstrap list names every node.
export HOOKSTREAM_KAFKA_BROKERS ?= 1
ifeq ($(origin HOOKSTREAM_KAFKA_BOOTSTRAP),undefined)
  ifeq ($(HOOKSTREAM_KAFKA_BROKERS),1)
    HOOKSTREAM_KAFKA_BOOTSTRAP := 127.0.0.1:$(HOOKSTREAM_KAFKA_PORT)
  else
    HOOKSTREAM_KAFKA_BOOTSTRAP := $(shell HOOKSTREAM_KAFKA_BROKERS=$(HOOKSTREAM_KAFKA_BROKERS) $(STACK) bootstrap)
  endif
endif
export HOOKSTREAM_KAFKA_BOOTSTRAP
# Processes of each service `make run` starts; ingest ones listen on consecutive ports
# from HOOKSTREAM_HTTP_PORT (8000, 8001, ...). One janitor: it works under an advisory lock.
export HOOKSTREAM_HTTP_PORT ?= 8000
export HOOKSTREAM_INGEST_PROCESSES ?= 1
export HOOKSTREAM_DISPATCHER_PROCESSES ?= 1
export HOOKSTREAM_RETRY_SCHEDULER_PROCESSES ?= 1
export PYTHONPATH := $(CURDIR)
# Procfile commands say `python`: make it the virtualenv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv lock stack-up stack-down stack-status migrate topics run test test-faults bench bench-tools lint typecheck clean browser

help:
	@echo "make run          set up everything and run Hookstream on 127.0.0.1:8000"
	@echo "make test         set up everything and run the test suite"
	@echo "make test-faults  fault-injection scenarios"
	@echo "make bench        benchmark report (bench/results/)"
	@echo "make stack-up|stack-down|stack-status   local PostgreSQL, Redis, Kafka"
	@echo "make migrate | topics | lint | typecheck | lock"

# Reinstall when pyproject.toml or the lock changes; pip keeps its downloads in
# ~/.cache/pip. constraints.txt pins every version the tests last passed with.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

# Re-resolve the newest versions pyproject.toml allows into constraints.txt, in a
# throwaway virtualenv; then run make test before committing the new lock.
lock:
	rm -rf .local/lock-venv && mkdir -p .local && $(PYTHON) -m venv .local/lock-venv
	.local/lock-venv/bin/pip install -q -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; .local/lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .local/lock-venv

venv: $(VENV)/.installed

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

# A dev encryption key for subscription secrets is generated once into .local/ (like the
# API key below) and used unless the caller set HOOKSTREAM_ENCRYPTION_KEYS.
DEV_KEYS = $${HOOKSTREAM_ENCRYPTION_KEYS:-$$(cat .local/dev-encryption-key)}

.local/dev-encryption-key: | venv
	@mkdir -p .local && umask 077 && $(BIN)/python -m shared.secretbox generate-key > $@.tmp && mv $@.tmp $@

migrate: venv stack-up .local/dev-encryption-key
	HOOKSTREAM_ENCRYPTION_KEYS="$(DEV_KEYS)" $(BIN)/alembic upgrade head

topics: venv stack-up
	$(BIN)/python -m shared.topics

# A dev API key is generated once into .local/ and printed, unless the caller set one.
run: venv stack-up migrate topics
	@HOOKSTREAM_ENCRYPTION_KEYS="$(DEV_KEYS)" $(BIN)/python -m services.janitor --once
	@export HOOKSTREAM_ENCRYPTION_KEYS="$(DEV_KEYS)"; \
	if [ -z "$$HOOKSTREAM_API_KEY" ]; then \
	    test -s .local/dev-api-key || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .local/dev-api-key; \
	    export HOOKSTREAM_API_KEY="$$(cat .local/dev-api-key)"; \
	    echo "Development API key (from .local/dev-api-key): $$HOOKSTREAM_API_KEY"; \
	fi; \
	export HOOKSTREAM_LOG_FORMAT="$${HOOKSTREAM_LOG_FORMAT:-console}"; \
	last=$$(( HOOKSTREAM_HTTP_PORT + HOOKSTREAM_INGEST_PROCESSES - 1 )); \
	ports=$$HOOKSTREAM_HTTP_PORT; [ "$$last" = "$$HOOKSTREAM_HTTP_PORT" ] || ports="$$HOOKSTREAM_HTTP_PORT-$$last"; \
	echo "Hookstream on http://$${HOOKSTREAM_HTTP_HOST:-127.0.0.1}:$$ports  (docs: /docs, dashboard: /ui)  Ctrl-C stops the services."; \
	exec $(BIN)/honcho start -f Procfile -p $(HOOKSTREAM_HTTP_PORT) \
	    -c ingest=$(HOOKSTREAM_INGEST_PROCESSES),dispatcher=$(HOOKSTREAM_DISPATCHER_PROCESSES),retry_scheduler=$(HOOKSTREAM_RETRY_SCHEDULER_PROCESSES)

# Browser tests drive Debian's Chromium (Playwright never downloads one). Outside CI a
# machine that cannot install it skips those tests; under CI=true they fail instead.
browser:
	@command -v chromium >/dev/null || apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium) || test -z "$$CI"

test: venv stack-up browser
	$(BIN)/pytest -m "not faults" $(PYTEST_ARGS)

test-faults: venv stack-up
	$(BIN)/pytest -m faults -s $(PYTEST_ARGS)

# wrk drives the HTTP load of bench/ingest.py, bench/delivery.py and bench/applications.py:
# Debian's package, installed like Chromium for the browser tests.
bench-tools:
	@command -v wrk >/dev/null || apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)

bench: venv stack-up migrate topics bench-tools
	$(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy shared services hookstream_cli

clean: stack-down
	rm -rf .local $(VENV)
