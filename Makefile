# acgs-remediate — everything from a fresh Debian machine as root:
#   make demo   set up, start a 3-host sandbox fleet, run the main job end to end
#   make test   set up, run the whole suite (unit, lint, molecule, integration on real engines)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Keep ansible/molecule caches out of the user's home.
export ANSIBLE_HOME ?= $(abspath .ansible)
export ANSIBLE_LOCAL_TEMP ?= $(abspath .ansible/tmp)
export ANSIBLE_NOCOLOR := 1
DEMO_HOSTS ?= 3
DEMO_DIR ?= /var/lib/acgs-sb
DEMO_STATE ?= $(abspath .state/demo.db)

.PHONY: help setup system-deps venv test test-unit test-integration lint demo demo-down purge bench chaos clean

help:
	@echo "make demo   - install everything, start a $(DEMO_HOSTS)-host sandbox fleet, run the main job"
	@echo "make test   - install everything, run the whole suite"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make chaos  - the safety campaign: CHAOS_STATES random engine states (seeds CHAOS_SEED..), bench/results/safety.md"

setup: system-deps venv

# The Docker engine (docker.io gives dockerd 20.10), busybox-static and Debian's python3.11 for the
# sandbox scenario's locally made base images (no registry is reachable), and Debian's docker-registry:
# the sandbox runs its own registry on a 127.x address for phase 2 to ship images through; openssh (ssh:// engines,
# and the sandbox's sshd for `--transport ssh`) and openssl (the sandbox's TLS certificates).
system-deps:
	@missing=""; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	dpkg -s busybox-static >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	command -v docker-registry >/dev/null 2>&1 || missing="$$missing docker-registry"; \
	[ -x /usr/bin/python3.11 ] || missing="$$missing python3.11"; \
	command -v unshare >/dev/null 2>&1 || missing="$$missing util-linux"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v ssh >/dev/null 2>&1 || missing="$$missing openssh-client"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "error: need$$missing; run as root (or install them) and retry" >&2; exit 2; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/acgs-remediate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/acgs-remediate

test: setup
	bash tests/run-all.sh

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: setup
	$(BIN)/pytest -q tests/integration

lint: venv
	$(BIN)/ruff check acgs_remediate tests bench
	$(BIN)/ansible-lint --offline --profile production playbooks roles

demo: setup
	bash scripts/demo.sh "$(DEMO_HOSTS)" "$(DEMO_DIR)" "$(DEMO_STATE)"

demo-down: venv
	$(BIN)/acgs-remediate sandbox down --dir "$(DEMO_DIR)"

# Also frees the cached golden engines (~6.5 GB per scenario version) under /var/cache/acgs-remediate.
purge: venv
	$(BIN)/acgs-remediate sandbox down --dir "$(DEMO_DIR)" --purge-cache

bench: setup
	$(BIN)/python -m bench

# The safety campaign (bench/chaos.py): state k has seed CHAOS_SEED+k; a failing seed replays alone with
# `make chaos CHAOS_SEED=<seed> CHAOS_STATES=1`. Its own sandbox fleet (CHAOS_HOSTS engines) in CHAOS_DIR.
CHAOS_STATES ?= 50
CHAOS_SEED ?= 1
CHAOS_HOSTS ?= 3
CHAOS_DIR ?= /var/lib/acgs-chaos
chaos: setup
	CHAOS_STATES=$(CHAOS_STATES) CHAOS_SEED=$(CHAOS_SEED) CHAOS_HOSTS=$(CHAOS_HOSTS) CHAOS_DIR=$(CHAOS_DIR) \
	  $(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .ansible build dist *.egg-info
