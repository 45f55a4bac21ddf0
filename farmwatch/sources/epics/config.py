"""``[sources.<name>] kind = "epics"``: the settings of the source, apart from its code so that
reading a config does not import what the source needs to run."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from farmwatch.config.base import Duration, Section
from farmwatch.sources.base import SourceConfig
from farmwatch.templates import expand_entry

_PV_NAME = re.compile(r"^[^\s\"'{}]+$")
_RESERVED = {"pv", "index"}
_ADDR = re.compile(r"^[A-Za-z0-9_.\-]+(:\d{1,5})?$")
"""Callback times are grouped into batches at this resolution (seconds)."""

CharMode = Literal["text", "numbers"]


class PVEntry(Section):
    """One PV after template expansion."""

    pv: str
    labels: dict[str, str] = Field(default_factory=dict)
    char_waveform: CharMode | None = None
    """This PV's ``CHAR`` waveform as ``text`` or ``numbers`` (default: the source's ``char_waveforms``)."""


class EpicsConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "epics"``."""

    kind: Literal["epics"]
    pvs: list[PVEntry] = Field(min_length=1)
    """PV names, or inline tables ``{ pv = "HLT{01..20}:RATE", labels = { unit = "hlt{01..20}" } }``;
    a range written the same way in the name and the labels expands together."""
    arrays: Literal["reduce", "elements"] = "reduce"
    """Array PVs: ``reduce`` → count/mean/min/max series; ``elements`` → one series per index."""
    char_waveforms: CharMode = "text"
    """``CHAR`` waveforms: ``text`` (a state value, EPICS' long strings) or ``numbers`` (an array)."""
    missing_after: Duration = Field(default=5.0, gt=0)
    """A PV not connected this long after the start is reported (once) as missing."""
    ca_addr_list: list[str] | None = None
    """``EPICS_CA_ADDR_LIST``: hosts or ``host:port`` where the IOCs answer searches."""
    ca_auto_addr_list: bool | None = None
    """``EPICS_CA_AUTO_ADDR_LIST`` (false: search only ``ca_addr_list``)."""
    ca_server_port: int | None = Field(default=None, ge=1, le=65535)
    """``EPICS_CA_SERVER_PORT``: default port of the IOCs (5064)."""
    ca_repeater_port: int | None = Field(default=None, ge=1, le=65535)
    """``EPICS_CA_REPEATER_PORT`` (5065)."""
    ca_conn_tmo: Duration | None = Field(default=None, gt=0)
    """``EPICS_CA_CONN_TMO``: beacon timeout before a silent circuit is probed (30 s)."""
    ca_max_array_bytes: int | None = Field(default=None, ge=16384)
    """``EPICS_CA_MAX_ARRAY_BYTES``: largest array transferred."""

    @field_validator("pvs", mode="before")
    @classmethod
    def _expand_pvs(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError('expected a list of PV names or inline tables { pv = "…", labels = { … } }')
        out: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                entry = {"pv": entry}
            opts: dict[str, Any] = {}
            if isinstance(entry, dict) and "char_waveform" in entry:
                entry = dict(entry)
                mode = entry.pop("char_waveform")
                if mode not in ("text", "numbers"):
                    raise ValueError(f'pvs[{i}]: char_waveform must be "text" or "numbers", not {mode!r}')
                opts["char_waveform"] = mode
            try:
                expanded = expand_entry(entry, ("pv",), _RESERVED)
            except ValueError as exc:
                raise ValueError(f"pvs[{i}]: {exc}") from None
            for fields, lbls in expanded:
                name = fields["pv"]
                if not _PV_NAME.match(name):
                    raise ValueError(f"pvs[{i}]: {name!r} is not a PV name (no spaces, quotes or braces)")
                out.append({"pv": name, "labels": lbls, **opts})
        return out

    @field_validator("ca_addr_list", mode="before")
    @classmethod
    def _split_addr_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, list):
            for a in value:
                if not isinstance(a, str) or not _ADDR.match(a) or (":" in a and not 0 < int(a.rsplit(":", 1)[1]) < 65536):
                    raise ValueError(f"{a!r} is not host or host:port")
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> "EpicsConfig":
        seen: set[str] = set()
        for e in self.pvs:
            if e.pv in seen:
                raise ValueError(f"pvs: {e.pv} is listed twice")
            seen.add(e.pv)
        return self

    def ca_environment(self) -> dict[str, str]:
        """The CA client environment variables these settings ask for."""
        env: dict[str, str] = {}
        if self.ca_addr_list is not None:
            env["EPICS_CA_ADDR_LIST"] = " ".join(self.ca_addr_list)
        if self.ca_auto_addr_list is not None:
            env["EPICS_CA_AUTO_ADDR_LIST"] = "YES" if self.ca_auto_addr_list else "NO"
        if self.ca_server_port is not None:
            env["EPICS_CA_SERVER_PORT"] = str(self.ca_server_port)
        if self.ca_repeater_port is not None:
            env["EPICS_CA_REPEATER_PORT"] = str(self.ca_repeater_port)
        if self.ca_conn_tmo is not None:
            env["EPICS_CA_CONN_TMO"] = f"{self.ca_conn_tmo:g}"
        if self.ca_max_array_bytes is not None:
            env["EPICS_CA_MAX_ARRAY_BYTES"] = str(self.ca_max_array_bytes)
        return env


# -- the process-wide CA context -------------------------------------------------------------------


CONFIG = EpicsConfig

__all__ = ["CONFIG", "CharMode", "EpicsConfig", "PVEntry"]
