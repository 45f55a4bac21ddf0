"""The command line as a new user meets it: one time parser, one error path, quiet pipes, the
config found without -c, tables that read at 80 columns, valid JSON, state shown at once.

Each test is one item of the command-line list of issue 16, against real store files, real
subprocesses, a real pseudo-terminal and a real metrics endpoint.
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.state import AlertDB
from farmwatch.cli import main
from farmwatch.cli import common
from farmwatch.clock import SimClock
from farmwatch.model import Alert, AlertState, Batch, LogRecord, labels
from farmwatch.store.logs import LogStore
from farmwatch.store.sqlite import SQLiteStore
from test_alert_lifecycle import SetRule

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAD_TIMES = ["abc", "1e400d", "2026-13-01", "5 minutes", "1x", "9" * 30 + "d", "99999d"]


def farmwatch(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if k != "FARMWATCH_CONFIG"}
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "farmwatch", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=run_env, **kw)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[store]\npath = "farm.db"\n[alerting]\nshipped_rules = false\n')
    SQLiteStore(tmp_path / "farm.db").close()
    return cfg


def _one_line_exit_2(call, capsys) -> str:
    """Run ``main`` (argparse errors exit through SystemExit): exit status 2, one line on stderr."""
    try:
        code = call()
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


# ---------------------------------------------------------------------------- time options
@pytest.mark.parametrize("bad", BAD_TIMES)
@pytest.mark.parametrize("command", [
    ["query", "up", "--since"], ["alerts", "--history", "--since"], ["rules", "test", "--from"],
    ["logs", "search", "--since"], ["train", "--from"], ["logs", "search", "--until"],
])
def test_a_bad_time_is_one_line_and_exit_2_in_every_command(command, bad, config, capsys):
    err = _one_line_exit_2(lambda: main([*command, bad, "-c", str(config)]), capsys)
    assert err.startswith(f"farmwatch {command[0]}")
    assert bad[:20] in err and any(why in err for why in ("nor an ISO time", "1000 years", "before the year 1970")), err


@pytest.mark.parametrize("good", ["10m", "1h30m", "2026-01-01T00:00", "2026-01-01T00:00:00+01:00", "now"])
def test_every_time_option_takes_durations_iso_times_and_now(good, config, capsys):
    assert main(["query", "up", "--since", good, "-c", str(config), "--format", "json"]) == 0
    assert main(["alerts", "--history", "--since", good, "-c", str(config)]) == 0
    assert main(["logs", "search", "--since", good, "-c", str(config)]) == 0


def test_a_bad_duration_is_one_line_and_exit_2(config, capsys):
    err = _one_line_exit_2(lambda: main(["silence", "add", "unit=hlt01", "--for", "2 hours", "--comment", "x",
                                         "-c", str(config)]), capsys)
    assert err.startswith("farmwatch silence add: argument --for: expected a duration")


# ------------------------------------------------------------------------- one error path
@pytest.mark.parametrize("argv", [
    ["query"],                                   # a missing argument
    ["nosuchcommand"],                           # an unknown command
    ["query", "up", "--format", "xml"],          # a bad choice
    ["alerts", "--since", "1h"],                 # --since without --history
    ["query", "up", "--label", "unit"],          # a bad matcher
])
def test_usage_errors_are_one_line_and_exit_2(argv, config, capsys):
    err = _one_line_exit_2(lambda: main([*argv, "-c", str(config)] if argv[0] != "nosuchcommand" else argv), capsys)
    assert err.startswith("farmwatch")


def test_alerts_since_without_history_says_what_to_do(config, capsys):
    err = _one_line_exit_2(lambda: main(["alerts", "--since", "1h", "-c", str(config)]), capsys)
    assert "--since goes with --history" in err


def test_config_errors_are_one_line_each_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nretention = "forever"\n[alerting]\nevaluation_intervall = "5s"\n')
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"{bad}: ") for line in err)
    assert main(["alerts", "-c", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.strip().endswith("cannot read the config file: No such file or directory")


def test_a_secret_in_a_chat_config_points_to_token_env_or_token_file(tmp_path, capsys):
    cfg = tmp_path / "fw.toml"
    cfg.write_text('[alerting.notify.chat]\nkind = "rocketchat"\nurl = "https://chat.example.org"\n'
                   'channel = "#hlt"\nuser_id = "u1"\ntoken = "s3cr3t"\n')
    assert main(["check-config", "-c", str(cfg)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{cfg}: alerting.notify.chat: token: secrets never go into the config")
    assert "token_env or token_file" in line and "s3cr3t" not in line


# -------------------------------------------------------------------- config without -c
def test_the_config_comes_from_farmwatch_config_or_the_default_path(config, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = farmwatch("check-config", cwd=elsewhere, env={"FARMWATCH_CONFIG": str(config)})
    assert found.returncode == 0 and found.stdout.startswith(f"{config}: OK"), found.stderr
    here = farmwatch("check-config", cwd=config.parent)
    assert here.returncode == 0 and here.stdout.startswith("farmwatch.toml: OK"), here.stderr
    none = farmwatch("alerts", cwd=elsewhere)
    assert none.returncode == 2 and none.stderr.strip().splitlines() == [
        "no config file: pass -c FILE, or set FARMWATCH_CONFIG, or create farmwatch.toml or "
        "/etc/farmwatch/farmwatch.toml"]


# ------------------------------------------------------------------------ exit code table
def test_exit_codes_are_documented_in_one_table():
    """docs/operations.md has the table; its codes are the ones the commands use."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = re.search(r"\| exit status \| meaning \|\n\|[-| ]+\|\n((?:\|.*\|\n)+)", text)
    assert table, "docs/operations.md: no exit status table"
    documented = {int(row.split("|")[1].strip().strip("`")) for row in table.group(1).splitlines()}
    used = {common.EXIT_OK, common.EXIT_FAIL, common.EXIT_USAGE, common.EXIT_UNREACHABLE, common.EXIT_INTERRUPTED}
    assert documented == used


