"""The EPICS source against a real IOC (epicscorelibs) on a free loopback port: no mocks.

Channel Access configuration is process-wide and read when the CA context is created, so the
module fixture puts the IOC's client settings into the environment before the first CA call and,
at the end, destroys the context and restores the environment: tests in other files start clean.
Values are changed inside the IOC process (``SimIOC.set`` → IOC shell ``dbpf``); nothing writes
over Channel Access. The kill/restart test runs last (it takes the IOC away for a while).
"""

import logging
import re
import time
from pathlib import Path

import pytest

from farmwatch.config import ConfigError
from farmwatch.config.loader import parse
from farmwatch.model import labels
from farmwatch.sources.epics import source as epics_source
from farmwatch.sources.epics.source import EpicsSource
from sim_helpers import real_ioc

pytestmark = [pytest.mark.real]


RC = "B2_nsm:get:RUNCONTROL:rcstate"
RC_ENUM = "SIM:RUNCONTROL:state"


@pytest.fixture(scope="module")
def ioc():
    with real_ioc("the EPICS tests") as sim:
        yield sim


def make_source(ioc, pvs, **extra) -> EpicsSource:
    body = {"kind": "epics", "interval": "1s", "timeout": "500ms", "missing_after": "1s",
            **ioc.ca_config, "pvs": pvs, **extra}
    return EpicsSource("slc", parse({"sources": {"slc": body}}).sources["slc"])


@pytest.fixture
def source_factory(ioc):
    made = []

    def factory(pvs, **extra):
        src = make_source(ioc, pvs, **extra)
        made.append(src)
        return src

    yield factory
    for src in made:
        src.close()


class Collected:
    """Everything polled so far: values per series in order, and the last ``up`` per PV."""

    def __init__(self):
        self.values: dict = {}
        self.up: dict = {}

    def add(self, batches):
        for b in batches:
            for (name, lb), v in zip(b.keys, b.values):
                if name == "up":
                    self.up[dict(lb)["pv"]] = v
                else:
                    self.values.setdefault((name, lb), []).append(v)

    def of(self, pv, name="epics.pv", **lbls):
        return self.values.get((name, labels(pv=pv, **lbls)), [])


def collect(src, until, timeout=5.0, into=None) -> Collected:
    c = into or Collected()
    deadline = time.monotonic() + timeout
    while True:
        c.add(src.poll())
        if until(c) or time.monotonic() > deadline:
            return c
        time.sleep(0.1)


@pytest.mark.timeout(30)
def test_subscription_values_arrive_and_the_counter_moves(source_factory):
    src = source_factory(["SIM:value", {"pv": "B2_nsm:get:HLT{01..01}:nworkers", "labels": {"unit": "hlt{01..01}"}},
                          "B2_nsm:get:HLT01:input:rate"], labels={"site": "test"})
    c = collect(src, lambda c: len(c.of("SIM:value", site="test")) >= 10)
    counts = c.of("SIM:value", site="test")
    assert len(counts) >= 10 and counts == sorted(counts) and counts[-1] > counts[0]
    assert c.of("B2_nsm:get:HLT01:nworkers", unit="hlt01", site="test") == [12.0]
    assert c.of("B2_nsm:get:HLT01:input:rate", site="test") == [1000.0]
    assert c.up == {"SIM:value": 1.0, "B2_nsm:get:HLT01:nworkers": 1.0, "B2_nsm:get:HLT01:input:rate": 1.0}
    # up is emitted on every poll for every PV, even when no value changed
    batches = src.poll()
    ups = [k for b in batches for k in b.keys if k[0] == "up"]
    assert len(ups) == 3


@pytest.mark.timeout(30)
def test_run_state_from_stringin_and_mbbi_as_state_values(ioc, source_factory):
    src = source_factory([RC, RC_ENUM])
    c = collect(src, lambda c: c.of(RC) and c.of(RC_ENUM))
    assert c.of(RC) == ["RUNNING"] and c.of(RC_ENUM) == ["RUNNING"]
    ioc.set(RC, "STOPPING")
    ioc.set(RC_ENUM, "STOPPING")
    # One transition at a time: Channel Access may coalesce monitor updates of a busy server (a
    # loaded CI machine), and a value the client never received cannot become a state.
    c = collect(src, lambda c: c.of(RC)[-1:] == ["STOPPING"] and c.of(RC_ENUM)[-1:] == ["STOPPING"], into=c)
    ioc.set(RC, "READY")
    ioc.set(RC_ENUM, "READY")
    c = collect(src, lambda c: c.of(RC)[-1:] == ["READY"] and c.of(RC_ENUM)[-1:] == ["READY"], into=c)
    assert c.of(RC) == ["RUNNING", "STOPPING", "READY"]
    assert c.of(RC_ENUM) == ["RUNNING", "STOPPING", "READY"]
    assert all(isinstance(v, str) for v in c.of(RC_ENUM))  # never the index
    ioc.set(RC, "RUNNING")
    ioc.set(RC_ENUM, "RUNNING")


