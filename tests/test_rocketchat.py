"""Rocket.Chat delivery: message rendering and the notifiers, against the stand-in server over real HTTP.

``farmwatch.sim.chat.ChatServer`` answers like Rocket.Chat (response shapes, 401/429/size errors,
rate-limit headers) on a loopback port; its rate-limit windows run on a ``SimClock``, so a test
can "wait" a minute by advancing the clock.
"""

from __future__ import annotations

import io
import math
import traceback

import pytest
import requests

from farmwatch.alerting.message import ChatMessage, render
from farmwatch.alerting.notifiers import (
    ConsoleNotifier,
    DeliveryError,
    Notifier,
    RocketChatREST,
    RocketChatWebhook,
    SecretError,
    message_id,
    secret,
)
from farmwatch.alerting.text import ZWSP, chat_len
from farmwatch.clock import SimClock
from farmwatch.model import Alert, AlertState, Notification
from farmwatch.sim.chat import ChatServer

T0 = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
GROUP = (("rule", "HltInputStalled"), ("unit", "hlt03"))


def stalled(host: str, *, minutes: float = 12, **kw) -> Alert:
    """An HltInputStalled alert on one worker node that has been true for ``minutes``."""
    return Alert(
        rule="HltInputStalled",
        labels=(("host", host), ("unit", "hlt03")),
        state=kw.pop("state", AlertState.FIRING),
        severity=kw.pop("severity", "critical"),
        summary=kw.pop("summary", f"input of {host} stalled while RUNNING"),
        active_since=T0 - minutes * 60,
        starts_at=T0 - minutes * 60 + 30,
        value=kw.pop("value", 0.0),
        values=kw.pop("values", {"in_rate": 0.0, "peer_median": 812.5}),
        **kw,
    )


def incident(firing: list[Alert], resolved: list[Alert] = (), *, labels=GROUP, seq: int = 1) -> Notification:
    return Notification("HltInputStalled|hlt03", labels, list(firing), list(resolved), T0, seq=seq)


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0)


@pytest.fixture
def chat(clock):
    with ChatServer(clock) as server:
        yield server


def rest(chat: ChatServer, clock: SimClock, **kw) -> RocketChatREST:
    if "username" not in kw:
        token, user_id = chat.personal_token()
        kw.update(token=token, user_id=user_id)
    kw.setdefault("channel", "#hlt-alerts")
    return RocketChatREST(chat.url, clock=clock, **kw)


# -- what a message says ---------------------------------------------------------------------


def test_firing_message_reads_like_this():
    n = incident([stalled("hltwk01"), stalled("hltwk02", acked_by="alice", acked_at=T0 - 120)])
    msg = render(n, link_template="https://grafana.kek.jp/d/hlt?var-unit={unit}")
    assert msg.text == "🔥 FIRING [critical] HltInputStalled — unit hlt03 (2 alerts)"
    assert msg.color == "danger"
    assert msg.as_text() == "\n".join([
        "🔥 FIRING [critical] HltInputStalled — unit hlt03 (2 alerts)",
        "*2 firing* · [dashboard](https://grafana.kek.jp/d/hlt?var-unit=hlt03)",
        "*unit*: hlt03",
        "• *input of hltwk01 stalled while RUNNING* — host hltwk01",
        "   value 0 · in_rate 0 · peer_median 812.5 · since 2026-09-21 14:01:20 UTC (for 12m)",
        "• *input of hltwk02 stalled while RUNNING* — host hltwk02",
        "   value 0 · in_rate 0 · peer_median 812.5 · since 2026-09-21 14:01:20 UTC (for 12m)",
        "   ✔ acknowledged by alice at 2026-09-21 14:11 UTC",
        "_as of 2026-09-21 14:13:20 UTC_",
    ])


def test_resolved_message_lists_how_long_each_alert_lasted():
    done = stalled("hltwk01", state=AlertState.RESOLVED, ends_at=T0 - 60)
    msg = render(incident([], [done]))
    assert msg.text == "✅ RESOLVED HltInputStalled — unit hlt03 (1 alert)"
    assert msg.color == "good"
    assert "• ✅ input of hltwk01 stalled while RUNNING — host hltwk01 · lasted 11m " \
           "(2026-09-21 14:01:20 UTC – 2026-09-21 14:12:20 UTC)" in msg.as_text()


