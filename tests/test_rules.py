"""Alert rules: the TOML format, every kind firing and staying silent, and the window they read.

Each test is also an example of rule TOML. Samples are hand-built ``Batch``es at SimClock times,
fed to a ``Window`` the way the collector runner feeds it.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from farmwatch.alerting.rules import SHIPPED, Active, load_rules, parse_rules, render_template
from farmwatch.store.window import Window
from farmwatch.clock import SimClock
from farmwatch.config import ConfigError
from farmwatch.model import Batch, LogRecord, labels
from farmwatch.store import SQLiteStore


def one_rule(toml: str):
    (rule,) = parse_rules(textwrap.dedent(toml), "test.toml")
    return rule


def feed(window: Window, ts: float, series: dict, name: str | None = None) -> None:
    """One batch: ``{(name, {labels}): value}`` or, with ``name``, ``{frozen labels dict: value}``."""
    batch = Batch(ts)
    for (n, lbls), value in series.items():
        batch.add((n, labels(dict(lbls))), value)
    window("test", [batch])


def L(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def fired(rule, window, now) -> dict:
    return {a.labels: a.value for a in rule.evaluate(window, now)}


@pytest.fixture
def clock() -> SimClock:
    return SimClock(1_700_000_000.0)


# ---- threshold -------------------------------------------------------------------------------

def test_threshold_fires_on_matching_series_only(clock):
    rule = one_rule("""
        [[rule]]
        name = "ReadyQueueFull"
        kind = "threshold"
        series = "hlt.output.ready_queue_size"
        match = ["app=distributor", "unit=~hlt0[12]"]
        op = ">="
        value = 100
        summary = "{unit}: ready queue {value:.0f}"
    """)
    w = Window()
    key = "hlt.output.ready_queue_size"
    feed(w, clock.time(), {(key, L(unit="hlt01", app="distributor")): 150.0,
                           (key, L(unit="hlt02", app="distributor")): 20.0,
                           (key, L(unit="hlt03", app="distributor")): 500.0,   # not matched
                           (key, L(unit="hlt01", app="collector")): 500.0})    # not matched
    (active,) = rule.evaluate(w, clock.time())
    assert active.labels == L(app="distributor", unit="hlt01") and active.value == 150.0
    assert rule.render(active) == ("hlt01: ready queue 150", "")
    clock.sleep(1)
    feed(w, clock.time(), {(key, L(unit="hlt01", app="distributor")): 99.0})
    assert rule.evaluate(w, clock.time()) == []


def test_threshold_ignores_samples_older_than_fresh(clock):
    rule = one_rule("""
        [[rule]]
        name = "Hot"
        kind = "threshold"
        series = "temp"
        fresh = "30s"
        op = ">"
        value = 50
    """)
    w = Window()
    feed(w, clock.time(), {("temp", L(host="a")): 80.0})
    assert fired(rule, w, clock.time() + 29) == {L(host="a"): 80.0}
    assert fired(rule, w, clock.time() + 31) == {}


def test_threshold_aggregates_by_labels(clock):
    rule = one_rule("""
        [[rule]]
        name = "UnitInputLow"
        kind = "threshold"
        series = "hlt.input.received_events:rate"
        by = ["unit"]
        aggregate = "sum"
        op = "<"
        value = 100
    """)
    w = Window()
    key = "hlt.input.received_events:rate"
    feed(w, clock.time(), {(key, L(unit="hlt01", host="a")): 60.0, (key, L(unit="hlt01", host="b")): 60.0,
                           (key, L(unit="hlt02", host="a")): 30.0, (key, L(unit="hlt02", host="b")): math.nan})
    assert fired(rule, w, clock.time()) == {L(unit="hlt02"): 30.0}   # NaN does not count
    for how, expected in (("max", 60.0), ("min", 60.0), ("avg", 60.0), ("count", 2.0)):
        rule.spec.aggregate = how
        rule.spec.value = 1000
        assert fired(rule, w, clock.time())[L(unit="hlt01")] == expected


def test_threshold_over_time_functions(clock):
    w = Window()
    t0 = clock.time()
    counter = [0, 10, 20, 5, 15]          # reset after 20: increase = 10 + 10 + 5 + 10 = 35
    for i, value in enumerate(counter):
        feed(w, t0 + 10 * i, {("c", L(app="x")): float(value), ("g", L(app="x")): float(i)})
    now = t0 + 40
    expect = {"avg": 10.0, "min": 0.0, "max": 20.0, "delta": 15.0, "increase": 35.0, "rate": 35.0 / 40, "last": 15.0}
    for over, value in expect.items():
        rule = one_rule(f"""
            [[rule]]
            name = "F"
            kind = "threshold"
            series = "c"
            over = "{over}"
            window = "1m"
            op = ">="
            value = -1
        """)
        assert fired(rule, w, now) == {L(app="x"): pytest.approx(value)}, over
    # only the samples inside the window: the last 20 s hold 5 and 15 (and the one at exactly now-20)
    assert w.reduce(w.select_ids("c"), "avg", now - 20, now)[0] == pytest.approx((20 + 5 + 15) / 3)


def test_threshold_glob_series_and_state_values(clock):
    rule = one_rule("""
        [[rule]]
        name = "NotReady"
        kind = "threshold"
        series = "hlt.monitor.output_state"
        op = "!="
        value = "ready"
        summary = "{unit} output {state}"
    """)
    w = Window()
    key = "hlt.monitor.output_state"
    feed(w, clock.time(), {(key, L(unit="hlt01")): "ready", (key, L(unit="hlt02")): "not_ready"})
    (active,) = rule.evaluate(w, clock.time())
    assert active.labels == L(unit="hlt02") and rule.render(active)[0] == "hlt02 output not_ready"

    glob = one_rule("""
        [[rule]]
        name = "AnyRateZero"
        kind = "threshold"
        series = "hlt.*:rate"
        op = "=="
        value = 0
    """)
    feed(w, clock.time(), {("hlt.input.received_events:rate", L(unit="hlt01")): 0.0,
                           ("hlt.output.sent_events:rate", L(unit="hlt01")): 0.0,
                           ("hlt.output.sent_events", L(unit="hlt01")): 0.0})
    # a glob selector keeps series apart that only differ by name
    assert set(fired(glob, w, clock.time())) == {L(series="hlt.input.received_events:rate", unit="hlt01"),
                                                 L(series="hlt.output.sent_events:rate", unit="hlt01")}


# ---- absent, down ------------------------------------------------------------------------------

def test_absent_stale_series_and_expected_label_sets(clock):
    rule = one_rule("""
        [[rule]]
        name = "NoHeartbeat"
        kind = "absent"
        series = "hlt.monitor.monitoring_counter"
        after = "30s"
        expect = [{unit = "hlt01"}, {unit = "hlt02"}, {unit = "hlt03"}]
        summary = "{unit}: no heartbeat for {value:.0f} s"
    """)
    w = Window()
    key = "hlt.monitor.monitoring_counter"
    t0 = clock.time()
    feed(w, t0, {(key, L(unit="hlt01")): 1.0, (key, L(unit="hlt02")): 1.0})
    assert fired(rule, w, t0 + 10) == {L(unit="hlt03"): math.inf}            # never seen at all
    feed(w, t0 + 20, {(key, L(unit="hlt01")): 2.0})
    got = fired(rule, w, t0 + 40)
    assert got == {L(unit="hlt02"): 40.0, L(unit="hlt03"): math.inf}         # hlt02 stale, not doubled
    (stale,) = [a for a in rule.evaluate(w, t0 + 40) if a.labels == L(unit="hlt02")]
    assert rule.render(stale)[0] == "hlt02: no heartbeat for 40 s"


def test_down_when_up_is_zero_or_stale(clock):
    rule = one_rule("""
        [[rule]]
        name = "EndpointDown"
        kind = "down"
        match = {app = "finalcollector"}
        after = "10s"
        summary = "{app} of {unit} down"
    """)
    w = Window()
    t0 = clock.time()
    feed(w, t0, {("up", L(unit="hlt01", app="finalcollector")): 1.0,
                 ("up", L(unit="hlt02", app="finalcollector")): 0.0,
                 ("up", L(unit="hlt03", app="finalcollector")): 1.0,
                 ("up", L(unit="hlt02", app="distributor")): 0.0})
    assert fired(rule, w, t0) == {L(app="finalcollector", unit="hlt02"): 0.0}
    feed(w, t0 + 15, {("up", L(unit="hlt01", app="finalcollector")): 1.0,
                      ("up", L(unit="hlt02", app="finalcollector")): 1.0})
    got = fired(rule, w, t0 + 15)
    assert list(got) == [L(app="finalcollector", unit="hlt03")] and math.isnan(got[L(app="finalcollector", unit="hlt03")])


# ---- change, ratio, peers ----------------------------------------------------------------------

def test_change_drop_against_baseline(clock):
    rule = one_rule("""
        [[rule]]
        name = "OutputRateHalved"
        kind = "change"
        series = "hlt.output.sent_events:rate"
        by = ["unit"]
        window = "1m"
        baseline = "5m"
        drop_below = 0.5
        min_baseline = 10
        summary = "{unit}: output {value:.0f}/s, was {baseline:.0f}/s ({ratio:.0%})"
    """)
    w = Window()
    key = "hlt.output.sent_events:rate"
    t0 = clock.time()
    for i in range(361):
        late = i >= 300
        feed(w, t0 + i, {(key, L(unit="hlt01", host="a")): 100.0 if not late else 30.0,
                         (key, L(unit="hlt02", host="a")): 100.0,
                         (key, L(unit="hlt03", host="a")): 5.0 if not late else 0.0})   # too small to judge
    now = t0 + 360
    (active,) = rule.evaluate(w, now)
    assert active.labels == L(unit="hlt01") and active.value == 30.0
    assert rule.render(active)[0] == "hlt01: output 30/s, was 100/s (30%)"
    assert rule.counts["small_baseline"] == 1
    assert rule.evaluate(w, t0 + 299) == []                                   # before the drop


def test_ratio_events_out_versus_in(clock):
    rule = one_rule("""
        [[rule]]
        name = "EventsLost"
        kind = "ratio"
        numerator = { series = "hlt.output.sent_events", match = {app = "finalcollector"}, over = "increase", window = "1m" }
        denominator = { series = "hlt.input.received_events", match = {app = "distributor"}, over = "increase", window = "1m" }
        by = ["unit"]
        op = "<"
        value = 0.99
        summary = "{unit}: {numerator:.0f} of {denominator:.0f} events came out"
    """)
    w = Window()
    t0 = clock.time()
    for i in range(61):
        feed(w, t0 + i, {("hlt.input.received_events", L(unit="hlt01", app="distributor")): 100.0 * i,
                         ("hlt.output.sent_events", L(unit="hlt01", app="finalcollector")): 90.0 * i,
                         ("hlt.input.received_events", L(unit="hlt02", app="distributor")): 100.0 * i,
                         ("hlt.output.sent_events", L(unit="hlt02", app="finalcollector")): 100.0 * i,
                         ("hlt.input.received_events", L(unit="hlt03", app="distributor")): 0.0,   # idle
                         ("hlt.output.sent_events", L(unit="hlt03", app="finalcollector")): 0.0})
    (active,) = rule.evaluate(w, t0 + 60)
    assert active.labels == L(unit="hlt01") and active.value == pytest.approx(0.9)
    assert rule.render(active)[0] == "hlt01: 5400 of 6000 events came out"
    assert rule.counts["zero_denominator"] == 1                               # hlt03: skipped, counted


def test_peers_slow_worker_node(clock):
    rule = one_rule("""
        [[rule]]
        name = "WorkerNodeSlow"
        kind = "peers"
        series = "hlt.output.sent_events:rate"
        match = {app = "distributor"}
        entity = "host"
        peers_by = ["unit"]
        below = 0.5
        min_peers = 3
        summary = "{host} of {unit}: {value:.0f}/s, peers {median:.0f}/s"
    """)
    w = Window()
    key = "hlt.output.sent_events:rate"
    series = {}
    for host, rate in (("wk01", 100.0), ("wk02", 110.0), ("wk03", 20.0), ("wk04", 90.0)):
        for pid in ("1", "2"):                       # two worker processes per node: summed per host
            series[(key, L(unit="hlt01", app="distributor", host=host, pid=pid))] = rate / 2
    series[(key, L(unit="hlt02", app="distributor", host="wk01", pid="1"))] = 1.0     # alone: no peers
    series[(key, L(unit="hlt02", app="distributor", host="wk02", pid="1"))] = 100.0
    feed(w, clock.time(), series)
    (active,) = rule.evaluate(w, clock.time())
    assert active.labels == L(host="wk03", unit="hlt01") and active.value == 20.0
    assert rule.render(active)[0] == "wk03 of hlt01: 20/s, peers 95/s"
    assert rule.counts["too_few_peers"] == 1

    rule.spec.below, rule.spec.z = 0, 3.0          # robust z-score instead of a ratio
    assert fired(rule, w, clock.time()) == {L(host="wk03", unit="hlt01"): 20.0}


# ---- logs, anomaly, python ---------------------------------------------------------------------

def test_log_count_by_host_with_pattern_and_level(clock):
    rule = one_rule("""
        [[rule]]
        name = "SegfaultsInLogs"
        kind = "log_count"
        pattern = "(?i)segmentation (fault|violation)"
        level = ["error", "critical"]
        host = "hltwk*"
        by = ["host"]
        window = "5m"
        op = ">="
        value = 2
        summary = "{host}: {count:.0f} segfaults in 5 min"
    """)
    w = Window(max_logs=5)
    t0 = clock.time()
    rec = lambda dt, host, level, msg: LogRecord(t0 + dt, host, "basf2", level, msg)  # noqa: E731
    w.ingest_logs([rec(0, "hltwk01", "ERROR", "Segmentation fault in module X"),
                   rec(1, "hltwk01", "error", "segmentation violation"),
                   rec(2, "hltwk02", "ERROR", "segmentation fault"),
                   rec(3, "hltwk01", "info", "segmentation fault (a test)"),     # wrong level
                   rec(4, "hltin01", "ERROR", "segmentation fault")])            # host not matched
    (active,) = rule.evaluate(w, t0 + 10)
    assert active.labels == L(host="hltwk01") and rule.render(active)[0] == "hltwk01: 2 segfaults in 5 min"
    assert rule.evaluate(w, t0 + 301) == []                                   # out of the window
    w.ingest_logs([rec(5, "hltwk02", "ERROR", "x")])
    assert w.dropped_logs == 1                                                # bounded, and counted


def test_anomaly_defaults_and_the_explanation_as_annotation(clock):
    rule = one_rule("""
        [[rule]]
        name = "Anomalous"
        kind = "anomaly"
        summary = "{unit}: anomaly score {value:.2f} (mostly {metric})"
        description = "{explanation}"
    """)
    w = Window()
    feed(w, clock.time(), {("anomaly.score", L(unit="hlt01")): 0.97, ("anomaly.score", L(unit="hlt02")): 0.3,
                           ("anomaly.explanation", L(unit="hlt01")): "ready_queue_size mean = 3 (normal 40, z -9.1)"})
    (active,) = rule.evaluate(w, clock.time())
    assert active.labels == L(unit="hlt01")
    assert rule.render(active) == ("hlt01: anomaly score 0.97 (mostly ready_queue_size)",
                                   "ready_queue_size mean = 3 (normal 40, z -9.1)")


def test_clear_keeps_an_alert_while_the_value_wavers_instead_of_restarting_it(clock):
    """Hysteresis: a score wavering around 0.99 makes one alert, not a pending/cancel storm."""
    from farmwatch.alerting.lifecycle import Changes, Tracker

    rule = one_rule("""
        [[rule]]
        name = "Anomalous"
        kind = "anomaly"
        value = 0.99
        clear = 0.95
        for = "30s"
    """)
    w, tracker, events = Window(), Tracker(), []
    for i, score in enumerate([0.97, 0.992, 0.98, 0.996, 0.96, 0.994, 0.99, 0.93, 0.97]):
        now = clock.time() + 10 * i
        feed(w, now, {("anomaly.score", L(unit="hlt01")): score})
        changes = Changes()
        tracker.update(rule, rule.evaluate(w, now), now, changes)
        events += [e for _, e, _ in changes.events]
    # 0.97 does not start it; 0.992 does; the dips to 0.98 and 0.96 keep it; 0.93 resolves it; 0.97 does not restart it.
    assert events == ["pending", "firing", "resolved"]
    with pytest.raises(Exception, match="clear: must be on the other side"):
        one_rule("""
            [[rule]]
            name = "Bad"
            kind = "anomaly"
            value = 0.99
            clear = 0.995
        """)


def test_python_rule_calls_the_function(clock, tmp_path, monkeypatch):
    (tmp_path / "expert_rules.py").write_text(textwrap.dedent("""
        from farmwatch.alerting.rules import Active

        def busiest_unit(window, now, rule):
            ids = window.select_ids("load")
            _, values = window.latest(ids, now, 60)
            i = int(values.argmax())
            if values[i] > rule.params["limit"]:
                yield Active(window.keys[int(ids[i])][1], float(values[i]))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rule = one_rule("""
        [[rule]]
        name = "Busiest"
        kind = "python"
        function = "expert_rules:busiest_unit"
        params = { limit = 5 }
        reads = ["load"]
        lookback = "1m"
    """)
    assert rule.names() == {"load"} and rule.lookback() == 60
    w = Window()
    feed(w, clock.time(), {("load", L(unit="hlt01")): 3.0, ("load", L(unit="hlt02")): 7.0})
    assert fired(rule, w, clock.time()) == {L(unit="hlt02"): 7.0}


