# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=
# The Apple Silicon TF line (environment.yml: TF 2.18.1), tested on Linux in a second venv.
VENV_TF218  := .venv-tf2.18
STAMP_TF218 := $(VENV_TF218)/.installed

.PHONY: install test test-tf2.18 demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest

$(STAMP_TF218): pyproject.toml .ci/constraints-tf2.18.txt
	$(PYTHON) -m venv $(VENV_TF218)
	$(VENV_TF218)/bin/python -m pip install --upgrade pip
	$(VENV_TF218)/bin/python -m pip install -c .ci/constraints-tf2.18.txt -e ".[dev]"
	touch $(STAMP_TF218)

test-tf2.18: $(STAMP_TF218)
	$(VENV_TF218)/bin/python -m pytest

demo: install
ifeq ($(DATA),)
	$(PY) -m seglib demo --out .
else
	$(PY) -m seglib demo --out . --data $(DATA)
endif

bench: install
	$(PY) bench/prepare.py

clean:
	rm -rf $(VENV) $(VENV_TF218) data/synthetic data/prepared artifacts/demo reports/demo
