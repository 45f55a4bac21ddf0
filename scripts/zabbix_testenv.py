#!/usr/bin/env python3
"""A real Zabbix 6.0 server with its JSON-RPC API on loopback, for farmwatch's tests and benchmarks.

Why a script and not a container: the tests must run on a fresh Debian machine from a clean
checkout, and Debian's own packages give a real Zabbix in well under a minute
(``shared/specs/zabbix-testenv.md``). Everything lives in one scratch directory:

* a private PostgreSQL cluster (loopback only, trust auth, fsync off) holding the database
  ``zabbix_tpl`` with the schema loaded once; each start copies it to a fresh ``zabbix``
  database (``CREATE DATABASE … TEMPLATE``, ~1 s instead of ~15 s of schema load);
* ``zabbix_server -f`` (trapper on a free port, ``CacheUpdateFrequency=2`` so new hosts and items
  are known within seconds);
* PHP's built-in web server serving ``/usr/share/zabbix`` (the API at ``/api_jsonrpc.php``).

Usage (as root, or as a user that can run these programs with the packages installed)::

    scripts/zabbix_testenv.py start     # prints FARMWATCH_TEST_ZABBIX_* lines (shell syntax)
    scripts/zabbix_testenv.py status
    scripts/zabbix_testenv.py stop      # stops what ``start`` started, by pid

The directory defaults to ``$FARMWATCH_ZABBIX_DIR`` or ``/tmp/farmwatch-zabbix``. Stdlib only, so
it also runs before the virtualenv exists. ``tests/zabbix_helpers.py`` imports it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGES = ["postgresql", "zabbix-server-pgsql", "zabbix-frontend-php", "php-cli", "php8.2-cgi", "php-pgsql",
            "zabbix-agent"]
"""``php8.2-cgi`` keeps apt from pulling in Apache; ``zabbix_sender`` comes with ``zabbix-agent``."""
SCHEMA_DIR = Path("/usr/share/zabbix-server-pgsql")
FRONTEND_DIR = Path("/usr/share/zabbix")
FRONTEND_CONF = Path("/etc/zabbix/zabbix.conf.php")
DEFAULT_DIR = Path(os.environ.get("FARMWATCH_ZABBIX_DIR", "/tmp/farmwatch-zabbix"))
ADMIN = ("Admin", "zabbix")  # the fresh schema's super admin; a loopback test server only


class TestEnvError(RuntimeError):
    """Zabbix could not be installed or started; the message says which step and where to look."""


@dataclass
class Env:
    """What a running test Zabbix is: where to reach it and which pids to stop."""

    dir: str
    pg_port: int = 0
    server_port: int = 0
    api_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def exports(self) -> dict[str, str]:
        return {
            "FARMWATCH_TEST_ZABBIX_URL": self.url,
            "FARMWATCH_TEST_ZABBIX_USER": ADMIN[0],
            "FARMWATCH_TEST_ZABBIX_PASSWORD": ADMIN[1],
            "FARMWATCH_TEST_ZABBIX_SENDER": f"127.0.0.1:{self.server_port}",
            "FARMWATCH_TEST_ZABBIX_DIR": self.dir,
        }


# -- small helpers ------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"zabbix-testenv: {msg}", file=sys.stderr, flush=True)


def free_port(low: int | None = None, high: int | None = None) -> int:
    """A free loopback port; zabbix_server only accepts ListenPort 1024-32767 (ephemeral ports are higher)."""
    if low is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    import random

    for _ in range(200):
        port = random.randint(low, high or low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise TestEnvError(f"no free loopback port in {low}-{high}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, check, timeout: float, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "; last log lines:\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
    raise TestEnvError(f"{what} not ready within {timeout:g}s{tail}")


def run(cmd: list[str], *, user: str | None = None, stdin: bytes | None = None, timeout: float = 300) -> str:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise TestEnvError(f"{shlex.join(cmd)} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()[-800:]}")
    return proc.stdout.decode(errors="replace")


# -- packages -----------------------------------------------------------------------------------
def missing_programs() -> list[str]:
    need = {"zabbix_server": shutil.which("zabbix_server"), "zabbix_sender": shutil.which("zabbix_sender"),
            "php": shutil.which("php"), "initdb": _pg_bin("initdb"),
            "frontend": (FRONTEND_DIR / "api_jsonrpc.php").exists() or None,
            "php-pgsql": Path("/etc/php").exists() and bool(glob.glob("/etc/php/*/mods-available/pgsql.ini")) or None,
            "schema": (SCHEMA_DIR / "schema.sql.gz").exists() or None}
    return [name for name, found in need.items() if not found]


def install_packages() -> None:
    """apt-get install (non-interactive) with a policy-rc.d so no service starts system-wide."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from debian_packages import apt_install

    t0 = time.monotonic()
    apt_install(PACKAGES, TestEnvError, log, f"; missing {', '.join(missing_programs())}: install them or point the "
                "tests at a Zabbix with FARMWATCH_TEST_ZABBIX_URL")
    log(f"packages installed in {time.monotonic() - t0:.0f}s")