# ---- run state, grace, labels -----------------------------------------------------------------

def test_run_state_gating_and_grace(clock):
    rule = one_rule("""
        [[rule]]
        name = "InputStalled"
        kind = "threshold"
        series = "rate"
        op = "=="
        value = 0
        run_state = ["RUNNING"]
        grace = "30s"
        labels = { team = "hlt" }
    """)
    w = Window(run_state_node="RUNCONTROL")
    t0 = clock.time()
    feed(w, t0, {("rate", L(unit="hlt01")): 0.0})
    assert rule.evaluate(w, t0) == [] and rule.counts["unknown_run_state"] == 1
    rc = L(node="RUNCONTROL")
    feed(w, t0, {("daq.run_state", rc): "READY", ("daq.run_state_since", rc): t0 - 100})
    assert rule.evaluate(w, t0) == [] and rule.counts["run_state"] == 1
    feed(w, t0 + 5, {("daq.run_state", rc): "RUNNING", ("daq.run_state_since", rc): t0 + 5,
                     ("rate", L(unit="hlt01")): 0.0})
    assert rule.evaluate(w, t0 + 20) == [] and rule.counts["grace"] == 1    # run just started
    feed(w, t0 + 40, {("daq.run_state", rc): "RUNNING", ("daq.run_state_since", rc): t0 + 5,
                      ("rate", L(unit="hlt01")): 0.0})
    (active,) = rule.evaluate(w, t0 + 40)
    assert rule.alert_labels(active) == L(team="hlt", unit="hlt01")
    assert w.run_state() == ("RUNNING", t0 + 5)
    assert w.run_state(at=t0 + 1) == ("READY", t0 - 100)                  # backtests ask the past


