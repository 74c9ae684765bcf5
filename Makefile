# meshfast developer tasks. `make serve` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install compile debug serve test test-py lint bench bench-stores bench-pipeline bench-instructions bench-stages bench-writer bench-against bench-micro clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	@echo "==> creating $(VENV) and installing meshfast with its test tools"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

compile: install
	@echo "==> compiling meshfast_core"
	$(BIN)/python setup.py -q build_ext --inplace

debug: install
	MESHFAST_DEBUG_BUILD=1 $(BIN)/python setup.py build_ext --inplace --force

serve: compile
	$(BIN)/meshfast serve --demo --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check meshfast meshfast_core tests benchmarks

test: compile lint
	@echo "==> test suite (compiled core; core modules also run against their Python twins)"
	$(BIN)/python -m pytest

bench: compile
	$(BIN)/python -m benchmarks.load

bench-stores: compile
	$(BIN)/python -m benchmarks.stores

bench-pipeline: compile
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.pipeline --workload W2

bench-instructions: compile
	$(BIN)/python -m benchmarks.instructions
	$(BIN)/python -m benchmarks.instructions --workload W2 --calls 800

bench-stages: compile
	$(BIN)/python -m benchmarks.stages

bench-writer: compile
	$(BIN)/python -m benchmarks.writer

# this checkout against another revision end to end: make bench-against REV=HEAD~1
bench-against: compile
	$(BIN)/python -m benchmarks.against $(or $(REV),HEAD~1)

bench-micro: compile
	$(BIN)/python -m pytest benchmarks --timeout=0 --benchmark-only --benchmark-group-by=group

clean:
	rm -rf build *.egg-info meshfast_core/*.so meshfast_core/*.c .pytest_cache .benchmarks
