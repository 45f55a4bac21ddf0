"""Exit codes and messages that cron and systemd act on (issue 15 item 10), each with the real
``farmwatch`` command: refused Zabbix credentials (a real Zabbix) make ``collect --once`` exit 1;
an unset token variable, a store folder that does not exist and a bad regex in a detect family
are config errors (exit 2, one line naming what and where, ``check-config`` says the same); under
``--once`` no log line promises a retry that this process will not make.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def farmwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farmwatch", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def zabbix_source(url: str, **extra: str) -> str:
    keys = "".join(f'{k} = "{v}"\n' for k, v in extra.items())
    return (f'[sources.zbx]\nkind = "zabbix"\nurl = "{url}"\nhost_groups = ["HLT workers"]\n'
            f'items = ["system.cpu.util"]\nbackoff = "30s"\n{keys}')


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.real
@pytest.mark.slow
def test_collect_once_exits_1_when_zabbix_refuses_the_credentials(tmp_path: Path) -> None:
    from zabbix_helpers import zabbix_or_skip

    with zabbix_or_skip() as zbx:
        cfg = tmp_path / "zabbix.toml"
        cfg.write_text(f'[store]\npath = "fw.db"\n\n' + zabbix_source(zbx.url, token_env="TEST_ZBX_TOKEN"))
        token = "0" * 64  # well-formed, unknown to this Zabbix
        done = farmwatch("collect", "--once", "-c", str(cfg), env={"TEST_ZBX_TOKEN": token})
    assert done.returncode == 1, done.stderr
    assert "credentials were refused" in done.stderr and "source zbx read nothing in this run" in done.stderr
    assert token not in done.stderr


def test_collect_once_promises_no_retry_it_will_not_make(tmp_path: Path) -> None:
    cfg = tmp_path / "cron.toml"
    cfg.write_text(f'[store]\npath = "fw.db"\n\n' + zabbix_source(f"http://127.0.0.1:{closed_port()}/zabbix",
                                                                token_env="TEST_ZBX_TOKEN")
                   + '\n[sources.logs]\nkind = "logfiles"\npaths = ["logs/*.log"]\n')
    done = farmwatch("collect", "--once", "-c", str(cfg), env={"TEST_ZBX_TOKEN": "x" * 32})
    assert done.returncode == 1, done.stderr
    assert "the API is unreachable" in done.stderr and "no file matches" in done.stderr
    lowered = done.stderr.lower()
    assert not any(word in lowered for word in ("retrying", "next in", "every cycle", "next cycle")), done.stderr
    assert lowered.count("the next run (collect --once) tries again") == 2, done.stderr


def test_an_unset_token_variable_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "zabbix.toml"
    cfg.write_text(f'[store]\npath = "fw.db"\n\n' + zabbix_source(f"http://127.0.0.1:{closed_port()}/zabbix",
                                                                token_env="TEST_ZBX_UNSET_TOKEN"))
    env = {k: v for k, v in os.environ.items() if k != "TEST_ZBX_UNSET_TOKEN"}
    expected = (f"{cfg}: sources.zbx.token: environment variable TEST_ZBX_UNSET_TOKEN is not set or empty "
                "(and no secret file is configured)")
    for command in (["collect", "--once"], ["collect"], ["check-config"]):
        done = subprocess.run([sys.executable, "-m", "farmwatch", *command, "-c", str(cfg)], capture_output=True,
                              text=True, timeout=60, env=env, cwd=ROOT)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip() == expected, (command, done.stderr)


def test_a_store_in_a_folder_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    store = tmp_path / "typo" / "fw.db"
    cfg = tmp_path / "collect.toml"
    cfg.write_text(f'[store]\npath = "{store}"\n\n[sources.logs]\nkind = "logfiles"\npaths = ["*.log"]\n')
    expected = (f"{store}: store.path: the folder {store.parent} does not exist (create it, or correct "
                "[store] path)")
    for command in (["collect", "--once"], ["collect"], ["run"], ["check-config"]):
        done = farmwatch(*command, "-c", str(cfg))
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == expected, (command, done.stderr)
    assert not store.parent.exists()


def test_a_bad_regex_in_a_detect_family_fails_check_config_naming_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "detect.toml"
    cfg.write_text('[detect.families.worker]\nseries = ["hlt.output.sent_events:rate"]\n'
                   'match = ["app=distributor", "unit=~hlt0[1-4"]\nentity = ["unit", "host"]\n')
    done = farmwatch("check-config", "-c", str(cfg))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"{cfg}: detect.families.worker.match[1]: bad label matcher 'unit=~hlt0[1-4': "
                                   "invalid regular expression (unterminated character set at position 4)")
