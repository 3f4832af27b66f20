# thingdoer: `make demo` sets everything up and runs a pod; `make test` runs every test.
# Both install what they need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(VENV)/bin
PYTHON    ?= python3
STATE_DIR ?= /var/lib/thingdoer
SERVER    ?= http://127.0.0.1:7070
THINGDOER := $(BIN)/thingdoer --server $(SERVER)

# command → Debian package that provides it
DEB_COMMANDS := runc:runc crun:crun etcd:etcd-server busybox:busybox-static ip:iproute2 \
                kubectl:kubernetes-client gcc:gcc skopeo:skopeo umoci:umoci \
                docker-registry:docker-registry nft:nftables qemu-system-x86_64:qemu-system-x86 \
                openssl:openssl

.PHONY: help deps venv image demo stop test lint bench clean vm-kernel

help:
	@echo "make demo   install what is missing, start a local cluster, run examples/hello.yaml"
	@echo "make stop   stop the local cluster (containers keep running)"
	@echo "make test   install what is missing, run every test"
	@echo "make bench  measure pod start against raw runc, image pull against skopeo+umoci (bench/)"

deps:
	@missing=""; \
	for pair in $(DEB_COMMANDS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/.installed: pyproject.toml setup.py native/runc_shim.c | deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

image: venv
	$(BIN)/thingdoer image build-busybox --state-dir $(STATE_DIR)

demo: deps venv image
	@if ! $(THINGDOER) get nodes >/dev/null 2>&1; then \
	  $(BIN)/thingdoer up --detach --state-dir $(STATE_DIR); \
	else echo "cluster already up at $(SERVER)"; fi
	@$(THINGDOER) delete pod hello --timeout 60s >/dev/null 2>&1 || true
	$(THINGDOER) apply -f examples/hello.yaml
	$(THINGDOER) wait pod hello --for phase=Succeeded --timeout 60s
	$(THINGDOER) get pods -o wide
	@echo "--- logs of pod hello ---"
	$(THINGDOER) logs hello
	@echo "--- exit status ---"
	@$(THINGDOER) describe pod hello | sed -n '/State:/,/Finished:/p'
	@echo "The cluster keeps running: 'make stop' stops it."

stop: venv
	$(BIN)/thingdoer down --state-dir $(STATE_DIR)

lint: venv
	$(BIN)/lint-imports

# Every tier must run: THINGDOER_REQUIRE_ALL_TIERS turns a skipped test into a failure.
test: deps venv lint vm-kernel
	THINGDOER_REQUIRE_ALL_TIERS=1 $(BIN)/pytest -q -p no:cacheprovider tests

# The cgroup v2 tier boots Debian's stock kernel in QEMU (tests/vm/run.sh): fetch it
# (apt-get download into .cache/vm) and build the initramfs before the tests time anything.
vm-kernel: deps
	@apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq
	tests/vm/run.sh --prepare

bench: deps venv
	$(BIN)/python bench/pod_start.py
	$(BIN)/python bench/image_pull.py
	$(BIN)/python bench/stats_scrape.py
	$(BIN)/python bench/net_pods.py
	$(BIN)/python bench/shim_start.py
	$(BIN)/python bench/shim_rss.py

clean:
	rm -rf $(VENV) build *.egg-info
