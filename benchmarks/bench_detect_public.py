"""Detection quality on public labelled data: the Server Machine Dataset (SMD), real server metrics.

Data: ``--data`` (default ``../shared/data/smd`` from the project root): per machine ``train`` and
``test`` (rows × 38 metrics, one row a minute), ``test_label`` (one 0/1 per test row) and
``interpretation_label/<machine>.txt`` (anomalous segments and the metrics the experts name in
each). Nothing of it was made by farmwatch; see that folder's README for its origin.

Two questions, each against baselines in the same run:

**One entity, many metrics (``detect.score_frame``)**, per machine: average precision of one
score per test row (point-wise, no point-adjust) learned from ``train`` only, for farmwatch and
* PCA reconstruction error (metrics z-scored on train, components for 95 % of the variance),
* IsolationForest on raw rows (200 trees),
* rolling z-score (largest |z| over metrics against the previous 288 rows).
Also the false-alarm rate of ``score >= 0.99`` and ``>= 0.999`` on normal test rows (farmwatch's
promise: about 1 % and 0.1 %) and how many of the 1,000 highest scores are tied. Besides, as for
the streams: each machine's labelled segments as events, ONE threshold shared by all machines,
event-wise with NAB's weights (what an operator's alert sees: an onset found, each alarming normal
row a cost), to show how comparable one entity's scores are with another's.

**Each metric as a labelled stream (``detect.stream_scores``)**: every metric of every machine's
test part that is not constant is a stream (labels: the segments whose interpretation names that
metric). Like the Numenta Anomaly Benchmark: the first 15 % of each stream is probationary (not
scored, segments starting in it dropped), and ONE threshold is shared by all streams, the best one
for each detector (swept over its pooled scores). Event-wise with NAB's standard weights: a
labelled segment with at least one alarm inside is a hit (+1), a segment without is a miss (-1),
every alarming point outside a segment costs 0.11. Reported normalised as NAB does:
``100 * (S - S_null) / (S_perfect - S_null)``, where the null detector never alarms (0) and the
perfect one hits every segment and nothing else (100). Baselines: rolling z-score (|z| against the
previous 288 points) and "never alarm". Also: precision among the 1,000 highest-scoring points of
all streams, the false-alarm rate at 0.99 / 0.999 on normal points after probation, and ties
among the 1,000 highest scores.

Speed: CPU seconds per call (``time.process_time``; the machine may be shared), ``--passes`` calls
each (default 3; medians and ranges): ``stream_scores`` per point, ``score_frame`` per machine.

Writes ``benchmarks/results/detect_public.json`` (``--quick``: ``detect_public_quick.json``: four
machines, every third metric as a stream) and prints tables; ``docs/detection.md`` quotes a full
run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_store_ingest import machine as machine_info  # noqa: E402

from farmwatch.detect import score_frame, stream_scores  # noqa: E402
from farmwatch.detect.scoring import score_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "smd"
PROBATION = 0.15          # NAB's probationary share of each stream
A_TP, A_FP, A_FN = 1.0, 0.11, 1.0   # NAB's standard profile
ROLL = 288                # rolling z-score history (rows, as in the data set's README)
TOP = 1000
FREQ = pd.Timedelta(minutes=1)


# ------------------------------------------------------------------------------------------- data
@dataclass
class Machine:
    name: str
    train: np.ndarray
    test: np.ndarray
    label: np.ndarray
    segments: dict[int, list[tuple[int, int]]]   # metric (0-based) -> [(start, end inclusive)]


def load_machines(data: Path, names: list[str] | None = None) -> list[Machine]:
    out = []
    for path in sorted(data.glob("*.npz")):
        if names and path.stem not in names:
            continue
        d = np.load(path)
        segments: dict[int, list[tuple[int, int]]] = {}
        for line in (data / "interpretation_label" / f"{path.stem}.txt").read_text().split():
            span, dims = line.split(":")
            a, b = (int(v) for v in span.split("-"))
            for dim in dims.split(","):
                segments.setdefault(int(dim) - 1, []).append((a, b))
        out.append(Machine(path.stem, d["train"].astype(np.float64), d["test"].astype(np.float64),
                           d["test_label"].astype(bool), segments))
    if not out:
        raise SystemExit(f"{data}: no machine-*.npz files (see the SMD README for the layout)")
    return out


def frames(m: Machine) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = [f"m{j:02d}" for j in range(m.train.shape[1])]
    t0 = pd.Timestamp("2019-01-01", tz="UTC")
    tr = pd.DataFrame(m.train, columns=cols, index=t0 + FREQ * np.arange(len(m.train)))
    te = pd.DataFrame(m.test, columns=cols, index=t0 + FREQ * (len(m.train) + np.arange(len(m.test))))
    return tr, te


# ------------------------------------------------------------------------------------- detectors
def frame_farmwatch(m: Machine) -> np.ndarray:
    """The surprise (-log10 p); the [0, 1] score is ``score_of`` of it (same order)."""
    tr, te = frames(m)
    return score_frame(tr, te, surprise=True).to_numpy()


def frame_farmwatch_follow(m: Machine) -> np.ndarray:
    """``follow="1D"``: each row's evidence above its median of the day before (drifting test halves)."""
    tr, te = frames(m)
    return score_frame(tr, te, surprise=True, follow="1D").to_numpy()


