# Two entry points do all the set-up on a fresh clone:
#   make demo   - venv, install, generate the sample shop, train, publish, serve on 127.0.0.1:50051
#                 with the operator console on http://127.0.0.1:8080/
#   make test   - venv, install, lint, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/recsvc/v1/*.proto)
GENERATED := $(PROTOS:protos/%.proto=%_pb2.py)
SAMPLE := var/sample-shop
MODELS := var/models
PORT ?= 50051
CONSOLE_PORT ?= 8080

# implicit warns and slows down badly when BLAS runs its own thread pool.
export OPENBLAS_NUM_THREADS := 1
export MKL_NUM_THREADS := 1

.PHONY: install proto demo test lint format clean services mutation

install: $(STAMP) $(GENERATED)

# The editable install runs setup.py's build hook, which generates the gRPC code.
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

proto: $(GENERATED)

# After an edit of the contract: the same generation as the build hook's, without reinstalling.
recsvc/v1/%_pb2.py: protos/recsvc/v1/%.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $<

$(SAMPLE)/events.csv: | install
	$(BIN)/recsvc data generate --seed 7 --out $(SAMPLE)

demo: install $(SAMPLE)/events.csv
	$(BIN)/recsvc train --events $(SAMPLE)/events.csv --items $(SAMPLE)/items.csv \
		--users $(SAMPLE)/users.csv --model-dir $(MODELS)
	@echo
	@echo "Serving on 127.0.0.1:$(PORT). In another shell try:"
	@echo "  $(BIN)/recsvc recommend --target 127.0.0.1:$(PORT) --user u0001 -k 10"
	@echo "  $(BIN)/recsvc similar --target 127.0.0.1:$(PORT) --item i0001 -k 5"
	@echo "  $(BIN)/recsvc recommend --target 127.0.0.1:$(PORT) --user someone-new"
	@echo "  $(BIN)/recsvc profile --target 127.0.0.1:$(PORT) u0001"
	@echo "  $(BIN)/recsvc page --target 127.0.0.1:$(PORT) --user u0001"
	@echo "  $(BIN)/recsvc together --target 127.0.0.1:$(PORT) i0450 -k 5"
	@echo "The operator console (customers, segments, campaigns, models) is in a browser at"
	@echo "  http://127.0.0.1:$(CONSOLE_PORT)/"
	@echo "Stop with Ctrl-C (requests in flight are drained)."
	@echo
	exec $(BIN)/recsvc serve --model-dir $(MODELS) --host 127.0.0.1 --port $(PORT) \
		--console-port $(CONSOLE_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# What the tests start themselves on loopback (Redis) or run (Java, for Spark in local mode),
# from the Debian packages. Installed when missing and we are root (CI); elsewhere the tests
# that need them skip and say why.
services:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		redis-server >/dev/null; } || echo "redis-server not installed: Redis tests will skip"
	@command -v java >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		openjdk-17-jre-headless >/dev/null; } || echo "java not installed: Spark tests will skip"
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium chromium-driver >/dev/null; } || \
		echo "chromium not installed: the console's browser tests will skip"

test: install lint services
	$(BIN)/python -m pytest

# Mutation testing of the modules where a silent regression hurts users most (docs/TESTING.md).
# Not part of `make test`: a full run takes about an hour on two cores.
mutation: install
	$(BIN)/python -m pip install --quiet -e '.[dev,mutation]'
	$(BIN)/python bench/mutation.py

clean:
	rm -rf $(VENV) var mutants build dist recsvc/v1/*_pb2*.py recsvc/v1/*_pb2*.pyi .pytest_cache .ruff_cache
