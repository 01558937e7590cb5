# One virtualenv for everything; `make demo` and `make test` create it on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO_DIR ?= demo_output

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned in the same pip command so that no CUDA build is pulled in.
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[dev,perturbation,large]"
	touch $(STAMP)

# The tests also exercise the scVI baseline; the demo does not need it.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0 -e ".[dev,perturbation,large,baselines]"
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	# pytest exit code 5 means "no tests collected": not a failure of the suite.
	$(BIN)/python -m pytest -q tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) LINGSHU=$(BIN)/lingshu bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
