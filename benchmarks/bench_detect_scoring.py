"""Anomaly scoring in the services: the per-step cost for the whole farm, memory, and ``stream_scores``.

Measured in one run, on one core (BLAS/OpenMP threads pinned to 1 before numpy loads):

1. **Scoring step, whole farm**: 20 units × 16 worker nodes (320 entities), 4 metrics each (1,280
   series, one sample per 10 s poll), family window 60 at ``freq = "10s"``, IsolationForest
   (100 trees) trained on 30 simulated minutes of the same farm. ``Scorer.step`` (read the window,
   grid, features of all entities at once, model + peers + explanations, write the ``anomaly.score``
   samples into the window): median wall and CPU time of ``--steps`` steps, each after one more
   poll cycle was ingested. Baseline in the same run, named ``score_family_frames``: the obvious
   path the library offers, a pandas DataFrame per entity from the window's points, then
   ``score_family`` (per-entity ``resample``, ``filled`` and features). Both give the same scores
   (checked).
2. **Peak RSS of a scoring service holding windows for 50,000 series** (``--rss-series``), in a
   child process so the number is its own: the alerting ``Window`` fed 66 poll cycles (660 s, the
   horizon a 60 × 10 s family needs) of the farm's per-process series (320 nodes × 39 worker
   processes × 4 metrics = 49,920 series, one batch per node and cycle, as the distributor's
   per-peer keys arrive), then scoring steps of the 320 nodes (each metric averaged over the node's
   processes, as training does). Reported: RSS after imports, after filling the window, and the
   peak after scoring, plus the step's time.
3. **``stream_scores`` on a 20,000-point series** (target ≤ 2 s; a seasonal series with noise and
   an anomaly) against a rolling z-score (|x − mean| / std of the previous 100 points, pandas
   ``rolling``), median of ``--repeats``.

Writes ``benchmarks/results/detect_scoring.json`` and prints a summary.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_ingest import machine  # noqa: E402

from farmwatch.store.window import Window  # noqa: E402
from farmwatch.detect import save, score_family, stream_scores, train_family  # noqa: E402
from farmwatch.detect.scorer import SCORE, Scorer  # noqa: E402
from farmwatch.detect.settings import DetectSettings  # noqa: E402
from farmwatch.model import Batch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
START = 1_767_225_600.0
POLL = 10.0
WINDOW = 60
METRICS = ("hlt.worker.event_rate", "hlt.worker.received_rate", "hlt.worker.ready_queue", "hlt.worker.cpu")
STREAM_TARGET_S = 2.0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Farm:
    """``units`` × ``nodes`` worker nodes with 4 metrics each, following a shared load (luminosity)
    with per-node noise; one node per 40 degrades slowly so that scores are not all trivial."""

    def __init__(self, units: int, nodes: int, seed: int = 0, pids: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.entities = [(f"hlt{u + 1:02d}", f"hltwk{u * nodes + n + 1:03d}") for u in range(units) for n in range(nodes)]
        self.pids = pids
        if pids:  # per-process series (the distributor's per-peer keys): the scorer averages them per node
            self.keys = [[(m, (("host", h), ("pid", str(1000 + p)), ("unit", u))) for p in range(pids) for m in METRICS]
                         for u, h in self.entities]
        else:
            self.keys = [[(m, (("host", h), ("unit", u))) for m in METRICS] for u, h in self.entities]
        self.bias = self.rng.normal(1.0, 0.03, len(self.entities))
        self.slow = np.zeros(len(self.entities), bool)
        self.slow[::40] = True

    def values(self, t: float, degrade: bool) -> np.ndarray:
        load = 300 + 100 * np.sin(2 * np.pi * (t - START) / 1800)
        rate = load / 16 * self.bias * (1 + self.rng.normal(0, 0.02, len(self.entities)))
        if degrade:
            rate = np.where(self.slow, rate * max(0.4, 1 - (t - START) / 7200), rate)
        received = rate * 0.4 * (1 + self.rng.normal(0, 0.02, len(self.entities)))
        queue = np.clip(20 - rate / 3 + self.rng.normal(0, 1, len(self.entities)), 0, 20)
        cpu = np.clip(0.2 + rate / 30 + self.rng.normal(0, 0.02, len(self.entities)), 0, 1)
        return np.stack([rate, received, queue, cpu], axis=1)

    def batches(self, t: float, degrade: bool, per_batch: int = 16) -> list[Batch]:
        """One poll cycle: one batch per ``per_batch`` entities (like one target's reply)."""
        vals = self.values(t, degrade)
        if self.pids:
            vals = np.repeat(vals, self.pids, axis=0).reshape(len(self.entities), self.pids, len(METRICS))
            vals = (vals * (1 + self.rng.normal(0, 0.01, vals.shape))).reshape(len(self.entities), -1)
        out = []
        for lo in range(0, len(self.entities), per_batch):
            b = Batch(t)
            for i in range(lo, min(lo + per_batch, len(self.entities))):
                for key, v in zip(self.keys[i], vals[i].tolist()):
                    b.add(key, v)
            out.append(b)
        return out

    def frames(self, t0: float, n: int) -> dict[str, pd.DataFrame]:
        index = pd.to_datetime(np.arange(n) * POLL + t0, unit="s")
        rows = np.stack([self.values(t0 + i * POLL, False) for i in range(n)], axis=1)  # (entities, n, 4)
        return {f"unit={u},host={h}": pd.DataFrame(rows[i], index=index, columns=list(METRICS))
                for i, (u, h) in enumerate(self.entities)}


def trained_scorer(folder: Path, farm: Farm, minutes: int = 30) -> Scorer:
    frames = farm.frames(START - minutes * 60, minutes * 6)
    model = train_family(frames, family="worker", window=WINDOW, step=5, freq=f"{POLL:g}s", metrics=list(METRICS))
    save(model, folder / "worker")
    detect = DetectSettings.model_validate({"models": str(folder), "families": {"worker": {
        "series": ["hlt.worker.*"], "entity": ["unit", "host"], "window": WINDOW, "step": 5, "freq": f"{POLL:g}s"}}})
    return Scorer(detect)


def frames_baseline(scorer: Scorer, window: Window, now: float) -> dict[str, float]:
    """The straightforward path: per-entity DataFrames of the window's points, then ``score_family``."""
    family = scorer.families[0]
    end = np.floor(now / family.freq) * family.freq  # the scorer scores the newest complete grid bin
    since = end - (family.model.window + 1) * family.freq
    cols: dict[str, dict[str, pd.Series]] = {}
    with window.lock:
        for sid in window.select_ids("hlt.worker.*").tolist():
            name, lbls = window.keys[sid]
            d = dict(lbls)
            ts, vals = window.points(window.keys[sid], since, end - 1e-6)
            cols.setdefault(f"unit={d['unit']},host={d['host']}", {})[name] = pd.Series(vals, index=pd.to_datetime(ts, unit="s"))
    frames = {e: pd.DataFrame(c) for e, c in cols.items()}
    return {e.entity: e.score for e in score_family(family.model, frames, family.settings.freq)}


def bench_step(args: argparse.Namespace) -> dict:
    farm = Farm(20, 16)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = trained_scorer(Path(tmp), farm)
        window = Window(WINDOW * POLL + 120)
        scorer.window = window
        t = START
        for _ in range(WINDOW + 2):
            window.ingest(farm.batches(t, True))
            t += POLL
        ours, base = [], []
        for _ in range(args.steps):
            window.ingest(farm.batches(t, True))
            window.prune(t)
            w0, c0 = time.perf_counter(), time.process_time()
            out = scorer.step(t)
            ours.append((time.perf_counter() - w0, time.process_time() - c0))
            w0, c0 = time.perf_counter(), time.process_time()
            expected = frames_baseline(scorer, window, t)
            base.append((time.perf_counter() - w0, time.process_time() - c0))
            t += POLL
        got = {f"unit={dict(k[1])['unit']},host={dict(k[1])['host']}": v
               for b in out for k, v in zip(b.keys, b.values) if k[0] == SCORE and v == v}
        diff = max(abs(got[e] - expected[e]) for e in expected)
        assert set(got) == set(expected) and diff < 1e-9, f"scores differ from score_family by {diff}"
        flagged = sorted(e for e, v in got.items() if v > 0.99)
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return {
        "workload": {"units": 20, "worker_nodes_per_unit": 16, "entities": len(farm.entities), "metrics": len(METRICS),
                     "series": len(farm.entities) * len(METRICS), "window": WINDOW, "freq_s": POLL,
                     "features": len(scorer.families[0].model.features), "model": "isolation_forest, 100 trees",
                     "steps": args.steps},
        "farmwatch_scorer_step": {"median_wall_s": med(ours, 0), "median_cpu_s": med(ours, 1)},
        "baseline_score_family_frames": {"median_wall_s": med(base, 0), "median_cpu_s": med(base, 1)},
        "cpu_ratio_baseline_over_farmwatch": med(base, 1) / med(ours, 1),
        "same_scores_as_baseline": True,
        "max_abs_score_difference": diff,
        "entities_above_0_99_at_last_step": len(flagged),
        "degrading_entities": int(farm.slow.sum()),
    }


def rss_child(n_series: int, steps: int) -> dict:
    """Runs in its own process (``--rss-child``): a window of ``n_series`` per-process series of the
    whole farm (20 units × 16 nodes × pids × 4 metrics) and scoring steps of its 320 nodes."""
    after_imports = _current_rss_mib()
    pids = max(1, round(n_series / (320 * len(METRICS))))
    farm = Farm(20, 16, pids=pids)
    with tempfile.TemporaryDirectory() as tmp:
        small = Farm(20, 16)
        scorer = trained_scorer(Path(tmp), small)
        window = Window(WINDOW * POLL + 120)
        scorer.window = window
        t = START
        w0 = time.perf_counter()
        for _ in range(WINDOW + 6):
            window.ingest(farm.batches(t, False, per_batch=1))
            t += POLL
        fill_s = time.perf_counter() - w0
        after_fill = _current_rss_mib()
        times = []
        for _ in range(steps):
            window.ingest(farm.batches(t, False, per_batch=1))
            window.prune(t)
            w0, c0 = time.perf_counter(), time.process_time()
            scorer.step(t)
            times.append((time.perf_counter() - w0, time.process_time() - c0))
            t += POLL
    return {"input_series": len(farm.entities) * pids * len(METRICS), "pids_per_node": pids,
            "series_in_window_incl_scores": window.series_count, "entities": len(farm.entities),
            "points_per_series": WINDOW + 6 + steps, "batches_per_cycle": len(farm.entities),
            "rss_mib_after_imports": after_imports, "rss_mib_after_filling_window": after_fill,
            "peak_rss_mib": _rss_mib(), "window_fill_s": fill_s,
            "scoring_step_median_wall_s": statistics.median(x[0] for x in times),
            "scoring_step_median_cpu_s": statistics.median(x[1] for x in times)}


def bench_stream(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(7)
    n = 20_000
    t = np.arange(n)
    values = 10 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 1, n)
    values[15_000:15_060] += 6
    ts = pd.date_range("2026-01-01", periods=n, freq="5min")
    ours, base = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        scores = stream_scores(ts, values)
        ours.append((time.perf_counter() - w0, time.process_time() - c0))
        w0, c0 = time.perf_counter(), time.process_time()
        s = pd.Series(values)
        prev = s.shift(1).rolling(100, min_periods=10)
        z = ((s - prev.mean()) / prev.std()).abs().to_numpy()
        base.append((time.perf_counter() - w0, time.process_time() - c0))
    assert len(scores) == n and np.all((scores >= 0) & (scores <= 1)) and len(z) == n
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return {"points": n, "repeats": args.repeats, "target_s": STREAM_TARGET_S,
            "farmwatch_stream_scores": {"median_wall_s": med(ours, 0), "median_cpu_s": med(ours, 1)},
            "baseline_rolling_zscore": {"median_wall_s": med(base, 0), "median_cpu_s": med(base, 1)},
            "within_target_cpu": med(ours, 1) <= STREAM_TARGET_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed scoring steps (whole farm)")
    parser.add_argument("--rss-series", type=int, default=50_000)
    parser.add_argument("--rss-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="stream_scores repetitions")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "detect_scoring.json")
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_series, args.rss_steps)))
        return
    step = bench_step(args)
    child = subprocess.run([sys.executable, __file__, "--rss-child", "--rss-series", str(args.rss_series),
                            "--rss-steps", str(args.rss_steps)], capture_output=True, text=True, check=True)
    rss = json.loads(child.stdout.strip().splitlines()[-1])
    stream = bench_stream(args)
    result = {"benchmark": "detect_scoring", "machine": machine(), "statistic": "median", "one_core": True,
              "scoring_step": step, "memory_50k_series": rss, "stream_scores": stream}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    s, b = step["farmwatch_scorer_step"], step["baseline_score_family_frames"]
    print(f"scoring step, {step['workload']['entities']} entities × {len(METRICS)} metrics, window {WINDOW}: "
          f"{s['median_wall_s'] * 1e3:.1f} ms wall, {s['median_cpu_s'] * 1e3:.1f} ms CPU "
          f"(baseline score_family on frames: {b['median_cpu_s'] * 1e3:.0f} ms CPU, "
          f"{step['cpu_ratio_baseline_over_farmwatch']:.1f}x)")
    print(f"{rss['input_series']:,} series in the window: RSS {rss['rss_mib_after_imports']:.0f} MiB after imports, "
          f"{rss['rss_mib_after_filling_window']:.0f} MiB filled, peak {rss['peak_rss_mib']:.0f} MiB; "
          f"scoring {rss['entities']:,} entities {rss['scoring_step_median_cpu_s']:.2f} s CPU")
    o, z = stream["farmwatch_stream_scores"], stream["baseline_rolling_zscore"]
    print(f"stream_scores on 20,000 points: {o['median_cpu_s']:.2f} s CPU ({o['median_wall_s']:.2f} s wall), "
          f"rolling z-score {z['median_cpu_s'] * 1e3:.1f} ms CPU")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
