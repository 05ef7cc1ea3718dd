# Two commands for a newcomer: `make run` (server on embedded SQLite) and `make test` (the suite).
# They may run at the same time on a fresh clone: scripts/install.py takes one install at a time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-run run test lint check constraints clean

# Runtime dependencies only (what `pip install reversehub` gets).
install-run:
	@$(PYTHON) scripts/install.py run

# Runtime dependencies and the test, lint and type-check tools.
install:
	@$(PYTHON) scripts/install.py dev

run: install-run
	$(BIN)/reversehub serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: install
	$(BIN)/mypy

# constraints.txt from a fresh environment with the newest releases pyproject.toml allows; run the
# suite with it (make clean test) before committing it.
constraints:
	rm -rf $(VENV)-constraints
	$(PYTHON) -m venv $(VENV)-constraints
	$(VENV)-constraints/bin/python -m pip install -q '.[dev]'
	{ sed -n '/^#/p' constraints.txt; $(VENV)-constraints/bin/python -m pip freeze --exclude-editable | grep -v '^reversehub'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(VENV)-constraints

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
