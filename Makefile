# farmwatch: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test quicktest bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/farmwatch demo

test: $(STAMP)   # everything, real components included (CI=true: a component that cannot start fails)
	$(PY) -m pytest -q

quicktest: $(STAMP)   # a quick round while working (< 2 min): without the tests marked slow or real
	$(PY) -m pytest -q -m "not slow and not real"

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
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'   # drain3, the baseline of:
	$(PY) benchmarks/bench_log_templates.py   # log templates: accuracy on Loghub-dev vs drain3, pipeline speed with/without
	$(PY) benchmarks/bench_alert_scenario.py
	$(PY) benchmarks/bench_startup.py   # CPU of the read commands with a [detect] section, against the commit before the architecture step

docs: $(STAMP)   # docs/config.md, docs/series.md and collectors/*.toml, from the code and the sources' folders
	$(PY) -m farmwatch.config.reference

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
