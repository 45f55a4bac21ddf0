"""Collectors sharing one store keep their own health series apart (issue 15 item 6): two real
``farmwatch collect`` processes, one store file, a simulated HLT unit split between them.

Before the fix both wrote ``farmwatch.written_samples`` (and the other self-metrics) without a
label saying which process: one series, stepping back and forth between the two counts, with
equal-millisecond points of both.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from farmwatch.sim import SimUnit
from farmwatch.sim.sockets import endpoints_toml
from farmwatch.store import SQLiteStore

pytestmark = pytest.mark.timeout(120)

SELF = ["farmwatch.written_samples", "farmwatch.dropped_samples", "farmwatch.queue_depth", "farmwatch.written_logs",
        "farmwatch.refused_log_batches", "farmwatch.source.cycle_duration", "farmwatch.source.samples",
        "farmwatch.source.overruns"]


@pytest.mark.slow
def test_two_collectors_on_one_store_write_their_own_health_series(tmp_path: Path) -> None:
    with SimUnit("hlt07", worker_nodes=2, workers_per_node=2, input_rate=300.0, seed=3) as unit:
        half = len(unit.endpoints) // 2
        configs = []
        for name, endpoints in (("hlt-a", unit.endpoints[:half]), ("hlt-b", unit.endpoints[half:])):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text('[store]\npath = "fw.db"\n\n' + endpoints_toml(endpoints, "hlt", "200ms", "100ms"))
            configs.append(cfg)
        procs = [subprocess.Popen([sys.executable, "-m", "farmwatch", "collect", "-c", str(cfg)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for cfg in configs]
        try:
            time.sleep(8)
            for p in procs:
                assert p.poll() is None, p.stderr.read() if p.stderr else ""
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            results = [(p.wait(timeout=30), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0], results

    host = socket.gethostname().split(".")[0]
    with SQLiteStore(tmp_path / "fw.db", readonly=True) as store:
        for name in SELF:
            frame = store.query(name)
            assert not frame.empty, name
            by_series = frame.groupby(frame["labels"].map(lambda d: tuple(sorted(d.items()))))
            instances = {dict(key).get("instance") for key, _ in by_series}
            assert instances == {f"hlt-a@{host}", f"hlt-b@{host}"}, (name, instances)
            for key, rows in by_series:
                ts = rows["ts"].to_numpy(dtype="datetime64[ms]").astype(np.int64)
                assert len(ts) == len(set(ts.tolist())), f"{name}{dict(key)}: equal-millisecond points"
                if name == "farmwatch.written_samples":
                    values = rows.sort_values("ts")["value"].to_numpy()
                    assert len(values) > 10 and (np.diff(values) >= 0).all(), f"{name}{dict(key)} stepped back"


def test_the_instance_label_is_the_config_name_and_host_unless_configured(tmp_path: Path) -> None:
    from farmwatch.config.loader import load
    from farmwatch.service.selfmetrics import instance

    host = socket.gethostname().split(".")[0]
    cfg = tmp_path / "hlt-zmq.toml"
    cfg.write_text("[store]\npath = \"fw.db\"\n")
    assert instance(load(cfg)) == f"hlt-zmq@{host}"
    assert instance(load(cfg), ["hlt", "logs"]) == f"hlt-zmq:hlt,logs@{host}"
    cfg.write_text("[store]\npath = \"fw.db\"\n[self_metrics]\ninstance = \"hlt-zmq-2\"\n")
    assert instance(load(cfg), ["hlt"]) == "hlt-zmq-2"
