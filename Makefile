# tenantwatch developer entry points. Root-only targets run scripts/install-deps.sh first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# test-unit and lint need no root and no deps step: use the venv when it exists.
UNIT_PY := $(if $(wildcard $(PY)),$(PY),/usr/bin/python3)
RUFF    := $(if $(wildcard $(VENV)/bin/ruff),$(VENV)/bin/ruff,ruff)
PYTEST_FLAGS := -q -p no:cacheprovider
COMMA := ,

.PHONY: all help deps root demo test test-unit lint bench clean install uninstall deb image

all: help

help:
	@echo "make deps       install system packages, headers, mounts, venv (root)"
	@echo "make demo       deps, then .venv/bin/tenantwatch demo (root)"
	@echo "make test       deps, then the whole test suite and the 6.1 qemu guest (root)"
	@echo "make test-unit  unit tests only (no root, no deps step)"
	@echo "make test-kernels  deps + qemu and Debian kernels, then the kernel matrix (5.10, 6.1, this one) (root)"
	@echo "make lint       ruff"
	@echo "make bench      deps, then bench/nginx_ab.py (root)"
	@echo "make clean      remove caches and build artefacts (keeps .venv)"
	@echo "make install    /opt/tenantwatch venv, unit, /etc/tenantwatch config if absent (root)"
	@echo "make uninstall  remove what install put; PURGE=1 also config and state (root)"
	@echo "make deb        dist/tenantwatch_<version>-1_amd64.deb, Python deps vendored (Debian 12)"
	@echo "make image      localhost/tenantwatch:<version>, from Debian packages (mmdebstrap, podman) (root)"

root:
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "make $(or $(MAKECMDGOALS),deps): must run as root (apt, mounts, BPF); try: sudo make $(MAKECMDGOALS)" >&2; \
	  exit 1; \
	fi

deps: root
	bash scripts/install-deps.sh

demo: deps
	$(VENV)/bin/tenantwatch demo

# `make test`: the main suite, then the 6.1 guest of the kernel matrix (docs/kernels.md: probes
# load on 6.1's verifier, exact counts, daemon, cgroup v2 cpu.max cap; about 5 minutes) and its
# result table. The guest runs even when the main suite failed; the target fails when either did
# (the main suite's pytest exit code goes through as is: 5, nothing collected, fails too). A kernel
# Debian's registry could not give is reported "not tested" with the reason (a skip).
# TEST_VM_KERNELS= (empty) leaves the guest out; TEST_VM_KERNELS=6.1,5.10 adds one.
TEST_VM_KERNELS ?= 6.1
TEST_VM_TIMEOUT ?= 900
test: deps
	@rc=0; \
	echo "+ TW_EXPECT_H2_COMPILED=1 $(PY) -m pytest $(PYTEST_FLAGS) --ignore=tests/vm tests"; \
	TW_EXPECT_H2_COMPILED=1 $(PY) -m pytest $(PYTEST_FLAGS) --ignore=tests/vm tests || rc=$$?; \
	if [ -z "$(TEST_VM_KERNELS)" ]; then \
	  echo "kernel matrix: left out (TEST_VM_KERNELS is empty)"; \
	else \
	  vrc=0; \
	  echo "+ bash scripts/install-vm-deps.sh $(subst $(COMMA), ,$(TEST_VM_KERNELS))"; \
	  bash scripts/install-vm-deps.sh $(subst $(COMMA), ,$(TEST_VM_KERNELS)) || vrc=$$?; \
	  if [ $$vrc -eq 0 ]; then \
	    echo "+ TW_VM_IN_TEST=1 TW_VM_KERNELS=$(TEST_VM_KERNELS) $(PY) -m pytest $(PYTEST_FLAGS) -rs tests/vm"; \
	    TW_VM_IN_TEST=1 TW_VM_KERNELS=$(TEST_VM_KERNELS) TW_VM_TIMEOUT=$(TEST_VM_TIMEOUT) \
	      $(PY) -m pytest $(PYTEST_FLAGS) -rs tests/vm || vrc=$$?; \
	  fi; \
	  [ $$rc -ne 0 ] || rc=$$vrc; \
	fi; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED (exit $$rc)" >&2; fi; \
	exit $$rc

# The kernel matrix (docs/kernels.md): Debian's 5.10 and 6.1 in qemu guests, and this machine's
# kernel directly. TW_VM_KERNELS=6.1 (comma-separated) picks kernels; prints the result table.
.PHONY: test-kernels
test-kernels: deps
	bash scripts/install-vm-deps.sh $(subst $(COMMA), ,$(TW_VM_KERNELS))
	TW_VM_IN_TEST=1 $(PY) -m pytest $(PYTEST_FLAGS) -rs tests/vm

test-unit:
	$(UNIT_PY) -m pytest $(PYTEST_FLAGS) tests/unit

lint:
	$(RUFF) check .

bench: deps
	$(PY) bench/nginx_ab.py

clean:
	rm -rf build dist *.egg-info harness/*.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

# The scripts check for root themselves (TW_ROOT=DIR installs under DIR, for tests);
# docs/operations.md. PURGE=1 on the command line reaches uninstall.sh through the environment.
install:
	bash scripts/install.sh

uninstall:
	bash scripts/uninstall.sh

# docs/operations.md, "Install from the package" and "Container image"
deb:
	bash scripts/build-deb.sh

image: deps deb
	bash scripts/build-image.sh
