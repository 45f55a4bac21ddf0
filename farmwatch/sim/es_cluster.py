"""A protocol-level Elasticsearch server on loopback, with fault injection.

No real Elasticsearch can run on the development and CI machines (see the project's
``specs/elasticsearch.md``), yet what matters most about shipping logs is how the shipper behaves
when the cluster misbehaves: a whole ``_bulk`` answered 429 or 503, single items rejected with
429/400/409, fewer items than actions, the cluster gone (connection refused) and back. This server
speaks the REST API the official Python client uses, for the endpoints farmwatch calls, as the
REST specification shapes them:

- ``GET /`` (cluster info), ``PUT|GET /_component_template/<name>``, ``PUT|GET /_index_template/<name>``
- ``POST|PUT /_bulk`` and ``/<index>/_bulk`` (NDJSON; ``create``/``index`` ops; per-item results in
  order), ``PUT|POST /<index>/_doc[/<id>]`` and ``/<index>/_create/<id>`` (single documents, for
  benchmark baselines)
- ``GET|POST /<targets>/_search`` and ``/_count`` (``bool``, ``match_all``, ``simple_query_string``,
  ``term``, ``terms``, ``wildcard``, ``regexp``, ``range``; ``sort``, ``size``, ``from``),
  ``POST /<targets>/_refresh``

and behaves like a cluster where farmwatch depends on it: every response carries
``X-Elastic-Product: Elasticsearch`` (the client's product check), compatible-with media types of
another major version are refused (400 ``media_type_header_exception``), an API key is enforced
when configured, index templates decide whether a name becomes a data stream (``create`` only,
``@timestamp`` required) and their mappings are enforced (a ``long`` field given ``"abc"`` or an
object given a string is a 400 ``mapper_parsing_exception``, as is a later document contradicting a
dynamically mapped type), and ``create`` of an existing ``_id`` is a 409. Documents are searchable
at once (no refresh interval). Faults for ``_bulk`` requests are queued in ``faults``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PRODUCT_HEADER = ("X-Elastic-Product", "Elasticsearch")


@dataclass
class Reject:
    """Answer the whole ``_bulk`` request with ``status`` (nothing is stored)."""

    status: int
    retry_after: int | None = None


@dataclass
class ItemErrors:
    """Fail the items at these positions (0-based in the request) with the given statuses."""

    statuses: dict[int, int]


@dataclass
class Truncate:
    """Store every document but answer with only the first ``keep`` items (the response is short)."""

    keep: int


@dataclass
class Delay:
    """Answer only after ``seconds`` (the documents are stored all the same, like a slow cluster
    that finishes the work after the client gave up waiting)."""

    seconds: float


Fault = Reject | ItemErrors | Truncate | Delay

_ERRORS = {
    429: ("es_rejected_execution_exception", "rejected execution of coordinating operation"),
    400: ("mapper_parsing_exception", "failed to parse"),
    409: ("version_conflict_engine_exception", "version conflict, document already exists"),
    500: ("internal_server_error", "internal error"),
    503: ("unavailable_shards_exception", "primary shard is not active"),
}


class ApiFailure(Exception):
    def __init__(self, status: int, type_: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.type, self.reason = status, type_, reason

    def body(self) -> dict[str, Any]:
        err = {"type": self.type, "reason": self.reason}
        return {"error": {"root_cause": [err], **err}, "status": self.status}


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
            if not v:
                out[name] = {}
        else:
            out[name] = v
    return out


def _mapping_paths(props: dict[str, Any], prefix: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    out = {} if out is None else out
    for k, v in props.items():
        name = f"{prefix}{k}"
        if "properties" in v:
            out[name] = "object"
            _mapping_paths(v["properties"], name + ".", out)
        else:
            out[name] = v.get("type", "object")
    return out


def _parse_date(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0
    if isinstance(value, str):
        if value.isdigit():
            return int(value) / 1000.0
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError(f"cannot parse date {value!r}")


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass
class _Index:
    name: str
    paths: dict[str, str]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_stream: str | None = None


class ElasticSim:
    """The server. ``url`` after ``start()``; ``stop()`` makes the port refuse connections (an
    outage) and ``start()`` brings the same cluster back on the same port, data kept."""

    def __init__(self, *, version: str = "9.1.0", api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS; ``api_key``: the encoded key clients must send."""
        self.tls = tls
        self.version = version
        self.major = int(version.split(".")[0])
        self.api_key = api_key
        self.host, self.port = host, port
        self.faults: deque[Fault] = deque()
        self.component_templates: dict[str, dict[str, Any]] = {}
        self.index_templates: dict[str, dict[str, Any]] = {}
        self.indices: dict[str, _Index] = {}
        self.data_streams: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.bulk_bodies: list[bytes] = []
        self.arrivals: list[str] = []
        """``_id`` of every document stored, in the order they were stored."""
        self.bulk_items = 0
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> "ElasticSim":
        sim = self

        class Handler(_Handler):
            server_sim = sim

        server = _Server((self.host, self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="elastic-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """An outage: open keep-alive connections are cut and new ones refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.cut_connections()
            self._server = None

    def __enter__(self) -> "ElasticSim":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -----------------------------------------------------------------------

    def documents(self, pattern: str = "*") -> dict[str, dict[str, Any]]:
        """Every stored document (``_id`` → ``_source``) of the indices/data streams matching ``pattern``."""
        with self.lock:
            out: dict[str, dict[str, Any]] = {}
            for idx in self._resolve(pattern):
                out.update(idx.docs)
            return out

    # -- the API --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "name": "sim-node-1", "cluster_name": "farmwatch-sim", "cluster_uuid": "sim-cluster",
            "version": {"number": self.version, "build_flavor": "default", "build_type": "tar",
                        "lucene_version": "10.0.0", "minimum_wire_compatibility_version": f"{self.major - 1}.18.0",
                        "minimum_index_compatibility_version": f"{self.major - 1}.0.0"},
            "tagline": "You Know, for Search",
        }

    def _template_for(self, name: str) -> dict[str, Any] | None:
        best = None
        for t in self.index_templates.values():
            if any(fnmatch.fnmatchcase(name, p) for p in t.get("index_patterns", [])):
                if best is None or t.get("priority", 0) > best.get("priority", 0):
                    best = t
        return best

    def _paths(self, template: dict[str, Any] | None) -> dict[str, str]:
        paths: dict[str, str] = {}
        if template:
            for c in template.get("composed_of", []):
                if c not in self.component_templates:
                    raise ApiFailure(400, "invalid_index_template_exception", f"component template [{c}] does not exist")
                props = self.component_templates[c].get("template", {}).get("mappings", {}).get("properties", {})
                _mapping_paths(props, out=paths)
            _mapping_paths(template.get("template", {}).get("mappings", {}).get("properties", {}), out=paths)
        return paths

    def _write_target(self, name: str, op: str, source: dict[str, Any]) -> _Index:
        if name in self.data_streams:
            stream = name
        elif name in self.indices:
            return self.indices[name]
        else:
            template = self._template_for(name)
            if template is not None and "data_stream" in template:
                if op != "create":
                    raise ApiFailure(400, "illegal_argument_exception",
                                     "only write ops with an op_type of create are allowed in data streams")
                day = datetime.now(timezone.utc).strftime("%Y.%m.%d")
                backing = f".ds-{name}-{day}-000001"
                self.indices[backing] = _Index(backing, self._paths(template), data_stream=name)
                self.data_streams[name] = backing
                stream = name
            else:
                self.indices[name] = _Index(name, self._paths(template))
                return self.indices[name]
        if op != "create":
            raise ApiFailure(400, "illegal_argument_exception", "only write ops with an op_type of create are allowed in data streams")
        if "@timestamp" not in source:
            raise ApiFailure(400, "document_parsing_exception", "data stream timestamp field [@timestamp] is missing")
        return self.indices[self.data_streams[stream]]

    def _check_mapping(self, idx: _Index, doc_id: str, source: dict[str, Any]) -> None:
        learned: dict[str, str] = {}
        for path, value in _flatten(source).items():
            parts = path.split(".")
            for i in range(1, len(parts)):
                if idx.paths.get(".".join(parts[:i]), "object") != "object":
                    raise ApiFailure(400, "document_parsing_exception",
                                     f"[1:1] failed to parse field [{'.'.join(parts[:i])}] of type "
                                     f"[{idx.paths['.'.join(parts[:i])]}]: found an object")
            kind = idx.paths.get(path)
            if kind == "object" and not isinstance(value, dict):
                raise ApiFailure(400, "document_parsing_exception",
                                 f"[1:1] object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value")
            if value is None or isinstance(value, (dict, list)):
                continue
            if kind in ("long", "integer"):
                try:
                    if isinstance(value, bool) or int(float(value)) != float(value):
                        raise ValueError
                except (TypeError, ValueError):
                    raise ApiFailure(400, "document_parsing_exception",
                                     f"[1:1] failed to parse field [{path}] of type [{kind}] in document with id "
                                     f"'{doc_id}'. Preview of field's value: '{value}'") from None
            elif kind == "date":
                try:
                    _parse_date(value)
                except ValueError:
                    raise ApiFailure(400, "document_parsing_exception",
                                     f"[1:1] failed to parse field [{path}] of type [date] in document with id '{doc_id}'") from None
            elif kind is None:
                learned[path] = "long" if isinstance(value, int) and not isinstance(value, bool) else \
                    "float" if isinstance(value, float) else "boolean" if isinstance(value, bool) else "keyword"
        for path, kind in learned.items():
            idx.paths.setdefault(path, kind)
            for i in range(1, len(path.split("."))):
                idx.paths.setdefault(".".join(path.split(".")[:i]), "object")

    def write(self, op: str, index: str, doc_id: str | None, source: dict[str, Any]) -> dict[str, Any]:
        """Store one document; the bulk item (``status``, ``result`` or ``error``) it produces."""
        with self.lock:
            if doc_id is None:
                doc_id = f"auto-{sum(len(i.docs) for i in self.indices.values()) + 1}"
            try:
                idx = self._write_target(index, op, source)
                if op == "create" and doc_id in idx.docs:
                    raise ApiFailure(409, "version_conflict_engine_exception",
                                     f"[{doc_id}]: version conflict, document already exists (current version [1])")
                self._check_mapping(idx, doc_id, source)
            except ApiFailure as f:
                return {"_index": index, "_id": doc_id, "status": f.status, "error": {"type": f.type, "reason": f.reason, "index": index}}
            created = doc_id not in idx.docs
            idx.docs[doc_id] = source
            self.arrivals.append(doc_id)
            return {"_index": idx.name, "_id": doc_id, "_version": 1, "result": "created" if created else "updated",
                    "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": len(idx.docs) - 1,
                    "_primary_term": 1, "status": 201 if created else 200}

    def bulk(self, body: bytes, default_index: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            self.bulk_bodies.append(body)
            fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, Delay):
            time.sleep(fault.seconds)
        with self.lock:
            if isinstance(fault, Reject):
                kind, reason = _ERRORS.get(fault.status, ("exception", "rejected"))
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return fault.status, ApiFailure(fault.status, kind, reason).body(), headers
            lines = body.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            else:
                raise ApiFailure(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
            items: list[dict[str, Any]] = []
            i = 0
            while i < len(lines):
                try:
                    action = json.loads(lines[i])
                    (op, meta), = action.items()
                except (ValueError, AttributeError):
                    raise ApiFailure(400, "x_content_parse_exception", f"[1:1] Malformed action/metadata line [{i + 1}]") from None
                if op not in ("create", "index"):
                    raise ApiFailure(400, "illegal_argument_exception", f"Unsupported action: [{op}]")
                try:
                    source = json.loads(lines[i + 1])
                except (IndexError, ValueError):
                    raise ApiFailure(400, "x_content_parse_exception", f"[1:1] Malformed document on line [{i + 2}]") from None
                i += 2
                pos = len(items)
                index = meta.get("_index", default_index)
                if isinstance(fault, ItemErrors) and pos in fault.statuses:
                    status = fault.statuses[pos]
                    kind, reason = _ERRORS.get(status, ("exception", "failed"))
                    item = {"_index": index, "_id": meta.get("_id"), "status": status,
                            "error": {"type": kind, "reason": reason, "index": index}}
                else:
                    item = self.write(op, index, meta.get("_id"), source)
                items.append({op: item})
            self.bulk_items += len(items)
            if isinstance(fault, Truncate):
                items = items[:fault.keep]
            errors = any(next(iter(it.values()))["status"] >= 300 for it in items)
            return 200, {"took": 1, "errors": errors, "items": items}, {}

    def _resolve(self, targets: str) -> list[_Index]:
        out: list[_Index] = []
        for t in targets.split(","):
            for name, idx in self.indices.items():
                if fnmatch.fnmatchcase(name, t) or (idx.data_stream and fnmatch.fnmatchcase(idx.data_stream, t)):
                    if idx not in out:
                        out.append(idx)
        return out

    def search(self, targets: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            query = body.get("query", {"match_all": {}})
            hits = [(idx.name, doc_id, src) for idx in self._resolve(targets) for doc_id, src in idx.docs.items()
                    if _matches(query, _flatten(src), src)]
            keys: list[tuple[str, str]] = []
            for s in body.get("sort", []):
                if isinstance(s, str):
                    keys.append((s, "asc"))
                else:
                    (f, spec), = s.items()
                    keys.append((f, spec.get("order", "asc") if isinstance(spec, dict) else spec))
            sort_values: dict[int, list[Any]] = {}
            for n, (_, _, src) in enumerate(hits):
                flat = _flatten(src)
                sort_values[n] = [_sort_value(f, flat.get(f)) for f, _ in keys]
            order = list(range(len(hits)))
            for k in reversed(range(len(keys))):
                order.sort(key=lambda n: (sort_values[n][k] is None, sort_values[n][k] or 0), reverse=keys[k][1] == "desc")
            start, size = int(body.get("from", 0)), int(body.get("size", 10))
            page = order[start:start + size]
            return {
                "took": 1, "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": None,
                         "hits": [{"_index": hits[n][0], "_id": hits[n][1], "_score": None, "_source": hits[n][2],
                                   **({"sort": sort_values[n]} if keys else {})} for n in page]},
            }


def _sort_value(field_name: str, value: Any) -> Any:
    if field_name == "@timestamp" and value is not None:
        return int(_parse_date(value) * 1000)
    return value


def _field_values(flat: dict[str, Any], name: str) -> list[Any]:
    v = flat.get(name)
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _matches(q: dict[str, Any], flat: dict[str, Any], src: dict[str, Any]) -> bool:
    (kind, spec), = q.items()
    if kind == "match_all":
        return True
    if kind == "bool":
        def as_list(x: Any) -> list[Any]:
            return x if isinstance(x, list) else [x]
        ok = all(_matches(c, flat, src) for c in as_list(spec.get("must", [])) + as_list(spec.get("filter", [])))
        ok = ok and not any(_matches(c, flat, src) for c in as_list(spec.get("must_not", [])))
        should = as_list(spec.get("should", []))
        if should and not spec.get("must") and not spec.get("filter"):
            ok = ok and any(_matches(c, flat, src) for c in should)
        return ok
    if kind == "simple_query_string":
        return _simple_query(spec, flat)
    if kind in ("term", "terms", "wildcard", "regexp", "range"):
        (fname, arg), = spec.items()
        values = _field_values(flat, fname)
        if kind == "term":
            want = arg.get("value") if isinstance(arg, dict) else arg
            ci = isinstance(arg, dict) and arg.get("case_insensitive")
            return any(str(v).lower() == str(want).lower() if ci else v == want for v in values)
        if kind == "terms":
            return any(v in arg for v in values)
        if kind == "wildcard":
            pattern = arg.get("value") if isinstance(arg, dict) else arg
            return any(fnmatch.fnmatchcase(str(v), pattern.replace("[", "[[]")) for v in values)
        if kind == "regexp":
            pattern = arg.get("value") if isinstance(arg, dict) else arg
            return any(re.fullmatch(pattern, str(v)) for v in values)
        lo_ok = True
        for v in values:
            x = _parse_date(v) if fname == "@timestamp" else float(v)
            def bound(b: Any) -> float:
                return _parse_date(b) if fname == "@timestamp" else float(b)
            lo_ok = ("gte" not in arg or x >= bound(arg["gte"])) and ("gt" not in arg or x > bound(arg["gt"])) \
                and ("lte" not in arg or x <= bound(arg["lte"])) and ("lt" not in arg or x < bound(arg["lt"]))
            if lo_ok:
                return True
        return False
    raise ApiFailure(400, "parsing_exception", f"unknown query [{kind}]")


def _simple_query(spec: dict[str, Any], flat: dict[str, Any]) -> bool:
    text = " ".join(str(v) for f in spec.get("fields", ["message"]) for v in _field_values(flat, f))
    toks = _tokens(text)
    joined = " " + " ".join(toks) + " "
    clauses: list[tuple[bool, bool]] = []  # (negated, matched)
    for m in re.finditer(r'(-?)"([^"]*)"|(-?)(\S+)', spec["query"]):
        neg = bool(m.group(1) or m.group(3))
        term = m.group(2) if m.group(2) is not None else m.group(4)
        words = _tokens(term)
        if not words:
            continue
        if m.group(4) is not None and term.endswith("*") and len(words) == 1:  # prefix query
            hit = (" " + words[0]) in joined
        else:
            hit = (" " + " ".join(words) + " ") in joined
        clauses.append((neg, hit))
    if not clauses:
        return True
    positives = [hit for neg, hit in clauses if not neg]
    if any(hit for neg, hit in clauses if neg):
        return False
    if not positives:
        return True
    return all(positives) if spec.get("default_operator", "or").lower() == "and" else any(positives)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kw)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._conn_lock:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):  # a client giving up is no error
            super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self._conn_lock:
            conns, self.connections = list(self.connections), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    server_sim: ElasticSim
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header(*PRODUCT_HEADER)
        accept = self.headers.get("Accept", "")
        ctype = "application/json"
        if "compatible-with" in accept:
            ctype = f"application/vnd.elasticsearch+json;compatible-with={self.server_sim.major}"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _check_headers(self) -> None:
        sim = self.server_sim
        for name in ("Accept", "Content-Type"):
            m = re.search(r"compatible-with=(\d+)", self.headers.get(name, ""))
            if m and int(m.group(1)) not in (sim.major, sim.major - 1):
                raise ApiFailure(400, "media_type_header_exception",
                                 f"Invalid media-type value on headers [Accept, Content-Type]: "
                                 f"compatible-with={m.group(1)} is not supported by Elasticsearch {sim.version}")
        if sim.api_key is not None and self.headers.get("Authorization", "") != f"ApiKey {sim.api_key}":
            raise ApiFailure(401, "security_exception", "missing authentication credentials for REST request")

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            self.request.do_handshake()  # in the connection's thread: a bad client cannot stall accept()
        super().setup()

    def _handle(self) -> None:
        sim = self.server_sim
        parts = urlsplit(self.path)
        path, params = unquote(parts.path), parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with sim.lock:
            sim.requests.append((self.command, path))
        try:
            self._check_headers()
            segs = [s for s in path.split("/") if s]
            method = self.command
            if not segs:
                return self._send(200, sim.info())
            if segs[0] in ("_index_template", "_component_template") and len(segs) == 2:
                store = sim.index_templates if segs[0] == "_index_template" else sim.component_templates
                if method == "PUT" or method == "POST":
                    with sim.lock:
                        store[segs[1]] = json.loads(raw)
                    return self._send(200, {"acknowledged": True})
                if segs[1] not in store:
                    raise ApiFailure(404, "resource_not_found_exception", f"index template matching [{segs[1]}] not found")
                key = "index_templates" if segs[0] == "_index_template" else "component_templates"
                inner = "index_template" if segs[0] == "_index_template" else "component_template"
                return self._send(200, {key: [{"name": segs[1], inner: store[segs[1]]}]})
            if segs[-1] == "_bulk":
                status, body, headers = sim.bulk(raw, segs[0] if len(segs) == 2 else None)
                return self._send(status, body, headers)
            if segs[-1] in ("_search", "_count"):
                targets = segs[0] if len(segs) == 2 else "*"
                body = json.loads(raw) if raw else {}
                if "q" in params:
                    body = {"query": {"simple_query_string": {"query": params["q"][0], "fields": ["message"]}}}
                result = sim.search(targets, {**body, "size": 10_000} if segs[-1] == "_count" else body)
                if segs[-1] == "_count":
                    return self._send(200, {"count": result["hits"]["total"]["value"], "_shards": result["_shards"]})
                return self._send(200, result)
            if segs[-1] == "_refresh":
                return self._send(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})
            if len(segs) in (2, 3) and segs[1] in ("_doc", "_create") and method in ("PUT", "POST"):
                op = "create" if segs[1] == "_create" or params.get("op_type") == ["create"] else "index"
                item = sim.write(op, segs[0], segs[2] if len(segs) == 3 else None, json.loads(raw))
                if item["status"] >= 300:
                    return self._send(item["status"], {"error": item["error"], "status": item["status"]})
                return self._send(item["status"], item)
            raise ApiFailure(405 if segs[0].startswith("_") else 404, "unsupported_operation",
                             f"no handler for {method} {path} in the farmwatch Elasticsearch simulator")
        except ApiFailure as f:
            headers = {"WWW-Authenticate": 'ApiKey, Basic realm="security"'} if f.status == 401 else None
            return self._send(f.status, f.body(), headers)
        except ValueError as exc:
            return self._send(400, ApiFailure(400, "parse_exception", f"request body is not valid JSON: {exc}").body())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


__all__ = ["Delay", "ElasticSim", "ItemErrors", "Reject", "Truncate"]