@pytest.mark.parametrize(
    "severity, color, head",
    [("critical", "danger", "🔥 FIRING [critical]"), ("warning", "warning", "⚠️ FIRING [warning]"), ("info", "#439FE0", "ℹ️ FIRING [info]")],
)
def test_severity_sets_colour_and_emoji(severity, color, head):
    msg = render(incident([stalled("hltwk01", severity=severity)]))
    assert msg.color == color and msg.text.startswith(head)


def test_mixed_group_shows_worst_severity_and_both_sections():
    n = incident(
        [stalled("hltwk03", severity="warning"), stalled("hltwk04")],
        [stalled("hltwk01", state=AlertState.RESOLVED, ends_at=T0)],
    )
    msg = render(n)
    assert msg.text == "🔥 FIRING [critical] HltInputStalled — unit hlt03 (2 alerts, 1 resolved)"
    body = msg.attachments[0]["text"]
    assert body.index("*Firing*") < body.index("hltwk04") < body.index("hltwk03") < body.index("*Resolved*")


def test_link_template_quotes_label_values_and_survives_a_missing_label(caplog):
    n = incident([stalled("hltwk01")], labels=(("rule", "R"), ("unit", "hlt 03&x=(1)")))
    msg = render(n, link_template="https://g/d?var-unit={unit}")
    assert msg.attachments[0]["title_link"] == "https://g/d?var-unit=hlt%2003%26x%3D%281%29"
    msg = render(n, link_template="https://g/d?var-host={host}")
    assert "title_link" not in msg.attachments[0]
    assert "cannot be formatted" in caplog.text and "'host'" in caplog.text


def farm_incident(n_alerts: int) -> Notification:
    return incident([stalled(f"hltwk{i:02d}") for i in range(1, n_alerts + 1)])


def test_a_300_alert_group_is_summarised_into_one_message_that_fits():
    msg = render(farm_incident(300), link_template="https://g/d?var-unit={unit}")
    assert msg.size() <= 5000
    assert msg.text.endswith("(300 alerts)")
    shown = msg.as_text().count("• *input of")
    assert 10 < shown < 300
    assert f"… and {300 - shown} more alerts on hltwk{shown + 1:02d}…hltwk300" in msg.as_text()


def test_even_absurd_labels_fit_into_max_chars():
    huge = "x" * 20_000
    n = incident([stalled("h", summary=huge, description=huge)], labels=(("rule", huge), ("unit", huge)))
    for limit in (200, 1000, 5000):
        assert render(n, max_chars=limit).size() <= limit


@pytest.mark.parametrize("max_chars", [300, 5000])
def test_a_long_group_label_with_a_link_never_wipes_the_headline_or_the_first_alert(max_chars):
    """Issue 15 item 3: a ~5,000-character group label quoted into the title link made the
    message "…\n*1 firing*". Over every label length from short to far beyond the limit, the
    message fits, the link is what goes, and the headline and the first alert line survive."""
    lengths = sorted({*range(0, 200, 7), *range(200, 20_000, 397), max_chars - 60, max_chars, 4_990, 5_000})
    for n in lengths:
        label = "hlt03-" + "x" * n
        alerts = [stalled("hltwk01"), stalled("hltwk02")]
        msg = render(incident(alerts, labels=(("rule", "HltInputStalled"), ("unit", label))),
                     link_template="https://grafana.kek.jp/d/hlt?var-unit={unit}", max_chars=max_chars)
        text = msg.as_text()
        assert msg.size() <= max_chars, n
        assert text.startswith("🔥 FIRING [critical] HltInputStalled — unit hlt03-"), (n, text[:200])
        assert "• *input of hltwk01 stalled while RUNNING* — host hltwk01" in text, (n, text[:400])
        if "[dashboard]" not in text:  # the link went: only because the message could not hold it
            assert len(msg.attachments[0].get("title_link", "")) == 0
            assert chat_len(f" · [dashboard](https://grafana.kek.jp/d/hlt?var-unit=hlt03-{'x' * n})") > max_chars - msg.size()


# -- REST API --------------------------------------------------------------------------------