# -- PostgreSQL ---------------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` user."""
    return "postgres" if os.geteuid() == 0 else None


def _psql(env: Env, sql: str, db: str = "postgres", user: str = "postgres") -> str:
    return run([_pg_bin("psql") or "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(env.pg_port), "-U", user, "-d", db, "-c", sql], timeout=120)


def _template_marker(base: Path) -> Path:
    return base / "template.ok"


def _schema_stamp() -> str:
    st = (SCHEMA_DIR / "schema.sql.gz").stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


def start_postgres(env: Env) -> None:
    base = Path(env.dir)
    data = base / "pg"
    user = _pg_user()
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
        _template_marker(base).unlink(missing_ok=True)
        data.mkdir(parents=True)
        if user:
            shutil.chown(data, user, user)
        run([_pg_bin("initdb") or "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8"], user=user)
    (data / "postmaster.pid").unlink(missing_ok=True) if not _pg_running(data) else None
    env.pg_port = free_port()
    opts = (f"-p {env.pg_port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c shared_buffers=64MB -c max_connections=60")
    run([_pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-l", str(data / "postgres.log"), "-o", opts, "-w",
         "-t", "60", "start"], user=user, timeout=90)
    env.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])


def _pg_running(data: Path) -> bool:
    pidfile = data / "postmaster.pid"
    return pidfile.exists() and alive(int(pidfile.read_text().split()[0]))