@pytest.mark.timeout(30)
def test_char_waveform_is_text_by_default_and_numbers_on_request(ioc, source_factory):
    """EPICS keeps long strings in CHAR waveforms: text by default (up to the first NUL), numbers
    (reduced like other arrays) for the source or for one PV entry."""
    text = source_factory(["SIM:text"])
    c = collect(text, lambda c: c.of("SIM:text"))
    assert c.of("SIM:text") == ["run 4711: beam OK"] and not c.of("SIM:text", "epics.pv.count")
    ioc.set("SIM:text", "run 4712: beam lost")
    c = collect(text, lambda c: len(c.of("SIM:text")) >= 2, into=c)
    assert c.of("SIM:text") == ["run 4711: beam OK", "run 4712: beam lost"]
    ioc.set("SIM:text", "run 4711: beam OK")

    as_numbers = make_source(ioc, [{"pv": "SIM:text", "char_waveform": "numbers"}, "B2_nsm:get:HLT01:nworkers"],
                             char_waveforms="text")
    try:
        c = collect(as_numbers, lambda c: c.of("SIM:text", "epics.pv.count") and c.of("B2_nsm:get:HLT01:nworkers"))
    finally:
        as_numbers.close()
    chars = [float(b) for b in b"run 4711: beam OK\0"]  # dbpf writes the terminating NUL too
    assert c.of("SIM:text", "epics.pv.count") == [len(chars)]
    assert c.of("SIM:text", "epics.pv.max") == [max(chars)] and c.of("SIM:text", "epics.pv.min") == [0.0]
    assert not c.of("SIM:text")


@pytest.mark.timeout(30)
def test_values_of_a_wrong_type_are_ignored_counted_and_logged_once(ioc, source_factory, caplog):
    """An mbbi without labels (its index is no state) and a STRING waveform (no number, no single
    state) cannot become a series: each value is counted in epics.pv.ignored, one log line per PV
    and reason, and ``up`` still says the PV is connected."""
    caplog.set_level(logging.INFO, logger="farmwatch.sources.epics")
    src = source_factory(["SIM:nolabels", "SIM:strings", "SIM:value"])
    c = collect(src, lambda c: c.of("SIM:nolabels", "epics.pv.ignored") and c.of("SIM:strings", "epics.pv.ignored"))
    c = collect(src, lambda c: len(c.of("SIM:strings", "epics.pv.ignored")) >= 3, into=c)
    assert c.of("SIM:strings", "epics.pv.ignored")[-3:] == [1.0] * 3  # cumulative, written every poll
    assert c.of("SIM:nolabels", "epics.pv.ignored")[-3:] == [1.0] * 3
    assert c.up == {"SIM:nolabels": 1.0, "SIM:strings": 1.0, "SIM:value": 1.0}
    assert not c.of("SIM:nolabels") and not c.of("SIM:strings") and not c.of("SIM:strings", "epics.pv.count")
    assert c.of("SIM:value") and not c.of("SIM:value", "epics.pv.ignored")  # the others are unaffected
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines
    assert any("SIM:nolabels" in m and "enum index 1 has no label" in m for m in lines)
    assert any("SIM:strings" in m and "array of strings" in m for m in lines)


@pytest.mark.timeout(30)
def test_waveform_reduced(ioc, source_factory):
    src = source_factory(["SIM:wave"], arrays="reduce")
    c = collect(src, lambda c: c.of("SIM:wave", "epics.pv.count"))
    assert [c.of("SIM:wave", f"epics.pv.{s}")[0] for s in ("count", "mean", "min", "max")] == [4.0, 2.5, 1.0, 4.0]
    assert not c.of("SIM:wave")  # no plain series for an array
    ioc.set("SIM:wave", [5, 6, 7])
    c = collect(src, lambda c: len(c.of("SIM:wave", "epics.pv.count")) >= 2, into=c)
    assert [c.of("SIM:wave", f"epics.pv.{s}")[-1] for s in ("count", "mean", "min", "max")] == [3.0, 6.0, 5.0, 7.0]
    ioc.set("SIM:wave", [1, 2, 3, 4])


