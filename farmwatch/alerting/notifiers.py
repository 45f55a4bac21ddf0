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

Secrets (tokens, passwords, the webhook URL's token) never appear in exceptions, reprs or logs:
errors name the host only, exceptions from ``requests`` (whose text contains the URL) are not
chained, and any server text quoted in an error is scrubbed of the secrets first.
"""

from __future__ import annotations

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

    def post(self, msg: ChatMessage) -> str | None: ...

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

    def _send(self, what: str, url: str, payload: dict, headers: dict | None = None) -> requests.Response:
        try:
            resp = self._session.post(url, json=payload, headers=headers, timeout=self._timeout, verify=self._verify)
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
    """Rocket.Chat's REST API: ``chat.postMessage`` once per incident, then ``chat.update`` of
    the same message as alerts join, escalate and resolve.

    Authentication with a personal access token (``token`` + ``user_id``) or by logging in
    (``username`` + ``password`` → ``/api/v1/login``; on a 401 it logs in again once and retries).
    The reference returned by :meth:`post` is ``"<roomId>:<messageId>"``.
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

    def _call(self, endpoint: str, payload: dict) -> dict:
        """POST ``endpoint`` authenticated; one re-login on 401 when logging in with a password."""
        if self._token is None:
            self._login()
        for attempt in (1, 2):
            headers = {"X-Auth-Token": self._token or "", "X-User-Id": self._user_id or ""}
            resp = self._send(endpoint, self._api + endpoint, payload, headers)
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

    def post(self, msg: ChatMessage) -> str:
        payload: dict = {"text": msg.as_text()}
        if self.room_id:
            payload["roomId"] = self.room_id
        else:
            payload["channel"] = self.channel
        if self.alias:
            payload["alias"] = self.alias
        if self.emoji:
            payload["emoji"] = self.emoji
        body = self._call("chat.postMessage", payload)
        message = body.get("message") if isinstance(body.get("message"), dict) else {}
        rid, mid = message.get("rid"), message.get("_id")
        if not rid or not mid:
            raise DeliveryError(f"Rocket.Chat at {self.host}: chat.postMessage answer has no message._id/rid", permanent=True)
        log.debug("posted message %s to room %s at %s", mid, rid, self.host)
        return f"{rid}:{mid}"

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

    def post(self, msg: ChatMessage) -> None:
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

    def post(self, msg: ChatMessage) -> str:
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