def test_run_state_needs_one_node_or_a_configured_one(clock):
    w = Window()
    feed(w, clock.time(), {("daq.run_state", L(node="A")): "RUNNING", ("daq.run_state", L(node="B")): "READY"})
    assert w.run_state() == (None, None)
    w2 = Window()
    feed(w2, clock.time(), {("daq.run_state", L(node="A")): "RUNNING"})
    assert w2.run_state() == ("RUNNING", clock.time())                    # since: when the window saw it


# ---- templates -------------------------------------------------------------------------------

def test_templates_are_safe():
    ctx = {"unit": "hlt01", "value": 3.14159, "n": 7.0, "nan": math.nan}
    assert render_template("{unit} {value} {value:.1f} {n} {nan}", ctx) == "hlt01 3.142 3.1 7 n/a"
    assert render_template("{missing} {value:%Y} {unit:.1f}", ctx) == "? 3.142 hlt01"
    assert render_template("{value.__class__} {unit[0]} {} {0}", ctx) == "? ? ? ?"
    assert render_template("unbalanced {", ctx) == "unbalanced {"
    with pytest.raises(ConfigError) as err:
        parse_rules('[[rule]]\nname = "T"\nkind = "down"\nsummary = "{unit.__class__.__mro__}"\n'
                    'description = "{value:{width}}"\n', "t.toml")
    assert [p.split(": ")[2] for p in err.value.problems] == ["summary", "description"]