# --------------------------------------------------------------------------- closed pipes
def _filled_store(tmp_path: Path) -> Path:
    """A config whose store has thousands of samples, log records and alert transitions, and a
    rule file that flaps on them: every listing command has far more than a pipe buffer to say."""
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[store]\npath = "farm.db"\n[alerting]\nshipped_rules = false\nevaluation_interval = "1s"\n')
    t0 = time.time() - 3000
    with SQLiteStore(tmp_path / "farm.db") as store:
        batches = []
        for i in range(3000):
            b = Batch(t0 + i)
            for u in range(4):
                b.add(("hlt.flap", labels(unit=f"hlt{u:02d}", app="distributor")), float(i % 2))
            batches.append(b)
        store.write(batches)
        LogStore(store).write_logs([LogRecord(t0 + i, "hltwk01", "basf2", "error", f"event {i} skipped: {'x' * 40}")
                                    for i in range(3000)])
        db = AlertDB(store)
        alert = Alert("Flap", labels(unit="hlt01"), AlertState.FIRING, "warning", "flapping " + "y" * 60)
        db.save_alerts([alert], [(t0 + i, "firing" if i % 2 else "resolved", alert) for i in range(3000)])
    (tmp_path / "flap.toml").write_text(
        '[[rule]]\nname = "Flap"\nkind = "threshold"\nseries = "hlt.flap"\nby = ["unit"]\nop = ">"\nvalue = 0\n'
        'summary = "Unit {unit} flaps"\n')
    return cfg


