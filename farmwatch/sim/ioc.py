"""A real EPICS IOC for tests and the demo: epicscorelibs' IOC core in a child process.

``SimIOC`` writes a ``.db`` file, starts ``python -m farmwatch.sim.ioc <db>`` with the Channel
Access server bound to 127.0.0.1 on a free port (``shared/specs/nsm-epics.md``: one port per IOC,
loopback only, no PV Access), waits for its READY line and stops it with SIGTERM. ``restart()``
keeps the port, so clients reconnect to the same address. With caproto installed a CA repeater
(``python -m farmwatch.sim.ioc --repeater``) runs next to it on its own port: the spec measured
~19 s to reconnect after a long outage without one and ~2.6 s with one (after a short outage, as
in the tests, reconnecting takes 5–10 s either way).

Values are changed from the test side *inside the IOC process* (``set`` sends a line to the
launcher, which runs the IOC shell's ``dbpf``), so nothing ever writes over Channel Access.

Default records: the run state of the top run-control node as ``stringin``
(``B2_nsm:get:RUNCONTROL:rcstate``, the nsm2cad bridge name) and as ``mbbi`` with the run-control
labels, a ``calc`` counter (10 Hz) driving an ``ai``, a ``waveform``, a few
``B2_nsm:get:HLT01:<var>`` names, and records for the awkward types a client meets: a ``CHAR``
waveform holding text, a ``STRING`` waveform, an ``mbbi`` without labels, and an ``ai``
(``SIM:morph``) that a test turns into a ``stringin`` across a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

RUN_STATES = ("OFF", "NOTREADY", "READY", "RUNNING", "PAUSED", "LOADING", "STARTING", "STOPPING",
              "CONFIGURING", "ERROR", "FATAL", "BOOTING", "RECOVERING", "ABORTING", "UNKNOWN")
"""Run-control states (``rcstate``) in the order of the simulated ``mbbi``'s values."""

_MBBI_FIELDS = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")

Records = Mapping[str, tuple[str, Mapping[str, Any]]]
"""``{name: (record type, {field: value})}``; names and values may use ``$(P)`` (the prefix)."""


def _run_state_mbbi(initial: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"VAL": RUN_STATES.index(initial), "PINI": "YES"}
    for i, state in enumerate(RUN_STATES):
        fields[_MBBI_FIELDS[i] + "ST"] = state
        fields[_MBBI_FIELDS[i] + "VL"] = i
    return fields


DEFAULT_RECORDS: dict[str, tuple[str, dict[str, Any]]] = {
    "B2_nsm:get:RUNCONTROL:rcstate": ("stringin", {"VAL": "RUNNING", "PINI": "YES"}),
    "SIM:RUNCONTROL:state": ("mbbi", _run_state_mbbi("RUNNING")),
    "SIM:counter": ("calc", {"SCAN": ".1 second", "INPA": "$(P)SIM:counter NPP", "CALC": "A+1", "FLNK": "$(P)SIM:value"}),
    "SIM:value": ("ai", {"INP": "$(P)SIM:counter NPP", "PREC": 1, "EGU": "counts"}),
    "SIM:wave": ("waveform", {"FTVL": "DOUBLE", "NELM": 8, "INP": "[1, 2, 3, 4]", "PINI": "YES"}),
    "SIM:text": ("waveform", {"FTVL": "CHAR", "NELM": 64, "INP": '{const:"run 4711: beam OK"}', "PINI": "YES"}),
    "SIM:strings": ("waveform", {"FTVL": "STRING", "NELM": 3, "INP": '["a", "b"]', "PINI": "YES"}),
    "SIM:nolabels": ("mbbi", {"VAL": 1, "PINI": "YES"}),
    "SIM:morph": ("ai", {"VAL": 1.5, "PINI": "YES"}),
    "B2_nsm:get:HLT01:rcstate": ("stringin", {"VAL": "RUNNING", "PINI": "YES"}),
    "B2_nsm:get:HLT01:nworkers": ("longin", {"VAL": 12, "PINI": "YES"}),
    "B2_nsm:get:HLT01:input:rate": ("ai", {"VAL": 1000.0, "PINI": "YES", "PREC": 1}),
}


def _db_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return repr(value) if isinstance(value, float) else str(value)


def render_db(records: Records) -> str:
    """The ``.db`` text for ``records``."""
    out = []
    for name, (rtype, fields) in records.items():
        out.append(f'record({rtype}, "$(P){name}") {{')
        for field, value in fields.items():
            out.append(f"    field({field}, {json.dumps(_db_value(value))})")
        out.append("}")
    return "\n".join(out) + "\n"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Channel Access uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free TCP+UDP port on 127.0.0.1")


def _repeater_command() -> list[str] | None:
    """caproto's repeater, run by our launcher so that it ends with its parent (end of stdin)."""
    try:
        import caproto.sync.repeater  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "farmwatch.sim.ioc", "--repeater"]