# ---- loading, errors ---------------------------------------------------------------------------

def test_config_errors_one_line_each_naming_file_and_rule(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent("""
        [[rule]]
        name = "GoodOne"
        kind = "down"

        [[rule]]
        name = "Broken"
        kind = "threshold"
        series = "x"
        match = ["host=~(unclosed"]
        over = "avg"
        op = "=>"
        value = 1
        for = "soon"
        severity = "loud"

        [[rule]]
        name = "9lives"
        kind = "teleport"

        [[rule]]
        kind = "change"
        series = "x"
        window = "1m"
        baseline = "5m"
        colour = "red"
    """))
    with pytest.raises(ConfigError) as err:
        load_rules([bad])
    problems = err.value.problems
    for line in problems:
        assert line.startswith(f"{bad}: rule[")
    keys = {tuple(line.split(": ")[1:3]) for line in problems}
    assert keys == {
        ("rule[1] (Broken)", "for"), ("rule[1] (Broken)", "severity"), ("rule[1] (Broken)", "match"),
        ("rule[1] (Broken)", "op"), ("rule[2] (9lives)", "name"), ("rule[2] (9lives)", "kind"),
        ("rule[3]", "name"), ("rule[3]", "colour"),
    }
    # checks across keys (over = "avg" needs a window, change needs drop_below or rise_above)
    # come once every key parses
    assert len(problems) == 8


