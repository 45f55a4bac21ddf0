"""The nsm source with real parts: the nsm2cad bridge names on a real IOC (SimIOC) for the epics
method, and stand-in nsmvget/nsmvlistget scripts (tests/nsm_standin) run as real subprocesses for
the nsmvget method. The stand-ins read a JSON data file on every call (values, failures, hangs,
garbage, a delay) and record the names they were called with and how many ran at once.

The CA setup follows tests/test_epics.py: the IOC's client settings go into the environment before
the CA context exists, and the context and environment are restored at the end.
"""

import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from farmwatch.config import ConfigError
from farmwatch.config.loader import parse
from farmwatch.model import labels
from farmwatch.sources.nsm.source import NsmSource, parse_listing, parse_value
from sim_helpers import real_ioc

pytestmark = [pytest.mark.real]

STANDIN = Path(__file__).parent / "nsm_standin"
RC = "B2_nsm:get:RUNCONTROL:rcstate"


def make(body, where="nsm.toml"):
    return parse({"sources": {"n": {"kind": "nsm", **body}}}, where).sources["n"]


class Collected:
    """Values per series in order and the last ``up`` per (node, var)."""

    def __init__(self):
        self.values: dict = {}
        self.up: dict = {}

    def add(self, batches):
        for b in batches:
            for (name, lb), v in zip(b.keys, b.values):
                d = dict(lb)
                if name == "up":
                    self.up[(d["node"], d["var"])] = v
                else:
                    self.values.setdefault((name, lb), []).append((b.ts, v))
        return self

    def of(self, name="nsm.var", **lbls):
        return [v for _, v in self.values.get((name, labels(**lbls)), [])]

    def timed(self, name, **lbls):
        return self.values.get((name, labels(**lbls)), [])


def collect(src, until, timeout=5.0, into=None, pause=0.1):
    c = into or Collected()
    deadline = time.monotonic() + timeout
    while True:
        c.add(src.poll())
        if until(c) or time.monotonic() > deadline:
            return c
        time.sleep(pause)


# -- method epics: the nsm2cad bridge PVs on a real IOC ----------------------------------------------
@pytest.fixture(scope="module")
def ioc():
    with real_ioc("the NSM bridge tests") as sim:
        yield sim


@pytest.fixture
def bridge(ioc):
    made = []

    def factory(vars, **extra):
        body = {"interval": "1s", "timeout": "500ms", "missing_after": "1s", **ioc.ca_config, "vars": vars, **extra}
        src = NsmSource("n", make(body))
        made.append(src)
        return src

    yield factory
    for src in made:
        src.close()


@pytest.mark.timeout(30)
def test_epics_method_values_and_up(bridge):
    src = bridge([{"node": "HLT{01..01}", "var": "nworkers", "labels": {"unit": "hlt{01..01}"}},
                  {"node": "HLT01", "var": "input.rate"}, {"node": "HLT01", "var": "rcstate"},
                  {"node": "HLT02", "var": "nworkers"}], labels={"site": "test"})
    c = collect(src, lambda c: c.of(node="HLT01", var="rcstate", site="test") and c.of(node="HLT01", var="input.rate", site="test")
                and c.of(node="HLT01", var="nworkers", unit="hlt01", site="test") and ("HLT02", "nworkers") in c.up, timeout=8)
    assert c.of(node="HLT01", var="nworkers", unit="hlt01", site="test") == [12.0]
    assert c.of(node="HLT01", var="input.rate", site="test") == [1000.0]  # dots → colons in the PV name
    assert c.of(node="HLT01", var="rcstate", site="test") == ["RUNNING"]
    assert c.up == {("HLT01", "nworkers"): 1.0, ("HLT01", "input.rate"): 1.0, ("HLT01", "rcstate"): 1.0, ("HLT02", "nworkers"): 0.0}
    assert not any(name.startswith("epics.") or "pv" in dict(lb) for name, lb in c.values)  # relabelled
    assert not any(n == "daq.run_state" for n, _ in c.values)  # no run_control configured


