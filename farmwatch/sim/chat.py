"""A loopback stand-in for a Rocket.Chat server: the parts farmwatch talks to, answering as the real one.

No Rocket.Chat can run on the test machines (it needs MongoDB and its own distribution), so the
tests and ``farmwatch demo`` post to this server instead. It implements what
``specs/rocketchat.md`` documents, with Rocket.Chat's own response shapes and error texts (taken
from its ``api.ts``, ``chat.ts`` and the incoming-webhook route):

- ``POST /api/v1/login`` → ``{"status": "success", "data": {"userId", "authToken", "me"}}``;
- ``POST /api/v1/chat.postMessage`` → ``{"ts", "channel", "message": {"_id", "rid", "msg", "ts",
  "_updatedAt", "u", …}, "success": true}``;
- ``POST /api/v1/chat.sendMessage`` ``{"message": {"rid", "msg", "_id"?, "alias"?, "emoji"?,
  "attachments"?}}`` → ``{"message": {…}, "success": true}``; a client-chosen ``_id`` that is
  already taken stores nothing (``sendMessage.ts``: "messageAlreadyExists"), and the answer is
  what the chosen server generation says (``duplicate_answer``): ``"current"`` 400 (the route
  fails building the answer for the message it did not store), ``"ok"`` 200 without a message
  (1.3 to 6), ``"mongo"`` 400 with MongoDB's E11000 duplicate key error (before 1.3);
- ``GET /api/v1/chat.getMessage?msgId=`` → ``{"message": {…}, "success": true}``, unknown → 400;
- ``GET /api/v1/rooms.info?roomName=`` (or ``roomId``) → ``{"room": {"_id", "name", "t"}, …}``,
  unknown → 400 ``error-room-not-found``; ``POST /api/v1/im.create`` ``{"username"}`` → the
  direct-message room ``{"room": {"_id", "rid", "t": "d", "usernames"}}``;
- ``POST /api/v1/chat.update`` with exactly ``{roomId, msgId, text}`` (other keys → 400
  ``invalid-params``, as the real server's schema says) → ``{"message": {…, "editedAt"}, "success": true}``;
- ``POST /hooks/<id>/<token>`` (incoming webhook) → ``{"success": true}``, unknown hook → 404;
- authentication with ``X-Auth-Token``/``X-User-Id`` (login tokens and personal access tokens),
  401 ``You must be logged in to do this.`` otherwise;
- per-endpoint rate limiting in fixed windows on the server's clock (Meteor's ``RateLimiter``:
  limit and window configurable, default 10 calls per 60 s), ``X-RateLimit-Limit/Remaining/Reset``
  (epoch milliseconds) on every answer of a rate-limited endpoint once the caller is
  authenticated, 429 ``error-too-many-requests`` "You must wait N seconds" over the limit;
- ``Message_MaxAllowedSize`` (default 5000, counted in UTF-16 units like JavaScript) →
  ``error-message-size-exceeded`` for the text and each attachment text (and, stricter than some
  server versions, for ``chat.update`` too);
- mentions detected as the server does, ``(^|\\s|>)@name``, and links (markdown, ``<url|text>``,
  bare URLs) as its renderer would make them, so tests can assert none slipped through.

Fault switches for the delivery tests: :meth:`ChatServer.down` / :meth:`~ChatServer.up` (really
stop listening, then listen again on the same port), :meth:`~ChatServer.fail_next` (a proxy
answering 503 with an HTML page), :meth:`~ChatServer.slow` (of all answers or of some endpoints:
the request is handled, only its answer is late, as when the server is busy). Everything is recorded:
``messages`` (current text/attachments per message id, with edit history), ``requests``
(endpoint, status, time) and ``mentions``.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from farmwatch.clock import Clock, RealClock

_ID_CHARS = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"  # Meteor's Random.id alphabet
MENTION = re.compile(r"(^|\s|>)@([0-9a-zA-Z\-_.]+)", re.M)
"""Rocket.Chat's mention pattern (``MentionsParser.userMentionRegex`` with the default name validation)."""
_LINKS = (
    re.compile(r"\[[^\]\n]*\]\(\s*((?:[a-zA-Z][a-zA-Z0-9+.\-]*:)?//[^)\s]+|www\.[^)\s]+)\s*\)"),  # [text](url)
    re.compile(r"<((?:[a-zA-Z][a-zA-Z0-9+.\-]*:)?//[^|>\s]+|www\.[^|>\s]+)(?:\|[^>]*)?>"),  # <url|text>, <url>
    re.compile(r"(?i)\b((?:https?|ftp)://[^\s<>()\[\]]+)"),  # bare http(s)://…
    re.compile(r"(?i)(?<![\w.])(www\.[a-z0-9\-]+\.[^\s<>()\[\]]+)"),  # bare www.…
)
_UNAUTHORIZED = {
    "success": False,
    "error": "You must be logged in to do this.",
    "status": "error",
    "message": "You must be logged in to do this.",
}