def test_defaults_folders_and_duplicate_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b.toml"
    a.mkdir()
    (a / "2-second.toml").write_text('[[rule]]\nname = "Second"\nkind = "down"\n')
    (a / "1-first.toml").write_text(textwrap.dedent("""
        [defaults]
        severity = "critical"
        run_state = ["RUNNING"]
        labels = { system = "hlt" }

        [[rule]]
        name = "First"
        kind = "down"

        [[rule]]
        name = "Quiet"
        kind = "down"
        severity = "info"
    """))
    (a / "notes.txt").write_text("not a rule file")
    rules = load_rules([a])
    assert [(r.name, r.severity, r.run_state, r.labels) for r in rules] == [
        ("First", "critical", ("RUNNING",), L(system="hlt")),
        ("Quiet", "info", ("RUNNING",), L(system="hlt")),
        ("Second", "warning", None, ()),
    ]
    assert rules[0].source == f"{a / '1-first.toml'}:7"
    b.write_text('[[rule]]\nname = "First"\nkind = "down"\n')
    with pytest.raises(ConfigError) as err:
        load_rules([a, b, tmp_path / "missing"])
    assert err.value.problems[0] == f"{tmp_path / 'missing'}: no such rule file or folder"
    (dup,) = err.value.problems[1:]
    assert dup.startswith(f"{b}: rule[0] (First): name: already used by {a / '1-first.toml'}: rule[0]")