@pytest.mark.parametrize("argv", [
    ["query", "hlt.flap", "--format", "csv"], ["query", "hlt.flap", "--format", "json"], ["query", "hlt.flap"],
    ["logs", "search", "--limit", "3000"], ["alerts", "--history", "--since", "2h"],
    ["rules", "test", "--from", "50m", "--step", "1s", "{flap}"],
])
@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly(argv, tmp_path):
    cfg = _filled_store(tmp_path)
    argv = [a.replace("{flap}", str(tmp_path / "flap.toml")) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "farmwatch", *argv, "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()   # `| head -1`: read a line, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert first and err == ""


# ------------------------------------------------------------------------------- tables
def _series_store(tmp_path: Path) -> Path:
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[store]\npath = "farm.db"\n[alerting]\nshipped_rules = false\n')
    with SQLiteStore(tmp_path / "farm.db") as store:
        b = Batch(time.time() - 10)
        for node in range(1, 5):  # four series whose labels differ only at the very end
            b.add(("hlt.worker.processed_events", labels(unit="hlt01", app="distributor", host=f"hltwk0{node}",
                                                         pid=f"worker_process_identity_{node}")), 100.0 + node)
        store.write(b)
        db = AlertDB(store)
        db.save_alerts([Alert("HltWorkerNodeSlow", labels(unit="hlt01", host=f"hltwk0{n}"), AlertState.FIRING,
                              "warning", f"Unit hlt01: worker node hltwk0{n} gets under half the events of its peers",
                              starts_at=time.time() - 60) for n in range(1, 5)], [])
    return cfg


def _in_a_terminal(argv: list[str], columns: int = 80, keys: bytes = b"", wait_for: bytes = b"",
                   timeout: float = 40.0) -> tuple[int, str]:
    """Run ``farmwatch argv`` in a real pseudo-terminal of ``columns`` columns; type ``keys`` once
    ``wait_for`` was printed. Returns the exit status and what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(COLUMNS=str(columns), LINES="40", TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-m", "farmwatch", *argv])
    out, typed, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child is gone and the terminal closed
                    chunk = b""
                if not chunk:
                    break
                out += chunk
            if keys and not typed and wait_for in out:
                os.write(fd, keys)
                typed = True
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"farmwatch {' '.join(argv)} did not end in {timeout} s; it showed: {out[-2000:]!r}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", out.decode(errors="replace"))


def test_tables_are_plain_text_in_a_pipe(tmp_path):
    cfg = _series_store(tmp_path)
    out = farmwatch("query", "hlt.worker.processed_events", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ts", "series", "value"] and len(lines) == 5
    assert not re.search("[─│┃━┏┗╭╰]", out.stdout)
    for node in range(1, 5):  # every row whole, on one line
        assert sum(f"host=hltwk0{node},pid=worker_process_identity_{node},unit=hlt01" in line for line in lines) == 1
    alerts = farmwatch("alerts", "-c", str(cfg))
    rows = alerts.stdout.splitlines()
    assert rows[0].split()[:4] == ["id", "state", "severity", "alert"] and len(rows) == 5
    assert all("HltWorkerNodeSlow{host=hltwk0" in r and "gets under half the events of its peers" in r for r in rows[1:])


def _cells(shown: str, headers: list[str]) -> list[dict[str, str]]:
    """The rows of a table as a terminal showed it, each folded cell joined back (whitespace
    removed): columns from the header's positions, a new row where the first column has text."""
    lines = shown.replace("\r", "").splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:len(headers)] == headers)
    starts = [lines[head].index(f" {h} ") + 1 for h in headers] + [10_000]
    rows: list[dict[str, str]] = []
    for line in lines[head + 2:]:
        parts = [line[starts[i]:starts[i + 1]] for i in range(len(headers))]
        if parts[0].strip():
            rows.append({h: "" for h in headers})
        if rows:
            for h, part in zip(headers, parts):
                rows[-1][h] += re.sub(r"\s", "", part)
    return rows


def test_tables_fit_80_columns_on_a_terminal_and_cut_nothing(tmp_path):
    cfg = _series_store(tmp_path)
    code, shown = _in_a_terminal(["query", "hlt.worker.processed_events", "-c", str(cfg)], columns=80)
    assert code == 0, shown
    assert max(len(line) for line in shown.replace("\r", "").splitlines()) <= 80, shown
    rows = _cells(shown, ["ts", "series", "value"])
    assert [r["series"] for r in rows] == [
        f"hlt.worker.processed_events{{app=distributor,host=hltwk0{n},pid=worker_process_identity_{n},unit=hlt01}}"
        for n in range(1, 5)]
    code, shown = _in_a_terminal(["alerts", "-c", str(cfg)], columns=80)
    assert code == 0, shown
    assert max(len(line) for line in shown.replace("\r", "").splitlines()) <= 80, shown
    rows = _cells(shown, ["id", "state", "severity", "alert", "since", "summary"])
    assert [(r["alert"], r["summary"]) for r in rows] == [
        (f"HltWorkerNodeSlow{{host=hltwk0{n},unit=hlt01}}", f"Unithlt01:workernodehltwk0{n}getsunderhalftheeventsofitspeers")
        for n in range(1, 5)]


# --------------------------------------------------------------------------------- JSON
def _strict_json(text: str):
    def no_constants(name: str):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=no_constants)


