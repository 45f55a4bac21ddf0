"""Detection quality on real, labelled data: a regression guard, not the measurement.

Two machines of the Server Machine Dataset (real production server metrics with expert labels,
MIT licence; tests/data/README.md), stored at half precision. The full measurement over eight
machines, with every baseline, is ``benchmarks/bench_detect_public.py`` (docs/detection.md); this
keeps what it found from silently regressing: the std-scaled cross-metric ``score_frame`` well
ahead of a PCA baseline, ``stream_scores`` ahead of a rolling z-score with ONE threshold for all
streams, calibrated false-alarm rates on normal points, and top scores that neither saturate nor tie.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from farmwatch.detect import score_frame, stream_scores
from farmwatch.detect.scoring import score_of

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "smd_two_machines.npz"


def _bench():
    """benchmarks/bench_detect_public.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_detect_public", ROOT / "benchmarks" / "bench_detect_public.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


B = _bench()


@pytest.fixture(scope="module")
def machines() -> list:
    d = np.load(DATA)
    out = []
    for key in sorted({k.rsplit("_", 1)[0] for k in d.files}):
        segments: dict[int, list[tuple[int, int]]] = {}
        for line in d[f"{key}_segments"]:
            span, dims = str(line).split(":")
            a, b = (int(v) for v in span.split("-"))
            for dim in dims.split(","):
                segments.setdefault(int(dim) - 1, []).append((a, b))
        out.append(B.Machine(key, d[f"{key}_train"].astype(float), d[f"{key}_test"].astype(float),
                             d[f"{key}_label"].astype(bool), segments))
    return out


def test_score_frame_ranks_real_anomalies_well_ahead_of_pca_reconstruction(machines):
    ours = [B.average_precision(m.label, B.frame_farmwatch(m)) for m in machines]
    pca = [B.average_precision(m.label, B.frame_pca(m)) for m in machines]
    assert np.mean(ours) >= 1.5 * np.mean(pca), (ours, pca)
    for m in machines:
        surprise = B.frame_farmwatch(m)
        assert np.all(np.isfinite(surprise)) and score_of(surprise).max() < 1.0
        assert B.ties(surprise) == 0


def test_stream_scores_one_threshold_for_all_streams_beats_a_rolling_z_score(machines):
    ours, theirs, normal, top = [], [], [], []
    for m in machines:
        for j in range(m.test.shape[1]):
            x = m.test[:, j]
            if x.min() == x.max():
                continue
            segments = m.segments.get(j, [])
            s = stream_scores(np.arange(len(x)) * 60.0, x, surprise=True)
            ours.append(B.stream_result(s, segments))
            theirs.append(B.stream_result(B.stream_rolling_z(x), segments))
            normal.append(ours[-1].outside)
            top.append(np.sort(s)[-200:])
    mine, baseline = B.shared_threshold(ours), B.shared_threshold(theirs)
    assert mine["score"] >= 1.2 * baseline["score"], (mine, baseline)
    # Calibrated: the threshold 0.99 means about 1 % of normal points, 0.999 about 0.1 %.
    scores = score_of(np.concatenate(normal))
    assert 0.004 <= np.mean(scores >= 0.99) <= 0.02, np.mean(scores >= 0.99)
    assert 0.0003 <= np.mean(scores >= 0.999) <= 0.003, np.mean(scores >= 0.999)
    best = score_of(np.sort(np.concatenate(top))[-1000:])
    assert best.max() < 1.0 and np.unique(best).size >= 995   # never saturated; ties only for identical events
