"""farmwatch as a systemd service: readiness, watchdog and stop notifications over a real
notification socket, and the shipped unit files checked by systemd-analyze."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.service import systemd
from farmwatch.sim import SimUnit

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "collectors" / "systemd"


class NotifySocket:
    """What systemd listens on: a datagram socket whose path goes into $NOTIFY_SOCKET."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.address = str(path) if not str(path).startswith("\0") else "@" + str(path)[1:]
        self.messages: list[str] = []

    def receive(self, until, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while not until(self.messages) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.extend(self.sock.recv(4096).decode().split("\n"))
            except socket.timeout:
                break
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    s = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    yield s
    s.close()


def test_outside_systemd_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.watchdog_interval() is None


def test_notify_reaches_path_and_abstract_sockets(notify_socket, monkeypatch):
    assert systemd.notify("READY=1", "STATUS=collecting")
    assert notify_socket.receive(lambda m: len(m) >= 2) == ["READY=1", "STATUS=collecting"]
    abstract = NotifySocket(f"\0farmwatch-test-{os.getpid()}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", abstract.address)
        assert systemd.notify("WATCHDOG=1")
        assert abstract.receive(lambda m: m) == ["WATCHDOG=1"]
    finally:
        abstract.close()


def test_watchdog_interval_is_half_of_watchdogsec_and_only_for_the_main_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None


def test_watchdog_pings_only_while_the_work_makes_progress(notify_socket):
    """A hung service must stop pinging, or systemd's watchdog could never restart it."""
    dog = systemd.Watchdog(stale_after=0.3, interval=0.05).start()
    try:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:  # the work loop runs
            dog.beat()
            time.sleep(0.05)
        pings = notify_socket.receive(lambda m: len(m) >= 5, timeout=2)
        assert pings and set(pings) == {"WATCHDOG=1"}
        time.sleep(0.5)  # the work loop hangs: stale after 0.3 s
        notify_socket.receive(lambda m: False, timeout=0.3)  # drain
        before = len(notify_socket.messages)
        notify_socket.receive(lambda m: False, timeout=0.5)
        assert len(notify_socket.messages) == before, "pinged although nothing progressed"
    finally:
        dog.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_collect_service_says_ready_pings_and_says_stopping(tmp_path, notify_socket):
    """`farmwatch collect` as systemd starts it (Type=notify, WatchdogSec=1s): READY=1 once the
    sources run, WATCHDOG=1 while cycles complete, STOPPING=1 on SIGTERM, exit status 0."""
    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=200.0, seed=5) as unit:
        config = tmp_path / "hlt.toml"
        config.write_text('[store]\npath = "fw.db"\n\n' + unit.config_toml(source_name="hlt", interval="200ms", timeout="100ms"))
        env = {**os.environ, "WATCHDOG_USEC": "1000000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "collect", "-c", str(config)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            got = notify_socket.receive(lambda m: "READY=1" in m and m.count("WATCHDOG=1") >= 2, timeout=60)
            assert got[0] == "READY=1" and got[1].startswith("STATUS=collecting 1 source(s)"), got
            assert got.count("WATCHDOG=1") >= 2, got
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
            assert "STOPPING=1" in notify_socket.receive(lambda m: "STOPPING=1" in m, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def installed_units(tmp_path) -> Path:
    """The shipped units with ExecStart pointing at this installation's farmwatch (verify checks
    that the executable exists); the template also as an instance, as `systemctl enable` names it."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "farmwatch"
    assert exe.exists(), exe
    for unit in [*UNITS.glob("*.service"), *UNITS.glob("*.timer")]:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/farmwatch/bin/farmwatch", str(exe)))
    shutil.copy(tmp_path / "farmwatch-collect@.service", tmp_path / "farmwatch-collect@hlt-zmq.service")
    return tmp_path


def test_unit_files_pass_systemd_analyze_verify(installed_units):
    units = [installed_units / "farmwatch-collect@hlt-zmq.service", installed_units / "farmwatch-watch.service",
             installed_units / "farmwatch-train.service", installed_units / "farmwatch-train.timer"]
    out = _verify(units)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr + out.stdout


def test_verify_would_catch_a_broken_unit(installed_units):
    """The check above can fail: an unknown key and a missing executable are reported."""
    broken = installed_units / "farmwatch-watch.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=", "WatchDogSecs=").replace(str(Path(sys.executable).parent), "/nonexistent"))
    out = _verify([broken])
    assert "WatchDogSecs" in out.stderr and "/nonexistent" in out.stderr, out.stderr


def test_units_are_hardened_notify_services_with_a_dedicated_user():
    for unit in UNITS.glob("*.service"):
        keys = dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line and not line.startswith("#"))
        if keys["Type"] == "oneshot":  # the nightly training
            assert "train" in keys["ExecStart"] and (UNITS / unit.name.replace(".service", ".timer")).exists()
        else:
            assert keys["Type"] == "notify" and keys["WatchdogSec"] and keys["Restart"] == "on-failure", unit.name
            assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID", unit.name
        assert keys["User"] == "farmwatch" and keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict", unit.name
        assert keys["StateDirectory"] == "farmwatch", unit.name
    assert "u farmwatch " in (UNITS / "farmwatch.sysusers").read_text()


def test_cron_lines_run_real_farmwatch_commands():
    """Every farmwatch command in the cron file parses with the real command-line parser."""
    from farmwatch.cli import build_parser

    parser = build_parser()
    commands = []
    for line in (UNITS / "farmwatch.cron").read_text().splitlines():
        if not line.strip() or line.startswith("#") or "=" in line.split()[0]:
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7 and fields[5] == "farmwatch", line  # five time fields, the user, the command
        words = shlex.split(fields[6].split("|")[0].split(";")[-1])
        assert words[:2] == ["flock", "-n"], line
        argv = [w for w in words[words.index("farmwatch") + 1:] if ">" not in w]  # minus the shell's 2>&1
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"cron line does not parse: {argv}")
        commands.append(argv[0])
    assert {"collect", "watch"} <= set(commands)
    assert isinstance(parser, argparse.ArgumentParser)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_self_metrics_endpoint_is_scraped_and_status_reads_it(tmp_path):
    """`farmwatch run` with [self_metrics]: a Prometheus scrape shows sources, targets, store and
    rules; `farmwatch status` summarises the same and exits 1 when a target is down."""
    from farmwatch.cli.status import scrape

    port = _free_port()
    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=200.0, seed=5) as unit:
        config = tmp_path / "fw.toml"
        config.write_text(f'[store]\npath = "fw.db"\n\n[self_metrics]\nport = {port}\n\n'
                          + unit.config_toml(source_name="hlt", interval="200ms", timeout="100ms"))
        proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "run", "-c", str(config)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 40
            m: dict = {}
            while time.monotonic() < deadline:
                try:
                    m = scrape(url)
                    if m.get("farmwatch_rule_evaluations_total", [({}, 0)])[0][1] >= 1 and m.get("farmwatch_samples_written_total", [({}, 0)])[0][1] > 0:
                        break
                except Exception:
                    pass
                time.sleep(0.3)
            targets = {lb["state"]: v for lb, v in m["farmwatch_targets"] if lb["source"] == "hlt"}
            assert targets == {"up": float(len(unit.endpoints)), "down": 0.0}, targets
            assert m["farmwatch_source_cycles_total"][0][1] >= 1 and m["farmwatch_samples_dropped_total"][0][1] == 0
            assert m["farmwatch_process_resident_memory_bytes"][0][1] > 0
            assert m["farmwatch_rule_errors_total"][0][1] == 0 and m["farmwatch_alerts"]
            assert m["farmwatch_window_series"][0][1] > 0 and m["farmwatch_window_forgotten_series_total"][0][1] == 0
            status = subprocess.run([sys.executable, "-m", "farmwatch", "status", "-c", str(config)], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=30)
            assert status.returncode == 0, status.stdout + status.stderr
            assert "source hlt: last cycle" in status.stdout and "problems: none" in status.stdout
            unit.set_reply("distributor", "mute")  # the distributor's monitor stops answering
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status = subprocess.run([sys.executable, "-m", "farmwatch", "status", "--url", url, "--format", "json"],
                                        capture_output=True, text=True, timeout=30)
                if status.returncode == 1:
                    break
                time.sleep(0.3)
            assert status.returncode == 1 and "targets down" in status.stdout, status.stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
    gone = subprocess.run([sys.executable, "-m", "farmwatch", "status", "--url", url], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 3 and "no farmwatch service answers" in gone.stdout


def test_self_metrics_expose_the_elasticsearch_spool(tmp_path):
    """The Elasticsearch sink's counters (documents, spool, online) are gauges of the endpoint;
    text such as the last error is not. During an outage the spool shows up there."""
    from prometheus_client import generate_latest

    from farmwatch.clock import SimClock
    from farmwatch.model import LogRecord
    from farmwatch.service.selfmetrics import SelfMetrics
    from farmwatch.sim.es_cluster import ElasticSim
    from farmwatch.store.elastic import ElasticConfig, ElasticStore

    metrics = SelfMetrics("collect")
    with ElasticSim() as server:
        store = ElasticStore(ElasticConfig.model_validate({"hosts": [server.url], "spool_dir": tmp_path / "spool",
                                                           "dead_letter": tmp_path / "dead.ndjson", "timeout": "2s"}),
                             clock=SimClock(1_780_000_000.0))
        try:
            metrics.set_stats("elastic", [store.stats])
            store.write_logs([LogRecord(1_780_000_000.0, "hltwk01", "basf2", "ERROR", "worker died")])
            server.stop()  # an outage: the next records are spooled
            store.write_logs([LogRecord(1_780_000_001.0, "hltwk01", "basf2", "ERROR", "worker died again")])
            text = generate_latest(metrics.registry).decode()
        finally:
            store.close()
    assert "farmwatch_elastic_online 0.0" in text and "farmwatch_elastic_spool_docs 1.0" in text, text
    assert "last_error" not in text
    metrics.set_stats("elastic", [])  # a reload without [elastic]
    assert "farmwatch_elastic_" not in generate_latest(metrics.registry).decode()
