# PTQ Explorer: one entry point for setup, the dashboard, the checks and the benchmarks.
#
#   make venv     create .venv (Python 3.11) and install requirements.txt; instant when unchanged
#   make run      start the dashboard (extra streamlit flags: make run ARGS="--server.port 8600")
#   make browser  install chromium + chromedriver for the browser test, if possible (never fails)
#   make test     lint (ruff), type-check (mypy), tests (pytest)
#   make bench    run every benchmarks/*.py script (peer_aimet.py only through compare_peers.py, in .venv-bench)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

# The install stamp is named after the hash of requirements.txt: an unchanged file finds its
# stamp and skips pip; any edit gives a new name, so the next make reinstalls.
REQ_SHA := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.requirements-$(REQ_SHA)

.PHONY: venv run browser test lint typecheck pytest bench

venv: $(STAMP)

# Plain pip, not uv: the pinned torch wheel is found on this machine's local disk only by pip.
$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else "Python 3.11+ is required, got " + sys.version.split()[0] + " (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	@rm -f $(VENV)/.requirements-*
	@sha256sum requirements.txt > $@

# Benchmark-only environment for the AIMET peer comparison (benchmarks/peer_aimet.py): its own venv,
# because aimet-torch pulls bokeh/panel/tensorboard/cvxpy and moves tornado under Streamlit. Same
# stamp scheme as .venv, keyed on requirements-bench.txt; only `make bench` needs it.
BENCH_VENV := .venv-bench
BENCH_REQ_SHA := $(shell sha256sum requirements-bench.txt | cut -c1-16)
BENCH_STAMP := $(BENCH_VENV)/.requirements-bench-$(BENCH_REQ_SHA)

$(BENCH_STAMP):
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -r requirements-bench.txt
	@rm -f $(BENCH_VENV)/.requirements-bench-*
	@sha256sum requirements-bench.txt > $@

run: venv
	PYTHONPATH=$(CURDIR) $(BIN)/streamlit run dashboard/app.py $(ARGS)

# The browser test needs Debian's chromium and chromedriver. Installing them needs root and
# apt-get; without them the test skips itself, so this target only reports and never fails.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser: chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing chromium and chromium-driver with apt-get"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; } \
			|| echo "browser: apt-get failed; the browser test will be skipped"; \
		if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
			echo "browser: chromium/chromedriver still missing; the browser test will be skipped"; \
		fi; \
	else \
		echo "browser: chromium/chromedriver missing and cannot be installed (needs root and apt-get); the browser test will be skipped"; \
	fi; \
	true

lint: venv
	$(BIN)/ruff check ptq_core dashboard tests benchmarks

typecheck: venv
	$(BIN)/mypy ptq_core

pytest: venv browser
	$(BIN)/pytest -q

test: venv browser
	$(BIN)/ruff check ptq_core dashboard tests benchmarks
	$(BIN)/mypy ptq_core
	$(BIN)/pytest -q

bench: venv $(BENCH_STAMP)
	@shopt -s nullglob; scripts=(benchmarks/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "bench: no benchmarks/*.py scripts"; fi; \
	for script in "$${scripts[@]}"; do \
		if [ "$$script" = benchmarks/peer_aimet.py ]; then continue; fi; \
		echo "== $$script"; \
		PYTHONPATH=$(CURDIR) $(BIN)/python "$$script" || exit 1; \
	done
