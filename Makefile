# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPORTER_VENV := .venv-exporter

.PHONY: run test bench demo lint typecheck install exporter lock clean

# A venv whose python cannot run pip (half made: ensurepip missing, or an interrupted run) is made again.
$(STAMP): pyproject.toml constraints.txt
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The celery-exporter pins old redis/prometheus-client releases: it lives in its own venv.
# `ops-workers run` starts it when this stamp exists (workers/processes.py, celery_exporter_spec).
$(EXPORTER_VENV)/.installed: deploy/exporter-requirements.txt
	$(EXPORTER_VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(EXPORTER_VENV)
	$(EXPORTER_VENV)/bin/python -m pip install --quiet -r deploy/exporter-requirements.txt
	touch $@

exporter: $(EXPORTER_VENV)/.installed

run: $(STAMP)
	-$(MAKE) --no-print-directory exporter
	$(BIN)/ops-workers run

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(STAMP)
	$(BIN)/python -m demo

lint: $(STAMP)
	$(BIN)/ruff check workers tests bench demo beat_schedule.py
	$(BIN)/mypy

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) $(EXPORTER_VENV) var