@pytest.mark.timeout(30)
def test_epics_method_run_state_and_transition_time(ioc, bridge):
    src = bridge([{"node": "HLT01", "var": "nworkers"}], run_control="RUNCONTROL")
    c = collect(src, lambda c: c.of("daq.run_state", node="RUNCONTROL") and c.of("daq.run_state_since", node="RUNCONTROL"))
    assert c.of("daq.run_state", node="RUNCONTROL") == ["RUNNING"]
    assert c.up[("RUNCONTROL", "rcstate")] == 1.0  # read although not in vars
    first_since = c.of("daq.run_state_since", node="RUNCONTROL")[-1]
    n = len(c.of("daq.run_state_since", node="RUNCONTROL"))
    c = collect(src, lambda c: len(c.of("daq.run_state_since", node="RUNCONTROL")) >= n + 2, into=c)
    assert set(c.of("daq.run_state_since", node="RUNCONTROL")) == {first_since}  # every cycle, unchanged
    ioc.set(RC, "STOPPING")
    # One transition at a time: Channel Access may coalesce monitor updates of a busy server (a
    # loaded CI machine), and a value the client never received cannot become a state.
    c = collect(src, lambda c: c.of("daq.run_state", node="RUNCONTROL")[-1:] == ["STOPPING"], into=c)
    time.sleep(0.3)
    before = time.time()
    ioc.set(RC, "READY")
    after = time.time()
    c = collect(src, lambda c: c.of("daq.run_state", node="RUNCONTROL")[-1:] == ["READY"], into=c)
    c = collect(src, lambda c: True, into=c)
    assert c.of("daq.run_state", node="RUNCONTROL") == ["RUNNING", "STOPPING", "READY"]
    timed = c.timed("daq.run_state", node="RUNCONTROL")
    since = c.of("daq.run_state_since", node="RUNCONTROL")[-1]
    assert since == timed[-1][0] and before - 0.05 <= since <= after + 0.05
    assert since > first_since
    ioc.set(RC, "RUNNING")


# -- method nsmvget: the stand-in scripts as real subprocesses ---------------------------------------
class Standin:
    def __init__(self, tmp_path, monkeypatch):
        self.dir = tmp_path / "standin"
        self.dir.mkdir()
        self.path = tmp_path / "nsm.json"
        monkeypatch.setenv("NSM_STANDIN_DATA", str(self.path))
        self.data = {"config": "hlt.conf", "delay": 0, "state_dir": str(self.dir), "nodes": {}}
        self.write()

    def write(self, **change):
        self.data.update(change)
        self.path.write_text(json.dumps(self.data))

    def calls(self):
        p = self.dir / "calls.log"
        return [line.split() for line in p.read_text().splitlines()] if p.exists() else []

    def max_active(self):
        return json.loads((self.dir / "active.json").read_text())["max_active"]


@pytest.fixture
def standin(tmp_path, monkeypatch):
    return Standin(tmp_path, monkeypatch)


@pytest.fixture
def tools():
    made = []

    def factory(vars, **extra):
        body = {"method": "nsmvget", "interval": "2s", "timeout": "1s", "nsm_config": "hlt.conf",
                "nsmvget_path": str(STANDIN / "nsmvget"), "nsmvlistget_path": str(STANDIN / "nsmvlistget"),
                "vars": vars, **extra}
        src = NsmSource("n", make(body))
        made.append(src)
        return src

    yield factory
    for src in made:
        src.close()


