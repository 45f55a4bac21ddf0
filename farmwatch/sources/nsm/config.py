"""``[sources.<name>] kind = "nsm"``: the settings of the source, apart from its code so that
reading a config does not import what the source needs to run."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from farmwatch.config.base import Duration, Section
from farmwatch.sources.base import SourceConfig
from farmwatch.templates import expand_entry

RUN_STATES = frozenset({"OFF", "NOTREADY", "READY", "RUNNING", "PAUSED", "LOADING", "STARTING", "STOPPING",
                        "CONFIGURING", "ERROR", "FATAL", "BOOTING", "RECOVERING", "ABORTING", "UNKNOWN"})
"""``rcstate`` values of the run control (the spec's list)."""

_NODE = re.compile(r"^[A-Z0-9_][A-Z0-9_\-]{0,30}$")
_VAR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-\[\]]*$")
_RESERVED = {"node", "var", "pv", "index"}
_CA_KEYS = ("ca_addr_list", "ca_auto_addr_list", "ca_server_port", "ca_repeater_port", "ca_conn_tmo", "ca_max_array_bytes")


def _dur(seconds: float) -> str:
    """``seconds`` as a config duration string (the epics config is validated like a config file)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def bridge_pv(node: str, var: str) -> str:
    """The nsm2cad bridge PV that reads ``var`` of ``node``."""
    return f"B2_nsm:get:{node}:{var.replace('.', ':')}"


class VarEntry(Section):
    """One NSM variable after template expansion (``var = "*"``: all of the node's variables)."""

    node: str
    var: str
    labels: dict[str, str] = Field(default_factory=dict)


class NsmConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "nsm"``."""

    kind: Literal["nsm"]
    vars: list[VarEntry] = Field(min_length=1)
    """``{ node = "HLT{01..20}", var = "nworkers", labels = { unit = "hlt{01..20}" } }``; ranges expand together."""
    method: Literal["epics", "nsmvget"] = "epics"
    run_control: str | None = None
    """A run-control node whose ``rcstate`` becomes ``daq.run_state`` (read even when not in ``vars``)."""
    # method = "nsmvget"
    nsmvget_path: str = "nsmvget"
    nsmvlistget_path: str = "nsmvlistget"
    nsm_config: str | None = None
    """The ``-c`` argument of nsmvget/nsmvlistget (required with method nsmvget)."""
    concurrency: int = Field(default=8, ge=1, le=256)
    ok_exit_codes: list[int] = Field(default=[0], min_length=1)
    """Exit statuses that still count as an answer. basf2's nsmvget calls exit(1) even after printing
    the value (and prints its errors to stdout, where they fail to parse): set ``[0, 1]`` for it."""
    cycle_timeout: Duration | None = Field(default=None, gt=0)
    """nsmvget: deadline of a whole cycle (listings and reads together); default 90 % of ``interval``."""
    discover: bool = False
    rediscover: Duration = Field(default=600.0, gt=0)
    # method = "epics": passed to the composed epics source (see collectors/epics.toml)
    missing_after: Duration = Field(default=5.0, gt=0)
    ca_addr_list: Any = None
    ca_auto_addr_list: Any = None
    ca_server_port: Any = None
    ca_repeater_port: Any = None
    ca_conn_tmo: Any = None
    ca_max_array_bytes: Any = None

    @field_validator("vars", mode="before")
    @classmethod
    def _expand_vars(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError('expected a list of inline tables { node = "…", var = "…" }')
        out: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            try:
                expanded = expand_entry(entry, ("node", "var"), _RESERVED)
            except ValueError as exc:
                raise ValueError(f"vars[{i}]: {exc}") from None
            for fields, lbls in expanded:
                n, v = fields["node"], fields["var"]
                if not _NODE.match(n):
                    raise ValueError(f"vars[{i}]: node {n!r} is not an NSM node name (upper case, digits, _ or -, at most 31 characters)")
                if v != "*" and not _VAR.match(v):
                    raise ValueError(f"vars[{i}]: var {v!r} is not an NSM variable name")
                out.append({"node": n, "var": v, "labels": lbls})
        return out

    @field_validator("run_control")
    @classmethod
    def _check_run_control(cls, value: str | None) -> str | None:
        if value is not None and not _NODE.match(value):
            raise ValueError(f"{value!r} is not an NSM node name (upper case, digits, _ or -, at most 31 characters)")
        return value

    @field_validator("nsmvget_path", "nsmvlistget_path", "nsm_config")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check(self) -> "NsmConfig":
        seen: set[tuple[str, str]] = set()
        for e in self.vars:
            if (e.node, e.var) in seen:
                raise ValueError(f"vars: {e.node} {e.var} is listed twice")
            seen.add((e.node, e.var))
            if e.var == "*" and not (self.method == "nsmvget" and self.discover):
                raise ValueError(f'vars: var = "*" (node {e.node}) needs method = "nsmvget" and discover = true')
        if self.method == "nsmvget":
            if self.nsm_config is None:
                raise ValueError('nsm_config: required with method = "nsmvget" (the -c argument of nsmvget)')
            if self.cycle_timeout is not None and self.cycle_timeout >= self.interval:
                raise ValueError(f"cycle_timeout ({_dur(self.cycle_timeout)}) must be shorter than interval ({_dur(self.interval)})")
            given = [k for k in _CA_KEYS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only used with method = \"epics\"")
        else:
            if self.cycle_timeout is not None:
                raise ValueError('cycle_timeout: only used with method = "nsmvget" (bridge PVs are subscriptions)')
            if self.discover:
                raise ValueError('discover: needs method = "nsmvget" (nsm2cad offers no listing)')
            try:
                self.epics_config()
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
        return self

    def epics_config(self):
        """The config of the composed epics source (method epics): one bridge PV per variable."""
        from farmwatch.sources.epics.config import EpicsConfig

        pvs = [bridge_pv(node, var) for node, var in self.all_vars()]
        body: dict[str, Any] = {"kind": "epics", "interval": _dur(self.interval), "timeout": _dur(self.timeout),
                                "missing_after": _dur(self.missing_after), "pvs": pvs}
        body.update({k: getattr(self, k) for k in _CA_KEYS if getattr(self, k) is not None})
        return EpicsConfig.model_validate(body)

    @property
    def cycle_deadline(self) -> float:
        """Seconds a whole nsmvget cycle may take."""
        return self.cycle_timeout if self.cycle_timeout is not None else 0.9 * self.interval

    def all_vars(self) -> list[tuple[str, str]]:
        """(node, var) of every configured variable plus the run control's rcstate."""
        out = [(e.node, e.var) for e in self.vars]
        if self.run_control is not None and (self.run_control, "rcstate") not in out:
            out.append((self.run_control, "rcstate"))
        return out


# -- nsmvget / nsmvlistget --------------------------------------------------------------------------


CONFIG = NsmConfig

__all__ = ["CONFIG", "RUN_STATES", "NsmConfig", "VarEntry", "bridge_pv"]