def frame_pca(m: Machine) -> np.ndarray:
    from sklearn.decomposition import PCA

    mu, sd = m.train.mean(axis=0), m.train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    ztr, zte = (m.train - mu) / sd, (m.test - mu) / sd
    pca = PCA(n_components=0.95, svd_solver="full").fit(ztr)
    rec = pca.inverse_transform(pca.transform(zte))
    return np.sum((zte - rec) ** 2, axis=1)


def frame_iforest(m: Machine) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    return -IsolationForest(n_estimators=200, random_state=0).fit(m.train).score_samples(m.test)


def rolling_z(x: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
    """|x - mean| / std of the previous ``ROLL`` points (rows); 0 where the std is 0 and x equals the mean."""
    full = x if history is None else np.concatenate([history, x])
    df = pd.DataFrame(full)
    r = df.rolling(ROLL, min_periods=10)
    mean, std = r.mean().shift(1).to_numpy(), r.std().shift(1).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(full - mean) / std
    z = np.where(np.isnan(z), 0.0, z)
    z = np.where(np.isinf(z), 1e12, z)  # a change after a constant stretch
    return z[-len(x):]


def frame_rolling_z(m: Machine) -> np.ndarray:
    return rolling_z(m.test, m.train[-ROLL:]).max(axis=1)


FRAME_DETECTORS: dict[str, Callable[[Machine], np.ndarray]] = {
    "farmwatch": frame_farmwatch, "farmwatch_follow_1d": frame_farmwatch_follow, "pca": frame_pca, "iforest": frame_iforest, "rolling_z": frame_rolling_z,
}


def stream_farmwatch(x: np.ndarray) -> np.ndarray:
    return stream_scores(np.arange(len(x)) * 60.0, x, surprise=True)


def stream_rolling_z(x: np.ndarray) -> np.ndarray:
    return rolling_z(x[:, None])[:, 0]


STREAM_DETECTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "farmwatch": stream_farmwatch, "rolling_z": stream_rolling_z,
}


# ------------------------------------------------------------------------------------- measures
def average_precision(label: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(label, np.nan_to_num(score, nan=0.0)))


def ties(score: np.ndarray, top: int = TOP) -> int:
    """How many of the ``top`` highest scores repeat a value among them."""
    best = np.sort(np.asarray(score)[np.isfinite(score)])[-top:]
    return int(best.size - np.unique(best).size)


@dataclass
class StreamResult:
    """What the shared-threshold measures need of one stream, after probation."""

    window_max: np.ndarray     # highest score inside each scored segment
    outside: np.ndarray        # scores of points outside every segment
    inside: np.ndarray         # scores of points inside a segment


def stream_result(score: np.ndarray, segments: list[tuple[int, int]]) -> StreamResult:
    n = score.size
    start = int(np.ceil(PROBATION * n))
    inside = np.zeros(n, dtype=bool)
    maxima = []
    for a, b in segments:
        inside[a:b + 1] = True
        if a >= start and a < n:
            maxima.append(float(np.max(score[a:min(b, n - 1) + 1])))
    keep = np.arange(n) >= start
    return StreamResult(np.asarray(maxima), score[keep & ~inside], score[keep & inside])


