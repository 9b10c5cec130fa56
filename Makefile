# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmbot needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

.env:
	@cp .env.example .env
	@echo "Created .env from .env.example. Fill in at least MATTERMOST_URL, MATTERMOST_TOKEN and OPENAI_API_KEY"
	@echo "(and OPENAI_BASE_URL / LLMBOT_MODEL for a non-OpenAI server), then run 'make run' again."
	@exit 1

run: $(STAMP) .env
	$(VENV)/bin/llmbot run

check: $(STAMP) .env
	$(VENV)/bin/llmbot check

test: lint
	$(PY) -m pytest -q

# ruff and mypy (strict on llmbot/), configured in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check llmbot tests bench examples
	$(PY) -m mypy llmbot

bench: $(STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
