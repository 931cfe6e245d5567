# make demo: a federated scikit-learn run on 20 simulated nodes.  make test: the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint install install-dev bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(VENV)/bin/activate
	$(PIP) install -q -e ".[sklearn,plot]"

install-dev: $(VENV)/bin/activate
	# torch first, pinned: the CPU build on this machine (an unpinned torch downloads GBs)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,torch]"

demo: install
	$(VENV)/bin/corolla run examples/sklearn-digits --rounds 20 --nodes 20
	$(VENV)/bin/corolla runs --store examples/sklearn-digits/.corolla

test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks examples

bench: install-dev
	$(PY) benchmarks/sim_overhead.py --nodes 1000 --params 1e4 --rounds 5 --backend process

clean:
	rm -rf $(VENV) build dist src/*.egg-info