def _rc_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(17))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def js_len(text: str) -> int:
    """JavaScript's ``String.length``: UTF-16 code units."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass
class StoredMessage:
    """A message as the server keeps it; ``history`` holds every version, oldest first."""

    id: str
    rid: str
    text: str
    attachments: list[dict]
    ts: float
    updated_at: float
    user_id: str
    alias: str | None = None
    emoji: str | None = None
    via: str = "rest"
    edited_at: float | None = None
    history: list[tuple[float, str, list[dict]]] = field(default_factory=list)

    def shown_text(self) -> str:
        """Everything a reader sees: text, attachment titles, texts and fields."""
        parts = [self.text]
        for att in self.attachments:
            parts += [str(att.get("title") or ""), str(att.get("text") or "")]
            parts += [f"{f.get('title', '')} {f.get('value', '')}" for f in att.get("fields") or [] if isinstance(f, dict)]
        return "\n".join(parts)


@dataclass(frozen=True)
class RequestRecord:
    endpoint: str  # "login", "chat.postMessage", "chat.update", "hooks", or the path
    status: int
    time: float  # server clock
    user_id: str | None = None


@dataclass(frozen=True)
class Mention:
    msg_id: str
    name: str  # "all", "here", or a user name


@dataclass(frozen=True)
class Link:
    msg_id: str
    url: str


@dataclass
class _User:
    id: str
    username: str
    password: str | None


class _Window:
    """Meteor's RateLimiter rule: counters per caller in a fixed window that restarts on the
    first call after it has elapsed."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.counts: dict[str, int] = {}

    def hit(self, key: str, now: float, limit: int, interval: float) -> tuple[bool, int, float]:
        """Count a call; (allowed, remaining, seconds until the window resets)."""
        if now - self.start >= interval:
            self.start, self.counts = now, {}
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        to_reset = max(0.0, self.start + interval - now)
        return n <= limit, max(0, limit - n), to_reset


