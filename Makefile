# relayfleet: one entry point for humans and CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CRD_DIRS := crds charts/relayfleet/crds

.PHONY: run send test lint peers venv crds docs locks bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## make run: a local relay from examples/quickstart.yaml on 127.0.0.1:2525, mail captured under ./var
run: $(STAMP)
	$(BIN)/smtp-relay run -f examples/quickstart.yaml --spool var/spool

## make send: one test message to the relay of `make run` (another terminal), then the captured file
send:
	python3 examples/send_test_message.py

## make peers: install the Debian programs the tests talk to (postfix, swaks, nsd, ...)
peers:
	bash .ci/install-peers.sh

## make test: install everything (Python deps and Debian peers), then run the whole suite
test: $(STAMP) peers
	$(BIN)/ruff check relay_image operator tests bench examples
	$(BIN)/ruff format --check relay_image operator tests bench examples
	$(BIN)/mypy
	PYTHONPATH=operator $(BIN)/lint-imports
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check relay_image operator tests bench examples
	$(BIN)/ruff format --check relay_image operator tests bench examples
	$(BIN)/mypy
	PYTHONPATH=operator $(BIN)/lint-imports

## make crds: regenerate the CRDs in $(CRD_DIRS) from the spec models (a test fails when they are stale)
crds: $(STAMP)
	PYTHONPATH=operator $(BIN)/python -m crdgen $(foreach dir,$(CRD_DIRS),--out $(dir))

## make bench: relay vs Postfix throughput (see bench/relay_vs_postfix)
bench: $(STAMP) peers
	$(BIN)/python -m bench.relay_vs_postfix

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

## make locks: refresh the hash-pinned locks of the images (and their build stage) from pyproject.toml (needs PyPI).
## Pins already in a lock are kept where pyproject.toml still allows them; `make locks LOCK_ARGS=--upgrade` takes
## the newest release of everything.
LOCK_ARGS ?=
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux \
	--custom-compile-command 'make locks' $(LOCK_ARGS)
locks: $(STAMP)
	$(BIN)/pip install -q -e '.[test,lock]'
	$(UV_COMPILE) pyproject.toml -o relay_image/requirements.lock
	$(UV_COMPILE) pyproject.toml --extra operator -o requirements-operator.lock
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(UV_COMPILE) - -o requirements-build.lock

## make docs: regenerate the CRD reference in docs/reference/ from crds/ (a test fails when it is stale)
docs: $(STAMP)
	PYTHONPATH=operator $(BIN)/python -m crdgen.reference --crds crds --out docs/reference
