# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=
DEMO_DATA := data/synthetic
DEMO_PREPARED := data/prepared-demo

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
	$(PY) -m seglib synth $(DEMO_DATA) --count 240 --seed 0
	$(PY) -m seglib prepare $(DEMO_DATA) $(DEMO_PREPARED) --size 128 --seed 0
else
	$(PY) -m seglib prepare $(DATA) $(DEMO_PREPARED) --seed 0 --skip-bad
endif
	@echo "Prepared dataset: $(DEMO_PREPARED) (summary.json, palette.json, train/ val/ test/)"

bench: install
	$(PY) bench/prepare.py

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_PREPARED)