def test_rest_posts_once_then_updates_the_same_message(chat, clock):
    rc = rest(chat, clock)
    assert isinstance(rc, Notifier) and rc.updates
    ref = rc.post(render(farm_incident(2)))
    room, msg_id = ref.split(":")
    assert room == chat.room_id("hlt-alerts")

    clock.advance(300)
    rc.update(ref, render(farm_incident(3), now=clock.time()))
    done = [stalled(f"hltwk0{i}", state=AlertState.RESOLVED, ends_at=clock.time()) for i in (1, 2, 3)]
    rc.update(ref, render(incident([], done), now=clock.time()))

    assert list(chat.messages) == [msg_id]  # one incident, one message
    stored = chat.messages[msg_id]
    assert [h[1].split("\n")[0] for h in stored.history] == [
        "🔥 FIRING [critical] HltInputStalled — unit hlt03 (2 alerts)",
        "🔥 FIRING [critical] HltInputStalled — unit hlt03 (3 alerts)",
        "✅ RESOLVED HltInputStalled — unit hlt03 (3 alerts)",
    ]
    assert stored.edited_at == T0 + 300
    assert [r.endpoint for r in chat.requests] == ["rooms.info", "chat.sendMessage", "chat.update", "chat.update"]


def test_login_flow_and_one_relogin_after_the_session_expires(chat, clock):
    chat.add_user("alertbot", "s3cret-pw")
    rc = rest(chat, clock, username="alertbot", password="s3cret-pw")
    ref = rc.post(render(farm_incident(1)))
    assert chat.count("login", 200) == 1

    chat.revoke_tokens("alertbot")  # the server forgot the session
    rc.update(ref, render(farm_incident(2)))
    assert [(r.endpoint, r.status) for r in chat.requests] == [
        ("login", 200), ("rooms.info", 200), ("chat.sendMessage", 200), ("chat.update", 401), ("login", 200),
        ("chat.update", 200),
    ]


def test_wrong_password_and_revoked_token_are_permanent_and_never_quoted(chat, clock):
    chat.add_user("alertbot", "right-pw")
    with pytest.raises(DeliveryError) as err:
        rest(chat, clock, username="alertbot", password="wrong-pw-123").post(render(farm_incident(1)))
    assert err.value.permanent and "401" in str(err.value) and "wrong-pw-123" not in str(err.value)

    rc = rest(chat, clock)
    token = rc._token
    chat.revoke_tokens()
    with pytest.raises(DeliveryError) as err:
        rc.post(render(farm_incident(1)))
    assert err.value.permanent
    for text in (str(err.value), repr(err.value), repr(rc)):
        assert token not in text
    assert chat.count("login") == 1  # a personal token is not "renewed" by logging in


def test_429_gives_retry_after_from_the_reset_header(chat, clock):
    chat.set_rate_limit(3, 60.0)
    rc = rest(chat, clock)
    msg = render(farm_incident(1))
    for _ in range(3):
        rc.post(msg)
        clock.advance(5)
    with pytest.raises(DeliveryError) as err:
        rc.post(msg)
    assert not err.value.permanent
    assert err.value.retry_after == pytest.approx(60 - 15, abs=1)  # the window opened at the first call
    assert "rate limited (HTTP 429)" in str(err.value)
    clock.advance(err.value.retry_after)
    rc.post(msg)  # after waiting as told, the server accepts again
    assert chat.count("chat.sendMessage", 429) == 1 and chat.count("chat.sendMessage", 200) == 4


def test_wait_hint_when_remaining_reaches_zero(chat, clock):
    chat.set_rate_limit(2, 60.0)
    rc = rest(chat, clock)
    msg = render(farm_incident(1))
    rc.post(msg)
    assert rc.wait_hint() == 0.0  # one call left
    clock.advance(20)
    rc.post(msg)
    assert rc.wait_hint() == pytest.approx(40, abs=1)  # Remaining: 0 → wait for the reset
    clock.advance(30)
    assert rc.wait_hint() == pytest.approx(10, abs=1)
    clock.advance(11)
    assert rc.wait_hint() == 0.0
    rc.post(msg)
    assert chat.count("chat.sendMessage", 429) == 0