@pytest.mark.timeout(30)
def test_waveform_elements(ioc, source_factory):
    src = source_factory(["SIM:wave"], arrays="elements")
    c = collect(src, lambda c: c.of("SIM:wave", index=3))
    assert [c.of("SIM:wave", index=i) for i in range(4)] == [[1.0], [2.0], [3.0], [4.0]]
    assert not c.of("SIM:wave", index=4) and not c.of("SIM:wave", "epics.pv.count")
    ioc.set("SIM:wave", [9, 8, 7, 6, 5])
    c = collect(src, lambda c: c.of("SIM:wave", index=4), into=c)
    assert [c.of("SIM:wave", index=i)[-1] for i in range(5)] == [9.0, 8.0, 7.0, 6.0, 5.0]
    ioc.set("SIM:wave", [1, 2, 3, 4])


@pytest.mark.timeout(30)
def test_missing_pv_is_down_and_reported_once(ioc, source_factory, caplog):
    caplog.set_level(logging.INFO, logger="farmwatch.sources.epics")
    src = source_factory(["SIM:value", "NO:SUCH:PV"])
    start = time.monotonic()
    c = collect(src, lambda c: time.monotonic() - start > 2.5, timeout=5)
    assert c.up == {"SIM:value": 1.0, "NO:SUCH:PV": 0.0}
    lines = [r.getMessage() for r in caplog.records if "NO:SUCH:PV" in r.getMessage()]
    assert len(lines) == 1, lines
    assert ioc.address in lines[0] and "not found" in lines[0]
    assert not any("SIM:value" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "change, key",
    [
        ({"pvs": []}, "sources.slc.pvs"),
        ({"arrays": "sum"}, "sources.slc.arrays"),
        ({"ca_addr_list": ["bad host name"]}, "sources.slc.ca_addr_list"),
        ({"ca_adr_list": ["127.0.0.1"]}, "sources.slc.ca_adr_list"),
        ({"pvs": [{"pv": "HLT{01..}:RATE"}]}, "sources.slc.pvs"),
        ({"pvs": [{"pv": "A", "labels": {"pv": "x"}}]}, "sources.slc.pvs"),
        ({"pvs": ["A", "A"]}, "sources.slc"),
        ({"missing_after": "soon"}, "sources.slc.missing_after"),
        ({"char_waveforms": "bytes"}, "sources.slc.char_waveforms"),
        ({"pvs": [{"pv": "A", "char_waveform": "bytes"}]}, "sources.slc.pvs"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(change, key):
    body = {"kind": "epics", "pvs": ["A"], **change}
    with pytest.raises(ConfigError) as err:
        parse({"sources": {"slc": body}}, "epics.toml")
    assert len(err.value.problems) == 1, err.value.problems
    line = err.value.problems[0]
    assert "\n" not in line and line.startswith(f"epics.toml: {key}"), line


def test_templates_expand_names_and_labels_together():
    cfg = parse({"sources": {"slc": {"kind": "epics", "pvs": [
        {"pv": "B2_nsm:get:HLT{01..03}:rcstate", "labels": {"unit": "hlt{01..03}"}}, "B2_nsm:get:RUNCONTROL:rcstate"]}}}).sources["slc"]
    assert [(e.pv, e.labels) for e in cfg.pvs] == [
        ("B2_nsm:get:HLT01:rcstate", {"unit": "hlt01"}), ("B2_nsm:get:HLT02:rcstate", {"unit": "hlt02"}),
        ("B2_nsm:get:HLT03:rcstate", {"unit": "hlt03"}), ("B2_nsm:get:RUNCONTROL:rcstate", {})]
    assert cfg.ca_environment() == {}


def test_farmwatch_never_writes_to_a_pv():
    text = Path(epics_source.__file__).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\.put\(|caput|put_callback", code)


def test_example_collector_config_is_valid():
    from farmwatch.config.loader import load

    settings = load(Path(__file__).parent.parent / "collectors" / "epics.toml")
    assert any(getattr(s, "kind", None) == "epics" for s in settings.sources.values())


@pytest.mark.timeout(30)
def test_close_disconnects(source_factory):
    import epics

    src = source_factory(["SIM:value"])
    collect(src, lambda c: c.up.get("SIM:value") == 1.0)
    src.close()
    assert epics.ca.get_cache("SIM:value") is None
    assert src.pvs[0].chid is None and src.pvs[0].evid is None


@pytest.mark.timeout(40)
def test_ioc_kill_gives_up_0_and_restart_gives_fresh_values(ioc, source_factory, caplog):
    caplog.set_level(logging.INFO, logger="farmwatch.sources.epics")
    src = source_factory(["SIM:value", RC])
    c = collect(src, lambda c: c.up.get("SIM:value") == 1.0 and c.of(RC) and len(c.of("SIM:value")) >= 3)
    ioc.set(RC, "ERROR")
    c = collect(src, lambda c: c.of(RC)[-1:] == ["ERROR"], into=c)

    t0 = time.monotonic()
    ioc.kill()
    c = collect(src, lambda c: c.up == {"SIM:value": 0.0, RC: 0.0}, timeout=5, into=c)
    down_after = time.monotonic() - t0
    assert c.up == {"SIM:value": 0.0, RC: 0.0} and down_after < 3, down_after
    before = len(c.of("SIM:value"))
    collect(src, lambda c: False, timeout=0.5, into=c)
    assert len(c.of("SIM:value")) == before  # no values while down (no stale cached values)

    t1 = time.monotonic()
    ioc.start()  # same port; the restarted IOC holds its initial values again
    c = collect(src, lambda c: c.up == {"SIM:value": 1.0, RC: 1.0} and c.of(RC)[-1:] == ["RUNNING"]
                and len(c.of("SIM:value")) > before, timeout=20, into=c)
    reconnect = time.monotonic() - t1
    assert c.up == {"SIM:value": 1.0, RC: 1.0}, f"no reconnect within {reconnect:.1f}s"
    assert c.of(RC)[-1] == "RUNNING"  # fresh: the restarted IOC's value, not the cached ERROR
    assert len(c.of("SIM:value")) > before
    messages = [r.getMessage() for r in caplog.records]
    assert sum("SIM:value disconnected" in m for m in messages) == 1
    assert sum("SIM:value connected again" in m for m in messages) == 1
    print(f"down seen after {down_after:.2f}s, reconnected {reconnect:.1f}s after the restart")


@pytest.mark.timeout(60)
def test_record_type_changed_across_restart_is_ignored_and_counted(ioc, source_factory, caplog):
    """SIM:morph is an ai; after a restart it is a stringin. Its series stays numeric (alert rules
    compare numbers): the text values are ignored and counted, with one warning naming both types,
    while ``up`` follows the connection. When the type is back, values are stored again."""
    caplog.set_level(logging.INFO, logger="farmwatch.sources.epics")
    src = source_factory(["SIM:morph", "SIM:value"])
    c = collect(src, lambda c: c.of("SIM:morph") == [1.5])
    original = ioc.records["SIM:morph"]
    ioc.records["SIM:morph"] = ("stringin", {"VAL": "n/a", "PINI": "YES"})
    try:
        ioc.restart()
        c = collect(src, lambda c: c.up.get("SIM:morph") == 1.0 and c.of("SIM:morph", "epics.pv.ignored"), timeout=25, into=c)
    finally:
        ioc.records["SIM:morph"] = original
    assert c.of("SIM:morph") == [1.5] and c.of("SIM:morph", "epics.pv.ignored")[-1] == 1.0
    warnings = [r.getMessage() for r in caplog.records if "SIM:morph" in r.getMessage() and r.levelno == logging.WARNING]
    assert any("changed type from DOUBLE to STRING" in m for m in warnings), warnings
    assert sum("changed type" in m for m in warnings) == 1
    ioc.restart()
    c = collect(src, lambda c: c.of("SIM:morph")[-1:] == [1.5] and len(c.of("SIM:morph")) == 2, timeout=25, into=c)
    assert c.of("SIM:morph") == [1.5, 1.5] and c.up["SIM:morph"] == 1.0
    assert any("SIM:morph is DOUBLE again" in r.getMessage() for r in caplog.records)
