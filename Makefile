# ubt: set-up, demo and tests on a fresh Debian bookworm machine (run as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp

# Debian packages: bcc for the BPF path, kernel headers for bcc's clang, the test oracles
# (gdb, elfutils, binutils, llvm, perf, valgrind, debuginfod), glibc's DWARF, compilers for fixtures.
APT_PACKAGES := python3-venv python3-bpfcc bpfcc-tools linux-headers-amd64 gcc g++ make \
	gdb elfutils debuginfod binutils llvm linux-perf valgrind libc6-dbg dwz xz-utils

.PHONY: bootstrap demo test typecheck clean
bootstrap: $(STAMP)

$(STAMP): setup.py Makefile
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

# The main job on a real program: /bin/ls blocked inside libc writing into a pipe nobody reads.
demo: bootstrap
	@ls -lR /usr/share > >(sleep 30) & pid=$$!; sleep 0.5; \
	echo "$$ ubt stack -p $$pid    # ls -lR /usr/share, blocked in write()"; \
	$(VENV)/bin/ubt stack -p $$pid; status=$$?; kill $$pid; exit $$status

test: bootstrap
	@$(PY) -m pytest -q tests

typecheck: bootstrap
	@$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info fixtures/build
