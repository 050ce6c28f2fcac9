# Zeitwork developer targets. `make test` bootstraps a fresh machine (system packages when
# root, .venv with the package and its dev tools), runs the checks and the whole suite.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: bootstrap build build-local check lint format typecheck imports test test-unit \
        test-kvm migrate migration run-operator run-node-agent run-load-balancer \
        run-edge-proxy dev install uninstall bench-operator bench-agent bench-lb bench-edge \
        bench-deploy bench-logs bench-long-stream bench-images bench-build clean

bootstrap:
	@scripts/bootstrap.sh

build-local: bootstrap

# sdist + wheel in dist/; the wheel has the mypyc-compiled proxy core (hatch_build.py) unless
# ZEITWORK_PURE_PYTHON=1 or no C compiler is found (then it says so and builds pure Python).
build: bootstrap
	$(PY) -m build --outdir dist .

lint: bootstrap
	$(BIN)/ruff check src tests benchmarks

format:
	$(BIN)/ruff format src tests benchmarks

typecheck: bootstrap
	$(BIN)/mypy

imports: bootstrap
	$(BIN)/lint-imports

check: bootstrap
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: bootstrap
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-kvm: bootstrap
	$(BIN)/pytest -m requires_kvm -rs $(PYTEST_ARGS)

migrate: bootstrap
	$(BIN)/zeitwork migrate

migration: bootstrap
	@test -n "$(m)" || (echo 'usage: make migration m="what it changes"'; exit 2)
	$(BIN)/zeitwork migrate revision "$(m)"

run-operator: bootstrap
	$(BIN)/zeitwork operator

run-node-agent: bootstrap
	$(BIN)/zeitwork node-agent

run-load-balancer: bootstrap
	$(BIN)/zeitwork load-balancer

run-edge-proxy: bootstrap
	$(BIN)/zeitwork edge-proxy

# The whole platform on this machine (as root: the node agent needs namespaces and runc).
# `make dev DEV_ARGS=--demo` also deploys a demo app at demo.localhost.
DEV_ARGS ?=
dev: bootstrap
	$(BIN)/zeitwork dev $(DEV_ARGS)

install:
	sudo_or_root() { if [ "$$(id -u)" = 0 ]; then "$$@"; else sudo "$$@"; fi; }; \
	sudo_or_root scripts/install.sh

uninstall:
	sudo_or_root() { if [ "$$(id -u)" = 0 ]; then "$$@"; else sudo "$$@"; fi; }; \
	sudo_or_root scripts/uninstall.sh

bench-operator: bootstrap
	$(PY) benchmarks/operator_api.py

bench-agent: bootstrap
	$(PY) benchmarks/agent_start.py

bench-lb: bootstrap
	bash benchmarks/lb.sh

bench-edge: bootstrap
	bash benchmarks/edge.sh

# Releases under load through the edge (as root): deploy, rollback, revert of a failing release.
bench-deploy: bootstrap
	$(PY) benchmarks/deploy.py

# Followed logs through the operator (as root): lines/s, delay, operator memory with 20 followers.
bench-logs: bootstrap
	$(PY) benchmarks/logs.py

# Pull of a 3-layer image from a real docker-registry into a node (cold, new top layer,
# cached), beside skopeo copy + umoci unpack of the same images in the same run.
bench-images: bootstrap
	$(PY) benchmarks/images.py

# Builds from source under `zeitwork dev` (as root): first build, unchanged rebuild, one-line
# change, git push -> webhook -> served, beside plain `buildah bud` of the same context.
bench-build: bootstrap
	$(PY) benchmarks/build.py

# One SSE stream through the edge and the load balancer for 10 minutes: every event, in order.
bench-long-stream: bootstrap
	$(PY) benchmarks/long_stream.py

clean:
	rm -rf dist build .mypy_cache .ruff_cache .pytest_cache