def test_json_output_is_valid_json_with_null_for_nan(tmp_path, capsys):
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[store]\npath = "farm.db"\n[alerting]\nshipped_rules = false\n')
    with SQLiteStore(tmp_path / "farm.db") as store:
        b = Batch(time.time() - 5)
        b.add(("hlt.rate", labels(unit="hlt01")), math.nan)
        store.write(b)
        AlertDB(store).save_alerts([Alert("X", labels(unit="hlt01"), AlertState.FIRING, "warning", "x")], [])
    assert main(["query", "hlt.rate", "-c", str(cfg), "--format", "json"]) == 0
    (row,) = [_strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert row["value"] is None
    assert main(["alerts", "-c", str(cfg), "--format", "json"]) == 0
    (alert,) = [_strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert alert["value"] is None and alert["rule"] == "X"


def test_status_json_is_valid_json(tmp_path):
    """A collector's endpoint has no rule evaluation time (NaN inside): status prints null."""
    from farmwatch.service.selfmetrics import SelfMetrics

    metrics = SelfMetrics("collect")
    metrics.serve("127.0.0.1", 0)
    port = metrics._server[0].server_port
    try:
        out = farmwatch("status", "--url", f"http://127.0.0.1:{port}/metrics", "--format", "json")
    finally:
        metrics.close()
    assert out.returncode == 0, out.stderr
    summary = _strict_json(out.stdout)
    assert summary["service"] == "collect" and summary["rule_evaluation_s"] is None


# ------------------------------------------------------------------- state shown at once
def test_alerts_shows_a_silence_and_an_ack_at_once(config, capsys):
    """No service evaluates between the commands: the list reads silences and acks itself."""
    clock = SimClock(time.time())
    store = SQLiteStore(config.parent / "farm.db", clock=clock)
    rule = SetRule("HltInputStalled")
    engine = AlertEngine([rule], None, AlertDB(store), timers=Timers(group_wait=0), notifiers=["chat"], clock=clock)
    rule.on[labels(unit="hlt01")] = 0
    rule.on[labels(unit="hlt02")] = 0
    engine.evaluate(clock.time())
    assert main(["silence", "add", "unit=hlt01", "--for", "1h", "--comment", "swap", "--by", "kato",
                 "-c", str(config)]) == 0
    assert main(["ack", "unit=hlt02", "--by", "shifter", "--comment", "on it", "-c", str(config)]) == 0
    acked = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"acknowledged HltInputStalled\{unit=hlt02\} \(id [0-9a-f]{8}\) by shifter: on it", acked)
    assert main(["alerts", "-c", str(config), "--format", "json"]) == 0
    shown = {a["labels"][0][1]: a for a in map(json.loads, capsys.readouterr().out.splitlines())}
    assert shown["hlt01"]["silenced_by"].endswith("by kato") and shown["hlt01"]["acked_by"] is None
    assert shown["hlt02"]["acked_by"] == "shifter" and shown["hlt02"]["silenced_by"] is None
    assert main(["alerts", "-c", str(config)]) == 0
    table = capsys.readouterr().out
    assert "silenced (silence" in table and "acked by shifter" in table
    store.close()


def test_models_show_of_an_unknown_model_lists_the_saved_ones(tmp_path, capsys):
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text('[detect]\nmodels = "models"\n')
    (tmp_path / "models").mkdir()
    for name in ("workers_hlt01", "workers_hlt02"):
        (tmp_path / "models" / f"{name}.json").write_text("{}")
    err = _one_line_exit_2(lambda: main(["models", "show", "nope", "-c", str(cfg)]), capsys)
    assert "no model 'nope'" in err and "saved: workers_hlt01, workers_hlt02" in err


def test_rules_test_prints_each_transition_once(tmp_path):
    cfg = _filled_store(tmp_path)
    out = farmwatch("rules", "test", str(tmp_path / "flap.toml"), "--from", "10m", "--to", "9m", "--step", "1s",
                    "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    fired = [line for line in out.stdout.splitlines() if " FIRING " in line]
    assert len(fired) >= 10
    both = out.stdout + out.stderr
    for line in fired:
        assert both.count(line) == 1
    assert "Flap" not in out.stderr and "{'unit'" not in both


# ------------------------------------------------------------------------------- top
def test_top_quits_on_q(tmp_path):
    from farmwatch.sim import SimUnit

    with SimUnit("hlt01", worker_nodes=1, workers_per_node=2, input_rate=100.0, seed=2) as unit:
        cfg = tmp_path / "fw.toml"
        cfg.write_text('[store]\npath = "fw.db"\n' + unit.config_toml(source_name="hlt", interval="500ms",
                                                                      timeout="200ms"))
        started = time.monotonic()
        code, shown = _in_a_terminal(["top", "-c", str(cfg)], columns=100, keys=b"q", wait_for=b"farmwatch top")
    assert code == 0, shown
    assert "farmwatch top" in shown and time.monotonic() - started < 30


# ------------------------------------------------------------------------ rule unit tests
def test_the_shipped_rules_pass_their_unit_tests(capsys):
    assert main(["rules", "unittest", str(ROOT / "alerts" / "tests" / "hlt_test.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].endswith("test(s), 0 failed") and all(line.startswith("PASS") for line in out[:-1])


def test_a_wrong_expectation_fails_and_says_what_differs(tmp_path, capsys):
    rules = tmp_path / "stall.toml"
    rules.write_text('[[rule]]\nname = "Stalled"\nkind = "threshold"\nseries = "rate"\nby = ["unit"]\nop = "<="\n'
                     'value = 0\nfor = "30s"\nseverity = "critical"\nsummary = "{unit} stalled"\n')
    tests = tmp_path / "stall_test.toml"
    tests.write_text(f'rule_files = ["{rules.name}"]\nevaluation_interval = "10s"\n\n[[test]]\nname = "stall"\n'
                     'series = [{ series = \'rate{unit="hlt01"}\', values = "5x3 0x20" }]\n\n'
                     '[[test.alerts]]\nat = "50s"\nrule = "Stalled"\nfiring = []\n\n'
                     '[[test.alerts]]\nat = "1m10s"\nrule = "Stalled"\n'
                     'firing = [{ labels = { unit = "hlt01" }, summary = "hlt01 stalled" }]\n\n'
                     '[[test.alerts]]\nat = "1m40s"\nrule = "Stalled"\nfiring = [{ labels = { unit = "hlt02" } }]\n')
    assert main(["rules", "unittest", str(tests)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAIL  {tests}: stall"
    assert out[1:3] == ["      at 1m40s: Stalled{unit=hlt02} is not firing",
                        "      at 1m40s: Stalled{unit=hlt01} fires, not expected"]
    assert out[-1] == "1 test(s), 1 failed"


def test_a_bad_rule_test_file_is_one_line_per_problem_and_exit_2(tmp_path, capsys):
    tests = tmp_path / "bad_test.toml"
    tests.write_text('rule_files = ["none.toml"]\n[[test]]\nseries = [{ series = "rate{unit=hlt01}", values = "1" }]\n'
                     '[[test.alerts]]\nat = "soon"\nrule = "X"\n')
    assert main(["rules", "unittest", str(tests)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{tests}: test[0].alerts[0].at: expected a duration such as '500ms', '1s', '10m', '1h30m' or "
                   "'14d', got 'soon'"]


def test_expanding_notation_is_promtools():
    from farmwatch.alerting.ruletest import expand_values, parse_selector

    assert expand_values("1+2x3 5-1x2 7x2 _ _x2 RUNNINGx1 READY") == [
        1, 3, 5, 7, 5, 4, 3, 7, 7, 7, None, None, None, "RUNNING", "RUNNING", "READY"]
    assert parse_selector('hlt.rate{unit="hlt01", app="a\\"b"}') == ("hlt.rate", (("app", 'a"b'), ("unit", "hlt01")))
    with pytest.raises(ValueError):
        parse_selector("rate{unit=hlt01}")


# ------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_the_demo_timeline_ends_at_the_wall_clock_time(demo_run):
    """Right after the demo, `--since 10m` finds its last minutes and nothing in the future."""
    out, done = demo_run
    assert done.returncode == 0, done.stdout[-2000:]
    finished = (out / "report.html").stat().st_mtime  # written last
    with SQLiteStore(out / "farmwatch.db", readonly=True) as store:
        newest = store.latest("up")["ts"].max().timestamp()
    assert finished - 600 < newest <= finished + 1