def test_server_down_or_503_is_retryable_not_permanent(chat, clock):
    rc = rest(chat, clock, timeout=2.0)
    msg = render(farm_incident(1))
    chat.fail_next(1, status=503)  # a proxy's HTML error page
    with pytest.raises(DeliveryError) as err:
        rc.post(msg)
    assert not err.value.permanent and err.value.retry_after is None and "503" in str(err.value)

    chat.down()
    with pytest.raises(DeliveryError) as err:
        rc.post(msg)
    assert not err.value.permanent and err.value.retry_after is None
    assert "cannot connect" in str(err.value)
    with pytest.raises(requests.ConnectionError):
        requests.post(chat.url + "/api/v1/login", json={}, timeout=2)  # really not listening

    chat.up()
    assert rc.post(msg)
    assert len(chat.messages) == 1


def test_slow_server_times_out_as_a_retryable_error(chat, clock):
    rc = rest(chat, clock, timeout=0.2)
    chat.slow(0.6)
    with pytest.raises(DeliveryError) as err:
        rc.post(render(farm_incident(1)))
    assert not err.value.permanent and "timed out" in str(err.value)


def test_unknown_room_is_permanent(chat, clock):
    token, uid = chat.personal_token()
    for target in ({"channel": "#no-such-room"}, {"channel": "@nobody"}, {"room_id": "NoSuchRoomId"}):
        rc = RocketChatREST(chat.url, token=token, user_id=uid, clock=clock, **target)
        with pytest.raises(DeliveryError) as err:
            rc.post(render(farm_incident(1)))
        assert err.value.permanent, target
        assert next(iter(target.values())) in str(err.value) or "error-invalid-room" in str(err.value)
    assert chat.messages == {}


def test_too_large_for_the_server_asks_for_a_smaller_render(clock):
    with ChatServer(clock, max_size=1000) as chat:
        rc = rest(chat, clock)
        with pytest.raises(DeliveryError) as err:
            rc.post(render(farm_incident(40), max_chars=5000))
        assert err.value.too_large and not err.value.permanent and "error-message-size-exceeded" in str(err.value)
        assert rc.post(render(farm_incident(40), max_chars=1000))


def test_300_alerts_are_accepted_by_the_server_and_the_update_stays_one_message(chat, clock):
    rc = rest(chat, clock)
    ref = rc.post(render(farm_incident(30)))
    rc.update(ref, render(farm_incident(300)))
    (stored,) = chat.messages.values()
    assert "… and" in stored.text and "more alerts on hltwk" in stored.text


def test_chat_update_accepts_text_only_as_rocket_chat_does(chat, clock):
    """Why the REST notifier sends the whole message as text: attachments cannot be edited."""
    rc = rest(chat, clock)
    room, msg_id = rc.post(render(farm_incident(1))).split(":")
    headers = {"X-Auth-Token": rc._token, "X-User-Id": rc._user_id}
    resp = requests.post(
        chat.url + "/api/v1/chat.update",
        json={"roomId": room, "msgId": msg_id, "text": "x", "attachments": []},
        headers=headers,
        timeout=5,
    )
    assert resp.status_code == 400 and resp.json()["errorType"] == "invalid-params"
    resp = requests.post(chat.url + "/api/v1/chat.update", json={"roomId": room, "msgId": msg_id, "text": "x"}, headers=headers, timeout=5)
    body = resp.json()
    assert body["success"] is True and body["message"]["_id"] == msg_id and body["message"]["msg"] == "x"
    assert {"rid", "ts", "_updatedAt", "editedAt", "u"} <= set(body["message"])


