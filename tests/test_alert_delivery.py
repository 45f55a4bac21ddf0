"""Delivery from the persisted outbox to a real HTTP chat server (farmwatch.sim.chat).

The whole chain runs: engine → outbox in the store → delivery → Rocket.Chat REST or webhook over
loopback HTTP. Time is simulated (the server's rate limiter and the notifier read the same
SimClock), so "down for ten minutes" or "a 429 storm" take milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farmwatch.alerting.delivery import Delivery
from farmwatch.alerting.dispatch import Timers
from farmwatch.alerting.engine import AlertEngine
from farmwatch.alerting.notifiers import RocketChatREST, RocketChatWebhook
from farmwatch.alerting.state import AlertDB
from farmwatch.clock import SimClock
from farmwatch.model import labels
from farmwatch.sim.chat import ChatServer
from farmwatch.store.sqlite import SQLiteStore
from test_alert_lifecycle import SetRule

T0 = 1_700_000_000.0
ROOM = "hlt-alerts"


class Service:
    """An alerting service (engine + delivery) on a store file, restartable, talking to ``server``."""

    def __init__(self, path: Path, server: ChatServer, clock: SimClock, rules, webhook: bool = False,
                 timeout: float = 2.0) -> None:
        self.path, self.server, self.clock, self.rules, self.webhook = path, server, clock, rules, webhook
        self.timeout = timeout
        self.hook_url = server.add_webhook("#" + ROOM) if webhook else None
        self.token, self.uid = server.personal_token()
        self.start()

    def start(self) -> None:
        self.store = SQLiteStore(self.path, clock=self.clock)
        db = AlertDB(self.store)
        if self.webhook:
            notifier = RocketChatWebhook(self.hook_url, clock=self.clock, timeout=self.timeout)
        else:
            notifier = RocketChatREST(self.server.url, channel="#" + ROOM, token=self.token, user_id=self.uid,
                                      clock=self.clock, timeout=self.timeout)
        self.engine = AlertEngine(self.rules, None, db, notifiers=["chat"], clock=self.clock,
                                  timers=Timers(group_wait=10, group_interval=30, repeat_interval=7200))
        self.delivery = Delivery(db, {"chat": notifier}, clock=self.clock, backoff=(1.0, 60.0))

    def restart(self) -> None:
        self.store.close()
        self.start()

    def run(self, seconds: float, every: float = 5.0) -> None:
        for _ in range(int(seconds / every)):
            self.clock.advance(every)
            self.engine.evaluate()
            self.delivery.pump()

    def messages(self):
        return self.server.room_messages(ROOM)


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0)


@pytest.fixture
def server(clock: SimClock):
    with ChatServer(clock, rate_limit=10, rate_window=60.0) as s:
        yield s


def test_one_incident_is_one_message_updated_until_it_resolves(tmp_path: Path, server: ChatServer, clock) -> None:
    rule = SetRule("HltWorkersDied", severity="warning")
    svc = Service(tmp_path / "farm.db", server, clock, [rule])
    rule.on[labels(unit="hlt02", host="hltwk03")] = 2
    svc.run(15)
    (msg,) = svc.messages()
    assert "FIRING" in msg.text and "hltwk03" in msg.text
    rule.on[labels(unit="hlt02", host="hltwk07")] = 1
    svc.run(30)
    rule.on.clear()
    svc.run(40)
    (msg,) = svc.messages()
    assert "RESOLVED" in msg.text and "hltwk07" in msg.text
    assert len(msg.history) == 3  # posted, updated with hltwk07, updated as resolved
    assert server.count("chat.sendMessage") == 1 and server.count("chat.update") == 2
    rule.on[labels(unit="hlt02", host="hltwk03")] = 1
    svc.run(15)
    assert len(svc.messages()) == 2, "a new incident of the same group is a new message"


def test_chat_down_for_minutes_loses_nothing_and_keeps_order(tmp_path: Path, server: ChatServer, clock) -> None:
    rule = SetRule("HltInputStalled")
    svc = Service(tmp_path / "farm.db", server, clock, [rule])
    server.down()
    for i in range(1, 6):
        rule.on[labels(unit=f"hlt{i:02d}")] = 0
        svc.run(60)
    rule.on.pop(labels(unit="hlt01"))
    svc.run(60)
    assert svc.messages() == [] and sum(svc.engine.db.outbox_depth().values()) >= 5
    svc.restart()  # and farmwatch restarts while the chat is still down
    svc.run(120)
    server.up()
    svc.run(180)
    texts = [m.text for m in svc.messages()]
    units = [next(u for u in ("hlt01", "hlt02", "hlt03", "hlt04", "hlt05") if u in t) for t in texts]
    assert units == ["hlt01", "hlt02", "hlt03", "hlt04", "hlt05"], "one message per unit, in the order they fired"
    assert "RESOLVED" in texts[0] and all("FIRING" in t for t in texts[1:])
    assert svc.engine.db.outbox_depth() == {}
    outcomes = [row["outcome"] for row in svc.engine.db.outbox_log()]
    assert not [o for o in outcomes if o.startswith("failed")]


def test_a_post_whose_answer_was_lost_stays_one_message_across_a_restart(tmp_path: Path, server: ChatServer,
                                                                         clock) -> None:
    """Issue 15 item 2 on the whole chain: the server stores the post but answers too late; the
    incident grows and farmwatch restarts before the post is confirmed. The retry (of the newest
    state, by the next process) names the same message: one message, showing everything."""
    rule = SetRule("HltInputStalled")
    svc = Service(tmp_path / "farm.db", server, clock, [rule], timeout=0.3)
    server.slow(1.0, endpoints=("chat.postMessage", "chat.sendMessage"))
    rule.on[labels(unit="hlt03", host="hltwk01")] = 0
    svc.run(15)
    assert len(svc.messages()) == 1 and svc.engine.db.outbox_depth() == {"chat": 1}  # stored, not confirmed
    server.slow(0)
    rule.on[labels(unit="hlt03", host="hltwk02")] = 0
    svc.restart()
    svc.run(60)
    (msg,) = svc.messages()
    assert "hltwk01" in msg.text and "hltwk02" in msg.text
    assert svc.engine.db.outbox_depth() == {}
    assert server.count("chat.getMessage", 200) >= 1  # it was sent again, found taken, and looked up


def test_a_429_storm_delays_but_never_drops(tmp_path: Path, server: ChatServer, clock) -> None:
    server.set_rate_limit(2, 60.0)
    rule = SetRule("HltInputStalled")
    svc = Service(tmp_path / "farm.db", server, clock, [rule])
    for i in range(1, 9):
        rule.on[labels(unit=f"hlt{i:02d}")] = 0
    svc.run(15)
    assert len(svc.messages()) == 2
    svc.run(300)
    assert len(svc.messages()) == 8
    limited = server.count("chat.sendMessage", 429)
    assert limited <= 4, f"the notifier must wait for X-RateLimit-Reset, not hammer the server ({limited} × 429)"
    assert svc.engine.db.outbox_depth() == {}


def test_webhook_posts_resolve_as_a_new_message(tmp_path: Path, server: ChatServer, clock) -> None:
    rule = SetRule("HltUnitDown")
    svc = Service(tmp_path / "farm.db", server, clock, [rule], webhook=True)
    rule.on[labels(unit="hlt04")] = 0
    svc.run(15)
    rule.on.clear()
    svc.run(35)
    first, second = svc.messages()
    assert "FIRING" in first.shown_text() and "RESOLVED" in second.shown_text()
    assert first.attachments[0]["color"] == "danger" and second.attachments[0]["color"] == "good"


def test_untrusted_labels_never_mention_the_room(tmp_path: Path, server: ChatServer, clock) -> None:
    rule = SetRule("HltAppCrashed")
    svc = Service(tmp_path / "farm.db", server, clock, [rule])
    rule.on[labels(unit="hlt01", reason="@all wake up [here](http://evil.example) @here")] = 1
    svc.run(15)
    (msg,) = svc.messages()
    assert "wake up" in msg.text
    assert server.mentions == [] and not [link for link in server.links if "evil" in link.url]


def test_a_message_the_server_refuses_for_good_is_dead_lettered_and_the_rest_go_on(
        tmp_path: Path, server: ChatServer, clock, caplog) -> None:
    rule = SetRule("HltInputStalled")
    svc = Service(tmp_path / "farm.db", server, clock, [rule])
    server.revoke_tokens()
    rule.on[labels(unit="hlt01")] = 0
    svc.run(15)
    assert "refused it for good" in caplog.text and svc.token not in caplog.text
    token, uid = server.personal_token()
    svc.delivery.notifiers["chat"] = RocketChatREST(server.url, channel="#" + ROOM, token=token, user_id=uid,
                                                    clock=clock)
    rule.on[labels(unit="hlt02")] = 0
    svc.run(15)
    (msg,) = svc.messages()
    assert "hlt02" in msg.text
    outcomes = [row["outcome"] for row in svc.engine.db.outbox_log()]
    assert outcomes[0].startswith("failed") and outcomes[1].startswith("posted")