def test_parse_value_and_listing():
    assert parse_value("nworkers : 12\n", "nworkers") == 12.0
    assert parse_value("rcstate : RUNNING\n", "rcstate") == "RUNNING"
    assert parse_value("rcconfig : a b : c\n", "rcconfig") == "a b : c"
    for bad in ("", "hello world\n", "other : 1\n", "x : 1\nx : 2\n", "x :\n"):
        with pytest.raises(Exception):
            parse_value(bad, "x")
    assert parse_listing("# header\nrcstate:text:1:0:0\nnworkers:int:1:1:1\nsecret:int:0:1:2\n") == ["rcstate", "nworkers"]
    with pytest.raises(Exception):
        parse_listing("garbage\n")


@pytest.mark.timeout(20)
def test_nsmvget_values_unique_names_and_command_line(standin, tools):
    standin.write(nodes={"RUNCONTROL": {"rcstate": "READY"},
                         **{f"HLT{i:02d}": {"nworkers": 10 + i, "input.rate": 99.5} for i in (1, 2)}})
    src = tools([{"node": "HLT{01..02}", "var": "nworkers", "labels": {"unit": "hlt{01..02}"}},
                 {"node": "HLT01", "var": "input.rate"}], run_control="RUNCONTROL", labels={"site": "test"})
    c = Collected().add(src.poll()).add(src.poll())
    assert c.of(node="HLT01", var="nworkers", unit="hlt01", site="test") == [11.0, 11.0]
    assert c.of(node="HLT02", var="nworkers", unit="hlt02", site="test") == [12.0, 12.0]
    assert c.of(node="HLT01", var="input.rate", site="test") == [99.5, 99.5]
    assert c.of(node="RUNCONTROL", var="rcstate", site="test") == ["READY", "READY"]
    assert c.of("daq.run_state", node="RUNCONTROL", site="test") == ["READY", "READY"]
    assert set(c.up.values()) == {1.0} and len(c.up) == 4
    calls = standin.calls()
    assert len(calls) == 8 and {tuple(x[:3]) for x in calls} >= {("nsmvget", "HLT01", "input.rate")}
    names = [x[3] for x in calls]
    assert len(set(names)) == len(names)  # a unique -n per call
    assert all(re.fullmatch(r"[A-Z0-9_]{1,31}", n) for n in names)  # a valid NSM node name


@pytest.mark.timeout(20)
def test_nsmvget_run_state_transition_time_and_unknown_state(standin, tools, caplog):
    caplog.set_level(logging.INFO, logger="farmwatch.sources.nsm")
    standin.write(nodes={"RUNCONTROL": {"rcstate": "RUNNING"}})
    src = tools([{"node": "RUNCONTROL", "var": "rcstate"}], run_control="RUNCONTROL")
    c = Collected().add(src.poll())
    t0 = c.of("daq.run_state_since", node="RUNCONTROL")
    assert c.of("daq.run_state", node="RUNCONTROL") == ["RUNNING"] and len(t0) == 1
    time.sleep(0.05)
    c.add(src.poll())
    assert c.of("daq.run_state_since", node="RUNCONTROL") == t0 * 2
    standin.write(nodes={"RUNCONTROL": {"rcstate": "WEIRD"}})
    before = time.time()
    c.add(src.poll())
    c.add(src.poll())
    assert c.of("daq.run_state", node="RUNCONTROL")[-2:] == ["WEIRD", "WEIRD"]  # stored as is
    since = c.of("daq.run_state_since", node="RUNCONTROL")
    assert since[-1] == since[-2] >= before > t0[0]
    assert sum("WEIRD" in r.getMessage() for r in caplog.records) == 1
    # run control unavailable: the last transition time is still emitted
    standin.write(nodes={})
    c.add(src.poll())
    assert c.up[("RUNCONTROL", "rcstate")] == 0.0 and c.of("daq.run_state_since", node="RUNCONTROL")[-1] == since[-1]


