# uptime-engine: `make run` (local services + engine), `make test` (the suite), `make bench`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv services stop test test-slow run migrate bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

services:                 ## start Redis (Dragonfly stand-in), PostgreSQL, ClickHouse on loopback
	bash scripts/services.sh start

stop:                     ## stop the local services
	bash scripts/services.sh stop

test: venv services       ## the test suite (slow soak tests excluded)
	$(VENV)/bin/pytest -q

test-slow: venv services  ## only the slow soak tests
	$(VENV)/bin/pytest -q -m slow

run: venv                 ## bring up services (unless .env names others), migrate, run the engine
	bash scripts/run.sh

migrate: venv services
	bash scripts/run.sh migrate

$(VENV)/.bench: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench services  ## quick bench (about 10 minutes; every scenario, short windows)
	$(PY) -m bench.run --quick

clean: stop
	rm -rf .services spool bench/out
