"""The farmwatch command as users run it: subprocesses against a simulated unit on loopback."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.alerting.rules import load_rules
from farmwatch.sim import SimUnit
from farmwatch.testing.scenario import ALERTS

pytestmark = pytest.mark.timeout(120)


def farmwatch(*args, **kw):
    return subprocess.run([sys.executable, "-m", "farmwatch", *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def unit():
    with SimUnit("hlt01", worker_nodes=2, workers_per_node=3, input_rate=500.0, seed=3) as u:
        yield u


@pytest.fixture
def config(unit, tmp_path) -> Path:
    p = tmp_path / "farmwatch.toml"
    p.write_text('[store]\npath = "fw.db"\n\n' + unit.config_toml(source_name="hlt", interval="1s", timeout="300ms"))
    return p


def stored_rows(db: Path) -> int:
    """Values in the store: numbers (head frames, extras and compressed chunks) plus states."""
    if not db.exists():
        return 0
    from farmwatch.store import SQLiteStore
    from farmwatch.store.storefile import StoreError

    try:
        with SQLiteStore(db, readonly=True) as store:
            return len(store.query())
    except StoreError as exc:  # the collector has created the file but not its schema yet
        if "not a farmwatch store yet" in str(exc):
            return 0
        raise


def test_python_dash_m_mirrors_the_console_script():
    out = farmwatch("--version")
    assert out.returncode == 0 and out.stdout.startswith("farmwatch ")


@pytest.mark.slow
def test_collect_stops_cleanly_on_sigterm_with_everything_written(config, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "collect", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "fw.db"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (db.exists() and stored_rows(db) > 0):
        time.sleep(0.2)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    m = re.search(r"stopped; (\d+) samples written, 0 dropped", err)
    assert m, err
    assert stored_rows(db) == int(m.group(1))  # every sample the runner counted is in the file


@pytest.mark.slow
def test_collect_once_then_query_in_every_format(config, tmp_path):
    assert farmwatch("collect", "-c", str(config), "--once").returncode == 0
    time.sleep(1.0)
    assert farmwatch("collect", "-c", str(config), "--once").returncode == 0

    out = farmwatch("query", "-c", str(config), "up", "--label", "app=distributor", "--format", "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) == {"ts", "name", "labels", "value"}
    assert lines[0]["name"] == "up" and lines[0]["value"] == 1.0
    assert lines[0]["labels"] == {"unit": "hlt01", "app": "distributor"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["ts"])

    out = farmwatch("query", "-c", str(config), "hlt.output.sent_events", "--label", "host*=hltwk0*", "--since", "10m", "--format", "csv")
    rows = out.stdout.splitlines()
    assert rows[0] == "ts,name,labels,value" and len(rows) == 1 + 2 * 6

    out = farmwatch("query", "-c", str(config), "hlt.monitor.output_state", "--format", "json")
    assert {json.loads(x)["value"] for x in out.stdout.splitlines()} == {"ready"}

    out = farmwatch("query", "-c", str(config), "up", "--label", "app=~(")
    assert out.returncode == 2 and "app=~(" in out.stderr

    # Rollups: asked for, or chosen by a long --since; the two cycles fall into one or two minutes.
    for args in (["--resolution", "1m"], ["--since", "3d"]):
        out = farmwatch("query", "-c", str(config), "up", "--label", "app=distributor", "--format", "json", *args)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert set(rows[0]) == {"ts", "name", "labels", "value", "min", "max", "last", "count"}
        assert sum(r["count"] for r in rows) == 2 and {r["value"] for r in rows} == {1.0}
    out = farmwatch("query", "-c", str(config), "up", "--store", "remote")
    assert out.returncode == 2 and "remote_write.query_url" in out.stderr


def test_top_once_shows_the_unit(config):
    out = farmwatch("top", "-c", str(config), "--once", env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "hlt01" in out.stdout and "in Hz" in out.stdout


DEMO_FAULTS = ("HltWorkersDied", "AnomalyScoreHigh", "HltLogErrorBurst", "HltEventsLost", "HltMonitorEndpointDown",
               "HltWorkersUnregistered", "HltAppRestarted", "HltWorkerNodeSlow", "FarmwatchSourceSilent",
               "HltInputStalled", "HltReadyQueueDrained", "HltFinalCollectorNotReceiving", "RunStateUnknown",
               "HltHistogramsNotMerged", "HltProxyHistogramsNotMerged", "HltProxyHistoServerDown", "HltRunStopIncomplete",
               "LogPatternRateAnomalous", "LogNewErrorPattern")


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2 min of CPU (shared with the notebook tests); a loaded machine takes a few times that
def test_demo_runs_the_scenario_and_every_fault_reaches_chat(demo_run):
    out_dir, out = demo_run
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    # Every shipped rule but FarmwatchDroppingSamples (a store that cannot keep up: test_selfwatch_rules)
    shipped = {r.name for r in load_rules([ALERTS])}
    assert shipped - set(DEMO_FAULTS) == {"FarmwatchDroppingSamples"}
    for rule in DEMO_FAULTS:
        assert re.search(rf"│ {rule} +│ \d+ s +│ \d+ s +│ 1 ", text), f"{rule} row missing or wrong:\n{text}"
    assert "never" not in text and ", 0 undelivered." in text
    assert "chat posted: ⚠️ FIRING [warning] HltLogErrorBurst — host hltwk10" in text
    assert "✅ RESOLVED HltLogErrorBurst — host hltwk10" in text
    # the burst's traceback is a new kind of error too, but one incident is one message: inhibited by the burst
    assert "New kind of error on hltwk10 (hlt03)" in text and "LogNewErrorPattern — unit hlt03" not in text
    assert "chat posted: ⚠️ FIRING [warning] LogNewErrorPattern — unit hlt02" in text
    assert "chat posted: 🔥 FIRING [critical] FarmwatchSourceSilent — source logs" in text
    assert "✅ RESOLVED FarmwatchSourceSilent — source logs" in text
    # The detector: trained on the quiet start, it reports the slowly degrading node; the anomalies that
    # follow from the faults the rules report in hlt01 and hlt03 are inhibited, never in chat.
    assert "anomaly models (workers_hlt01, workers_hlt02, workers_hlt03" in text
    assert "chat posted: ⚠️ FIRING [warning] AnomalyScoreHigh — family workers_hlt02" in text
    assert "AnomalyScoreHigh — family workers_hlt01" not in text and "AnomalyScoreHigh — family workers_hlt03" not in text
    assert "daq.run_state): RUNNING" in text  # read from the real IOC the demo started
    assert re.search(r"Log records: ([\d,]+) written on 12 worker nodes \(rotated at \+10:00, the collector hung for a "
                     r"while\), \1 stored — every one, once\.", text), text
    cfg = str(out_dir / "farmwatch.toml")
    listed = farmwatch("alerts", "-c", cfg, "--all", "--format", "json")
    alerts = [json.loads(line) for line in listed.stdout.splitlines()]
    assert set(DEMO_FAULTS) <= {a["rule"] for a in alerts}
    assert {dict(a["labels"]).get("unit") for a in alerts if a["rule"].startswith("Hlt")} >= {"hlt01", "hlt02", "hlt03"}
    odd = [a for a in alerts if a["rule"] == "AnomalyScoreHigh" and dict(a["labels"]).get("host") == "hltwk06"]
    assert odd and dict(odd[0]["labels"])["family"] == "workers_hlt02"
    # the error burst: 20 records/s from +08:00 to +09:00, every one stored and searchable
    found = farmwatch("logs", "search", "-c", cfg, "event skipped", "--host", "hltwk10", "--limit", "5000", "--format", "json")
    assert found.returncode == 0, found.stderr
    records = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(records) == 20 * 60
    assert all(r["log.level"] == "error" and "Traceback (most recent call last)" in r["message"] for r in records)
    assert {r["labels.unit"] for r in records} == {"hlt03"}
    # the models the demo trained are the config's: `farmwatch models list` reads them
    models = farmwatch("models", "list", "-c", cfg, env={**os.environ, "COLUMNS": "250"})
    assert models.returncode == 0 and all(f"workers_hlt0{i}" in models.stdout for i in (1, 2, 3)), models.stdout
    report = (out_dir / "report.html").read_text()
    assert f"Report: {out_dir / 'report.html'}" in text.replace("\n", "")
    assert report.count("data:image/png;base64,") == 5  # rates, worker nodes, anomaly scores, log errors, alert timeline
    assert "<td>HltInputStalled</td>" in report and "<td>RUNNING</td>" in report
    assert "<h2>Application logs</h2>" in report and "<td>hltwk10</td>" in report
    assert "<h2>Anomaly scores</h2>" in report
