# Two commands on a fresh machine (Python 3.11, pip; see README):
#   make demo   create .venv, install, AnoMem beside patch kNN and kNN on a bundled photograph (report.html)
#   make test   create .venv, install with test extras, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the wheels this project is developed and tested with;
# pip picks them up from the local wheel cache where one exists.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,export,serve]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/anomem demo

test: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