def test_shipped_rules_load_and_declare_what_they_read():
    rules = load_rules([SHIPPED])
    assert rules and all(r.names() or r.kind in ("log_count", "log_new_template") for r in rules)  # log rules read records
    assert all(0 <= r.lookback() <= 3600 for r in rules)


# ---- the window --------------------------------------------------------------------------------

def test_window_keeps_only_wanted_series_and_extends_cached_selections(clock):
    w = Window(wants=lambda name: name.startswith("hlt."))
    t0 = clock.time()
    feed(w, t0, {("hlt.a", L(unit="hlt01")): 1.0, ("other", L(unit="hlt01")): 2.0})
    assert w.select("hlt.*", ["unit*=hlt0*"]) == [("hlt.a", L(unit="hlt01"))]
    assert w.last(("other", L(unit="hlt01"))) is None and w.series_count == 1
    feed(w, t0 + 1, {("hlt.a", L(unit="hlt02")): 3.0, ("hlt.b", L(unit="hlt01")): 4.0})
    assert w.select("hlt.*", ["unit*=hlt0*"]) == [("hlt.a", L(unit="hlt01")), ("hlt.a", L(unit="hlt02")),
                                                   ("hlt.b", L(unit="hlt01"))]
    assert w.last(("hlt.b", L(unit="hlt01"))) == (t0 + 1, 4.0) and w.newest == t0 + 1


