# One entry point. Every target creates and uses .venv itself (Python 3.11+ is all it needs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNBOOK := $(VENV)/bin/thorbis-runbook
STAMP  := $(VENV)/.installed
DEMO_BUSINESSES ?= 100

.PHONY: demo test lint bench lab clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## demo: the main job on the embedded PostgreSQL: a change opened for the Thorbis migrations,
## then precheck, a rollback rehearsal, apply (with demo data) and validate under it, each
## archived as a report; the change's record page shows all of it. `change open` prints the
## new change's id alone on stdout.
demo: $(STAMP)
	$(RUNBOOK) db start
	ID=$$($(RUNBOOK) change open --ticket DEMO-1 --category standard \
		--reason "make demo: the Thorbis Business OS schema on the local server") && \
	echo "change $$ID opened" && \
	$(RUNBOOK) run precheck rollback apply validate --target local --change $$ID \
		-p rollback.rehearsal=true -p apply.demo_businesses=$(DEMO_BUSINESSES) && \
	echo && \
	echo "The change record:     $(CURDIR)/reports/changes/$$ID/index.html" && \
	echo "Reports for auditors:  $(CURDIR)/reports/index.html"
	@echo "The local database keeps running: psql \"$$($(RUNBOOK) db url --target local)\" (stop: $(RUNBOOK) db stop)"

## test: the whole suite against a throwaway embedded PostgreSQL
test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check thorbis_runbook tests benchmarks
	$(VENV)/bin/mypy

## bench: apply 300 generated migrations vs. the raw psql floors (see benchmarks/README.md)
bench: $(STAMP)
	$(PY) benchmarks/apply_300.py

## lab: JupyterLab on the runbook notebooks, with the project's own kernel. Jupyter starts
## each kernel in notebooks/; runbook.start finds ../runbook.toml by walking up from there.
lab: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lab]'
	$(VENV)/bin/jupyter lab notebooks/

clean:
	-$(RUNBOOK) db stop
	rm -rf $(VENV) .runbook .pytest_cache .mypy_cache .ruff_cache
