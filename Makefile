# Tillgate developer commands. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test bench lint cassettes install dev-install migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.stamp-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.stamp-runtime

install: $(VENV)/.stamp-runtime
dev-install: $(VENV)/.stamp-dev

run: install
	$(BIN)/tillgate migrate
	$(BIN)/tillgate demo
	$(BIN)/tillgate serve --host $(HOST) --port $(PORT)

test: dev-install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Each benchmark prints its figures (against its floor, where it has one) and exits 1 on a missed target; all run.
bench: dev-install
	$(BIN)/python bench/read_api.py; status=$$?; $(BIN)/python bench/webhook_ingest.py || status=1; \
	$(BIN)/python bench/sync_apex.py || status=1; $(BIN)/python bench/deliveries.py || status=1; \
	$(BIN)/python bench/freshness.py || status=1; exit $$status

# Re-record the vendor HTTP cassettes of the conformance suite (cassettes/<connector>/).
cassettes: dev-install
	TILLGATE_RECORD_CASSETTES=1 $(BIN)/python -m pytest tests/test_conformance.py -q

lint: dev-install
	$(BIN)/ruff check gateway connectors tests bench

clean:
	rm -rf $(VENV) *.egg-info tillgate.db tillgate.db-wal tillgate.db-shm
