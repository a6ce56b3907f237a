# Thin targets over the harness and its scripts. Every target sets up what it needs (idempotent):
# the venvs are rebuilt when their lockfiles change.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
HELM_VENV := .venv-helm
BASE_IMAGE ?= harness-base:bookworm
TRACK ?= 4090
NAME ?= my-entry
PIP_COMPILE := $(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
# The images' locks resolve against PyPI alone (its CUDA build of torch), whatever local wheels and
# indexes this machine's pip configuration adds.
PYPI_ONLY := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null

.PHONY: help setup lock ray engine base-image browser submission demo test check bench bench-serve \
	bench-train bench-check bench-sparse bench-chaos bench-serve-api gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Every environment is installed by scripts/install-lock.sh: the lock's own pip, then the lock with
# --require-hashes --no-deps (nothing resolved against the index), then `pip check`.
INSTALL_LOCK := PYTHON=$(PYTHON) scripts/install-lock.sh

$(VENV)/.stamp: lockfiles/dev.txt pyproject.toml scripts/install-lock.sh
	# torch first, by name: the lock leaves it out (see lockfiles/dev.in), the machine's build is used.
	$(INSTALL_LOCK) --first "torch==2.13.0" $(VENV) lockfiles/dev.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(HELM_VENV)/.stamp: lockfiles/helm.txt lockfiles/helm-core.txt scripts/install-lock.sh
	# crfm-helm declares torch, torchvision and transformers; its HTTP client never imports them.
	$(INSTALL_LOCK) --allow-missing torch --allow-missing torchvision --allow-missing transformers \
		$(HELM_VENV) lockfiles/helm.txt lockfiles/helm-core.txt
	touch $@

setup: $(VENV)/.stamp $(HELM_VENV)/.stamp  ## create or refresh .venv and .venv-helm from the locks

$(VENV)/.ray-stamp: $(VENV)/.stamp lockfiles/ray.txt
	$(INSTALL_LOCK) $(VENV) lockfiles/ray.txt
	touch $@

ray: $(VENV)/.ray-stamp  ## add Ray (the fleet executor, --executor ray) to .venv from its lock

lock: $(VENV)/.stamp  ## recompile every lockfile from its .in (needs PyPI)
	# --unsafe-package replaces pip-tools' default set: torch is left out, setuptools is pinned.
	$(PIP_COMPILE) --unsafe-package torch -o lockfiles/dev.txt lockfiles/dev.in
	$(PIP_COMPILE) --unsafe-package torch -o lockfiles/ray.txt lockfiles/ray.in
	$(PYPI_ONLY) $(PIP_COMPILE) --allow-unsafe -o lockfiles/serve.txt lockfiles/serve.in
	$(PYPI_ONLY) $(PIP_COMPILE) --allow-unsafe -o lockfiles/train.txt lockfiles/train.in
	$(PYPI_ONLY) $(PIP_COMPILE) --allow-unsafe -o lockfiles/helm.txt lockfiles/helm.in
	scripts/lock-helm-core.sh lockfiles/helm-core.txt

engine:  ## make a Docker engine reachable (installs and starts one as root)
	scripts/docker-engine.sh

base-image: engine  ## build the local base image the templates use when Docker Hub is out of reach
	scripts/base-image.sh $(BASE_IMAGE)

browser:  ## headless Chromium for the browser tests (installs Debian's chromium as root)
	scripts/chromium.sh

submission: $(VENV)/.stamp  ## render a submission: make submission TRACK=4090 NAME=my-entry
	$(VENV)/bin/harness submission new --track $(TRACK) --name $(NAME)

demo: setup base-image  ## the main job, end to end on CPU
	$(VENV)/bin/python scripts/demo.py

test: setup ray  ## the test suite; sets up the Docker engine, base image and Chromium it uses (as root)
	# Exit 3 is "cannot be had here" (not root): the tests that need it then skip, saying why.
	scripts/docker-engine.sh || [[ $$? == 3 ]]
	scripts/base-image.sh $(BASE_IMAGE) || [[ $$? == 3 ]]
	scripts/chromium.sh || [[ $$? == 3 ]]
	$(VENV)/bin/pytest

check: $(VENV)/.stamp  ## ruff (lint, format) and mypy
	$(VENV)/bin/ruff check harness templates tests scripts benchmarks
	$(VENV)/bin/ruff format --check harness templates tests scripts benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy templates benchmarks  # apart: their scripts import each other by file name

bench: bench-serve bench-train bench-check bench-sparse bench-chaos bench-serve-api  ## every benchmark

bench-serve: $(VENV)/.stamp  ## HELM-like serving: naive vs ours without and with the prefix cache
	$(VENV)/bin/python benchmarks/bench_serve.py

bench-train: $(VENV)/.stamp  ## QLoRA training tokens/s and peak memory
	$(VENV)/bin/python benchmarks/bench_train.py

bench-serve-api: setup base-image  ## harness serve: API p99 while 20 teams x 10 entries are evaluated
	$(VENV)/bin/python benchmarks/bench_service.py

bench-check: $(VENV)/.stamp  ## harness check on 225 generated entries against detect-secrets' CLI
	$(VENV)/bin/python benchmarks/bench_check.py

bench-sparse: $(VENV)/.stamp  ## tiers and the adaptive schedule against the full budget, simulated
	$(VENV)/bin/python benchmarks/bench_sparse.py

gpu-check: $(VENV)/.stamp  ## on a CUDA GPU (8 min): serving, decode, 4-bit, QLoRA memory, merge
	$(VENV)/bin/python benchmarks/gpu_check.py --out results/gpu_check.json

bench-chaos: setup base-image  ## harness run under 100 faults (kill -9, rm -f, second harness, engine restart)
	$(VENV)/bin/python benchmarks/bench_chaos.py

clean:  ## remove the venvs and caches (not submissions/)
	rm -rf $(VENV) $(HELM_VENV) .mypy_cache .ruff_cache .pytest_cache
