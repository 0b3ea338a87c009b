# netplane developer entry points. `make help` lists them; docs/setup.md explains `make setup`.
#
# Setup is stamped: each stamp's name carries a hash of the files that define that step, so a
# second `make setup` does nothing, and editing scripts/setup-system.sh or pyproject.toml makes
# the next one redo exactly that step.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Debian's interpreter on purpose (not the first python3 on PATH): python3-bpfcc installs bcc
# for it only, and the venv sees it through --system-site-packages.
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
VENV_BIN := $(VENV)/bin
STAMPS := .setup-stamps
PYTEST_ARGS ?=

hash = $(shell cat $(1) | sha256sum | cut -c1-16)
# The system step also depends on the running kernel (the bcc headers link is per kernel).
SYSTEM_STAMP := $(STAMPS)/system-$(call hash,scripts/setup-system.sh)-$(shell uname -r)
VENV_STAMP := $(STAMPS)/venv-$(call hash,pyproject.toml)
SHIM_BIN := cni/shim/netplane-c
SHIM_SRC := $(wildcard cni/shim/*.c cni/shim/*.h)
SHIM_CFLAGS := -O2 -Wall -Wextra -std=gnu11
# libbpf programs (ebpf/*.bpf.c → ebpf/build/*.bpf.o, loaded by netplane.ebpf.libbpf). -g: the
# BTF libbpf needs to resolve their kfunc calls against the kernel's.
BPF_OBJS := $(patsubst ebpf/%.bpf.c,ebpf/build/%.bpf.o,$(wildcard ebpf/*.bpf.c))
BPF_CFLAGS = -O2 -g -Wall -target bpf -I/usr/include/$(shell $(CC) -dumpmachine)

.PHONY: help setup test demo clean

help: ## list targets
	@echo "netplane make targets:"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
	    awk 'BEGIN {FS = ":.*## "} {printf "  %-8s %s\n", $$1, $$2}'
	@echo "variables: PYTEST_ARGS='...' extra arguments for pytest (make test)"

setup: $(SYSTEM_STAMP) $(VENV_STAMP) $(SHIM_BIN) $(BPF_OBJS) ## install system packages (apt) and the .venv; fast when done
	@:

# The CNI shim in C (cni/shim/*.c; the bash shim cni/shim/netplane is the reference and the
# fallback). Static when the toolchain allows, so it runs on any x86-64 node; else dynamic
# against libc only. netplane.cni.shim_path() installs it when it exists.
$(SHIM_BIN): $(SHIM_SRC) | $(SYSTEM_STAMP)
	@echo "== building the CNI shim $@"
	$(CC) $(SHIM_CFLAGS) -static -o $@.tmp $(filter %.c,$^) 2>/dev/null || \
	    $(CC) $(SHIM_CFLAGS) -o $@.tmp $(filter %.c,$^)
	mv -f $@.tmp $@

ebpf/build/%.bpf.o: ebpf/%.bpf.c | $(SYSTEM_STAMP)
	@echo "== compiling the BPF program $<"
	@mkdir -p $(@D)
	clang-14 $(BPF_CFLAGS) -c $< -o $@.tmp
	mv -f $@.tmp $@

$(SYSTEM_STAMP):
	@echo "== system packages (scripts/setup-system.sh)"
	bash scripts/setup-system.sh
	@mkdir -p $(STAMPS) && rm -f $(STAMPS)/system-* && touch $@

# Created only when missing; an existing venv is kept (and checked by the stamp rule below).
$(VENV)/pyvenv.cfg: | $(SYSTEM_STAMP)
	@echo "== creating $(VENV) with $(SYSTEM_PYTHON) --system-site-packages"
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)

$(VENV_STAMP): $(VENV)/pyvenv.cfg | $(SYSTEM_STAMP)
	@grep -qx 'home = /usr/bin' $(VENV)/pyvenv.cfg && \
	    grep -qx 'include-system-site-packages = true' $(VENV)/pyvenv.cfg || { \
	    echo "$(VENV) was not made by $(SYSTEM_PYTHON) --system-site-packages (bcc would be" \
	         "missing): run 'make clean setup'" >&2; exit 1; }
	@echo "== installing netplane[test] into $(VENV) (pyproject.toml changed or new venv)"
	$(VENV_BIN)/pip install -q --upgrade pip setuptools
	$(VENV_BIN)/pip install -q -e '.[test]'
	@mkdir -p $(STAMPS) && rm -f $(STAMPS)/venv-* && touch $@

# The pytest console script, not `python -m pytest`: the latter would put the repository root on
# sys.path, where dns/ and proxy/ would shadow real packages. pyproject adds --import-mode=importlib.
# (pip is run as .venv/bin/pip for the same reason.)
test: setup ## run the test suite (.venv/bin/pytest -q PYTEST_ARGS)
	$(VENV_BIN)/pytest -q $(PYTEST_ARGS)

demo: setup ## a sandbox cluster: up, kubectl, pod-to-pod traffic, down (scripts/demo.sh)
	bash scripts/demo.sh

clean: ## remove .venv, the setup stamps and built objects (system packages stay)
	rm -rf $(VENV) $(STAMPS) ebpf/build
