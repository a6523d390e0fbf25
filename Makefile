# streamrec: the single entry point. `make demo` and `make test` each do all the set-up they need on a fresh clone.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# every Python package at an exact version with its hashes (`make lock` refreshes it from pyproject.toml)
LOCK := requirements.lock
# pytest options, e.g. `make test PYTEST_ARGS="-x -k kafka"`
PYTEST_ARGS ?=
# `streamrec bench` options, e.g. `make bench BENCH_ARGS=--quick`
BENCH_ARGS ?=
# the job of this commit runs beside today's on the same backlog (speedup_vs_baseline); empty: none
BASELINE ?= 0189e4d

.PHONY: help setup lock certs services-up services-up-secure services-down services-status demo test test-unit test-integration bench lint clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK) operators/_native.c
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	@command -v java >/dev/null || { echo "need Java 17 (Debian: apt-get install -y openjdk-17-jdk-headless)"; exit 1; }
	@command -v javac >/dev/null || [ -x "$$JAVA_HOME/bin/javac" ] || { echo "installing a JDK for javac (jobs/java)"; apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless; }
	@command -v mvn >/dev/null || { echo "installing Maven (Debian package)"; apt-get update -qq && apt-get install -y -qq maven; }
	@command -v cc >/dev/null || { echo "installing a C compiler for operators/_native.c (Debian package)"; apt-get update -qq && apt-get install -y -qq gcc; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

lock: $(STAMP) ## refresh requirements.lock: the newest versions pyproject.toml allows, with hashes (then make test)
	printf 'pip\nsetuptools>=68\nwheel\n' | $(BIN)/uv pip compile pyproject.toml - --extra dev --generate-hashes \
		--python-version 3.11 --upgrade --no-header -o $(LOCK)
	@sed -i '1i # Python packages for .venv at exact versions with their hashes: `make setup` installs exactly these\n# (pip install --require-hashes). Made by `make lock` (uv pip compile of pyproject.toml + pip, setuptools,\n# wheel) for CPython 3.11 on Linux x86_64.' $(LOCK)

setup: $(STAMP) ## create .venv (Python deps incl. torch, PyFlink), fetch the JVM artefacts and the text encoder's weights
	$(BIN)/streamrec services fetch
	$(BIN)/streamrec encoder fetch

services-up: setup ## start local Kafka, Cassandra and a standalone Flink cluster (a second call is a no-op)
	$(BIN)/streamrec services up --flink

certs: $(STAMP) ## the secure profile's local secrets (openssl): a self-signed CA, the services' certificate, passwords
	@command -v openssl >/dev/null || { echo "installing openssl (Debian package)"; apt-get update -qq && apt-get install -y -qq openssl; }
	$(BIN)/streamrec --services secure.yaml services certs

services-up-secure: setup certs ## start the secure profile's Kafka (SASL_SSL, SCRAM) and Cassandra (passwords, TLS)
	$(BIN)/streamrec services up --secure

services-down: ## stop every local service (no JVM left behind), of both profiles
	@if [ -x $(BIN)/streamrec ]; then $(BIN)/streamrec services down && \
		$(BIN)/streamrec --services secure.yaml services down; else echo "nothing set up"; fi

services-status: ## what runs
	$(BIN)/streamrec services status

demo: setup ## services up, run the pipeline on simulated events, show its output
	$(BIN)/streamrec demo

test: setup certs ## unit + integration tests against real Kafka, Cassandra and Flink (both profiles)
	$(BIN)/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

test-unit: $(STAMP) ## unit tests only (no services)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup certs ## integration tests only (starts the services it needs)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

bench: setup ## benchmarks: job vs plain consumer end to end, scorer, growth, profile → bench/results/ (BENCH_ARGS=--quick)
	$(BIN)/streamrec bench --baseline-commit "$(BASELINE)" $(BENCH_ARGS)

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check streamrec operators model_export jobs tests
	$(BIN)/mypy

clean: services-down ## stop services, remove state (jars, data, logs) and the venv
	rm -rf .state $(VENV)
