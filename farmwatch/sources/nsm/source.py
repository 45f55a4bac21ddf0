"""NSM (Belle II slow control) variables, read through bridges; never written.

A native NSM client is fragile and can crash ``nsmd2`` (``shared/specs/nsm-epics.md``), so this
source reads NSM variables the two ways operators do:

* ``method = "epics"`` (default): the nsm2cad bridge PVs ``B2_nsm:get:<NODE>:<var>`` (dots of the
  variable name become colons). An ``EpicsSource`` is composed internally (subscriptions, connection
  callbacks, reconnects: all of it is that source's) and its series are relabelled.
* ``method = "nsmvget"``: runs ``<nsmvget_path> <node> <var> -c <nsm_config> -n <unique name>`` per
  variable and cycle, at most ``concurrency`` at once, each with ``timeout`` (the process group is
  killed when it runs over), and parses ``name : value``. A non-zero exit (other than those in
  ``ok_exit_codes``), a timeout or unparsable output makes that variable unavailable this cycle (``up`` = 0), logged once per change with the
  reason. The whole cycle (listings and reads) also has one deadline, ``cycle_timeout`` (default 90 %
  of ``interval``): a call still running then is killed with its process group, and a call not
  started by then is not started; those variables are ``up`` = 0 for the cycle and counted, and the
  source logs once when variables start and stop missing the deadline. A stuck NSM host therefore
  costs at most one ``cycle_timeout`` per cycle, never an ever-growing backlog of cycles. With ``discover = true``, ``{ node = "X", var = "*" }`` reads all variables that
  ``nsmvlistget X`` lists (``name:type:useget:useset:index``), re-listed every ``rediscover``.

Series (labels ``node``, ``var``, the entry's template labels and the source's ``labels``):

* ``nsm.var`` — numbers as samples, text as state values (epics method, array PVs:
  ``nsm.var.count/mean/min/max`` or ``nsm.var{index=…}`` as in the epics source);
* ``up`` — 1/0 per variable, every cycle (for ``var = "*"``: whether the listing worked);
* ``nsm.late`` (nsmvget method; the source's labels only) — variables and listings not read by the
  cycle deadline so far (cumulative counter), every cycle;
* with ``run_control = "<NODE>"``: that node's ``rcstate`` also as ``daq.run_state{node=…}``
  (state value, with every value read) and ``daq.run_state_since{node=…}`` (epoch seconds of the
  last transition seen, or of the first value seen; every cycle once a state is known).

Only reading tools and ``get`` PVs are used; nothing here sets an NSM variable.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar


from farmwatch.model import Batch, SeriesKey, labels as make_labels
from farmwatch.sources.base import Source
from farmwatch.sources.nsm.config import RUN_STATES, NsmConfig, VarEntry, _VAR, bridge_pv

log = logging.getLogger(__name__)

_VALUE_LINE = re.compile(r"^\s*(\S+?)\s*:\s(.*)$|^\s*(\S+?)\s*:$")

class Unavailable(Exception):
    """A tool call gave no usable answer; the message is the one-line reason."""


class Late(Unavailable):
    """The cycle's deadline came before the call could start or finish."""


def parse_value(out: str, var: str) -> float | str:
    """The value in nsmvget's ``name : value`` output (numbers as float, else text)."""
    found = None
    for line in out.splitlines():
        if not line.strip():
            continue
        m = _VALUE_LINE.match(line)
        if not m:
            raise Unavailable(f"unparsable output {line.strip()[:60]!r}")
        name, value = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), "")
        if name != var:
            raise Unavailable(f"output names {name!r}, not {var!r}")
        if found is not None:
            raise Unavailable("more than one value in the output")
        found = value.strip()
    if found is None:
        raise Unavailable("no output")
    if found == "":
        raise Unavailable("empty value")
    try:
        return float(found)
    except ValueError:
        return found


def parse_listing(out: str) -> list[str]:
    """The readable variable names in nsmvlistget's ``name:type:useget:useset:index`` lines."""
    names: list[str] = []
    parsed = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.strip().split(":")]
        if len(parts) != 5 or not _VAR.match(parts[0]) or not parts[4].lstrip("-").isdigit():
            continue  # headers and other chatter
        parsed += 1
        if parts[2] not in ("0", "false", "no") and parts[0] not in names:
            names.append(parts[0])
    if not parsed:
        raise Unavailable("no name:type:useget:useset:index line in the output")
    return names


