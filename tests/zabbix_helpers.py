"""A real Zabbix for the tests and the benchmark: started by ``scripts/zabbix_testenv.py``, or given.

``zabbix_env()`` returns a ``TestZabbix`` (an admin API session, the trapper address, helpers to
create hosts and items, push values with ``zabbix_sender`` and wait until Zabbix has them). When
``FARMWATCH_TEST_ZABBIX_URL`` is set, that Zabbix is used instead (a 6.0+ server whose user may
create host groups, hosts, items and triggers):

    FARMWATCH_TEST_ZABBIX_URL=https://zabbix.example/zabbix
    FARMWATCH_TEST_ZABBIX_USER=farmwatch-test  FARMWATCH_TEST_ZABBIX_PASSWORD=…
    FARMWATCH_TEST_ZABBIX_SENDER=zabbix.example:10051     # its trapper, for zabbix_sender

Tests that stop the API frontend only run against the Zabbix this module started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pyzabbix import ZabbixAPI

ROOT = Path(__file__).resolve().parent.parent
HOW_TO = (
    "a real Zabbix is needed: run the tests as root on Debian (scripts/zabbix_testenv.py installs and starts "
    "one from Debian's packages), or point them at a Zabbix 6.0+ with FARMWATCH_TEST_ZABBIX_URL, "
    "FARMWATCH_TEST_ZABBIX_USER, FARMWATCH_TEST_ZABBIX_PASSWORD and FARMWATCH_TEST_ZABBIX_SENDER (host:port of "
    "its trapper; zabbix_sender must be installed)"
)


def testenv_module():
    """``scripts/zabbix_testenv.py`` as a module (scripts/ is not a package)."""
    name = "farmwatch_zabbix_testenv"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "zabbix_testenv.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class TestZabbix:
    url: str
    user: str
    password: str
    sender: tuple[str, int]
    managed: Any = None
    """The testenv ``Env`` when this process started Zabbix (then the API can be stopped)."""
    started: bool = False
    api: ZabbixAPI = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.login()

    def login(self) -> ZabbixAPI:
        api = ZabbixAPI(self.url, timeout=30)
        api.login(self.user, self.password)
        return api

    # -- objects ---------------------------------------------------------------------------------
    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def group(self, name: str) -> str:
        return self.api.hostgroup.create(name=name)["groupids"][0]

    def host(self, name: str, groupid: str) -> str:
        return self.api.host.create(host=name, groups=[{"groupid": groupid}])["hostids"][0]

    def trapper(self, hostid: str, key: str, value_type: int = 0) -> str:
        return self.api.item.create(hostid=hostid, name=key, key_=key, type=2, value_type=value_type,
                                    history="7d", trends="90d" if value_type in (0, 3) else "0")["itemids"][0]

    def synced(self, host: str, hostid: str) -> None:
        """Until the server's configuration cache has everything created so far (it syncs every 2 s).

        Creates one more trapper item and pushes to it until the server accepts the value: its
        configuration sync then also carried every host and item created before it.
        """
        key = f"fw.sync[{uuid.uuid4().hex[:6]}]"
        self.trapper(hostid, key)
        self.push([(host, key, int(time.time()), 0, 1)])

    def trapper_items(self, specs: list[tuple[str, str, int]]) -> list[str]:
        """Trapper items (hostid, key, value type) in one call; their ids in the same order."""
        return self.api.item.create(*[{"hostid": hid, "name": key, "key_": key, "type": 2, "value_type": vt,
                                       "history": "7d", "trends": "90d" if vt in (0, 3) else "0"}
                                      for hid, key, vt in specs])["itemids"]

    # -- values ----------------------------------------------------------------------------------
    def push(self, values: Iterable[tuple[str, str, int, int, object]], attempts: int = 80) -> None:
        """Send (host, key, clock, ns, value) rows with zabbix_sender, retrying until all are accepted.

        A new host or item is unknown to the server until its next configuration sync
        (CacheUpdateFrequency=2 s), so the first attempts may be refused.
        """
        rows = list(values)
        sender = shutil.which("zabbix_sender") or "/usr/bin/zabbix_sender"
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            for host, key, clock, ns, value in rows:
                f.write(f'"{host}" "{key}" {clock} {ns} "{value}"\n')
            path = f.name
        try:
            for _ in range(attempts):
                proc = subprocess.run([sender, "-z", self.sender[0], "-p", str(self.sender[1]), "-T", "-N", "-i", path],
                                      capture_output=True, text=True, timeout=60)
                out = proc.stdout
                if proc.returncode == 0 and "failed: 0;" in out:
                    return
                if "processed: 0;" not in out:  # a partial send cannot be repeated without duplicates
                    raise AssertionError(f"zabbix_sender delivered only part of {len(rows)} values: {out.strip()[-300:]}")
                time.sleep(0.25)
            raise AssertionError(f"zabbix_sender could not deliver {len(rows)} values: {out.strip()[-300:]}")
        finally:
            os.unlink(path)

    def wait_history(self, itemids: list[str], count: int, value_type: int = 0, since: int = 0,
                     timeout: float = 30.0) -> None:
        """Until Zabbix's API returns ``count`` values of these items (the history syncer is asynchronous)."""
        deadline = time.monotonic() + timeout
        got = 0
        while time.monotonic() < deadline:
            got = len(self.api.history.get(history=value_type, itemids=itemids, time_from=since, output=["clock"]))
            if got >= count:
                return
            time.sleep(0.2)
        raise AssertionError(f"Zabbix has {got} of {count} values of items {itemids[:5]}… after {timeout:g}s")

    # -- the frontend ----------------------------------------------------------------------------
    def stop_api(self, name: str = "php") -> None:
        self.testenv.stop_api(self.managed, name=name)
        self.testenv.save_state(self.managed)

    def start_api(self, **kw: Any) -> int:
        pid = self.testenv.start_api(self.managed, **kw)
        self.testenv.save_state(self.managed)
        return pid

    @property
    def testenv(self):
        return testenv_module()


