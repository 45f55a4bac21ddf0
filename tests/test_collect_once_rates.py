"""Cron mode stores rates (issue 15 item 7): ``farmwatch collect --once`` runs a few seconds apart
against a simulated HLT unit. Each run is a new process; the previous run's counters are in the
store, so from the second run on every counter named in ``rates`` gets its ``:rate`` series, an
app restart between two runs is a counter reset (as in the running service), and a counter older
than ``rate_lookback`` is not used.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from farmwatch.sim import SimUnit
from farmwatch.store import SQLiteStore

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

DISTRIBUTOR = {"unit": "hlt07", "app": "distributor", "host": ""}


def _once(cfg: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "farmwatch", "collect", "--once", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _points(store: SQLiteStore, name: str) -> tuple[np.ndarray, np.ndarray]:
    frame = store.query(name, DISTRIBUTOR).sort_values("ts")
    return frame["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9, frame["value"].to_numpy()


def test_cron_runs_store_rates_from_the_previous_runs_counters(tmp_path: Path) -> None:
    db = tmp_path / "fw.db"
    with SimUnit("hlt07", worker_nodes=2, workers_per_node=2, input_rate=300.0, seed=6) as unit:
        cfg = tmp_path / "cron.toml"
        cfg.write_text(f'[store]\npath = "{db}"\n\n' + unit.config_toml("hlt", "1s", "500ms")
                       + 'rate_lookback = "6s"\n')
        _once(cfg)
        with SQLiteStore(db, readonly=True) as store:
            assert store.query("hlt.*:rate").empty  # nothing to compare with yet
        time.sleep(2)
        _once(cfg)
        with SQLiteStore(db, readonly=True) as store:
            ts, counts = _points(store, "hlt.input.received_events")
            (rate_ts,), (rate,) = _points(store, "hlt.input.received_events:rate")
            assert rate_ts == ts[1] and rate == pytest.approx((counts[1] - counts[0]) / (ts[1] - ts[0]), rel=1e-3)
            assert 150 < rate < 450  # the unit's input rate is 300 events/s
            per_peer = store.query("hlt.output.sent_events:rate", ["unit=hlt07", "app=distributor", "host!="])
            assert per_peer["labels"].map(lambda d: d.get("host")).nunique() == 2  # per worker node too

        unit.restart_app("distributor")  # its counters start again from 0
        time.sleep(2)
        _once(cfg)
        with SQLiteStore(db, readonly=True) as store:
            ts, counts = _points(store, "hlt.input.received_events")
            _, rates = _points(store, "hlt.input.received_events:rate")
            _, restarts = _points(store, "hlt.poll.restarts")
            assert counts[2] < counts[1] and len(rates) == 2
            assert rates[1] == pytest.approx(counts[2] / (ts[2] - ts[1]), rel=1e-3)  # a reset, not a negative rate
            assert restarts[-1] == 1

        time.sleep(7)  # longer than rate_lookback: the previous counters are too old to use
        _once(cfg)
        with SQLiteStore(db, readonly=True) as store:
            assert len(_points(store, "hlt.input.received_events")[0]) == 4
            assert len(_points(store, "hlt.input.received_events:rate")[0]) == 2
