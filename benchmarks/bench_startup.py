"""CPU time of the read commands an operator types, with a ``[detect]`` section in the config,
against a named baseline in the same run.

Each command runs as a subprocess (``python -m farmwatch …``) on a small store, with its modules'
bytecode cached as an installed farmwatch has it; its CPU time (user + system, from
``getrusage(RUSAGE_CHILDREN)``) is what a person waits for before the first line appears,
dominated by imports. The config has a ``[detect]`` family, an ``hlt_zmq`` and a
``logfiles`` source, as the demo's config has: before the architecture step, reading such a config
imported scikit-learn, scipy and pandas.

Baseline "before": the same commands with farmwatch at commit 7aec121 (before the architecture
step), extracted with ``git archive`` and put first on ``PYTHONPATH``; same interpreter, same
packages, the same data (in a store the baseline wrote itself: it reads only its own schema). Target: every read command ≤ 0.5 s CPU. Three passes, medians with ranges;
the load average is recorded because other jobs share the machine.

Writes ``benchmarks/results/startup.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_ingest import machine  # noqa: E402

from farmwatch.alerting.state import AlertDB  # noqa: E402
from farmwatch.model import Alert, AlertState, Batch, LogRecord, labels  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402
from farmwatch.store.logs import LogStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BASELINE = "7aec121"
TARGET_S = 0.5
CONFIG = """
[store]
path = "farmwatch.db"

[sources.hlt]
kind = "hlt_zmq"
endpoints = [{ unit = "hlt01", app = "distributor", address = "tcp://127.0.0.1:7000" }]

[sources.logs]
kind = "logfiles"
paths = ["logs/*.log"]

[detect]
models = "models"
[detect.families.workers]
series = ["hlt.output.sent_events:rate", "hlt.input.received_events:rate"]
match = ["host=~hltwk.*"]
entity = ["unit", "host"]
window = 30
freq = "4s"
"""
COMMANDS = {
    "check-config": ["check-config"],
    "alerts": ["alerts"],
    "alerts --history": ["alerts", "--history", "--since", "1h"],
    "silence list": ["silence", "list"],
    "query": ["query", "hlt.output.ready_queue_size", "--since", "10m"],
    "logs search": ["logs", "search", "skipped", "--since", "1h", "--limit", "10"],
    "rules check": ["rules", "check"],
    "models list": ["models", "list"],
}


def make_store(folder: Path) -> Path:
    (folder / "farmwatch.toml").write_text(CONFIG)
    (folder / "models").mkdir()
    now = time.time()
    with SQLiteStore(folder / "farmwatch.db") as store:
        store.write([_batch(now - 600 + i) for i in range(0, 600, 2)])
        LogStore(store).write_logs([LogRecord(now - 600 + i, "hltwk01", "basf2", "error", f"event {i} skipped")
                                    for i in range(600)])
        alert = Alert("HltInputStalled", labels(unit="hlt01"), AlertState.FIRING, "critical", "input stalled")
        AlertDB(store).save_alerts([alert], [(now - 300, "firing", alert)])
    return folder / "farmwatch.toml"


def _batch(ts: float) -> Batch:
    b = Batch(ts)
    for unit in range(1, 4):
        b.add(("hlt.output.ready_queue_size", labels(unit=f"hlt{unit:02d}", app="distributor")), 40.0)
    return b


MAKE_STORE = """
import sys
sys.path[:0] = [{tree!r}, {bench!r}]
import farmwatch  # this tree's package: the farmwatch imports of bench_startup below come from it
from pathlib import Path
from bench_startup import make_store
make_store(Path({folder!r}))
"""


def store_of(tree: Path, folder: Path) -> Path:
    """``make_store`` in ``folder`` by the farmwatch of ``tree``, so that its store has the schema
    that tree reads (the baseline's is older than today's)."""
    folder.mkdir(parents=True)
    code = MAKE_STORE.format(tree=str(tree), bench=str(Path(__file__).resolve().parent), folder=str(folder))
    subprocess.run([sys.executable, "-c", code], check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return folder


def baseline_tree(folder: Path) -> Path:
    """The package as it was at ``BASELINE`` (git archive), to put first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", BASELINE, "farmwatch", "alerts"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


_WARM: set[tuple[str, ...]] = set()


def cpu_of(argv: list[str], cwd: Path, pythonpath: Path) -> float:
    """CPU of one run. Compiled modules are cached (in a folder of this run, not in the trees) as
    for an installed farmwatch, whatever PYTHONDONTWRITEBYTECODE the caller has set: the first run
    of each command and tree fills the cache and is not counted."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "120", "PYTHONPYCACHEPREFIX": str(cwd.parent / "pyc")}
    env.pop("FARMWATCH_CONFIG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    key = (str(pythonpath), *argv)
    for _ in range(1 if key in _WARM else 2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-m", "farmwatch", *argv, "-c", "farmwatch.toml"], cwd=cwd, env=env,
                              capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _WARM.add(key)
    if done.returncode != 0:
        raise SystemExit(f"farmwatch {' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fw-startup-") as tmp:
        tmp = Path(tmp)
        trees = {"farmwatch": ROOT, f"before ({BASELINE})": baseline_tree(tmp / "before")}
        works = {name: store_of(tree, tmp / "work" / str(i)) for i, (name, tree) in enumerate(trees.items())}
        times: dict[str, dict[str, list[float]]] = {name: {c: [] for c in COMMANDS} for name in trees}
        for _ in range(args.passes):
            for cmd, words in COMMANDS.items():
                for name, tree in trees.items():  # interleaved: both see the same load
                    times[name][cmd].append(cpu_of(words, works[name], tree))
    results = {name: {cmd: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
                      for cmd, v in per.items()} for name, per in times.items()}
    out = {"benchmark": "startup", "baseline": BASELINE, "target_s": TARGET_S, "passes": args.passes,
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "machine": machine(),
           "cpu_s": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    ours, before = results["farmwatch"], results[f"before ({BASELINE})"]
    print(f"{'command':<18} {'farmwatch CPU s':>22} {'before ' + BASELINE:>22}  ratio")
    for cmd in COMMANDS:
        a, b = ours[cmd], before[cmd]
        print(f"{cmd:<18} {a['median_s']:>8.2f} [{a['min_s']:.2f}–{a['max_s']:.2f}]"
              f" {b['median_s']:>10.2f} [{b['min_s']:.2f}–{b['max_s']:.2f}]  {a['median_s'] / b['median_s']:.2f}×"
              + ("" if a["median_s"] <= TARGET_S else "  (over the target)"))
    print(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
