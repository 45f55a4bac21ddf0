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

# make bench: every figure of docs/performance.md. Benchmarks measured against their baseline in one
# process go through benchmarks/passes.py: 3 passes -> results/passes/NAME.I.json, medians and ranges
# -> results/NAME.json. Single calls: the ones that repeat or interleave their own passes
# (store_ingest, store_density, log_templates, alert_scenario's repetitions, startup) and the
# deterministic detect_quality. bench_detect_public.py needs the SMD data set and bench_nab.py a NAB checkout (--data; docs/detection.md).
PASSES := $(PY) benchmarks/passes.py

bench: $(STAMP)
	$(PY) benchmarks/bench_store_ingest.py   # --runs 5 of its own, medians and ranges
	$(PY) benchmarks/bench_store_density.py   # --runs 3 of its own; runs farmwatch demo for its data; promtool and VictoriaMetrics from Debian (installed as root)
	$(PASSES) hlt_poll -- benchmarks/bench_hlt_poll.py
	$(PASSES) epics -- benchmarks/bench_epics.py --seconds 8
	$(PASSES) epics_5000 -- benchmarks/bench_epics.py --seconds 8 --pvs 5000 --no-store
	$(PASSES) nsmvget -- benchmarks/bench_nsmvget.py --cycles 2
	$(PASSES) rules -- benchmarks/bench_rules.py
	$(PASSES) features -- benchmarks/bench_features.py --no-costs   # speed against tsfresh
	$(PY) benchmarks/bench_features.py --out benchmarks/results/features_selection.json   # + per-feature costs, the default set's selection (docs/features.md)
	$(PY) benchmarks/bench_detect_quality.py --quick   # -> detect_quality_quick.json; the table is a full run (4-9 min); deterministic
	$(PASSES) detect_scoring -- benchmarks/bench_detect_scoring.py   # anomaly scoring step for the farm, RSS with 50,000 series, stream_scores
	$(PASSES) zabbix -- benchmarks/bench_zabbix.py --runs 1   # a real Zabbix (scripts/zabbix_testenv.py, as root) or FARMWATCH_TEST_ZABBIX_URL
	$(PASSES) logs -- benchmarks/bench_logs.py --size 64MB 128MB 256MB --runs 1   # every figure: the median over the sizes
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'   # drain3, the baseline of:
	$(PY) benchmarks/bench_log_templates.py   # log templates: accuracy on Loghub-dev vs drain3, pipeline speed with/without (interleaved passes)
	$(PY) benchmarks/bench_alert_scenario.py   # every fault 3 times of its own
	$(PY) benchmarks/bench_startup.py   # CPU of the read commands with a [detect] section, against the commit before the architecture step (interleaved passes)

docs: $(STAMP)   # docs/config.md, docs/series.md and collectors/*.toml, from the code and the sources' folders
	$(PY) -m farmwatch.config.reference

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