def zabbix_env() -> TestZabbix:
    """The Zabbix to test against; raises RuntimeError with ``HOW_TO`` when there is none."""
    url = os.environ.get("FARMWATCH_TEST_ZABBIX_URL")
    if url:
        host, _, port = os.environ.get("FARMWATCH_TEST_ZABBIX_SENDER", "127.0.0.1:10051").rpartition(":")
        try:
            return TestZabbix(url, os.environ.get("FARMWATCH_TEST_ZABBIX_USER", "Admin"),
                              os.environ.get("FARMWATCH_TEST_ZABBIX_PASSWORD", "zabbix"), (host or "127.0.0.1", int(port)))
        except Exception as exc:  # unreachable, refused login, bad port: say which setting to check
            raise RuntimeError(f"FARMWATCH_TEST_ZABBIX_URL={url}: cannot log in: {type(exc).__name__}: {exc}\n{HOW_TO}") from None
    testenv = testenv_module()
    if os.geteuid() != 0 and testenv.missing_programs():
        raise RuntimeError(HOW_TO)
    try:
        env, started = testenv.start()
    except testenv.TestEnvError as exc:
        raise RuntimeError(f"{exc}\n{HOW_TO}") from None
    user, password = testenv.ADMIN
    return TestZabbix(env.url, user, password, ("127.0.0.1", env.server_port), managed=env, started=started)


@contextlib.contextmanager
def zabbix_or_skip() -> Iterator[TestZabbix]:
    """``zabbix_env()`` for tests: skipped when there is none (a failure in CI, where it must start),
    and stopped afterwards if this process started it (unless ``FARMWATCH_TEST_ZABBIX_KEEP``)."""
    import pytest

    try:
        env = zabbix_env()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Zabbix could not be started in CI: {exc}")
        pytest.skip(str(exc))
    try:
        yield env
    finally:
        if env.started and not os.environ.get("FARMWATCH_TEST_ZABBIX_KEEP"):
            env.testenv.stop()