@pytest.mark.parametrize("generation", ["current", "ok", "mongo"])
def test_a_post_whose_answer_was_lost_is_one_message_when_retried(clock, generation):
    """Issue 15 item 2: the server stored the post but its answer never arrived (here: a timeout;
    in the field also a kill -9). The retry names the same message (chat.sendMessage with the
    _id derived from the post's key), the server stores nothing new, and whatever its generation
    answers to a taken _id, the notifier finds the message and counts the post as delivered."""
    with ChatServer(clock, duplicate_answer=generation) as chat:
        rc = rest(chat, clock, timeout=0.3)
        rc.post(ChatMessage("warm-up"))  # the room is looked up; only the post below is slow
        chat.slow(1.0, endpoints=("chat.sendMessage",))
        with pytest.raises(DeliveryError) as err:
            rc.post(render(farm_incident(1)), key="chat|HltInputStalled|hlt03@1790000000.000|7")
        assert "timed out" in str(err.value) and not err.value.permanent
        assert len(chat.room_messages("hlt-alerts")) == 2  # the server did store it

        chat.slow(0)
        again = render(farm_incident(2))  # meanwhile the incident grew: the retry carries the newest state
        ref = rc.post(again, key="chat|HltInputStalled|hlt03@1790000000.000|7")
        room, msg_id = ref.split(":")
        assert len(chat.room_messages("hlt-alerts")) == 2, "one message for the post, not two"
        assert chat.messages[msg_id].text == again.as_text()
        assert room == chat.room_id("hlt-alerts") and chat.count("chat.getMessage", 200) >= 1
        other = rc.post(render(farm_incident(1)), key="chat|HltInputStalled|hlt03@1790000000.000|8")
        assert other != ref and len(chat.room_messages("hlt-alerts")) == 3  # another post is another message


def test_message_ids_are_rocket_chat_ids_derived_from_the_key():
    ids = {message_id(f"chat|HltInputStalled|hlt03@1790000000.000|{i}") for i in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 17 and set(i) <= set("23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz") for i in ids)
    assert message_id("a|b") == message_id("a|b") != message_id("a|c")


def test_direct_messages_go_to_the_room_im_create_names(chat, clock):
    chat.add_user("shifter")
    rc = rest(chat, clock, channel="@shifter")
    room, _ = rc.post(render(farm_incident(1))).split(":")
    assert room == chat.room_id("@shifter") and chat.count("im.create", 200) == 1


# -- incoming webhook ------------------------------------------------------------------------


def test_webhook_posts_a_coloured_message_and_cannot_update(chat, clock):
    hook = RocketChatWebhook(chat.add_webhook("#hlt-alerts"), clock=clock)
    assert isinstance(hook, Notifier) and hook.updates is False
    assert hook.post(render(farm_incident(2))) is None
    done = [stalled("hltwk01", state=AlertState.RESOLVED, ends_at=T0)]
    hook.post(render(incident([], done)))
    first, second = chat.room_messages("hlt-alerts")  # a resolve is a new message
    assert first.attachments[0]["color"] == "danger" and second.attachments[0]["color"] == "good"
    assert second.text.startswith("✅ RESOLVED") and first.via == "webhook"


def test_webhook_url_token_never_appears_in_errors_or_repr(chat, clock):
    url = chat.add_webhook()
    token = url.rsplit("/", 1)[1]
    wrong = url[: -len(token)] + "not-the-right-token"
    for notifier, setup in [(RocketChatWebhook(wrong, clock=clock), None), (RocketChatWebhook(url, clock=clock), chat.down)]:
        if setup:
            setup()
        with pytest.raises(DeliveryError) as err:
            notifier.post(render(farm_incident(1)))
        logged = "".join(traceback.format_exception(err.value))  # what a worker's log.exception() would print
        for text in (str(err.value), repr(err.value), repr(notifier), logged):
            assert token not in text and "not-the-right-token" not in text and "/hooks/" not in text


def test_webhook_cannot_name_its_messages_so_a_lost_answer_may_show_twice(chat, clock):
    """What the docs say the webhook cannot guarantee: it takes no message id, so a post whose
    answer was lost is sent again as a second message (at least once, never lost)."""
    hook = RocketChatWebhook(chat.add_webhook("#hlt-alerts"), clock=clock, timeout=0.3)
    chat.slow(1.0, endpoints=("hooks",))
    with pytest.raises(DeliveryError):
        hook.post(render(farm_incident(1)), key="hook|HltInputStalled|hlt03@1790000000.000|7")
    chat.slow(0)
    hook.post(render(farm_incident(1)), key="hook|HltInputStalled|hlt03@1790000000.000|7")
    assert len(chat.room_messages("hlt-alerts")) == 2


# -- untrusted text never becomes a mention or a link ------------------------------------------


