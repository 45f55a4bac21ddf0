"""Delivery targets for rendered chat messages: Rocket.Chat (REST API or incoming webhook) and the console.

A notifier makes one attempt and says precisely how it went; retrying, backing off and
dead-lettering are the delivery worker's job. So every failure is a :class:`DeliveryError` that
tells the worker whether to wait a given time (``retry_after``: rate limited), back off on its
own (``retry_after=None``: server down, 5xx, timeout) or give up (``permanent``: bad room, bad
token — retrying cannot help).

Why the REST notifier posts everything as text: ``chat.update`` replaces a message's ``text``
only (Rocket.Chat validates its body as ``{roomId, msgId, text}`` and answers 400 to anything
else), so attachments posted first could never follow the incident to "resolved". Posting the
whole message as markdown text keeps one message per incident truthful through every edit; the
severity is in the headline's emoji.

Why a post can never appear twice (REST): it goes through ``chat.sendMessage`` with a message
``_id`` the caller derives from the notification (:func:`message_id`), so a retry after an answer
that never came (a timeout, a kill -9) names the same message, and Rocket.Chat does not store a
second one. Whatever the server answers then (newer versions: an error; 1.3 to 6: success without
a message; before 1.3: MongoDB's duplicate key error), the notifier asks ``chat.getMessage``
whether that id exists and, if so, counts the post as delivered. An incoming webhook has no such
id: a post whose answer was lost may show twice (at least once, never lost).

Secrets (tokens, passwords, the webhook URL's token) never appear in exceptions, reprs or logs:
errors name the host only, exceptions from ``requests`` (whose text contains the URL) are not
chained, and any server text quoted in an error is scrubbed of the secrets first.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sys
from email.utils import parsedate_to_datetime
from typing import IO, Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests

from farmwatch.alerting.message import ChatMessage
from farmwatch.credentials import SecretError, secret  # noqa: F401 - re-exported: notifiers take their secrets here
from farmwatch.clock import Clock, RealClock

log = logging.getLogger(__name__)

_WAIT_SECONDS = re.compile(r"wait (\d+(?:\.\d+)?) seconds")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_ID_CHARS = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
"""Meteor's ``Random.id`` alphabet, the form of every Rocket.Chat message id."""


def message_id(key: str) -> str:
    """The Rocket.Chat message ``_id`` of the post identified by ``key``: 17 characters of
    Meteor's ``Random.id`` alphabet (about 98 bits) from a hash of it, so the same notification
    gets the same id in every attempt and every process, and different ones never meet."""
    n = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest(), "big")
    out = []
    for _ in range(17):
        n, r = divmod(n, len(_ID_CHARS))
        out.append(_ID_CHARS[r])
    return "".join(out)


