"""The ``[remote_write]`` config section."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ByteSize, Field, field_validator, model_validator

from farmwatch.config.base import Duration, Section
from farmwatch.credentials import section_secret
from farmwatch.store.remote.naming import Relabel

__all__ = ["RemoteWriteSettings"]


class RemoteWriteSettings(Section):
    """``[remote_write]``: send every stored sample to a Prometheus-compatible TSDB (VictoriaMetrics,
    Prometheus with ``--web.enable-remote-write-receiver``, Mimir, Thanos receive)."""

    secrets = ("bearer_token", "password")

    url: str
    """The receiver's write endpoint, e.g. `http://vm01:8428/api/v1/write` or `http://prom:9090/api/v1/write`."""
    query_url: str | None = None
    """The same TSDB's Prometheus query API (`http://vm01:8428`, `http://prom:9090`) for `farmwatch query --store remote` and `farmwatch.analysis.open_prometheus`."""
    bearer_token_env: str | None = None
    """Environment variable holding a bearer token."""
    bearer_token_file: Path | None = None
    """File holding a bearer token."""
    username: str | None = None
    """Basic auth user (with password_env or password_file)."""
    password_env: str | None = None
    password_file: Path | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers, e.g. `X-Scope-OrgID` for a Mimir tenant (no secrets here)."""
    ca_file: Path | None = None
    verify: bool = True
    timeout: Duration = Field(default=10.0, gt=0)
    """Per request."""
    prefix: str = ""
    """Put in front of every metric name (e.g. `farmwatch_`)."""
    external_labels: dict[str, str] = Field(default_factory=dict)
    """Labels added to every series sent (e.g. `{ site = "kek", collector = "hlt01" }`)."""
    states: bool = True
    """Send state values as `name{state="…"} 1`."""
    relabel: list[Relabel] = Field(default_factory=list)
    """`[[remote_write.relabel]]` rules (Prometheus' write_relabel_configs: keep, drop, replace, labeldrop, labelkeep)."""
    max_samples_per_request: int = Field(default=10_000, ge=1)
    """Samples per POST."""
    queue_max_bytes: ByteSize = Field(default=ByteSize(2 * 1024**3), ge=4096)
    """The queue (in the store file) holds at most this many compressed bytes; beyond, new samples are not queued and are counted as dropped."""
    queue: str | None = None
    """Name of this service's queue in the store (default: config file name and sources); each service sharing a store needs its own."""
    backoff: Duration = Field(default=0.5, gt=0)
    """First wait after a 429, a 5xx or no answer; doubles up to backoff_max (a Retry-After header wins)."""
    backoff_max: Duration = Field(default=30.0, gt=0)

    @field_validator("url", "query_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and (not re.match(r"^https?://[^/@\s]+(/.*)?$", value)):
            raise ValueError(f"{value!r} is not a URL like 'http://vm01:8428/api/v1/write' (credentials never go "
                             "into the URL: use bearer_token_env/_file or username with password_env/_file)")
        return value

    @model_validator(mode="after")
    def _auth(self) -> "RemoteWriteSettings":
        if self.bearer_token_env and self.bearer_token_file:
            raise ValueError("give the bearer token either as bearer_token_env or as bearer_token_file, not both")
        if (self.username is None) != (self.password_env is None and self.password_file is None):
            raise ValueError("basic auth needs username and one of password_env or password_file")
        if self.username and (self.bearer_token_env or self.bearer_token_file):
            raise ValueError("use either a bearer token or username/password, not both")
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must not be shorter than backoff")
        for key in self.headers:
            if key.lower() in ("authorization", "content-encoding", "content-type"):
                raise ValueError(f"headers: {key} is set by farmwatch (secrets via bearer_token_env/_file)")
        return self

    def resolved(self, base_dir: Path) -> "RemoteWriteSettings":
        """Relative file paths made relative to the config file's folder."""
        update = {k: base_dir / p for k in ("bearer_token_file", "password_file", "ca_file")
                  if (p := getattr(self, k)) is not None and not p.is_absolute()}
        return self.model_copy(update=update)

    def credentials(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        """(headers, basic auth) of a request, ``headers`` included: the bearer token or the password
        read now, so a rotated file is picked up (``SecretError`` names the variable or file)."""
        headers = dict(self.headers)
        token = section_secret(self, "bearer_token", "remote_write bearer token")
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            return headers, None
        if self.username:
            return headers, (self.username, section_secret(self, "password", "remote_write password") or "")
        return headers, None