def prepare_database(env: Env) -> None:
    """Load the schema once into ``zabbix_tpl``; every start gets a fresh copy of it as ``zabbix``."""
    base = Path(env.dir)
    marker = _template_marker(base)
    if not (marker.exists() and marker.read_text() == _schema_stamp()):
        t0 = time.monotonic()
        _psql(env, "DROP DATABASE IF EXISTS zabbix")
        _psql(env, "DROP DATABASE IF EXISTS zabbix_tpl")
        _psql(env, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'zabbix') "
                   "THEN CREATE ROLE zabbix LOGIN; END IF; END$$")
        _psql(env, "CREATE DATABASE zabbix_tpl OWNER zabbix ENCODING 'UTF8' TEMPLATE template0")
        for part in ("schema", "images", "data"):
            sql = subprocess.run(["zcat", str(SCHEMA_DIR / f"{part}.sql.gz")], capture_output=True, check=True).stdout
            run([_pg_bin("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                 str(env.pg_port), "-U", "zabbix", "-d", "zabbix_tpl"], stdin=b"SET client_min_messages = warning;\n" + sql)
        marker.write_text(_schema_stamp())
        log(f"Zabbix schema loaded in {time.monotonic() - t0:.0f}s")
    _psql(env, "DROP DATABASE IF EXISTS zabbix WITH (FORCE)")
    _psql(env, "CREATE DATABASE zabbix OWNER zabbix TEMPLATE zabbix_tpl")


# -- Zabbix server and API ----------------------------------------------------------------------
def write_server_conf(env: Env) -> Path:
    base = Path(env.dir)
    conf = base / "zabbix_server.conf"
    conf.write_text("\n".join([
        "ListenIP=127.0.0.1", f"ListenPort={env.server_port}",
        f"LogFile={base / 'zabbix_server.log'}", "LogFileSize=0", f"PidFile={base / 'zabbix_server.pid'}",
        f"SocketDir={base}", "DBHost=127.0.0.1", f"DBPort={env.pg_port}", "DBName=zabbix", "DBUser=zabbix",
        "CacheUpdateFrequency=2", "HousekeepingFrequency=0", "AllowRoot=1", "Timeout=4",
        # A test server on a shared 2-core machine: few processes.
        "StartPollers=1", "StartPollersUnreachable=1", "StartPingers=0", "StartDiscoverers=0",
        "StartHTTPPollers=0", "StartTrappers=3", "StartPreprocessors=2", "StartDBSyncers=2",
        "StartLLDProcessors=1", "StartAlerters=1", "StartEscalators=1", "StartTimers=1",
        "CacheSize=32M", "HistoryCacheSize=32M", "HistoryIndexCacheSize=16M", "ValueCacheSize=32M",
        "TrendCacheSize=8M", "",
    ]))
    return conf


def write_frontend_conf(env: Env) -> None:
    """The Debian frontend reads /etc/zabbix/zabbix.conf.php; writing it skips the setup wizard."""
    try:
        FRONTEND_CONF.parent.mkdir(parents=True, exist_ok=True)
        _write_frontend_conf(env)
    except OSError as exc:
        raise TestEnvError(f"cannot write {FRONTEND_CONF} (the Debian frontend reads its DB settings there): "
                           f"{exc.strerror or exc}; run as root") from None


def _write_frontend_conf(env: Env) -> None:
    FRONTEND_CONF.write_text(f"""<?php
// Written by farmwatch scripts/zabbix_testenv.py for a loopback test server.
$DB['TYPE'] = 'POSTGRESQL';
$DB['SERVER'] = '127.0.0.1';
$DB['PORT'] = '{env.pg_port}';
$DB['DATABASE'] = 'zabbix';
$DB['USER'] = 'zabbix';
$DB['PASSWORD'] = '';
$DB['SCHEMA'] = '';
$DB['ENCRYPTION'] = false;
$DB['KEY_FILE'] = '';
$DB['CERT_FILE'] = '';
$DB['CA_FILE'] = '';
$DB['VERIFY_HOST'] = false;
$DB['CIPHER_LIST'] = '';
$DB['VAULT_URL'] = '';
$DB['VAULT_DB_PATH'] = '';
$DB['VAULT_TOKEN'] = '';
$DB['DOUBLE_IEEE754'] = true;
$ZBX_SERVER = '127.0.0.1';
$ZBX_SERVER_PORT = '{env.server_port}';
$ZBX_SERVER_NAME = 'farmwatch-test';
$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
""")


def _spawn(cmd: list[str], logfile: Path, extra_env: dict[str, str] | None = None) -> int:
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(extra_env or {})})
    return proc.pid


def api_ready(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "method": "apiinfo.version", "params": {}, "id": 1}).encode()
    req = urllib.request.Request(url + "/api_jsonrpc.php", body, {"Content-Type": "application/json-rpc"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return "result" in json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start_api(env: Env, *, port: int | None = None, memory_limit: str = "256M", name: str = "php") -> int:
    """PHP's built-in server on ``port`` (default: env.api_port); returns its pid once the API answers."""
    port = port or env.api_port
    php = shutil.which("php") or "php"
    pid = _spawn([php, "-d", "date.timezone=UTC", "-d", f"memory_limit={memory_limit}", "-d", "display_errors=0",
                  "-d", "log_errors=1", "-S", f"127.0.0.1:{port}", "-t", str(FRONTEND_DIR)],
                 Path(env.dir) / f"{name}.log", {"PHP_CLI_SERVER_WORKERS": "4"})
    env.pids[name] = pid
    wait_for(f"Zabbix API (PHP, {name}) on 127.0.0.1:{port}", lambda: api_ready(f"http://127.0.0.1:{port}"), 30,
             Path(env.dir) / f"{name}.log")
    return pid


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group (PHP workers, zabbix_server children), SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not alive(pid):
                return
            time.sleep(0.05)


def stop_api(env: Env, name: str = "php") -> None:
    pid = env.pids.pop(name, None)
    if pid:
        stop_pid(pid)


def start_server(env: Env) -> None:
    conf = write_server_conf(env)
    binary = shutil.which("zabbix_server") or "/usr/sbin/zabbix_server"
    env.pids["zabbix_server"] = _spawn([binary, "-f", "-c", str(conf)], Path(env.dir) / "zabbix_server.out")
    logfile = Path(env.dir) / "zabbix_server.log"
    wait_for(f"zabbix_server trapper on 127.0.0.1:{env.server_port}",
             lambda: port_open(env.server_port) or not alive(env.pids["zabbix_server"]), 60, logfile)
    if not alive(env.pids["zabbix_server"]):
        out = [f for f in (logfile, Path(env.dir) / "zabbix_server.out") if f.exists()]
        raise TestEnvError(f"zabbix_server exited at start; see {out[0] if out else logfile}: "
                           + " | ".join(out[0].read_text(errors="replace").splitlines()[-5:] if out else []))


# -- lifecycle ----------------------------------------------------------------------------------
def _state_file(base: Path) -> Path:
    return base / "state.json"


def load_state(base: Path = DEFAULT_DIR) -> Env | None:
    try:
        data = json.loads(_state_file(base).read_text())
        return Env(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_state(env: Env) -> None:
    _state_file(Path(env.dir)).write_text(json.dumps(asdict(env)))


def running(base: Path = DEFAULT_DIR) -> Env | None:
    """The environment started earlier, if all its processes are alive and the API answers."""
    env = load_state(base)
    if env and env.pids and all(alive(p) for p in env.pids.values()) and api_ready(env.url) \
            and port_open(env.server_port):
        return env
    return None


def start(base: Path = DEFAULT_DIR) -> tuple[Env, bool]:
    """Start (or reuse) the environment; returns it and whether this call started it."""
    existing = running(base)
    if existing:
        return existing, False
    t0 = time.monotonic()
    stop(base)  # leftovers of a half-dead earlier run
    if missing_programs():
        install_packages()
        if missing_programs():
            raise TestEnvError(f"still missing after apt-get install: {', '.join(missing_programs())}")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    env = Env(dir=str(base))
    try:
        try:
            start_postgres(env)
        except TestEnvError as exc:  # e.g. a cluster of another PostgreSQL version: start over, once
            log(f"reusing {base / 'pg'} failed ({exc}); creating it again")
            shutil.rmtree(base / "pg", ignore_errors=True)
            start_postgres(env)
        save_state(env)
        prepare_database(env)
        env.server_port, env.api_port = free_port(20000, 32000), free_port()
        write_frontend_conf(env)
        start_server(env)
        save_state(env)
        start_api(env)
        save_state(env)
    except BaseException:
        stop(base)
        raise
    log(f"Zabbix ready at {env.url} (trapper 127.0.0.1:{env.server_port}) in {time.monotonic() - t0:.1f}s")
    return env, True


def stop(base: Path = DEFAULT_DIR) -> None:
    env = load_state(base)
    if env is None:
        return
    for name in [n for n in env.pids if n != "postgres"]:
        stop_pid(env.pids[name])
    data = base / "pg"
    if _pg_running(data):
        try:
            run([_pg_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], user=_pg_user(), timeout=60)
        except TestEnvError as exc:
            log(str(exc))
    _state_file(base).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A real Zabbix on loopback for farmwatch's tests.")
    p.add_argument("command", choices=("start", "stop", "status"))
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"scratch directory (default {DEFAULT_DIR})")
    args = p.parse_args(argv)
    try:
        if args.command == "start":
            env, _ = start(args.dir)
            for k, v in env.exports().items():
                print(f"export {k}={shlex.quote(v)}")
        elif args.command == "stop":
            stop(args.dir)
        else:
            env = running(args.dir)
            print(f"running at {env.url}" if env else "not running")
            return 0 if env else 1
    except TestEnvError as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
