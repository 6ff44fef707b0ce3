# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench compat report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zeta-adaptive demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

report: $(STAMP)
	test -f zeta.db || $(BIN)/zeta-adaptive demo
	$(BIN)/zeta-adaptive report --db sqlite:///zeta.db --html zeta-report.html --demo-truth

# `make bench`: every benchmark in experiments/, peers (LiteLLM, MABWiser) installed from the
# `bench` extra; results and SUMMARY.md in experiments/results/. BENCH_ARGS passes options to
# experiments/run_all.py, e.g. `make bench BENCH_ARGS="--quick --out /tmp/bench"` for a smoke run.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python experiments/run_all.py $(BENCH_ARGS)

# `make compat`: the router against a real OpenAI-compatible server (a LiteLLM proxy with mock
# models on 127.0.0.1), from the `compat` extra; skipped by `make test`.
COMPAT_STAMP := $(VENV)/.compat-installed

$(COMPAT_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[compat]'
	touch $(COMPAT_STAMP)

compat: $(STAMP) $(COMPAT_STAMP)
	ZETA_COMPAT=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m compat tests/test_compat_litellm.py

# everything `make demo`, `make report` and the README's examples write (logs with their WAL files,
# the demo's previous log, the report), besides the venv and caches
clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis zeta.db zeta.db-* zeta.db.prev example.db example.db-* zeta-report.html