class ChatServer:
    """The stand-in server on a free loopback port; ``with ChatServer(clock) as chat: chat.url``.

    ``clock`` drives rate-limit windows, message timestamps and the ``Date`` header (tests pass
    a ``SimClock``); ``slow()`` delays are real time. A user ``farmwatch`` with password
    ``farmwatch-pw`` and the rooms ``general`` (id ``GENERAL``) and ``hlt-alerts`` exist from
    the start.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int = 10,
        rate_window: float = 60.0,
        max_size: int = 5000,
        rooms: tuple[str, ...] = ("general", "hlt-alerts"),
        duplicate_answer: str = "current",
    ) -> None:
        if duplicate_answer not in ("current", "ok", "mongo"):
            raise ValueError(f"duplicate_answer must be 'current', 'ok' or 'mongo', got {duplicate_answer!r}")
        self.duplicate_answer = duplicate_answer
        self.clock = clock or RealClock()
        self.rate_limit, self.rate_window, self.max_size = rate_limit, rate_window, max_size
        self.messages: dict[str, StoredMessage] = {}
        self.requests: list[RequestRecord] = []
        self.mentions: list[Mention] = []
        self.links: list[Link] = []
        self.rooms: dict[str, str] = {name: ("GENERAL" if name == "general" else _rc_id()) for name in rooms}
        self._users: dict[str, _User] = {}
        self._tokens: dict[str, str] = {}  # auth token → user id (login and personal tokens)
        self._hooks: dict[tuple[str, str], tuple[str, str]] = {}  # (id, token) → (channel, user id)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.RLock()
        self._fail: list[int] = []
        self._delay = 0.0
        self._delay_only: frozenset[str] | None = None
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.bot_id = self.add_user("farmwatch", "farmwatch-pw")

    # -- setup ----------------------------------------------------------------------------

    def add_user(self, username: str, password: str | None = None) -> str:
        """Create a user; returns its id."""
        with self._lock:
            uid = _rc_id()
            self._users[uid] = _User(uid, username, password)
            return uid

    def personal_token(self, username: str = "farmwatch") -> tuple[str, str]:
        """A new personal access token for ``username``: ``(token, user_id)``."""
        with self._lock:
            user = self._user_by_name(username)
            token = secrets.token_urlsafe(32)
            self._tokens[token] = user.id
            return token, user.id

    def add_webhook(self, channel: str = "#hlt-alerts", username: str = "farmwatch") -> str:
        """An incoming-webhook integration posting to ``channel``; returns its full URL (with the token)."""
        with self._lock:
            hook_id, token = _rc_id(), secrets.token_urlsafe(36)
            self._hooks[(hook_id, token)] = (channel, self._user_by_name(username).id)
            return f"{self.url}/hooks/{hook_id}/{token}"

    def revoke_tokens(self, username: str | None = None) -> None:
        """Invalidate login and personal tokens (of one user or all), as a logout or an expired session would."""
        with self._lock:
            uid = self._user_by_name(username).id if username else None
            self._tokens = {t: u for t, u in self._tokens.items() if uid is not None and u != uid}

    def room_id(self, name: str) -> str:
        return self.rooms[name.lstrip("#")]

    def _user_by_name(self, username: str) -> _User:
        for u in self._users.values():
            if u.username == username:
                return u
        raise KeyError(f"no user {username!r} on the chat stand-in")

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def start(self) -> "ChatServer":
        if self._httpd is None:
            self._listen()
        return self

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        handler = type("Handler", (_Handler,), {"chat": self})
        httpd = ThreadingHTTPServer((self._host, self._port), handler)
        httpd.daemon_threads = True
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and drop open connections: clients get "connection refused"."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(timeout=5)

    def up(self) -> None:
        """Listen again, on the same port."""
        if self._httpd is None:
            self._listen()

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next ``n`` requests get ``status`` with an HTML error page, as a reverse proxy in
        front of a restarting server answers."""
        with self._lock:
            self._fail += [status] * n

    def slow(self, seconds: float, endpoints: tuple[str, ...] | None = None) -> None:
        """Delay every answer (or those of ``endpoints``, e.g. ``("chat.sendMessage",)``) by
        ``seconds`` of real time, after the request was handled (0 to stop)."""
        self._delay = max(0.0, seconds)
        self._delay_only = frozenset(endpoints) if endpoints else None

    def delay_for(self, endpoint: str) -> float:
        only = self._delay_only
        return self._delay if only is None or endpoint in only else 0.0

    def set_rate_limit(self, limit: int, window: float) -> None:
        with self._lock:
            self.rate_limit, self.rate_window = limit, window
            self._windows.clear()

    # -- what tests read ------------------------------------------------------------------

    def room_messages(self, room: str) -> list[StoredMessage]:
        rid = self.room_id(room)
        with self._lock:
            return [m for m in self.messages.values() if m.rid == rid]

    def count(self, endpoint: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.endpoint == endpoint and (status is None or r.status == status))

    # -- request handling (called by the handler threads) -----------------------------------

    def _handle(self, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], bytes, str, str | None]:
        """(status, extra headers, body, endpoint name, user id) for one POST."""
        failed = self._injected_failure(path)
        if failed is not None:
            return failed
        try:
            body = json.loads(raw.decode("utf-8") or "{}") if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._json(400, {"success": False, "error": f"Invalid JSON: {exc}"}, _endpoint(path))
        if not isinstance(body, dict):
            return self._json(400, {"success": False, "error": "Body must be a JSON object"}, _endpoint(path))
        if path == "/api/v1/login":
            return self._login(body)
        endpoint = path.rsplit("/", 1)[-1]
        fn = {"chat.postMessage": self._post_message, "chat.update": self._update,
              "chat.sendMessage": self._send_message, "im.create": self._im_create}.get(endpoint)
        if fn is not None and path == "/api/v1/" + endpoint:
            return self._authenticated(endpoint, headers, lambda uid: fn(body, uid))
        m = re.fullmatch(r"/hooks/([^/]+)/([^/]+)", path)
        if m:
            return self._webhook(m.group(1), m.group(2), body)
        return self._json(404, {"success": False, "error": f'API endpoint "{path}" does not exist!'}, path)

    def _handle_get(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, dict[str, str], bytes, str, str | None]:
        """(status, extra headers, body, endpoint name, user id) for one GET."""
        failed = self._injected_failure(path)
        if failed is not None:
            return failed
        endpoint = path.rsplit("/", 1)[-1]
        fn = {"chat.getMessage": self._get_message, "rooms.info": self._room_info}.get(endpoint)
        if fn is None or path != "/api/v1/" + endpoint:
            return self._json(404, {"success": False, "error": f'API endpoint "{path}" does not exist!'}, path)
        return self._authenticated(endpoint, headers, lambda uid: fn(query, uid))

    def _injected_failure(self, path: str):
        with self._lock:
            if not self._fail:
                return None
            status = self._fail.pop(0)
        page = f"<html><head><title>{status}</title></head><body><h1>{status} Service Unavailable</h1></body></html>"
        return status, {"Content-Type": "text/html"}, page.encode(), _endpoint(path), None

    def _authenticated(self, endpoint: str, headers: Any, fn):
        """Authentication, then the endpoint's rate limit, then ``fn(uid)`` → (status, body)."""
        uid = self._authenticate(headers)
        if uid is None:
            return self._json(401, dict(_UNAUTHORIZED), endpoint)
        limited = self._rate(endpoint, uid)
        if limited[0] is not None:
            return (*limited[0], endpoint, uid)
        status, out = fn(uid)
        return status, limited[1], _dump(out), endpoint, uid

    def _json(self, status: int, body: dict, endpoint: str, uid: str | None = None, hdrs: dict | None = None):
        return status, dict(hdrs or {}), _dump(body), endpoint, uid

    def _authenticate(self, headers: Any) -> str | None:
        token, uid = headers.get("X-Auth-Token"), headers.get("X-User-Id")
        with self._lock:
            if token and uid and self._tokens.get(token) == uid and uid in self._users:
                return uid
        return None

    def _rate(self, endpoint: str, caller: str) -> tuple[tuple[int, dict, bytes] | None, dict[str, str]]:
        """Meteor's check: count, then refuse above the limit; headers either way."""
        now = self.clock.time()
        with self._lock:
            window = self._windows.setdefault(endpoint, _Window(now))
            allowed, remaining, to_reset = window.hit(caller, now, self.rate_limit, self.rate_window)
        hdrs = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(round((now + to_reset) * 1000))),
        }
        if allowed:
            return None, hdrs
        seconds = math.ceil(to_reset)
        body = {
            "success": False,
            "error": f"Error, too many requests. Please slow down. You must wait {seconds} seconds before "
            "trying this endpoint again. [error-too-many-requests]",
            "errorType": "error-too-many-requests",
        }
        return (429, hdrs, _dump(body)), hdrs

    def _login(self, body: dict):
        limited, hdrs = self._rate("login", "anonymous")
        if limited is not None:
            return (*limited, "login", None)
        name = body.get("user") or body.get("username")
        password = body.get("password")
        with self._lock:
            user = next((u for u in self._users.values() if u.username == name), None)
            if user is None or user.password is None or password != user.password:
                out = {"success": False, "status": "error", "error": "Unauthorized", "message": "Unauthorized"}
                return self._json(401, out, "login", None, hdrs)
            token = secrets.token_urlsafe(32)
            self._tokens[token] = user.id
        me = {"_id": user.id, "username": user.username, "name": user.username, "status": "online", "active": True, "roles": ["bot"]}
        out = {"status": "success", "data": {"userId": user.id, "authToken": token, "me": me}, "success": True}
        return self._json(200, out, "login", user.id, hdrs)

    def _too_big(self, text: Any, attachments: Any) -> bool:
        if isinstance(text, str) and js_len(text) > self.max_size:
            return True
        for att in attachments if isinstance(attachments, list) else []:
            if isinstance(att, dict) and isinstance(att.get("text"), str) and js_len(att["text"]) > self.max_size:
                return True
        return False

    def _resolve_room(self, channel: Any, room_id: Any) -> str | None:
        with self._lock:
            if isinstance(room_id, str) and room_id:
                return room_id if room_id in self.rooms.values() else None
            if not isinstance(channel, str) or not channel:
                return None
            if channel[0] == "@":
                name = channel[1:]
                if not any(u.username == name for u in self._users.values()):
                    return None
                return self.rooms.setdefault("@" + name, _rc_id())
            name = channel[1:] if channel[0] == "#" else channel
            if name in self.rooms:
                return self.rooms[name]
            return name if name in self.rooms.values() else None

    def _store(self, rid: str, text: str, attachments: list, uid: str, alias: Any, emoji: Any, via: str,
               msg_id: str | None = None) -> StoredMessage:
        now = self.clock.time()
        msg = StoredMessage(
            id=msg_id or _rc_id(), rid=rid, text=text, attachments=attachments, ts=now, updated_at=now, user_id=uid,
            alias=alias if isinstance(alias, str) else None, emoji=emoji if isinstance(emoji, str) else None, via=via,
        )
        msg.history.append((now, text, attachments))
        with self._lock:
            self.messages[msg.id] = msg
            self._scan(msg)
        return msg

    def _scan(self, msg: StoredMessage) -> None:
        shown = msg.shown_text()
        self.mentions += [Mention(msg.id, m.group(2)) for m in MENTION.finditer(shown)]
        found = {m.group(1): None for rx in _LINKS for m in rx.finditer(shown)}
        self.links += [Link(msg.id, url) for url in found if Link(msg.id, url) not in self.links]

    def _message_json(self, msg: StoredMessage) -> dict:
        user = self._users.get(msg.user_id)
        out: dict = {
            "_id": msg.id,
            "rid": msg.rid,
            "msg": msg.text,
            "ts": _iso(msg.ts),
            "u": {"_id": msg.user_id, "username": user.username if user else "?", "name": user.username if user else "?"},
            "_updatedAt": _iso(msg.updated_at),
            "parseUrls": True,
            "groupable": False,
            "mentions": [],
            "channels": [],
        }
        if msg.alias:
            out["alias"] = msg.alias
        if msg.emoji:
            out["emoji"] = msg.emoji
        if msg.attachments:
            out["attachments"] = msg.attachments
        if msg.edited_at is not None:
            out["editedAt"] = _iso(msg.edited_at)
            out["editedBy"] = {"_id": msg.user_id, "username": out["u"]["username"]}
        return out

    def _post_message(self, body: dict, uid: str) -> tuple[int, dict]:
        if not body.get("roomId") and not body.get("channel"):
            return 400, _invalid("must have required property 'roomId'")
        text, attachments = body.get("text", ""), body.get("attachments") or []
        if not isinstance(text, str) or not isinstance(attachments, list):
            return 400, _invalid("text must be a string and attachments an array")
        if self._too_big(text, attachments):
            return 400, {"success": False, "error": "error-message-size-exceeded"}
        rid = self._resolve_room(body.get("channel"), body.get("roomId"))
        if rid is None:
            return 400, {"success": False, "error": "[invalid-channel]", "errorType": "invalid-channel"}
        msg = self._store(rid, text, attachments, uid, body.get("alias"), body.get("emoji"), "rest")
        channel = body.get("channel") or body.get("roomId")
        with self._lock:
            return 200, {"ts": int(msg.ts * 1000), "channel": channel, "message": self._message_json(msg), "success": True}

    def _send_message(self, body: dict, uid: str) -> tuple[int, dict]:
        """``chat.sendMessage`` as ``chat.ts`` → ``executeSendMessage`` → ``sendMessage`` do it."""
        if set(body) - {"message", "previewUrls"}:
            return 400, _invalid("must NOT have additional properties")
        message = body.get("message")
        if not isinstance(message, dict):
            return 400, _invalid("must have required property 'message'")
        for key in ("_id", "rid", "msg", "alias", "emoji"):
            if message.get(key) is not None and not isinstance(message[key], str):
                return 400, _invalid(f"/message/{key} must be string")
        attachments = message.get("attachments") or []
        if not isinstance(attachments, list):
            return 400, _invalid("/message/attachments must be array")
        text = message.get("msg") or ""
        if js_len(text) > self.max_size:
            return 400, _meteor_error("error-message-size-exceeded", "Message size exceeds Message_MaxAllowedSize")
        rid = message.get("rid")
        if not rid:
            return 400, {"success": False, "error": "The 'rid' property on the message object is missing."}
        with self._lock:
            if rid not in self.rooms.values():
                return 400, _meteor_error("error-invalid-room", "Invalid room")
            msg_id = message.get("_id") or None
            if msg_id is not None and msg_id in self.messages:
                return self._taken(msg_id)
            msg = self._store(rid, text, attachments, uid, message.get("alias"), message.get("emoji"), "rest", msg_id)
            return 200, {"message": self._message_json(msg), "success": True}

    def _taken(self, msg_id: str) -> tuple[int, dict]:
        """The answer to a ``chat.sendMessage`` whose ``_id`` exists: nothing was stored."""
        if self.duplicate_answer == "ok":
            return 200, {"success": True}
        if self.duplicate_answer == "mongo":
            return 400, {"success": False, "error": "E11000 duplicate key error collection: rocketchat.rocketchat_message "
                                                    f'index: _id_ dup key: {{ _id: "{msg_id}" }}'}
        return 400, {"success": False, "error": "Cannot read properties of undefined (reading 'starred')"}

    def _get_message(self, query: dict[str, str], uid: str) -> tuple[int, dict]:
        msg_id = query.get("msgId")
        if not msg_id:
            return 400, _invalid("must have required property 'msgId'")
        with self._lock:
            msg = self.messages.get(msg_id)
            if msg is None:
                return 400, {"success": False}
            return 200, {"message": self._message_json(msg), "success": True}

    def _room_info(self, query: dict[str, str], uid: str) -> tuple[int, dict]:
        with self._lock:
            rid = query.get("roomId") or self.rooms.get(query.get("roomName") or "")
            name = next((n for n, r in self.rooms.items() if r == rid), None)
        if name is None or name.startswith("@"):
            return 400, _meteor_error("error-room-not-found",
                                      'The required "roomId" or "roomName" param provided does not match any channel')
        return 200, {"room": {"_id": rid, "name": name, "fname": name, "t": "c", "usersCount": 2}, "success": True}

    def _im_create(self, body: dict, uid: str) -> tuple[int, dict]:
        name = body.get("username")
        with self._lock:
            if not isinstance(name, str) or not any(u.username == name for u in self._users.values()):
                return 400, _meteor_error("error-invalid-user", "Invalid user")
            rid = self.rooms.setdefault("@" + name, _rc_id())
            me = self._users[uid].username
        return 200, {"room": {"_id": rid, "rid": rid, "t": "d", "usernames": sorted({me, name})}, "success": True}

    def _update(self, body: dict, uid: str) -> tuple[int, dict]:
        extra = set(body) - {"roomId", "msgId", "text", "previewUrls", "customFields"}
        if extra:
            return 400, _invalid("must NOT have additional properties")
        for key in ("roomId", "msgId", "text"):
            if not isinstance(body.get(key), str):
                return 400, _invalid(f"must have required property '{key}'")
        with self._lock:
            msg = self.messages.get(body["msgId"])
            if msg is None:
                return 400, {"success": False, "error": f'No message found with the id of "{body["msgId"]}".'}
            if msg.rid != body["roomId"]:
                return 400, {"success": False, "error": "The room id provided does not match where the message is from."}
            if msg.user_id != uid:
                return 400, _meteor_error("error-action-not-allowed", "Message editing not allowed")
            if self._too_big(body["text"], []):
                return 400, _meteor_error("error-message-size-exceeded", "Message size exceeds Message_MaxAllowedSize")
            if body["text"] != msg.text:  # the server ignores an edit that changes nothing
                now = self.clock.time()
                msg.text, msg.edited_at, msg.updated_at = body["text"], now, now
                msg.history.append((now, msg.text, msg.attachments))
                self._scan(msg)
            return 200, {"message": self._message_json(msg), "success": True}

    def _webhook(self, hook_id: str, token: str, body: dict):
        from urllib.parse import unquote

        with self._lock:
            hook = self._hooks.get((hook_id, unquote(token)))
        if hook is None:
            return self._json(404, {"success": False, "error": "Invalid integration id or token provided."}, "hooks")
        default_channel, uid = hook
        limited, hdrs = self._rate("hooks", uid)
        if limited is not None:
            return (*limited, "hooks", uid)
        text, attachments = body.get("text", ""), body.get("attachments") or []
        if not isinstance(text, str) or not isinstance(attachments, list):
            return self._json(400, {"success": False, "error": "invalid-params"}, "hooks", uid, hdrs)
        if self._too_big(text, None):  # the webhook path checks the text only
            return self._json(400, {"success": False, "error": "error-message-size-exceeded"}, "hooks", uid, hdrs)
        rid = self._resolve_room(body.get("channel") or default_channel, None)
        if rid is None:
            return self._json(400, {"success": False, "error": "invalid-channel"}, "hooks", uid, hdrs)
        self._store(rid, text, attachments, uid, body.get("alias"), body.get("emoji"), "webhook")
        return self._json(200, {"success": True}, "hooks", uid, hdrs)

    def _record(self, endpoint: str, status: int, uid: str | None) -> None:
        with self._lock:
            self.requests.append(RequestRecord(endpoint, status, self.clock.time(), uid))


