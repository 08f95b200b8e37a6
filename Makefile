# ubt: set-up, demo and tests on a fresh Debian bookworm machine (run as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp

# Debian packages: bcc for the BPF path, kernel headers for bcc's clang, the test oracles
# (gdb, elfutils, binutils, llvm, perf, valgrind, debuginfod), glibc's DWARF, compilers for fixtures.
APT_PACKAGES := python3-venv python3-bpfcc bpfcc-tools linux-headers-amd64 gcc g++ make \
	gdb elfutils debuginfod binutils llvm linux-perf valgrind libc6-dbg dwz xz-utils bpftrace systemtap

.PHONY: bootstrap demo test typecheck clean
bootstrap: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$1!="ii"{print $$2}'; for p in $(APT_PACKAGES); do \
		dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u); \
	if [ -n "$$missing" ]; then \
		echo "bootstrap: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@set -o pipefail; $(PY) -m pip install -q -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $(STAMP)
	@echo "bootstrap: ready ($(VENV)/bin/ubt)"

# The main job on a real program: a full backtrace at every opendir() of `ls -l /` (libc has no
# frame pointers; bpftrace's ustack stops after one frame here).
demo: bootstrap
	@echo "$$ ubt process /bin/ls opendir -c 'ls -l /' -n 3"
	@$(VENV)/bin/ubt process /bin/ls opendir -c 'ls -l / >/dev/null' -n 3

test: bootstrap
	@$(PY) -m pytest -q tests

typecheck: bootstrap
	@$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info fixtures/build