def test_labels_and_summaries_cannot_ping_the_room_or_plant_links(chat, clock):
    evil = [
        stalled("@all", summary="@here input stalled"),
        stalled("hi @bob", summary="[click](http://evil.example/login)"),
        stalled("<http://evil.example|hltwk05>", summary="see www.evil.example now", values={"@all": 1.0}),
    ]
    n = incident(evil, labels=(("rule", "HltInputStalled"), ("unit", "@here")))
    rc = rest(chat, clock)
    ref = rc.post(render(n))
    rc.update(ref, render(incident(evil[:1], evil[1:], labels=n.group_labels)))
    RocketChatWebhook(chat.add_webhook(), clock=clock).post(render(n))

    assert len(chat.messages) == 2 and all(len(m.history) >= 1 for m in chat.messages.values())
    assert chat.mentions == []
    assert [link for link in chat.links if "evil" in link.url] == []
    assert f"@{ZWSP}all" in next(iter(chat.messages.values())).text  # still readable


def test_the_server_does_see_raw_mentions_and_links(chat, clock):
    """The test above could not fail if the stand-in never detected anything."""
    rc = rest(chat, clock)
    rc.post(ChatMessage(text="@all see [x](http://evil.example)"))
    assert [m.name for m in chat.mentions] == ["all"]
    assert any("evil" in link.url for link in chat.links)


# -- secrets and the console ------------------------------------------------------------------


def test_secret_from_env_or_file_with_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FW_TEST_TOKEN", "tok-from-env\n")
    assert secret("FW_TEST_TOKEN", None, "Rocket.Chat token") == "tok-from-env"
    f = tmp_path / "token"
    f.write_text("tok-from-file\n")
    f.chmod(0o600)
    monkeypatch.setenv("FW_TEST_TOKEN", "")
    assert secret("FW_TEST_TOKEN", str(f), "Rocket.Chat token") == "tok-from-file"

    f.write_text("\n")
    with pytest.raises(SecretError, match=f"Rocket.Chat token: secret file {f} is empty"):
        secret(None, str(f), "Rocket.Chat token")
    with pytest.raises(SecretError, match="FW_TEST_TOKEN is not set and secret file .*missing.* cannot be read"):
        secret("FW_TEST_TOKEN", str(tmp_path / "missing"), "Rocket.Chat token")
    with pytest.raises(SecretError, match="environment variable FW_NOPE is not set"):
        secret("FW_NOPE", None, "Rocket.Chat token")


def test_constructor_errors_name_what_is_missing_without_secrets():
    with pytest.raises(ValueError, match="channel"):
        RocketChatREST("https://chat.kek.jp", token="t0ken-value", user_id="u")
    with pytest.raises(ValueError, match="personal access token") as err:
        RocketChatREST("https://chat.kek.jp", channel="#a", token="t0ken-value")
    assert "t0ken-value" not in str(err.value)


def test_console_notifier_prints_new_and_update_under_one_ref():
    out = io.StringIO()
    console = ConsoleNotifier(out, color=False)
    ref = console.post(render(farm_incident(1)))
    console.update(ref, render(incident([], [stalled("hltwk01", state=AlertState.RESOLVED, ends_at=T0)])))
    text = out.getvalue()
    assert f"[NEW {ref}] 🔥 FIRING [critical] HltInputStalled — unit hlt03 (1 alert)" in text
    assert f"[UPDATE {ref}] ✅ RESOLVED HltInputStalled — unit hlt03 (1 alert)" in text
    assert console.wait_hint() == 0.0 and console.updates and isinstance(console, Notifier)
    assert not math.isnan(T0)


def test_render_copes_with_missing_times_and_values():
    odd = Alert(rule="R", labels=(("host", "h1"),), state=AlertState.FIRING, severity="", summary="",
                values={"state": "ERROR"})  # no value, no times, a string value, no severity
    gone = Alert(rule="R", labels=(("host", "h2"),), state=AlertState.RESOLVED, severity="info", summary="s")
    msg = render(Notification("g", (), [odd], [gone], T0))
    assert msg.text == "⚠️ FIRING [warning] R (1 alert, 1 resolved)"
    assert "• *R* — host h1\n   state ERROR" in msg.as_text()
