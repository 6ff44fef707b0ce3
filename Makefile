# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench report clean

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis zeta.db zeta.db-wal zeta.db-shm zeta-report.html