def shared_threshold(results: list[StreamResult]) -> dict[str, float]:
    """The best NAB-style normalised event score over one threshold shared by all streams."""
    window_max = np.sort(np.concatenate([r.window_max for r in results]))
    outside = np.sort(np.concatenate([r.outside for r in results]))
    n_win = window_max.size
    cand = np.unique(np.concatenate([window_max, [np.inf]]))  # a threshold just at a window's max is optimal
    hits = n_win - np.searchsorted(window_max, cand, side="left")
    fps = outside.size - np.searchsorted(outside, cand, side="left")
    raw = A_TP * hits - A_FP * fps - A_FN * (n_win - hits)
    best = int(np.argmax(raw))
    null, perfect = -A_FN * n_win, A_TP * n_win
    return {"score": round(100.0 * (raw[best] - null) / (perfect - null), 2), "threshold": float(cand[best]),
            "hits": int(hits[best]), "segments": n_win, "false_alarm_points": int(fps[best])}


def top_precision(results: list[StreamResult], top: int = TOP) -> float:
    scores = np.concatenate([np.concatenate([r.inside, r.outside]) for r in results])
    truth = np.concatenate([np.r_[np.ones(r.inside.size), np.zeros(r.outside.size)] for r in results])
    order = np.argsort(-scores, kind="stable")[:top]
    return float(truth[order].mean())


def false_alarm_rates(normal: np.ndarray) -> dict[str, float]:
    normal = normal[np.isfinite(normal)]
    return {"fa_0.99": float(np.mean(normal >= 0.99)), "fa_0.999": float(np.mean(normal >= 0.999))}


# ----------------------------------------------------------------------------------------- runs
def timed(fn: Callable, arg: object, passes: int) -> tuple[np.ndarray, list[float]]:
    """The result of ``fn(arg)`` and its CPU seconds in each of ``passes`` calls (the results are equal)."""
    cpu = []
    for _ in range(passes):
        t = time.process_time()
        result = fn(arg)
        cpu.append(time.process_time() - t)
    return result, cpu


def run_frame(args: tuple[str, Machine, int]) -> dict:
    name, m, passes = args
    score, cpus = timed(FRAME_DETECTORS[name], m, passes)
    out = {"machine": m.name, "detector": name, "ap": average_precision(m.label, score),
           "cpu_s": float(np.median(cpus)), "cpu_s_passes": cpus, "ties_top1000": ties(score)}
    if name.startswith("farmwatch"):
        out["ties_top1000_score"] = ties(score_of(score))
        out.update(false_alarm_rates(score_of(score[~m.label])))
    out["_events"] = stream_result(score, label_segments(m.label))
    return out


