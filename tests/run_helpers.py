"""What the tests of ``farmwatch run``/``watch`` as processes share: a simulated HLT unit, the
Rocket.Chat test server, a config whose rules notify it, and waiting for what the chat shows."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

from farmwatch.sim import SimUnit
from farmwatch.sim.chat import ChatServer


@pytest.fixture
def unit():
    with SimUnit("hlt07", worker_nodes=2, workers_per_node=2, input_rate=300.0, seed=5) as u:
        yield u


@pytest.fixture
def chat():
    with ChatServer() as server:
        yield server


def service_config(tmp_path: Path, unit: SimUnit, chat: ChatServer, rules: str) -> tuple[Path, dict[str, str]]:
    """A config in ``tmp_path`` with ``rules``, evaluated every second, notifying ``#hlt-alerts``
    at once; and the environment holding the chat token."""
    (tmp_path / "rules.toml").write_text(rules)
    token, uid = chat.personal_token()
    cfg = tmp_path / "farmwatch.toml"
    cfg.write_text(f"""
[store]
path = "fw.db"

[alerting]
shipped_rules = false
rules = ["rules.toml"]
evaluation_interval = "1s"
group_wait = "0s"
group_interval = "1s"

[alerting.notify.chat]
kind = "rocketchat"
url = "{chat.url}"
channel = "#hlt-alerts"
user_id = "{uid}"
token_env = "TEST_CHAT_TOKEN"

""" + unit.config_toml(source_name="hlt", interval="1s", timeout="300ms"))
    return cfg, {**os.environ, "TEST_CHAT_TOKEN": token}


def wait(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
