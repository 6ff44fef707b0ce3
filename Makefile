# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# a LiteLLM proxy for the compatibility test, in a venv of its own (its pins stay out of ours)
COMPAT_VENV := .venv-litellm
LITELLM     ?= litellm[proxy]==1.108.7

.PHONY: demo test test-fast check bench compat report clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the core install (`$(VENV)/.installed`) and one stamp per extra (`$(VENV)/.installed-EXTRA`)
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/zeta-adaptive demo

$(COMPAT_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q '$(LITELLM)'
	touch $@

# the whole suite, the compatibility test against a real LiteLLM proxy included
test: $(VENV)/.installed-test $(COMPAT_VENV)/.installed
	ZETA_LITELLM=$(COMPAT_VENV)/bin/litellm $(BIN)/python -m pytest -q -p no:cacheprovider

# the unit tests: no subprocess runs of experiments, demo or notebooks, no loopback fleet, no PostgreSQL;
# in two processes (pytest-xdist), since many of them wait on timers (deadlines, the writer's linger)
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 -m "not slow and not integration and not postgres"

# lint, format and type check (settings in pyproject.toml): all three run, and any failure fails the target
check: $(VENV)/.installed-test
	status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/python -m mypy || status=1; \
	exit $$status

report: $(VENV)/.installed-plots
	test -f zeta.db || $(BIN)/zeta-adaptive demo
	$(BIN)/zeta-adaptive report --db sqlite:///zeta.db --html zeta-report.html --demo-truth

# `make bench`: every benchmark in experiments/, peers (LiteLLM, MABWiser) installed from the
# `bench` extra; results and SUMMARY.md in experiments/results/. BENCH_ARGS passes options to
# `python -m experiments.run_all`, e.g. `make bench BENCH_ARGS="--quick --out /tmp/bench"` for a smoke run.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m experiments.run_all $(BENCH_ARGS)

# `make compat`: only the router against a real OpenAI-compatible server (a LiteLLM proxy with
# mock models on 127.0.0.1, from its own venv); `make test` runs it too.
compat: $(VENV)/.installed-test $(COMPAT_VENV)/.installed
	ZETA_LITELLM=$(COMPAT_VENV)/bin/litellm $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_compat_litellm.py

# everything `make demo`, `make report` and the README's examples write (logs with their WAL files,
# the demo's previous log, the report), besides the venv and caches
clean:
	rm -rf $(VENV) $(COMPAT_VENV) *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache zeta.db zeta.db-* zeta.db.prev example.db example.db-* zeta-report.html
