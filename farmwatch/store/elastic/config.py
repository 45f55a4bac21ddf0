"""``[elastic]``: where Elasticsearch is and how to talk to it (credentials only by name: ``*_env``,
``*_file``). Importing this does not import the client library, so reading a config stays cheap."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from farmwatch.config.base import Duration, Section


CLIENT_MAJOR = int(version("elasticsearch").split(".")[0])
"""The installed client's major version (the metadata, not the client: no import cost)."""


class ElasticConfig(Section):
    """The ``[elastic]`` section. Credentials only via ``*_env`` (variable name) or ``*_file`` (path)."""

    secrets = ("api_key", "password")
    hosts: list[str] = Field(default_factory=lambda: ["http://localhost:9200"], min_length=1)
    index_prefix: str = "farmwatch"
    """Logs go to ``<prefix>-logs`` (data stream) or ``<prefix>-logs-YYYY.MM.DD`` (daily, UTC)."""
    index_mode: Literal["data_stream", "daily"] = "data_stream"
    compatible_with: Literal[8, 9, "none"] = 9 if CLIENT_MAJOR >= 9 else 8
    """API compatibility the client asks for: the cluster's major version (``"none"``: plain JSON)."""
    api_key_env: str | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    verify_certs: bool = True
    timeout: Duration = Field(default=10.0, gt=0)
    bulk_docs: int = Field(default=1000, ge=1)
    bulk_bytes: ByteSize = Field(default=ByteSize(5 * 1024 * 1024), ge=1024)
    retries: int = Field(default=3, ge=0)
    """Re-sends of failed documents before the rest goes to the spool."""
    backoff: Duration = Field(default=0.5, gt=0)
    backoff_max: Duration = Field(default=30.0, gt=0)
    retry_interval: Duration = Field(default=30.0, gt=0)
    """While the cluster is unreachable: how often the spool replay is tried (new data is spooled meanwhile)."""
    replay_budget: Duration = Field(default=5.0, gt=0)
    """Longest one write spends replaying the spool before it returns (the rest continues next call),
    so a large backlog does not stall the caller."""
    spool_dir: Path = Path("elastic-spool")
    spool_max_bytes: ByteSize = Field(default=ByteSize(1024**3), ge=4096)
    spool_segment_bytes: ByteSize = Field(default=ByteSize(16 * 1024 * 1024), ge=1024)
    fsync: Literal["always", "never"] = "always"
    """``always``: a spooled batch is on disk (fsync) before ``write_logs`` returns."""
    dead_letter: Path = Path("elastic-dead-letter.ndjson")
    ship: list[Literal["logs", "samples", "alerts"]] = Field(default_factory=lambda: ["logs"])
    manage_templates: bool = True
    """Install the index templates at the first connection (off where admins manage them)."""
    template_priority: int = Field(default=200, ge=0)
    """Above the built-in ``logs-*-*``/``metrics-*-*`` templates (100)."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for h in value:
            if not re.match(r"^https?://[^/@\s]+(:\d+)?(/.*)?$", h) or "@" in h.split("/")[2]:
                raise ValueError(f"{h!r} is not a URL like 'https://es01:9200' (credentials never go "
                                 "into the URL: use api_key_env/api_key_file or username with password_env/password_file)")
        return value

    @field_validator("index_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value):
            raise ValueError(f"index_prefix must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (got {value!r})")
        return value

    @model_validator(mode="after")
    def _auth(self) -> "ElasticConfig":
        if self.api_key_env and self.api_key_file:
            raise ValueError("give the API key either as api_key_env or as api_key_file, not both")
        if self.password_env and self.password_file:
            raise ValueError("give the password either as password_env or as password_file, not both")
        basic = self.username is not None
        if basic and not (self.password_env or self.password_file):
            raise ValueError("username needs password_env or password_file")
        if not basic and (self.password_env or self.password_file):
            raise ValueError("password_env/password_file need username")
        if basic and (self.api_key_env or self.api_key_file):
            raise ValueError("use either an API key or username/password, not both")
        return self

    def resolved(self, base_dir: Path) -> "ElasticConfig":
        """Relative paths (spool, dead letters, CA, secret files) made relative to the config file's folder."""
        update = {}
        for key in ("spool_dir", "dead_letter", "ca_file", "api_key_file", "password_file"):
            p = getattr(self, key)
            if p is not None and not p.is_absolute():
                update[key] = base_dir / p
        return self.model_copy(update=update)


__all__ = ["CLIENT_MAJOR", "ElasticConfig"]