class DeliveryError(Exception):
    """One delivery attempt failed; ``retry_after`` (seconds) when the server said how long to
    wait, ``permanent`` when retrying cannot help (the worker dead-letters the notification),
    ``too_large`` when the server refused the message's size (render it smaller and retry)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent
        self.too_large = too_large  # the server refused the size: render again with a smaller max_chars

    def __repr__(self) -> str:
        return f"DeliveryError({str(self)!r}, retry_after={self.retry_after!r}, permanent={self.permanent!r})"


@runtime_checkable
class Notifier(Protocol):
    name: str
    updates: bool

    def post(self, msg: ChatMessage, key: str | None = None) -> str | None:
        """Post a new message; ``key`` names the post, so that a retry of it cannot make a second
        message where the target allows that (see :func:`message_id`)."""
        ...

    def update(self, ref: str, msg: ChatMessage) -> None: ...

    def wait_hint(self) -> float: ...


# --------------------------------------------------------------------------------------------
# Rocket.Chat over HTTP: what the REST and the webhook notifier share


class _RocketChatHTTP:
    """Request plumbing and the translation of Rocket.Chat's answers into DeliveryErrors."""

    name = "rocketchat"
    updates = False

    def __init__(self, url: str, *, timeout: float, verify: bool | str, session: requests.Session | None, clock: Clock | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Rocket.Chat URL must be http(s)://host/…, got a {parts.scheme or 'relative'} URL")
        self.host = parts.hostname
        if parts.scheme == "http" and self.host not in _LOOPBACK:
            log.warning("Rocket.Chat at %s is reached over plain http: credentials travel unencrypted", self.host)
        self._timeout = timeout
        self._verify = verify
        self._session = session or requests.Session()
        self._clock = clock or RealClock()
        self._wait_until = 0.0  # clock.monotonic() before which the next call would be rate limited
        self._secrets: list[str] = []

    def wait_hint(self) -> float:
        """Seconds to wait before the next call: until the rate-limit window resets once the
        server said ``X-RateLimit-Remaining: 0``, else 0."""
        return max(0.0, self._wait_until - self._clock.monotonic())

    def _send(self, what: str, url: str, payload: dict, headers: dict | None = None, *,
              method: str = "POST") -> requests.Response:
        """One request (``payload`` is the JSON body of a POST, the query of a GET)."""
        body, query = (payload, None) if method == "POST" else (None, payload)
        try:
            resp = self._session.request(method, url, json=body, params=query, headers=headers,
                                         timeout=self._timeout, verify=self._verify)
        except requests.Timeout:
            raise DeliveryError(f"Rocket.Chat at {self.host}: {what} timed out after {self._timeout:g} s") from None
        except requests.exceptions.SSLError:
            # a certificate problem does not heal by retrying quickly, but may be fixed by an admin: not permanent
            raise DeliveryError(f"Rocket.Chat at {self.host}: TLS verification failed for {what}") from None
        except requests.RequestException as exc:
            raise DeliveryError(f"Rocket.Chat at {self.host}: {what} failed ({type(exc).__name__}: cannot connect)") from None
        self._note_limits(resp)
        return resp

    def _server_now(self, resp: requests.Response) -> float:
        """The server's time (its ``Date`` header), so rate-limit resets in epoch ms are measured
        against the clock that wrote them; our clock if the header is missing."""
        date = resp.headers.get("Date")
        if date:
            try:
                return parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass
        return self._clock.time()

    def _reset_in(self, resp: requests.Response) -> float | None:
        reset = resp.headers.get("X-RateLimit-Reset")
        if reset is None:
            return None
        try:
            reset_s = float(reset) / 1000.0  # epoch milliseconds
        except ValueError:
            return None
        if not math.isfinite(reset_s):
            return None
        return max(0.0, reset_s - self._server_now(resp))

    def _note_limits(self, resp: requests.Response) -> None:
        remaining = resp.headers.get("X-RateLimit-Remaining")
        if remaining is None:
            return
        try:
            left = float(remaining)
        except ValueError:
            return
        reset_in = self._reset_in(resp)
        if left <= 0 and reset_in is not None:
            self._wait_until = self._clock.monotonic() + reset_in
        else:
            self._wait_until = 0.0

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _body(self, resp: requests.Response) -> dict:
        try:
            body = resp.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _raise_for(self, what: str, resp: requests.Response, body: dict) -> None:
        """Translate a failed answer into the DeliveryError the worker needs."""
        error = str(body.get("error") or body.get("message") or "")
        error_type = str(body.get("errorType") or "")
        detail = self._scrub(error)[:200] or resp.reason or ""
        where = f"Rocket.Chat at {self.host}: {what}"
        if resp.status_code == 429 or "error-too-many-requests" in (error_type, error) or "[error-too-many-requests]" in error:
            retry = self._reset_in(resp)
            if retry is None:
                m = _WAIT_SECONDS.search(error)
                retry = float(m.group(1)) if m else _retry_after_header(resp)
            self._wait_until = max(self._wait_until, self._clock.monotonic() + (retry or 0.0))
            when = f"retry in {retry:.1f} s" if retry is not None else "retry later"
            raise DeliveryError(f"{where} rate limited (HTTP {resp.status_code}), {when}", retry_after=retry)
        if "error-message-size-exceeded" in (error, error_type) or "[error-message-size-exceeded]" in error:
            raise DeliveryError(
                f"{where} refused the message as too large (error-message-size-exceeded, Message_MaxAllowedSize): "
                "render it again with a smaller max_chars",
                too_large=True,
            )
        if resp.status_code >= 500:
            raise DeliveryError(f"{where} server error HTTP {resp.status_code} {detail}".rstrip())
        if resp.status_code == 408:
            raise DeliveryError(f"{where} HTTP 408 request timeout")
        raise DeliveryError(f"{where} refused: HTTP {resp.status_code} {detail}".rstrip(), permanent=True)


def _retry_after_header(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class RocketChatREST(_RocketChatHTTP):
    """Rocket.Chat's REST API: ``chat.sendMessage`` once per incident, then ``chat.update`` of
    the same message as alerts join, escalate and resolve.

    Authentication with a personal access token (``token`` + ``user_id``) or by logging in
    (``username`` + ``password`` → ``/api/v1/login``; on a 401 it logs in again once and retries).
    ``chat.sendMessage`` takes a room id: a ``channel`` is looked up once (``rooms.info``, or
    ``im.create`` for ``@user``). The reference returned by :meth:`post` is ``"<roomId>:<messageId>"``.
    """

    name = "rocketchat"
    updates = True

    def __init__(
        self,
        url: str,
        *,
        channel: str | None = None,
        room_id: str | None = None,
        token: str | None = None,
        user_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        alias: str | None = None,
        emoji: str | None = None,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, timeout=timeout, verify=verify, session=session, clock=clock)
        if not channel and not room_id:
            raise ValueError("Rocket.Chat REST notifier needs a channel (e.g. '#hlt-alerts') or a room_id")
        if token and user_id:
            self._auth_mode = "token"
        elif username and password:
            self._auth_mode = "login"
        else:
            raise ValueError(
                "Rocket.Chat REST notifier needs a personal access token with its user id, or a username with a password"
            )
        self._api = url.rstrip("/") + "/api/v1/"
        self.channel, self.room_id = channel, room_id
        self.alias, self.emoji = alias, emoji
        self._username, self._password = username, password
        self._token, self._user_id = (token, user_id) if self._auth_mode == "token" else (None, None)
        self._secrets = [s for s in (token, password) if s]
        self._rid: str | None = room_id

    def __repr__(self) -> str:
        target = f"channel={self.channel!r}" if self.channel else f"room_id={self.room_id!r}"
        return f"RocketChatREST(host={self.host!r}, {target}, auth={self._auth_mode!r})"

    # -- authentication -------------------------------------------------------------------

    def _login(self) -> None:
        resp = self._send("login", self._api + "login", {"user": self._username, "password": self._password})
        body = self._body(resp)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        if resp.status_code == 200 and data.get("authToken") and data.get("userId"):
            self._token, self._user_id = str(data["authToken"]), str(data["userId"])
            self._secrets = [s for s in (self._password, self._token) if s]
            log.info("logged in to Rocket.Chat at %s as %s", self.host, self._username)
            return
        if resp.status_code == 401:
            raise DeliveryError(
                f"Rocket.Chat at {self.host}: login as {self._username!r} refused (HTTP 401): check the password",
                permanent=True,
            )
        self._raise_for("login", resp, body)
        raise DeliveryError(f"Rocket.Chat at {self.host}: login answer without authToken/userId (HTTP {resp.status_code})")

    def _call(self, endpoint: str, payload: dict, method: str = "POST") -> dict:
        """Call ``endpoint`` authenticated; one re-login on 401 when logging in with a password."""
        if self._token is None:
            self._login()
        for attempt in (1, 2):
            headers = {"X-Auth-Token": self._token or "", "X-User-Id": self._user_id or ""}
            resp = self._send(endpoint, self._api + endpoint, payload, headers, method=method)
            body = self._body(resp)
            if resp.status_code == 401:
                if self._auth_mode == "login" and attempt == 1:
                    log.info("Rocket.Chat at %s: session expired (401), logging in again", self.host)
                    self._token = None
                    self._login()
                    continue
                how = "the login session" if self._auth_mode == "login" else "the personal access token"
                raise DeliveryError(f"Rocket.Chat at {self.host}: {endpoint} refused {how} (HTTP 401)", permanent=True)
            if resp.status_code == 200 and body.get("success") is True:
                return body
            if resp.status_code == 200:
                if not body:
                    raise DeliveryError(f"Rocket.Chat at {self.host}: {endpoint} answered HTTP 200 without a JSON body")
                raise DeliveryError(
                    f"Rocket.Chat at {self.host}: {endpoint} failed: {self._scrub(str(body.get('error', '')))[:200]}",
                    permanent=True,
                )
            self._raise_for(endpoint, resp, body)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- Notifier --------------------------------------------------------------------------

    def post(self, msg: ChatMessage, key: str | None = None) -> str:
        rid = self._room()
        text = msg.as_text()
        message: dict = {"rid": rid, "msg": text}
        mid = message_id(key) if key is not None else None
        if mid is not None:
            message["_id"] = mid
        if self.alias:
            message["alias"] = self.alias
        if self.emoji:
            message["emoji"] = self.emoji
        try:
            body = self._call("chat.sendMessage", {"message": message})
        except DeliveryError as exc:
            if mid is None or not exc.permanent or self._existing(mid, rid, text) is None:
                raise
            return f"{rid}:{mid}"  # posted before: an answer that never arrived, now retried
        sent = body.get("message") if isinstance(body.get("message"), dict) else {}
        got_rid, got_mid = sent.get("rid"), sent.get("_id")
        if not got_mid and mid is not None and self._existing(mid, rid, text) is not None:
            return f"{rid}:{mid}"  # success without a message: the id was taken (Rocket.Chat 1.3 to 6)
        if not got_rid or not got_mid:
            raise DeliveryError(f"Rocket.Chat at {self.host}: chat.sendMessage answer has no message._id/rid", permanent=True)
        log.debug("posted message %s to room %s at %s", got_mid, got_rid, self.host)
        return f"{got_rid}:{got_mid}"

    def _existing(self, mid: str, rid: str, text: str) -> dict | None:
        """The message ``mid`` if the server has it in ``rid`` (then edited to ``text``, the
        notification's newest state); None if it does not exist. Rate limits and outages raise."""
        try:
            body = self._call("chat.getMessage", {"msgId": mid}, method="GET")
        except DeliveryError as exc:
            if exc.permanent:
                return None
            raise
        found = body.get("message") if isinstance(body.get("message"), dict) else None
        if found is None or found.get("rid") != rid:
            return None
        log.info("Rocket.Chat at %s already has message %s: a post whose answer was lost, not posted again", self.host, mid)
        if found.get("msg") != text:
            self._call("chat.update", {"roomId": rid, "msgId": mid, "text": text})
        return found

    def _room(self) -> str:
        """The room id to post to: ``room_id``, or the ``channel`` looked up once."""
        if self._rid is not None:
            return self._rid
        channel = str(self.channel)
        try:
            if channel.startswith("@"):
                body = self._call("im.create", {"username": channel[1:]})
            else:
                body = self._call("rooms.info", {"roomName": channel.removeprefix("#")}, method="GET")
        except DeliveryError as exc:
            if exc.permanent:
                raise DeliveryError(f"Rocket.Chat at {self.host}: cannot post to {channel!r}: {exc}", permanent=True) from None
            raise
        room = body.get("room") if isinstance(body.get("room"), dict) else {}
        rid = room.get("_id") or room.get("rid")
        if not isinstance(rid, str) or not rid:
            raise DeliveryError(f"Rocket.Chat at {self.host}: no room id for {channel!r} in the answer", permanent=True)
        self._rid = rid
        return rid

    def update(self, ref: str, msg: ChatMessage) -> None:
        rid, sep, mid = ref.partition(":")
        if not sep or not rid or not mid:
            raise DeliveryError(f"Rocket.Chat message reference {ref!r} is not '<roomId>:<messageId>'", permanent=True)
        self._call("chat.update", {"roomId": rid, "msgId": mid, "text": msg.as_text()})
        log.debug("updated message %s in room %s at %s", mid, rid, self.host)


class RocketChatWebhook(_RocketChatHTTP):
    """A Rocket.Chat incoming webhook: one new message per notification (it cannot edit, so a
    resolve is a new message). The URL contains the integration's token: only its host is ever
    shown."""

    name = "rocketchat-webhook"
    updates = False

    def __init__(
        self,
        url: str,
        *,
        channel: str | None = None,
        alias: str | None = None,
        emoji: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(url, timeout=timeout, verify=verify, session=session, clock=clock)
        self._url = url
        self.channel, self.alias, self.emoji = channel, alias, emoji
        path = urlsplit(url).path
        self._secrets = [p for p in path.split("/") if len(p) >= 8] + [url]

    def __repr__(self) -> str:
        return f"RocketChatWebhook(host={self.host!r}, channel={self.channel!r})"

    def post(self, msg: ChatMessage, key: str | None = None) -> None:
        """An incoming webhook takes no message id (``key`` is unused): a post whose answer was
        lost is sent again and may show twice, the one thing the REST notifier rules out."""
        payload: dict = {"text": msg.text, "attachments": msg.attachments}
        for key in ("channel", "alias", "emoji"):
            if getattr(self, key):
                payload[key] = getattr(self, key)
        resp = self._send("webhook post", self._url, payload)
        body = self._body(resp)
        if resp.status_code == 200 and body.get("success") is not False:
            log.debug("posted webhook message to %s", self.host)
            return None
        if resp.status_code == 404:
            raise DeliveryError(
                f"Rocket.Chat at {self.host}: webhook refused (HTTP 404, {self._scrub(str(body.get('error', '')))[:200]})",
                permanent=True,
            )
        self._raise_for("webhook post", resp, body)
        return None

    def update(self, ref: str, msg: ChatMessage) -> None:
        """A webhook cannot edit a message: the change is posted as a new message."""
        self.post(msg)


# --------------------------------------------------------------------------------------------


class ConsoleNotifier:
    """Prints messages to a terminal (the demo, and trying rules without a chat server): a rich
    panel coloured by severity on a terminal, plain text otherwise. Untrusted text is printed
    as text, never interpreted as rich markup. ``update`` prints the new state under the same
    reference, marked UPDATE."""

    name = "console"
    updates = True

    _STYLES = {"danger": "red", "warning": "yellow", "good": "green"}

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None) -> None:
        from rich.console import Console

        self._stream = stream if stream is not None else sys.stdout
        self._console = Console(
            file=self._stream,
            force_terminal=color,
            no_color=color is False,
            highlight=False,
            emoji=False,
            markup=False,
        )
        self._plain = color is False or (color is None and not self._console.is_terminal)
        self._count = 0

    def __repr__(self) -> str:
        return f"ConsoleNotifier(plain={self._plain})"

    def wait_hint(self) -> float:
        return 0.0

    def post(self, msg: ChatMessage, key: str | None = None) -> str:
        self._count += 1
        ref = f"console:{self._count}"
        self._print(msg, f"NEW {ref}")
        return ref

    def update(self, ref: str, msg: ChatMessage) -> None:
        self._print(msg, f"UPDATE {ref}")

    def _print(self, msg: ChatMessage, tag: str) -> None:
        body = "\n".join(msg.as_text().split("\n")[1:])
        if self._plain:
            self._stream.write(f"[{tag}] {msg.text}\n")
            for line in body.split("\n"):
                self._stream.write(f"    {line}\n")
            self._stream.flush()
            return
        from rich.panel import Panel
        from rich.text import Text

        style = self._STYLES.get(msg.color or "", "blue")
        self._console.print(
            Panel(Text(body), title=Text(msg.text), subtitle=Text(tag), border_style=style, title_align="left")
        )


__all__ = ["ConsoleNotifier", "DeliveryError", "Notifier", "RocketChatREST", "RocketChatWebhook"]