def label_segments(label: np.ndarray) -> list[tuple[int, int]]:
    """The runs of anomalous rows, (start, end inclusive)."""
    edges = np.flatnonzero(np.diff(np.r_[0, label.astype(np.int8), 0]))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def run_streams(args: tuple[str, Machine, int, int]) -> dict:
    name, m, every, passes = args
    results, normal, cpu, points, pooled_top = [], [], np.zeros(passes), 0, []
    for j in range(0, m.test.shape[1], every):
        x = m.test[:, j]
        if np.nanmin(x) == np.nanmax(x):
            continue
        score, cpus = timed(STREAM_DETECTORS[name], x, passes)
        cpu += cpus
        points += x.size
        r = stream_result(score, m.segments.get(j, []))
        results.append(r)
        normal.append(r.outside)
        pooled_top.append(np.sort(score)[-TOP:])
    return {"machine": m.name, "detector": name, "results": results, "cpu_s": cpu, "points": points,
            "normal": np.concatenate(normal), "top": np.concatenate(pooled_top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--machines", nargs="*", help="machine names (default: all in --data)")
    parser.add_argument("--part", choices=("frame", "stream", "all"), default="all")
    parser.add_argument("--detectors", nargs="*", help="detector names (default: all)")
    parser.add_argument("--every", type=int, default=1, help="take every k-th metric as a stream")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--passes", type=int, default=3, help="timed calls of every detector (medians, ranges)")
    parser.add_argument("--quick", action="store_true", help="4 machines, every third metric as a stream")
    parser.add_argument("--out", type=Path, help="result file (default: results/detect_public[_quick].json)")
    args = parser.parse_args()
    machines = load_machines(args.data, args.machines)
    every = args.every
    if args.quick:
        machines, every = machines[::2], max(every, 3)
    report: dict = {"machine": machine_info(), "data": str(args.data), "machines": [m.name for m in machines],
                    "quick": args.quick, "load_avg": os.getloadavg()}
    pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
    mapper = pool.map if pool else map

    if args.part in ("frame", "all"):
        names = [d for d in FRAME_DETECTORS if not args.detectors or d in args.detectors]
        rows = list(mapper(run_frame, [(d, m, args.passes) for d in names for m in machines]))
        events = {d: shared_threshold([r.pop("_events") for r in rows if r["detector"] == d]) for d in names}
        table = pd.DataFrame(rows)
        summary = table.groupby("detector").agg(mean_ap=("ap", "mean"), cpu_s_median=("cpu_s", "median"),
                                                 cpu_s_max=("cpu_s", "max"), ties=("ties_top1000", "max"))
        worst = {d: [float(np.min(r["cpu_s_passes"])), float(np.max(r["cpu_s_passes"]))]
                 for d in names for r in [max((r for r in rows if r["detector"] == d), key=lambda r: r["cpu_s"])]}
        report["frame"] = {"rows": rows, "mean_ap": summary["mean_ap"].round(4).to_dict(),
                           "slowest_machine_cpu_s_range": worst, "events_shared_threshold": events}
        if "ties_top1000_score" in table:
            report["frame"]["ties_top1000_score"] = int(table["ties_top1000_score"].max())
        print("\nscore_frame: average precision per machine")
        print(table.pivot(index="machine", columns="detector", values="ap").round(3).to_string())
        print(summary.round(4).to_string())
        print("each machine's labelled segments as events, ONE threshold for all machines (as for the streams):")
        for d, e in events.items():
            print(f"  {d:20s} {json.dumps(e)}")
        for d in [d for d in names if d.startswith("farmwatch")]:
            fw = table[table.detector == d]
            got = report["frame"].setdefault(d, {})
            got["fa_0.99"], got["fa_0.999"] = float(fw["fa_0.99"].mean()), float(fw["fa_0.999"].mean())
            if "pca" in summary.index:
                got["ratio_to_pca"] = float(summary.loc[d, "mean_ap"] / summary.loc["pca", "mean_ap"])
            print(f"{d}: false alarms on normal rows {got['fa_0.99']:.4f} at 0.99, {got['fa_0.999']:.5f} at 0.999; "
                  f"ratio to PCA {got.get('ratio_to_pca', float('nan')):.3f}")

    if args.part in ("stream", "all"):
        names = [d for d in STREAM_DETECTORS if not args.detectors or d in args.detectors]
        runs = list(mapper(run_streams, [(d, m, every, args.passes) for d in names for m in machines]))
        report["stream"] = {}
        print(f"\nstream_scores: one shared threshold, event-wise (NAB standard weights), every {every}. metric")
        for d in names:
            mine = [r for r in runs if r["detector"] == d]
            results = [res for r in mine for res in r["results"]]
            out = shared_threshold(results)
            out["top_precision"] = round(top_precision(results), 4)
            top = np.concatenate([r["top"] for r in mine])
            out["ties_top1000"] = ties(top)
            points = max(sum(r["points"] for r in mine), 1)
            per_pass = 1e6 * np.sum([r["cpu_s"] for r in mine], axis=0) / points
            out["us_per_point"] = round(float(np.median(per_pass)), 2)
            out["us_per_point_range"] = [round(float(per_pass.min()), 2), round(float(per_pass.max()), 2)]
            out["streams"] = len(results)
            if d == "farmwatch":
                out["ties_top1000_score"] = ties(score_of(top))
                normal = score_of(np.concatenate([r["normal"] for r in mine]))
                out.update({k: round(v, 5) for k, v in false_alarm_rates(normal).items()})
            report["stream"][d] = out
            print(f"  {d:12s} {json.dumps(out)}")
        if "farmwatch" in report["stream"] and "rolling_z" in report["stream"]:
            ratio = report["stream"]["farmwatch"]["score"] / max(report["stream"]["rolling_z"]["score"], 1e-9)
            report["stream"]["ratio_to_rolling_z"] = round(ratio, 3)
            print(f"  ratio to rolling z: {ratio:.3f}")
    if pool:
        pool.shutdown()
    out = args.out or RESULTS / ("detect_public_quick.json" if args.quick else "detect_public.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
