#!/usr/bin/env python3
"""Real Prometheus-compatible TSDBs on loopback for farmwatch's remote-write tests and benchmarks.

Debian's packages give both in seconds: ``victoria-metrics`` (single node) and ``prometheus`` (with
``--web.enable-remote-write-receiver``). They are installed with apt-get when missing (as root, no
service started system-wide) and run as child processes on free ports with their data in a
scratch directory:

* VictoriaMetrics with ``-dedup.minScrapeInterval=1ms`` (a request sent twice after a crash
  counts once, as in production: docs/remote-write.md), ``-search.latencyOffset=0s`` (the newest
  samples are visible at once) and a retention of 100 years (old benchmark data is kept);
* Prometheus with an out-of-order window of one hour (late samples, e.g. a Zabbix catch-up).

Usage::

    scripts/tsdb_testenv.py start [victoria|prometheus]   # prints URL lines, keeps running until Ctrl-C
    scripts/tsdb_testenv.py install

Stdlib only. ``tests/tsdb_helpers.py`` and ``benchmarks/bench_store_density.py`` import it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {"victoria-metrics": "victoria-metrics", "prometheus": "prometheus", "promtool": "prometheus"}
"""Program → Debian package."""


class TestEnvError(RuntimeError):
    """A TSDB could not be installed or started; the message says which and where to look."""


def log(message: str) -> None:
    print(f"tsdb_testenv: {message}", file=sys.stderr, flush=True)


def missing() -> list[str]:
    return [prog for prog in PACKAGES if shutil.which(prog) is None]


def install() -> None:
    """apt-get install what is missing (non-interactive, with a policy-rc.d so no service starts)."""
    need = sorted({PACKAGES[p] for p in missing()})
    if not need:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from debian_packages import apt_install

    apt_install(need, TestEnvError, log, f"; missing {', '.join(missing())}")
    if missing():
        raise TestEnvError(f"still missing after apt-get install: {', '.join(missing())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running TSDB: ``write_url`` for remote write, ``url`` for the query API."""

    kind: str
    dir: Path
    port: int
    args: list[str]
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.dir / f"{self.kind}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def start(self, timeout: float = 60.0) -> Server:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        ready = "/health" if self.kind == "victoria" else "/-/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestEnvError(f"{self.kind} exited with {self.proc.returncode} at start; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + ready, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TestEnvError(f"{self.kind} did not answer on {self.url} within {timeout:.0f}s; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: as a crash); its data stays for a ``start`` again."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def query(self, endpoint: str, **params: str) -> object:
        """GET /api/v1/<endpoint>: the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{endpoint}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=60) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise TestEnvError(f"{url}: {doc}")
        return doc["data"]


def victoria(base: Path, port: int | None = None) -> Server:
    port = port or free_port()
    data = base / "victoria-data"
    return Server("victoria", base, port, [
        shutil.which("victoria-metrics") or "victoria-metrics", f"-storageDataPath={data}",
        f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms",
        "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN"])


def prometheus(base: Path, port: int | None = None) -> Server:
    port = port or free_port()
    base.mkdir(parents=True, exist_ok=True)
    config = base / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n")
    return Server("prometheus", base, port, [
        shutil.which("prometheus") or "prometheus", f"--config.file={config}", f"--storage.tsdb.path={base / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver",
        "--storage.tsdb.retention.time=100y", "--log.level=warn"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("install", "start"))
    parser.add_argument("kind", nargs="?", choices=("victoria", "prometheus"), default="victoria")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("FARMWATCH_TSDB_DIR", "/tmp/farmwatch-tsdb")))
    args = parser.parse_args(argv)
    try:
        install()
        if args.command == "install":
            return 0
        server = (victoria if args.kind == "victoria" else prometheus)(args.dir / args.kind).start()
    except TestEnvError as exc:
        log(str(exc))
        return 1
    print(f"FARMWATCH_TEST_TSDB_URL={server.url}\nFARMWATCH_TEST_TSDB_WRITE_URL={server.write_url}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
