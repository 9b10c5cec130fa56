# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# What is installed: `make run` only what running needs; `make test` adds the test extra (pytest, mypy, ruff...).
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint check bench clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmbot needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(RUN_STAMP) $(TEST_STAMP)

# Created readable by its owner only (it holds the tokens); llmbot then names each value still to fill in.
.env:
	@install -m 600 .env.example .env
	@echo "Created .env (mode 600) from .env.example. Fill in the values named below, then run 'make run' again."

run: $(RUN_STAMP) .env
	$(VENV)/bin/llmbot run

check: $(RUN_STAMP) .env
	$(VENV)/bin/llmbot check

test: lint
	$(PY) -m pytest -q

# ruff and mypy (strict on llmbot/), configured in pyproject.toml
lint: $(TEST_STAMP)
	$(PY) -m ruff check llmbot tests bench examples
	$(PY) -m mypy llmbot

bench: $(TEST_STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
