# The two commands a new user runs: `make demo` and `make test`. Both create .venv and install the
# pinned project on first use; later runs skip the install unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration e2e lint bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing aiinfra and its pinned dependencies into $(VENV) (first time: about 3 minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aiinfra demo

# Everything: unit (no Ray), integration (one shared Ray), end to end (the CLI and HTTP as a user sees them).
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/integration -q
	$(BIN)/python -m pytest tests/e2e -q

# The fast loop: seconds, no Ray.
unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e -q

lint: $(STAMP)
	$(BIN)/ruff check aiinfra jobs tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/monitor_cpu.py

clean:
	rm -rf $(VENV) .aiinfra .pytest_cache
