# `make run`: set up .venv and run the main job; `make test`: set up .venv and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so that pip takes the release cached on our machines; any torch>=2.4 works.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test test-slow lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all]'
	touch $@

run: setup
	$(PY) -m deeplab_lit.demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/bench_nets.py
