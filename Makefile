# Quick start: `make demo` runs the main job, `make test` runs the tests, `make docs` builds the API reference.
# Each creates .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
WORKDIR ?= runs/demo

.PHONY: install demo test docs bench clean gpu-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

install: $(STAMP)

## The main job: Gaussian-8, benign fully synthetic loop vs mixed with real data; plots in $(WORKDIR).
demo: $(STAMP)
	$(PY) experiments/curated_loop.py --config=experiments/configs/gaussian8.py:demo --workdir=$(WORKDIR)

## The test suite, on all cores.
test: $(STAMP)
	$(PY) -m pytest -n auto -q

## The API reference (pdoc) -> docs/api/index.html; fails on any pdoc warning.
docs: $(DOCS_STAMP)
	$(PY) docs/build_api.py

bench: $(STAMP)
	$(PY) benchmarks/loop.py
	$(PY) benchmarks/exact.py
	$(PY) benchmarks/attack.py
	$(PY) benchmarks/sweep.py

clean:
	rm -rf $(VENV) runs *.egg-info docs/api

## Wheels of what `import scl` needs beyond a GPU image's usual JAX stack (jaxopt), for benchmarks/gpu.py on a
## lent machine without package access: into .whl/ (ignored by git); jaxopt's wheel is pure Python.
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d .whl "jaxopt==0.8.5"
