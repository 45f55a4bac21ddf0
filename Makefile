# farmwatch: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test bench docs clean

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
	$(PY) benchmarks/bench_store_density.py   # runs farmwatch demo for its data; promtool and VictoriaMetrics from Debian (installed as root)
	$(PY) benchmarks/bench_hlt_poll.py
	$(PY) benchmarks/bench_epics.py --seconds 8
	$(PY) benchmarks/bench_nsmvget.py --cycles 2
	$(PY) benchmarks/bench_rules.py
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_detect_quality.py --quick   # -> detect_quality_quick.json; the README table is a full run (4-9 min)
	$(PY) benchmarks/bench_detect_scoring.py   # anomaly scoring step for the farm, RSS with 50,000 series, stream_scores
	$(PY) benchmarks/bench_zabbix.py   # a real Zabbix (scripts/zabbix_testenv.py, as root) or FARMWATCH_TEST_ZABBIX_URL
	$(PY) benchmarks/bench_logs.py --size 1GB
	$(PY) benchmarks/bench_alert_scenario.py

docs: $(STAMP)
	$(VENV)/bin/farmwatch config-reference > docs/config.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
