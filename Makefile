# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest

demo: install
ifeq ($(DATA),)
	$(PY) -m seglib demo --out .
else
	$(PY) -m seglib demo --out . --data $(DATA)
endif

bench: install
	$(PY) bench/prepare.py

clean:
	rm -rf $(VENV) data/synthetic data/prepared-demo artifacts/runs/demo
