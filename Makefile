# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
#
# Where it installs: into the active conda env when one other than `base` is activated (the Apple
# Silicon env of environment.yml, with its Metal TensorFlow); otherwise into .venv/ (created with
# python3 -m venv). Either way: pip install -e ".[dev,serve,onnx,ray,hub]", which leaves versions already installed
# that satisfy pyproject.toml as they are (so the env's pins stay).
PYTHON ?= python3
DATA   ?=
ifneq ($(strip $(CONDA_PREFIX)),)
ifneq ($(CONDA_DEFAULT_ENV),base)
CONDA_ENV := $(CONDA_PREFIX)
endif
endif
ifdef CONDA_ENV
PY    := $(CONDA_ENV)/bin/python
STAMP := $(CONDA_ENV)/.seglib-installed
ENV_NOTE := using the active conda env $(CONDA_DEFAULT_ENV) ($(CONDA_ENV)); no .venv is made
else
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ENV_NOTE := using .venv/ (activate a conda env other than base to install there instead)
endif
# The Apple Silicon TF line (environment.yml: TF 2.18.1), tested on Linux in a second venv.
VENV_TF218  := .venv-tf2.18
STAMP_TF218 := $(VENV_TF218)/.installed

.PHONY: install test test-tf2.18 test-colab-line coverage demo lab lint notebooks bench bench-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "seglib: $(ENV_NOTE)"
	@echo "seglib: installing seglib and its dependencies (a few minutes the first time)"
ifndef CONDA_ENV
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
endif
	$(PY) -m pip install -q -e ".[dev,serve,onnx,ray,hub]"
	touch $(STAMP)

# The suite runs on TEST_WORKERS pytest-xdist workers (one module's tests stay on one worker, so a
# module's fixtures are made once; the slowest modules are handed out first, tests/conftest.py):
# most of its time is process, kernel and graph start-up and waits, which three workers overlap even on
# 2 cores (docs/development.md). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
# --durations: the slowest tests of every run, so that a slow test is seen the day it lands.
PYTEST := -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 --durations-min=1

test: install
	$(PY) $(PYTEST)

# Without the ray extra: no test of the line runs a batch.
$(STAMP_TF218): pyproject.toml .ci/constraints-tf2.18.txt
	$(PYTHON) -m venv $(VENV_TF218)
	$(VENV_TF218)/bin/python -m pip install -q --upgrade pip
	$(VENV_TF218)/bin/python -m pip install -q -c .ci/constraints-tf2.18.txt -e ".[dev,serve,onnx,hub]"
	touch $(STAMP_TF218)

# Only the tests marked tf_lines (pyproject.toml): those whose TF/Keras calls can differ between the lines.
test-tf2.18: $(STAMP_TF218)
	$(VENV_TF218)/bin/python $(PYTEST) -m tf_lines

# Colab's stack (Python 3.13, TF 2.20, Keras 3.13, keras-hub 0.26: .ci/constraints-colab.txt), by hand, not in
# .ci/run (its time budget): the tf_lines tests and the Colab tests. Needs a python3.13 (PYTHON_COLAB).
PYTHON_COLAB ?= python3.13
VENV_COLAB   := .venv-colab
STAMP_COLAB  := $(VENV_COLAB)/.installed

$(STAMP_COLAB): pyproject.toml .ci/constraints-colab.txt
	@$(PYTHON_COLAB) -c "import sys; assert sys.version_info[:2] == (3, 13)" 2>/dev/null || { echo "seglib: \
	make test-colab-line needs Colab's Python 3.13: PYTHON_COLAB=$(PYTHON_COLAB) is not it (set PYTHON_COLAB=/path/to/python3.13)"; exit 2; }
	$(PYTHON_COLAB) -m venv $(VENV_COLAB)
	$(VENV_COLAB)/bin/python -m pip install -q --upgrade pip
	$(VENV_COLAB)/bin/python -m pip install -q -c .ci/constraints-colab.txt -e ".[dev,serve,onnx,hub]"
	touch $(STAMP_COLAB)

test-colab-line: $(STAMP_COLAB)
	$(VENV_COLAB)/bin/python $(PYTEST) -m tf_lines
	$(VENV_COLAB)/bin/python $(PYTEST) tests/test_colab.py tests/test_journeys.py -k colab

# Line coverage of seglib by the suite, the commands and notebook kernels it starts included.
coverage: install
	rm -f .coverage .coverage.*
	$(PY) $(PYTEST) --cov=seglib --cov-report=term:skip-covered --cov-report=html:reports/coverage

demo: install
ifeq ($(DATA),)
	$(PY) -m seglib demo --out .
else
	$(PY) -m seglib demo --out . --data $(DATA)
endif

# JupyterLab on the notebooks (the conda env has it already; .venv gets it on first use).
lab: install
	$(PY) -m pip install -q -e ".[dev,lab]"
	$(PY) -m jupyter lab notebooks

# Lint (ruff, configured in pyproject.toml); not part of `make test`.
lint: install
	$(PY) -m ruff check seglib tests bench

# The notebooks' parameters cells from the parameter dataclasses (TrainConfig, PrepareConfig, ...) and the docs'
# tables of architectures and losses from their registries, after adding one.
notebooks: install
	$(PY) -c "from seglib.runs.notebooks import write_docs_tables, write_parameters; print(*write_parameters(), write_docs_tables(), sep='\\n')"

bench: install
	$(PY) bench/prepare.py

# The demo's quality figure (bench/README.md): make demo's own job, scored against the majority class.
bench-demo: install
	$(PY) bench/demo_accuracy.py

# Removes only what these targets made: the venvs, the demo's outputs and coverage's.
clean:
	rm -rf .venv .venv-tf2.18 .venv-colab data/synthetic data/prepared/synthetic-k10-128px-* artifacts/demo reports/demo \
		reports/coverage .coverage .coverage.*