def test_window_late_rows_resends_and_prune(clock):
    w = Window(horizon=60)
    t0 = clock.time()
    key = ("x", L(unit="hlt01"))
    for dt, value in ((0, 0.0), (20, 2.0), (10, 1.0), (20, 2.5), (30, 3.0)):   # late row, resend
        feed(w, t0 + dt, {key: value})
    ts, values = w.points(key, t0)
    assert ts.tolist() == [t0, t0 + 10, t0 + 20, t0 + 30] and values.tolist() == [0.0, 1.0, 2.5, 3.0]
    w.prune(t0 + 75)
    assert w.points(key, t0)[0].tolist() == [t0 + 20, t0 + 30]
    assert w.last(key) == (t0 + 30, 3.0)
    w.prune(t0 + 1000)                                                       # history gone, newest stays
    assert w.points(key, t0)[0].size == 0 and w.last(key) == (t0 + 30, 3.0)


def test_window_layout_change_merges_history(clock):
    """A target whose series set changes (a worker appears) gets a second block; reads merge them."""
    w = Window()
    t0 = clock.time()
    a, b = ("q", L(host="a")), ("q", L(host="b"))
    feed(w, t0, {a: 1.0})
    feed(w, t0 + 1, {a: 2.0, b: 10.0})
    feed(w, t0 + 2, {a: 3.0, b: 20.0})
    ids = w.select_ids("q")
    assert w.reduce(ids, "avg", t0, t0 + 2).tolist() == [2.0, 15.0]
    assert w.reduce(ids, "delta", t0, t0 + 2).tolist() == [2.0, 10.0]