@pytest.mark.timeout(30)
def test_failures_are_up_0_others_unaffected_logged_once(standin, tools, caplog):
    caplog.set_level(logging.INFO, logger="farmwatch.sources.nsm")
    standin.write(nodes={"HLT01": {"nworkers": 12, "broken": {"exit": 3}, "stuck": {"hang": 20},
                                   "junk": {"garbage": "%%! not a value"}, "wrongname": {"garbage": "other : 1"}}})
    src = tools([{"node": "HLT01", "var": v} for v in ("nworkers", "broken", "stuck", "junk", "wrongname")]
                + [{"node": "HLT99", "var": "nworkers"}], interval="5s", timeout="2s")  # generous: a loaded CI host
    c = Collected()
    for _ in range(3):
        start = time.monotonic()
        c.add(src.poll())
        assert time.monotonic() - start < 2 + 1.5  # the hanging call (20 s) is killed at the timeout
    assert c.of(node="HLT01", var="nworkers") == [12.0] * 3
    assert c.up == {("HLT01", "nworkers"): 1.0, ("HLT01", "broken"): 0.0, ("HLT01", "stuck"): 0.0,
                    ("HLT01", "junk"): 0.0, ("HLT01", "wrongname"): 0.0, ("HLT99", "nworkers"): 0.0}
    assert [k for k in c.values if k[0] != "nsm.late" and dict(k[1])["var"] != "nworkers"] == []
    assert c.of("nsm.late") == [0.0] * 3  # slow calls are timeouts, not late: all were started
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5, warnings  # once each, not once per cycle
    by_var = {v: [w for w in warnings if f"HLT01 {v} " in w] for v in ("broken", "stuck", "junk")}
    assert "exit status 3" in by_var["broken"][0] and "not responding" in by_var["broken"][0]
    assert "killed" in by_var["stuck"][0] and "unparsable" in by_var["junk"][0]
    assert all("\n" not in w for w in warnings)
    # recovery is logged once too
    standin.write(nodes={"HLT01": {"nworkers": 12, "broken": 4, "stuck": 5, "junk": 6, "wrongname": 7}})
    c.add(src.poll())
    c.add(src.poll())
    assert c.of(node="HLT01", var="broken") == [4.0, 4.0]
    again = [r.getMessage() for r in caplog.records if "available again" in r.getMessage()]
    assert len(again) == 4
    # no stand-in left running after a timeout
    stuck = {x[3] for x in standin.calls() if x[2] == "stuck"}
    assert len(stuck) == 5  # three failing polls, two after the recovery
    assert not [line for line in os.popen("ps -eo args").read().splitlines() if set(line.split()) & stuck]


@pytest.mark.timeout(20)
def test_ok_exit_codes_for_a_tool_that_exits_1_after_the_value(standin, tools):
    """basf2's nsmvget exits with status 1 even after printing the value; ok_exit_codes allows for it."""
    standin.write(exit_after_value=1, nodes={"HLT01": {"nworkers": 12, "junk": {"garbage": "node HLT01 is not online"}}})
    strict = tools([{"node": "HLT01", "var": "nworkers"}])
    c = Collected().add(strict.poll())
    assert c.up == {("HLT01", "nworkers"): 0.0}
    lenient = tools([{"node": "HLT01", "var": "nworkers"}, {"node": "HLT01", "var": "junk"}, {"node": "HLT02", "var": "x"}],
                    ok_exit_codes=[0, 1])
    c = Collected().add(lenient.poll())
    assert c.of(node="HLT01", var="nworkers") == [12.0]
    assert c.up == {("HLT01", "nworkers"): 1.0, ("HLT01", "junk"): 0.0, ("HLT02", "x"): 0.0}  # errors still fail to parse