class SimIOC:
    """One IOC in a child process; see the module docstring."""

    def __init__(self, records: Records | None = None, prefix: str = "", *, port: int | None = None,
                 repeater: bool = True, startup_timeout: float = 20.0) -> None:
        self.records = dict(DEFAULT_RECORDS if records is None else records)
        self.prefix = prefix
        self.port = port or free_port()
        self.repeater_port = free_port()
        self.want_repeater = repeater
        self.startup_timeout = startup_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="farmwatch-ioc-"))
        self.db_path = self._dir / "sim.db"
        self.log_path = self._dir / "ioc.log"
        self._proc: subprocess.Popen[str] | None = None
        self._repeater: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses -----------------------------------------------------------------------------
    def pv(self, name: str) -> str:
        return self.prefix + name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_env(self) -> dict[str, str]:
        """Client environment that finds this IOC (and only it)."""
        return {"EPICS_CA_ADDR_LIST": self.address, "EPICS_CA_AUTO_ADDR_LIST": "NO",
                "EPICS_CA_REPEATER_PORT": str(self.repeater_port)}

    @property
    def ca_config(self) -> dict[str, Any]:
        """The same as source config keys (``[sources.x]`` of kind epics or nsm)."""
        return {"ca_addr_list": [self.address], "ca_auto_addr_list": False, "ca_repeater_port": self.repeater_port}

    def _server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CA_SERVER_PORT": str(self.port),
            "EPICS_CA_REPEATER_PORT": str(self.repeater_port),
            "EPICS_CA_ADDR_LIST": "127.0.0.1",
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        })
        return env

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "SimIOC":
        if self.running:
            return self
        if self.want_repeater and (self._repeater is None or self._repeater.poll() is not None):
            cmd = _repeater_command()
            if cmd is not None:
                self._repeater = subprocess.Popen(cmd, env=self._server_env(), stdin=subprocess.PIPE,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.db_path.write_text(render_db(self.records), encoding="utf-8")
        log = open(self.log_path, "a", encoding="utf-8")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "farmwatch.sim.ioc", str(self.db_path), "--macros", f"P={self.prefix}"],
                env=self._server_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        finally:
            log.close()
        line = self._read_line(self.startup_timeout)
        if line != "READY":
            self._kill()
            raise RuntimeError(f"IOC did not start ({line or 'no READY line'}); its log: {self.log_path}\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """SIGTERM and wait (the IOC's channels go away at once; clients see a disconnect)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()

    def kill(self) -> None:
        """SIGKILL, as a crashed IOC (its TCP circuits are closed by the kernel)."""
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def restart(self) -> "SimIOC":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._repeater is not None:
            self._repeater.terminate()
            try:
                self._repeater.wait(5)
            except subprocess.TimeoutExpired:
                self._repeater.kill()
                self._repeater.wait()
            if self._repeater.stdin is not None:
                self._repeater.stdin.close()
            self._repeater = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SimIOC":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- values from the test side -------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """Set ``prefix + name`` inside the IOC (IOC shell ``dbpf``; no Channel Access write)."""
        if not self.running:
            raise RuntimeError("IOC is not running")
        assert self._proc is not None and self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(json.dumps({"pv": self.pv(name), "value": value}) + "\n")
            self._proc.stdin.flush()
            reply = self._read_line(5.0)
        if reply != "OK":
            raise RuntimeError(f"setting {self.pv(name)} = {value!r} failed: {reply or 'no reply'}")

    def _read_line(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        return result[0].strip() if result else ""


# -- the child process ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m farmwatch.sim.ioc", description="Run a soft IOC (epicscorelibs) "
                                     "on the CA port of EPICS_CA_SERVER_PORT until SIGTERM or end of stdin.")
    parser.add_argument("db", nargs="?", help="database file (.db)")
    parser.add_argument("--macros", default="", help="macro definitions, e.g. P=TEST:")
    parser.add_argument("--repeater", action="store_true", help="run a CA repeater (caproto) instead of an IOC, "
                        "on EPICS_CA_REPEATER_PORT, until SIGTERM or end of stdin")
    args = parser.parse_args(argv)
    if args.repeater:
        return _run_repeater()
    if not args.db:
        parser.error("a database file is required (or --repeater)")

    # Our own protocol (READY, OK) goes to the original stdout; the IOC shell's prints go to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    from epicscorelibs import ioc

    ioc.start_ioc(dbs=[(args.db, args.macros)])
    proto.write("READY\n")
    for line in sys.stdin:  # end of stdin (the parent is gone) stops the IOC too
        try:
            cmd = json.loads(line)
            value = cmd["value"]
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            status = ioc.ioc(f"dbpf {json.dumps(cmd['pv'])} {json.dumps(text)}")
            proto.write("OK\n" if status == 0 else f"ERR dbpf returned {status}\n")
        except Exception as exc:  # noqa: BLE001 - report any bad command to the parent
            proto.write(f"ERR {exc}\n")
    return 0


def _run_repeater() -> int:
    from caproto.sync.repeater import run

    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    threading.Thread(target=run, daemon=True).start()
    sys.stdin.read()  # until the parent closes stdin or dies
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULT_RECORDS", "RUN_STATES", "Records", "SimIOC", "free_port", "main", "render_db"]
