"""The official client, configured from ``[elastic]``: credentials read through the one secret
helper, and a node class that speaks the API version the cluster understands."""

from __future__ import annotations

import re
from typing import Any

from elastic_transport import HttpHeaders, Urllib3HttpNode
from elasticsearch import Elasticsearch

from farmwatch.credentials import SecretError, section_secret
from farmwatch.store.storefile import StoreError
from farmwatch.store.elastic.config import CLIENT_MAJOR, ElasticConfig


_COMPAT = re.compile(r"application/vnd\.elasticsearch\+([\w.-]+);\s*compatible-with=\d+")


def _node_class(compatible_with: int | str) -> type[Urllib3HttpNode] | None:
    """A node that rewrites the client's ``compatible-with=<client major>`` media types.

    The client adds them after every user-supplied header, so the rewrite must happen in the node.
    """
    if compatible_with == CLIENT_MAJOR:
        return None
    repl = r"application/\1" if compatible_with == "none" else rf"application/vnd.elasticsearch+\1; compatible-with={compatible_with}"

    class CompatNode(Urllib3HttpNode):
        def perform_request(self, method: str, target: str, body: bytes | None = None,
                            headers: HttpHeaders | None = None, **kw: Any) -> Any:
            if headers:
                headers = HttpHeaders(dict(headers.items()))
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value:
                        headers[name] = _COMPAT.sub(repl, value)
            return super().perform_request(method, target, body=body, headers=headers, **kw)

    return CompatNode


def _secret(config: ElasticConfig, name: str, what: str) -> str | None:
    try:
        return section_secret(config, name, what)
    except SecretError as exc:
        raise StoreError(f"elastic: {exc}") from None


def make_client(config: ElasticConfig) -> Elasticsearch:
    """The official client, with retries left to ``ElasticStore`` (backoff on the farmwatch clock).

    The transport still fails over between hosts on connection errors (``max_retries`` = hosts - 1)
    but does not retry statuses itself.
    """
    kw: dict[str, Any] = {
        "request_timeout": config.timeout,
        "max_retries": len(config.hosts) - 1,
        "retry_on_status": (),
        "retry_on_timeout": True,
        "verify_certs": config.verify_certs,
    }
    if config.ca_file:
        kw["ca_certs"] = str(config.ca_file)
    api_key = _secret(config, "api_key", "API key")
    if api_key:
        kw["api_key"] = tuple(api_key.split(":", 1)) if ":" in api_key else api_key
    if config.username:
        password = _secret(config, "password", "password")
        kw["basic_auth"] = (config.username, password or "")
    node = _node_class(config.compatible_with)
    if node is not None:
        kw["node_class"] = node
    return Elasticsearch(config.hosts, **kw)


__all__ = ["make_client"]