@pytest.mark.timeout(30)
def test_bounded_concurrency_200_variables(standin, tools):
    standin.write(delay=0.05, nodes={f"HLT{i:02d}": {f"v{j}": j for j in range(10)} for i in range(1, 21)})
    src = tools([{"node": "HLT{01..20}", "var": "v{0..9}"}], concurrency=16, interval="30s", timeout="10s")
    start = time.monotonic()
    c = Collected().add(src.poll())
    took = time.monotonic() - start
    assert len(c.up) == 200 and set(c.up.values()) == {1.0}
    assert standin.max_active() <= 16  # never more than the configured concurrency
    assert standin.max_active() >= 4  # and really in parallel
    assert took < src.interval, took  # within the poll interval (generous: the test host may be busy)
    assert len(standin.calls()) == 200


@pytest.mark.timeout(20)
def test_discovery_with_nsmvlistget(standin, tools):
    standin.write(nodes={"HLT01": {"rcstate": "RUNNING", "nworkers": 12, "input.rate": 5.5},
                         "HLT02": {"nworkers": 3}},
                  listing={"HLT02": {"garbage": "nothing useful"}})
    src = tools([{"node": "HLT01", "var": "*", "labels": {"unit": "hlt01"}}, {"node": "HLT01", "var": "nworkers"},
                 {"node": "HLT02", "var": "*"}], discover=True)
    c = Collected().add(src.poll())
    assert c.of(node="HLT01", var="rcstate", unit="hlt01") == ["RUNNING"]
    assert c.of(node="HLT01", var="input.rate", unit="hlt01") == [5.5]
    assert c.of(node="HLT01", var="nworkers") == [12.0]  # the explicit entry, read once
    assert c.up[("HLT01", "*")] == 1.0 and c.up[("HLT02", "*")] == 0.0
    lists = [x for x in standin.calls() if x[0] == "nsmvlistget"]
    assert sorted(x[1] for x in lists) == ["HLT01", "HLT02"]
    c.add(src.poll())  # HLT01 is not listed again (rediscover), HLT02 is retried
    lists = [x for x in standin.calls() if x[0] == "nsmvlistget"]
    assert sorted(x[1] for x in lists) == ["HLT01", "HLT02", "HLT02"]
    names = [x[3] for x in standin.calls()]
    assert len(set(names)) == len(names)
    standin.write(listing={})
    c.add(src.poll())
    assert c.up[("HLT02", "*")] == 1.0 and c.of(node="HLT02", var="nworkers") == [3.0]


