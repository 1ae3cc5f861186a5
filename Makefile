# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := examples/acme_bank

.PHONY: install run test test-fast lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## the virtual environment with kefu and its tools

run: install  ## build the demo assistant (reusing what is up to date) and serve it at http://127.0.0.1:8000
	HF_HUB_OFFLINE=1 $(BIN)/kefu build $(DEMO)
	HF_HUB_OFFLINE=1 $(BIN)/kefu serve $(DEMO) --host 127.0.0.1 --port 8000 --new-key

test: install  ## the whole test suite, slow tests included (as CI runs it)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n 2 tests

test-fast: install  ## the tests without the slow ones
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n 2 -m "not slow" tests

lint: install
	$(BIN)/ruff check kefu tests bench
	$(BIN)/ruff format --check kefu tests bench

bench: install  ## every benchmark in quick mode
	for script in bench/*.py; do $(BIN)/python $$script --quick || exit 1; done