def _meteor_error(error: str, reason: str) -> dict:
    """How the REST API reports a ``Meteor.Error(error, reason)``: ``"reason [error]"`` plus ``errorType``."""
    return {"success": False, "error": f"{reason} [{error}]", "errorType": error}


def _invalid(reason: str) -> dict:
    """A request body that fails the endpoint's schema (ajv), as the API reports it."""
    return _meteor_error("invalid-params", reason)


def _endpoint(path: str) -> str:
    if path.startswith("/hooks/"):
        return "hooks"
    return path.rsplit("/", 1)[-1] if path.startswith("/api/v1/") else path


def _dump(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    chat: ChatServer  # set on the per-server subclass
    server_version = "Rocket.Chat-standin"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        with self.chat._lock:
            self.chat._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.chat._lock:
                self.chat._conns.discard(self.connection)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.chat.clock.time() if timestamp is None else timestamp, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the tests read chat.requests instead

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self._answer(*self.chat._handle(path, self.headers, raw))

    def do_GET(self) -> None:
        from urllib.parse import parse_qsl, urlsplit

        parts = urlsplit(self.path)
        self._answer(*self.chat._handle_get(parts.path, dict(parse_qsl(parts.query)), self.headers))

    def _answer(self, status: int, hdrs: dict[str, str], body: bytes, endpoint: str, uid: str | None) -> None:
        delay = self.chat.delay_for(endpoint)
        if delay:
            time.sleep(delay)
        self.chat._record(endpoint, status, uid)
        try:
            self.send_response(status)
            self.send_header("Content-Type", hdrs.pop("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the server went down() while answering, or the client is gone


__all__ = ["MENTION", "ChatServer", "Link", "Mention", "RequestRecord", "StoredMessage", "js_len"]