def test_backtest_evaluates_at_past_times(clock):
    """With the whole range loaded, a rule evaluated at an earlier ``now`` sees only that past."""
    rule = one_rule('[[rule]]\nname = "Low"\nkind = "threshold"\nseries = "v"\nop = "<"\nvalue = 5\n')
    w = Window()
    t0 = clock.time()
    for i in range(10):
        feed(w, t0 + i, {("v", L(unit="hlt01")): float(i)})
    assert [bool(rule.evaluate(w, t0 + i)) for i in range(10)] == [True] * 5 + [False] * 5


def test_load_from_store_for_watch_mode(tmp_path, clock):
    rule = one_rule("""
        [[rule]]
        name = "QueueGrowing"
        kind = "threshold"
        series = "hlt.output.ready_queue_size"
        over = "delta"
        window = "30s"
        by = ["unit"]
        op = ">"
        value = 50
    """)
    t0 = clock.time()
    key = "hlt.output.ready_queue_size"
    with SQLiteStore(tmp_path / "farm.db", clock=clock) as store:
        for i in range(31):
            store.write(Batch(t0 + i, [(key, L(unit="hlt01", app="distributor")),
                                       (key, L(unit="hlt02", app="distributor")),
                                       ("hlt.input.socket_state", L(unit="hlt01"))],
                              [float(3 * i), 1.0, "connected" if i < 20 else "reconnecting"]))
        w = Window()
        assert w.load(store, t0, t0 + 20, [key, "hlt.input.*"]) == 21 * 3
        assert fired(rule, w, t0 + 20) == {L(unit="hlt01"): 60.0}
        assert w.load(store, t0, t0 + 30, [key, "hlt.input.*"]) == 11 * 3     # incremental, boundary reread
        assert fired(rule, w, t0 + 30) == {L(unit="hlt01"): 90.0}
        assert w.points((key, L(unit="hlt01", app="distributor")), t0)[0].size == 31
        assert w.last(("hlt.input.socket_state", L(unit="hlt01"))) == (t0 + 30, "reconnecting")


def test_a_failing_python_rule_raises_for_the_engine(tmp_path, monkeypatch, clock):
    (tmp_path / "broken_rules.py").write_text("def f(window, now, rule):\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rule = one_rule('[[rule]]\nname = "Broken"\nkind = "python"\nfunction = "broken_rules:f"\n')
    with pytest.raises(RuntimeError, match="boom"):
        rule.evaluate(Window(), clock.time())
    with pytest.raises(ConfigError, match=r"test.toml: rule\[0\] \(X\): function: cannot import"):
        one_rule('[[rule]]\nname = "X"\nkind = "python"\nfunction = "broken_rules:missing"\n')


def test_active_is_a_value():
    assert Active(L(unit="a"), 1.0) == Active(L(unit="a"), 1.0)
    assert np.isnan(Active((), math.nan).value)


def test_log_count_can_count_by_a_label_of_the_record(clock):
    """`labels.unit` (set by the logfiles source from the file path) becomes the alert label `unit`,
    so a log alert joins its unit's incident; records without the label count apart."""
    (rule,) = parse_rules("""
[[rule]]
name = "Burst"
kind = "log_count"
level = "error"
by = ["labels.unit", "host"]
window = "5m"
op = ">="
value = 2
summary = "{host} of {unit}: {count:.0f}"
""", "test.toml")
    w = Window()
    now = clock.time()
    w.ingest_logs([LogRecord(now - 10, "hltwk01", "basf2", "ERROR", "x", {"labels.unit": "hlt01"}),
                   LogRecord(now - 9, "hltwk01", "basf2", "ERROR", "y", {"labels.unit": "hlt01"}),
                   LogRecord(now - 8, "hltwk09", "basf2", "ERROR", "z", {})])
    (active,) = rule.evaluate(w, now)
    assert dict(active.labels) == {"host": "hltwk01", "unit": "hlt01"} and active.value == 2
    with pytest.raises(ConfigError, match="labels.<name>"):
        parse_rules('[[rule]]\nname = "B"\nkind = "log_count"\nby = ["unit"]\nwindow = "5m"\nsummary = "s"\n', "bad.toml")
