# farmwatch: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/farmwatch demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_store_ingest.py
	$(PY) benchmarks/bench_hlt_poll.py
	$(PY) benchmarks/bench_epics.py --seconds 8
	$(PY) benchmarks/bench_nsmvget.py --cycles 2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
