"""Log rotation against a real ``farmwatch collect`` process: rename, copytruncate and recreate,
each with the collector running, stopped (SIGTERM) and killed (kill -9) while the rotation
happens. Every record written is stored exactly once.

Issue 15 item 4: a copytruncate while the collector was stopped stored the whole copy again
(the stored offset of the truncated file no longer matched its fingerprint and was dropped
instead of being carried to the copy that now holds that content).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from farmwatch.sim.logwriters import HltLogWriter
from farmwatch.store import SQLiteStore, StoreError
from farmwatch.store.logs import LogStore

pytestmark = pytest.mark.timeout(240)
SEQ = re.compile(r"seq=(\d+)")
CONFIG = """\
[store]
path = "fw.db"

[sources.app]
kind = "logfiles"
paths = ["logs/app.log*"]
host = "hltwk01"
service = "app"
interval = "200ms"
timeout = "100ms"
multiline_wait = "300ms"
"""


class Collector:
    """``farmwatch collect`` in its own process; its stderr goes to a file kept for the report."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.starts = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.starts += 1
        err = open(self.config.parent / f"collect-{self.starts}.err", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "collect", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=err)
        err.close()

    def stop(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.config.parent.glob("collect-*.err")))


def stored(db: Path) -> list:
    if not db.exists():
        return []
    with SQLiteStore(db, readonly=True) as store:
        return LogStore(store).search(limit=10**7)


def count(db: Path) -> int:
    try:
        return len(stored(db))
    except StoreError:  # the collector has created the file but not its tables yet
        return 0


def wait_stored(db: Path, n: int, collector: Collector, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if count(db) >= n:
            return
        assert collector.proc is None or collector.proc.poll() is None, collector.log()
        time.sleep(0.1)
    raise AssertionError(f"{count(db)} of {n} records stored after {seconds:.0f} s\n{collector.log()}")


@pytest.mark.parametrize("mode", ["rename", "copytruncate", "recreate"])
@pytest.mark.parametrize("halt", ["running", "sigterm", "kill9"])
def test_rotation_loses_nothing_and_stores_nothing_twice(tmp_path: Path, mode: str, halt: str):
    (tmp_path / "logs").mkdir()
    config = tmp_path / "farmwatch.toml"
    config.write_text(CONFIG)
    db = tmp_path / "fw.db"
    writer = HltLogWriter(tmp_path / "logs" / "app.log")
    collector = Collector(config)
    collector.start()
    try:
        for round_ in range(2):
            writer.write(100)
            wait_stored(db, len(writer.written), collector)
            writer.write(300)  # still being read when the collector stops (or the file rotates)
            if halt != "running":
                time.sleep(0.05)
                code = collector.stop(signal.SIGTERM if halt == "sigterm" else signal.SIGKILL)
                assert code == (0 if halt == "sigterm" else -signal.SIGKILL), collector.log()
                writer.write(20)  # written while nothing collects
            writer.rotate(mode)
            if round_ == 0:
                writer.write(10)
            if halt != "running":
                collector.start()  # in the second round it finds the new (or emptied) file empty
            writer.write(10)
            wait_stored(db, len(writer.written), collector)
        time.sleep(1.0)  # a late duplicate would arrive now
        assert collector.stop(signal.SIGTERM) == 0, collector.log()
    finally:
        if collector.proc is not None:
            collector.proc.kill()
            collector.proc.wait()
        writer.close()
    records = stored(db)
    by_seq = Counter(int(SEQ.search(r.fields["event.original"]).group(1)) for r in records)
    twice = sorted(s for s, n in by_seq.items() if n > 1)
    lost = sorted({w.seq for w in writer.written} - set(by_seq))
    assert not twice and not lost, f"{len(twice)} stored twice {twice[:10]}, {len(lost)} lost {lost[:10]}\n{collector.log()}"
    texts = {int(SEQ.search(r.fields["event.original"]).group(1)): r.fields["event.original"] for r in records}
    assert all(texts[w.seq] == w.text for w in writer.written)  # every record whole
