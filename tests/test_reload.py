"""SIGHUP reloads a running service's config; a bad new config is rejected with one line naming the
problem, and the old one keeps running (subprocesses, real sockets, a real store)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from farmwatch.sim import SimUnit

pytestmark = pytest.mark.timeout(120)


class Service:
    """A farmwatch service in a subprocess whose stderr is read as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "farmwatch", *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 30.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines[after:] if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n" + "".join(self.lines[-30:]))

    def hup(self) -> int:
        mark = len(self.lines)
        self.proc.send_signal(signal.SIGHUP)
        return mark

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=5)


def units_in_store(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("select distinct json_extract(labels, '$.unit') from series where name = 'up'")}
    finally:
        con.close()


@pytest.mark.slow
def test_collect_reload_rejects_a_bad_config_and_applies_a_good_one(tmp_path):
    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=200.0, seed=1) as a, \
            SimUnit("hlt02", worker_nodes=1, workers_per_node=2, input_rate=200.0, seed=2) as b:
        config = tmp_path / "fw.toml"
        good_a = '[store]\npath = "fw.db"\n\n' + a.config_toml(source_name="a", interval="300ms", timeout="100ms")
        config.write_text(good_a)
        svc = Service("collect", "-c", str(config), cwd=tmp_path)
        try:
            svc.wait_for("collecting a into")
            config.write_text(good_a + '\n[sources.a.oops]\nx = 1\n')  # a typo in the new config
            mark = svc.hup()
            line = svc.wait_for("reload rejected", after=mark)
            assert "sources.a.oops" in line and "running configuration stays" in line
            svc.wait_for("collecting a into", after=mark)  # the old generation runs on
            config.write_text(good_a + "\n" + b.config_toml(source_name="b", interval="300ms", timeout="100ms"))
            mark = svc.hup()
            svc.wait_for("reloaded", after=mark)
            svc.wait_for("collecting a, b into", after=mark)
            deadline = time.monotonic() + 20
            while units_in_store(tmp_path / "fw.db") != {"hlt01", "hlt02"} and time.monotonic() < deadline:
                time.sleep(0.2)
            assert units_in_store(tmp_path / "fw.db") == {"hlt01", "hlt02"}
        finally:
            assert svc.stop() == 0, "".join(svc.lines)
        assert any("stopped;" in line and " 0 dropped" in line for line in svc.lines)


RULE = """
[[rule]]
name = "{name}"
kind = "threshold"
series = "hlt.input.received_events:rate"
match = {{app = "distributor", host = ""}}
by = ["unit"]
op = "<"
value = -1
severity = "warning"
summary = "never"
"""


@pytest.mark.slow
def test_watch_reload_picks_up_new_rules_and_survives_a_broken_rule_file(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "one.toml").write_text(RULE.format(name="One"))
    config = tmp_path / "fw.toml"
    config.write_text('[store]\npath = "fw.db"\n\n[alerting]\nrules = ["rules"]\nshipped_rules = false\nevaluation_interval = "1s"\n')
    svc = Service("watch", "-c", str(config), cwd=tmp_path)
    try:
        svc.wait_for("with 1 rule(s)")
        (rules / "two.toml").write_text(RULE.format(name="Two"))
        mark = svc.hup()
        assert "2 rule(s)" in svc.wait_for("reloaded", after=mark)
        (rules / "bad.toml").write_text('[[rule]]\nname = "Bad"\nkind = "threshold"\n')
        mark = svc.hup()
        line = svc.wait_for("reload rejected", after=mark)
        assert "bad.toml" in line, line
        svc.wait_for("with 2 rule(s)", after=mark)  # the previous rules keep being evaluated
    finally:
        assert svc.stop() == 0, "".join(svc.lines)