def run_tool(argv: list[str], timeout: float, ok_exit_codes: tuple[int, ...] | list[int] = (0,),
             deadline: float | None = None) -> str:
    """stdout of ``argv``; Unavailable on another exit status or a timeout (the process group is killed).

    ``deadline`` (``time.monotonic()`` value) shortens ``timeout`` to what is left of the cycle:
    Late if nothing is left before the start, or if the call is killed at the deadline.
    """
    late = False
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Late("not started before the cycle deadline")
        if left < timeout:
            timeout, late = left, True
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise Unavailable(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        if late:
            raise Late("killed at the cycle deadline") from None
        raise Unavailable(f"no answer within {timeout:g}s (killed)") from None
    if proc.returncode not in ok_exit_codes:
        last = (err.strip().splitlines() or out.strip().splitlines() or [""])[-1][:100]
        raise Unavailable(f"exit status {proc.returncode}" + (f": {last}" if last else ""))
    return out


# -- the source -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Var:
    node: str
    var: str
    key: SeriesKey
    up_key: SeriesKey
    ok: bool | None = None  # last availability (None: not read yet), for logging once per change


class NsmSource(Source):
    Config: ClassVar[type[NsmConfig]] = NsmConfig
    config: NsmConfig

    def __init__(self, name: str, config: NsmConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self._base = make_labels(config.labels)
        extra = {(e.node, e.var): e.labels for e in config.vars}
        self.vars: dict[tuple[str, str], _Var] = {}
        for node, var in config.all_vars():
            if var != "*":
                self.vars[(node, var)] = self._make_var(node, var, extra.get((node, var), {}))
        # var = "*": the node's listing, and the variables it gave
        self.wildcards: dict[str, _Var] = {e.node: self._make_var(e.node, "*", e.labels) for e in config.vars if e.var == "*"}
        self._discovered: dict[str, list[_Var]] = {}
        self._listed_at: dict[str, float] = {}
        self._wild_labels = {e.node: e.labels for e in config.vars if e.var == "*"}
        # run state
        rc = config.run_control
        self._rc_var = (rc, "rcstate") if rc is not None else None
        rc_labels = make_labels({**dict(self._base), "node": rc}) if rc is not None else ()
        self._rc_key: SeriesKey = ("daq.run_state", rc_labels)
        self._rc_since_key: SeriesKey = ("daq.run_state_since", rc_labels)
        self.run_state: str | None = None
        self.run_state_since: float | None = None
        self._unknown_logged: set[str] = set()
        # the method
        self._epics = None
        self._pool: ThreadPoolExecutor | None = None
        self._relabel: dict[SeriesKey, SeriesKey | None] = {}
        if config.method == "epics":
            from farmwatch.sources.epics.source import EpicsSource

            self._by_pv = {bridge_pv(n, v): self.vars[(n, v)] for n, v in self.vars}
            self._epics = EpicsSource(name, config.epics_config(), clock=self.clock)
        else:
            self._pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix=f"nsm-{name}")
            self._names = itertools.count(1)
            self._names_lock = threading.Lock()
            self._name_prefix = "FW" + secrets.token_hex(3).upper()
            self._late_key: SeriesKey = ("nsm.late", self._base)
            self._late_total = 0
            self._late_logged = False

    def _make_var(self, node: str, var: str, extra: dict[str, str]) -> _Var:
        lbls = make_labels({**dict(self._base), **extra, "node": node, "var": var})
        return _Var(node, var, ("nsm.var", lbls), ("up", lbls))

    # -- one cycle -----------------------------------------------------------------------------
    def poll(self) -> list[Batch]:
        batches = self._poll_epics() if self._epics is not None else self._poll_tools()
        self._run_state(batches)
        return batches

    def _poll_epics(self) -> list[Batch]:
        out: list[Batch] = []
        for b in self._epics.poll():
            nb = Batch(b.ts)
            for key, value in zip(b.keys, b.values):
                new = self._relabel.get(key, False)
                if new is False:
                    new = self._relabel[key] = self._map_key(key)
                if new is not None:
                    nb.add(new, value)
            out.append(nb)
        return out

    def _map_key(self, key: SeriesKey) -> SeriesKey | None:
        name, lbls = key
        d = dict(lbls)
        v = self._by_pv.get(d.pop("pv", ""))
        if v is None:
            return None
        if name == "up":
            return v.up_key
        if name.startswith("epics.pv"):
            index = d.get("index")
            base = dict(v.key[1])
            if index is not None:
                base["index"] = index
            return ("nsm.var" + name[len("epics.pv"):], make_labels(base))
        return None

    def _unique_name(self) -> str:
        with self._names_lock:
            n = next(self._names)
        return f"{self._name_prefix}_{n:X}"

    def _read(self, v: _Var, deadline: float) -> float | str:
        argv = [self.config.nsmvget_path, v.node, v.var, "-c", self.config.nsm_config or "", "-n", self._unique_name()]
        return parse_value(run_tool(argv, self.config.timeout, self.config.ok_exit_codes, deadline), v.var)

    def _list(self, node: str, deadline: float) -> list[str]:
        argv = [self.config.nsmvlistget_path, node, "-c", self.config.nsm_config or "", "-n", self._unique_name()]
        return parse_listing(run_tool(argv, self.config.timeout, self.config.ok_exit_codes, deadline))

    def _late_state(self, late: list[str], total: int) -> None:
        """Log once when variables start or stop missing the cycle deadline (not once per variable)."""
        if late and not self._late_logged:
            shown = ", ".join(late[:5]) + (f" and {len(late) - 5} more" if len(late) > 5 else "")
            log.warning("nsm %s: %d of %d read(s) not done by the cycle deadline (%gs): %s; they are up = 0 and counted "
                        "in nsm.late (raise concurrency or cycle_timeout, or read fewer variables)",
                        self.name, len(late), total, self.config.cycle_deadline, shown)
        elif not late and self._late_logged:
            log.info("nsm %s: all reads done within the cycle deadline again", self.name)
        self._late_logged = bool(late)

    def _poll_tools(self) -> list[Batch]:
        assert self._pool is not None
        mono = time.monotonic()
        deadline = mono + self.config.cycle_deadline
        late: list[str] = []
        listings = {node: self._pool.submit(self._list, node, deadline) for node in self.wildcards
                    if node not in self._discovered or mono - self._listed_at.get(node, -math.inf) >= self.config.rediscover}
        listing_ok: dict[str, bool] = {}
        for node, fut in listings.items():
            w = self.wildcards[node]
            try:
                names = fut.result()
            except Late:
                late.append(f"{node} (listing)")
                listing_ok[node] = False
                continue
            except Unavailable as exc:
                self._availability(w, False, f"listing: {exc}")
                listing_ok[node] = False
                self._listed_at[node] = mono if node in self._discovered else -math.inf  # never listed: retry next cycle
                continue
            self._availability(w, True)
            listing_ok[node] = True
            self._listed_at[node] = mono
            known = {v.var: v for v in self._discovered.get(node, [])}
            self._discovered[node] = [known.get(n) or self.vars.get((node, n)) or self._make_var(node, n, self._wild_labels[node])
                                      for n in names]
            if set(known) != set(names):
                log.info("nsm %s: node %s lists %d variable(s)", self.name, node, len(names))
        todo = list(self.vars.values())
        seen = {id(v) for v in todo}
        for vs in self._discovered.values():
            for v in vs:
                if id(v) not in seen:
                    seen.add(id(v))
                    todo.append(v)
        futures = [(v, self._pool.submit(self._read, v, deadline)) for v in todo]
        batch = Batch(self.clock.time())
        for v, fut in futures:
            try:
                value = fut.result()
            except Late:
                late.append(f"{v.node} {v.var}")  # a slow cycle, not a fault of this variable: logged for all at once
                batch.add(v.up_key, 0.0)
                continue
            except Unavailable as exc:
                self._availability(v, False, str(exc))
                batch.add(v.up_key, 0.0)
                continue
            except Exception as exc:  # noqa: BLE001 - one variable's fault must not end the cycle
                self._availability(v, False, f"{type(exc).__name__}: {exc}")
                batch.add(v.up_key, 0.0)
                continue
            self._availability(v, True)
            batch.add(v.key, value)
            batch.add(v.up_key, 1.0)
        for node, w in self.wildcards.items():
            ok = listing_ok.get(node, w.ok is True)
            batch.add(w.up_key, 1.0 if ok else 0.0)
        self._late_total += len(late)
        self._late_state(late, len(futures) + len(listings))
        batch.add(self._late_key, float(self._late_total))
        return [batch]

    def _availability(self, v: _Var, ok: bool, reason: str = "") -> None:
        if ok and v.ok is False:
            log.info("nsm %s: %s %s available again", self.name, v.node, v.var)
        elif not ok and v.ok is not False:
            log.warning("nsm %s: %s %s unavailable: %s", self.name, v.node, v.var, reason)
        v.ok = ok

    # -- run state -------------------------------------------------------------------------------
    def _run_state(self, batches: list[Batch]) -> None:
        if self._rc_var is None:
            return
        rc = self.vars[self._rc_var]
        for b in batches:
            values = [val for key, val in zip(b.keys, b.values) if key == rc.key]
            for value in values:
                state = value if isinstance(value, str) else format(value, "g")
                if state not in RUN_STATES and state not in self._unknown_logged:
                    self._unknown_logged.add(state)
                    log.warning("nsm %s: run control %s: unknown rcstate %r (stored as is)", self.name, rc.node, state)
                if state != self.run_state:
                    self.run_state, self.run_state_since = state, b.ts
                b.add(self._rc_key, state)
        if self.run_state_since is not None:
            if not batches:
                batches.append(Batch(self.clock.time()))
            batches[-1].add(self._rc_since_key, self.run_state_since)

    def close(self) -> None:
        if self._epics is not None:
            self._epics.close()
            self._epics = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


SOURCE = NsmSource


__all__ = ["RUN_STATES", "SOURCE", "Late", "NsmConfig", "NsmSource", "Unavailable", "VarEntry", "bridge_pv",
           "parse_listing", "parse_value", "run_tool"]