@pytest.mark.timeout(60)
def test_cycle_deadline_bounds_a_slow_nsm_host(standin, tools, caplog):
    """A slow NSM host (every call takes 2 s) and 8 variables with concurrency 2 would take ~8 s;
    the cycle ends at cycle_timeout (5 s) instead: what was read is stored, the calls running at the
    deadline are killed, the rest is never started; those variables are up = 0 and counted in
    nsm.late, and one line is logged when this starts and one when it ends. (Generous times: a
    loaded CI host may need most of a second to start the stand-in's Python.)"""
    caplog.set_level(logging.INFO, logger="farmwatch.sources.nsm")
    standin.write(delay=2.0, nodes={"HLT01": {f"v{j}": j for j in range(8)}})
    src = tools([{"node": "HLT01", "var": "v{0..7}"}], concurrency=2, interval="10s", timeout="4s", cycle_timeout="5s")
    c = Collected()
    late_expected = 0
    for _ in range(2):
        start = time.monotonic()
        batches = src.poll()
        took = time.monotonic() - start
        c.add(batches)
        assert took < 5 + 0.5, took  # the deadline, plus killing and reaping
        read = [v for (node, v), up in c.up.items() if up == 1.0]
        assert 1 <= len(read) <= 4, c.up  # two at a time, 2 s each plus the start-up
        late_expected += 8 - len(read)
        assert [v for b in batches for k, v in zip(b.keys, b.values) if k[0] == "nsm.late"] == [late_expected]
    assert all(c.of(node="HLT01", var=v) for v in read) and len(c.up) == 8
    assert not [line for line in os.popen("ps -eo args").read().splitlines() if "nsm_standin" in line]  # groups killed
    started = {x[2] for x in standin.calls()}
    assert len(started) < 8  # variables after the deadline were never started
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not done by the cycle deadline (5s)" in warnings[0], warnings  # once, not per cycle
    standin.write(delay=0)
    for _ in range(3):  # 8 fast calls, two at a time, fit in the deadline (a very loaded host may need a retry)
        c.add(src.poll())
        if set(c.up.values()) == {1.0}:
            break
    assert set(c.up.values()) == {1.0}
    assert sum("within the cycle deadline again" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "change, key",
    [
        ({"vars": []}, "sources.n.vars"),
        ({"vars": [{"node": "hlt01", "var": "x"}]}, "sources.n.vars"),
        ({"vars": [{"node": "HLT{01..}", "var": "x"}]}, "sources.n.vars"),
        ({"vars": [{"node": "HLT01", "var": "x", "labels": {"node": "y"}}]}, "sources.n.vars"),
        ({"vars": [{"node": "HLT01", "vr": "x"}]}, "sources.n.vars"),
        ({"method": "nsmget"}, "sources.n.method"),
        ({"concurrency": 0}, "sources.n.concurrency"),
        ({"ok_exit_codes": []}, "sources.n.ok_exit_codes"),
        ({"run_control": "run control"}, "sources.n.run_control"),
        ({"method": "nsmvget"}, "sources.n"),  # nsm_config missing
        ({"vars": [{"node": "HLT01", "var": "*"}]}, "sources.n"),  # needs nsmvget + discover
        ({"discover": True}, "sources.n"),
        ({"ca_addr_list": ["bad host"]}, "sources.n"),
        ({"vars": [{"node": "A", "var": "x"}, {"node": "A", "var": "x"}]}, "sources.n"),
        ({"timeout": "soon"}, "sources.n.timeout"),
        ({"cycle_timeout": "2s"}, "sources.n"),  # only for nsmvget
        ({"method": "nsmvget", "nsm_config": "x", "interval": "1s", "cycle_timeout": "1s"}, "sources.n"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(change, key):
    body = {"vars": [{"node": "HLT01", "var": "nworkers"}], **change}
    with pytest.raises(ConfigError) as err:
        make(body)
    assert len(err.value.problems) == 1, err.value.problems
    line = err.value.problems[0]
    assert "\n" not in line and line.startswith(f"nsm.toml: {key}"), line


def test_config_error_messages_name_the_key():
    for change, word in [({"method": "nsmvget"}, "nsm_config"), ({"ca_addr_list": ["bad host"]}, "ca_addr_list"),
                         ({"discover": True}, "discover")]:
        with pytest.raises(ConfigError) as err:
            make({"vars": [{"node": "HLT01", "var": "nworkers"}], **change})
        assert word in err.value.problems[0]


def test_bridge_pvs_and_templates():
    cfg = make({"vars": [{"node": "HLT{01..03}", "var": "input.rate", "labels": {"unit": "hlt{01..03}"}}],
                "run_control": "RUNCONTROL"})
    assert [p.pv for p in cfg.epics_config().pvs] == ["B2_nsm:get:HLT01:input:rate", "B2_nsm:get:HLT02:input:rate",
                                                      "B2_nsm:get:HLT03:input:rate", RC]
    assert [e.labels for e in cfg.vars] == [{"unit": "hlt01"}, {"unit": "hlt02"}, {"unit": "hlt03"}]


def test_never_writes():
    from farmwatch.sources.nsm import source as nsm

    code = "\n".join(line for line in Path(nsm.__file__).read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\.put\(|caput|put_callback|nsmvset|B2_nsm:set", code)


def test_example_collector_config_is_valid():
    from farmwatch.config.loader import load

    settings = load(Path(__file__).parent.parent / "collectors" / "nsm.toml")
    methods = {s.method for s in settings.sources.values() if getattr(s, "kind", None) == "nsm"}
    assert methods == {"epics", "nsmvget"}
