"""Family models: calibration, peers, explanations, persistence (farmwatch.detect.models/persist/family).

The data is a small simulated family of worker nodes whose metrics follow a common load pattern
(what the nodes of one HLT unit do: they share the input) plus per-node noise.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from farmwatch.detect import (
    MODELS, Calibrator, IncompatibleModel, combine, load, read_metadata, save, score_family, train, train_family,
)
from farmwatch.detect import features as feats
from farmwatch.detect.family import latest_features

METRICS = ("event_rate", "cpu", "latency")
WINDOW = 20


def node_frames(n_nodes: int = 12, n: int = 600, seed: int = 0, start: str = "2026-11-20") -> dict[str, pd.DataFrame]:
    """Worker nodes sharing a load pattern (rates between ~50 and ~150 Hz) with their own noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load_ = 100 + 50 * np.sin(2 * np.pi * t / 300)
    index = pd.date_range(start, periods=n, freq="10s")
    frames = {}
    for i in range(n_nodes):
        rate = load_ * (1 + rng.normal(0, 0.02)) + rng.normal(0, 3, n)
        cpu = 0.3 + 0.004 * rate + rng.normal(0, 0.02, n)
        latency = 20 + 0.05 * rate + rng.normal(0, 1.0, n)
        frames[f"hltwk{i + 1:02d}"] = pd.DataFrame({"event_rate": rate, "cpu": cpu, "latency": latency}, index=index)
    return frames


@pytest.fixture(scope="module")
def family_model():
    return train_family(node_frames(seed=1), family="worker", window=WINDOW, step=2, target_false_alarm=0.05)


# -- calibration ----------------------------------------------------------------------------------
def test_calibrator_is_uniform_on_fresh_normal_data_and_ranks_the_tail():
    rng = np.random.default_rng(3)
    cal = Calibrator.fit(rng.gamma(2.0, size=5000))
    fresh = cal(rng.gamma(2.0, size=5000))
    assert stats.kstest(fresh, "uniform").statistic < 0.03
    assert 0.005 <= np.mean(fresh >= 0.99) <= 0.015 and np.mean(fresh >= 0.999) <= 0.003
    far = cal(np.array([14.0, 17.0, 20.0]))  # beyond every training value (max ≈ 13)
    assert np.all(np.diff(far) > 0) and np.all(far < 1.0) and far[0] > 0.999
    assert cal(np.array([np.nan]))[0] != cal(np.array([np.nan]))[0]  # NaN stays NaN


def test_far_beyond_the_sample_scores_stay_ordered_below_one_and_surprises_finite():
    cal = Calibrator.fit(np.random.default_rng(3).normal(size=1000))
    far = np.array([10.0, 1e2, 1e4, 1e8, 1e16, 1e64, 1e300, np.inf])
    scores, surprises = cal(far[:-1]), cal.surprise(far[:-1])
    assert np.all(np.diff(scores) > 0) and np.all(scores < 1.0)      # never saturates at 1.0
    assert np.all(np.diff(surprises) > 0) and np.all(np.isfinite(surprises))
    assert surprises[-1] < 1e4                                          # not p = e^-100000
    # Up to the knee the surprise is -log10 of an honest p-value: 1 in ~1,000 normal values.
    assert cal.surprise(np.array([np.quantile(np.random.default_rng(4).normal(size=10**6), 0.999)]))[0] \
        == pytest.approx(3.0, abs=0.35)


def test_calibrator_of_a_constant_statistic_scores_any_excess_as_anomalous():
    cal = Calibrator.fit(np.zeros(100))
    assert cal(np.array([0.0]))[0] == 0.0
    assert cal(np.array([1e-3]))[0] > 0.999


def test_fisher_combination_keeps_independent_p_values_calibrated():
    rng = np.random.default_rng(4)
    parts = [-np.log10(rng.uniform(size=20000)) for _ in range(3)]
    combined = 10.0 ** -combine(*parts)  # back to p-values
    assert stats.kstest(combined, "uniform").statistic < 0.02
    assert combine(np.array([np.nan, 2.0]), np.array([np.nan, np.nan]))[1] == pytest.approx(2.0)
    assert np.isnan(combine(np.array([np.nan]), np.array([np.nan]))[0])
    # Agreement counts: two parts at 1 in 100 are stronger evidence than one alone, weaker than 1 in 10^4.
    assert 2.0 < combine(np.array([2.0]), np.array([2.0]))[0] < 4.0


def test_model_scores_of_held_out_normal_history_are_uniform_and_false_alarms_near_target(family_model):
    model = family_model
    assert model.threshold == pytest.approx(0.95)
    held_out = node_frames(seed=2, start="2026-11-21")
    scores = []
    for frame in held_out.values():
        from farmwatch.detect.frames import entity_features, filled

        X = entity_features(filled(frame, model.metrics), WINDOW, WINDOW, model.features)  # disjoint windows
        scores.append(model.score(X))
    scores = np.concatenate(scores)
    assert len(scores) == 12 * (600 // WINDOW)
    assert stats.kstest(scores, "uniform").statistic < 0.12
    rate = np.mean(scores >= model.threshold)
    assert 0.01 <= rate <= 0.10, rate


def test_training_refuses_unknown_kinds_and_bad_rates():
    X = np.random.default_rng(0).normal(size=(100, 3))
    with pytest.raises(ValueError, match="unknown model kind 'forest'.*isolation_forest"):
        train(X, ["a__mean", "b__mean", "c__mean"], kind="forest")
    with pytest.raises(ValueError, match="target_false_alarm"):
        train(X, ["a__mean", "b__mean", "c__mean"], target_false_alarm=1.5)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_registered_model_kind_flags_an_obvious_outlier(kind):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 4))
    model = train(X, [f"m{i}__mean" for i in range(4)], kind=kind)
    scores = model.score(np.vstack([rng.normal(size=(50, 4)), [[6.0, -6.0, 6.0, 0.0]]]))
    assert scores[-1] > 0.99
    assert np.median(scores[:-1]) < 0.8


# -- peers and explanations -----------------------------------------------------------------------
def test_a_node_unlike_its_eleven_peers_is_flagged_and_explained_by_the_right_metric(family_model):
    model = family_model
    frames = node_frames(seed=7, start="2026-11-22")
    # hltwk05 slowly loses half its event rate over the last window: still inside the range the
    # family saw in training (rates go down to ~50 Hz at low load), but not what its peers do now.
    odd = frames["hltwk05"].copy()
    odd.iloc[-WINDOW:, 0] *= np.linspace(1.0, 0.5, WINDOW)
    frames["hltwk05"] = odd
    results = score_family(model, frames)
    assert results[0].entity == "hltwk05"
    top = results[0]
    assert top.anomalous and top.peer_score > 0.99
    assert top.metrics[0] == "event_rate"
    assert top.contributions[0].z_peers is not None and abs(top.contributions[0].z_peers) > 5
    assert [e.entity for e in results if e.anomalous] == ["hltwk05"]
    text = top.markdown()
    assert "hltwk05" in text and "`event_rate`" in text and "peers" in text
    assert json.dumps(top.to_dict())  # renderable as JSON for the chat/alert pipeline


def test_without_peers_the_model_alone_scores_and_explains():
    model = train_family({"hltin01": node_frames(n_nodes=1, seed=8)["hltwk01"]}, family="input", window=WINDOW)
    assert model.peer_calibrator is None
    frame = node_frames(n_nodes=1, seed=9)["hltwk01"]
    frame.iloc[-5:, 2] += 40  # latency jumps
    names, X = latest_features(model, {"hltin01": frame})
    (result,) = model.score_entities(X, names)
    assert result.peer_score is None and result.anomalous
    assert result.metrics[0] == "latency"
    explained = model.explain(X[0], entity="hltin01")
    assert explained.contributions[0].metric == "latency" and "hltin01" in explained.markdown()


# -- persistence ----------------------------------------------------------------------------------
def test_save_and_load_round_trip_keeps_scores_and_metadata(family_model, tmp_path):
    model_path, meta_path = save(family_model, tmp_path / "models" / "worker")
    assert model_path.name == "worker.joblib" and meta_path.name == "worker.json"
    meta = read_metadata(tmp_path / "models" / "worker")
    assert meta["family"] == "worker" and meta["window"] == WINDOW and meta["step"] == 2
    assert meta["features"] == list(feats.DEFAULT_FEATURES) and meta["metrics"] == sorted(METRICS)
    assert meta["trained"]["n_samples"] > 0 and meta["trained"]["n_entities"] == 12
    assert meta["trained"]["from"].startswith("2026-11-20")
    assert set(meta["versions"]) >= {"numpy", "sklearn", "farmwatch"}
    assert len(meta["calibration"]["model"]["table"]) > 100
    loaded = load(model_path, features=feats.DEFAULT_FEATURES, window=WINDOW, step=2)
    names, X = latest_features(family_model, node_frames(seed=11))
    np.testing.assert_array_equal(loaded.score(X), family_model.score(X))
    a = [e.score for e in loaded.score_entities(X, names)]
    b = [e.score for e in family_model.score_entities(X, names)]
    np.testing.assert_array_equal(a, b)


def test_incompatible_models_are_refused_with_one_clear_line(family_model, tmp_path):
    base = tmp_path / "worker"
    save(family_model, base)
    with pytest.raises(IncompatibleModel, match="window 20, but 60 is configured") as err:
        load(base, window=60)
    assert "\n" not in str(err.value)
    with pytest.raises(IncompatibleModel, match="features"):
        load(base, features=feats.DEFAULT_FEATURES[:3])

    meta = json.loads(base.with_suffix(".json").read_text())
    meta["versions"]["sklearn"] = "0.24.2"
    base.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleModel, match=r"trained with scikit-learn 0\.24\.2, but .* is installed") as err:
        load(base)
    assert "\n" not in str(err.value) and "retrain" in str(err.value)

    save(family_model, base)
    with open(base.with_suffix(".joblib"), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(IncompatibleModel, match="does not match its sidecar"):
        load(base)
    with pytest.raises(IncompatibleModel, match="sidecar not found"):
        load(tmp_path / "nothing")


# -- farmwatch train / models (real SQLite store, the CLI in-process) ---------------------------------
def test_train_command_learns_only_normal_periods_from_the_store_and_lists_the_model(tmp_path, capsys):
    from farmwatch.alerting.state import AlertDB
    from farmwatch.cli import main
    from farmwatch.model import Alert, AlertState, Batch, labels
    from farmwatch.store import SQLiteStore

    frames = node_frames(n_nodes=4, n=400, seed=12)
    t0 = frames["hltwk01"].index[0].timestamp()
    store = SQLiteStore(tmp_path / "farmwatch.db")
    batches = []
    for i in range(400):
        b = Batch(t0 + 10 * i)
        for host, frame in frames.items():
            b.add(("hlt.worker.event_rate", labels(unit="hlt01", host=host)), float(frame.iloc[i, 0]))
            b.add(("hlt.worker.cpu", labels(unit="hlt01", host=host)), float(frame.iloc[i, 1]))
        batches.append(b)
    store.write(batches)
    # The run stops for 300 s in the middle, and an alert fires for 200 s near the end.
    store.write([Batch(t0, [(("daq.run_state", labels(node="RUNCONTROL")))], ["RUNNING"]),
                 Batch(t0 + 1500, [(("daq.run_state", labels(node="RUNCONTROL")))], ["READY"]),
                 Batch(t0 + 1800, [(("daq.run_state", labels(node="RUNCONTROL")))], ["RUNNING"])])
    alert = Alert("HltWorkerSlow", labels(unit="hlt01"), AlertState.FIRING, "warning", "slow")
    AlertDB(store).save_alerts([alert], [(t0 + 3000, "firing", alert), (t0 + 3200, "resolved", alert)])
    store.close()
    config = tmp_path / "farmwatch.toml"
    config.write_text("""
[store]
path = "farmwatch.db"

[detect]
models = "models"
[detect.families.worker]
series = ["hlt.worker.*"]
match = ["unit=hlt01"]
entity = ["host"]
window = 12
step = 2
freq = "10s"
""")
    start = frames["hltwk01"].index[0].isoformat()
    end = frames["hltwk01"].index[-1].isoformat()
    assert main(["train", "-c", str(config), "--from", start, "--to", end]) == 0
    out = capsys.readouterr().out
    assert "worker: isolation_forest on" in out and "windows left out" in out
    meta = read_metadata(tmp_path / "models" / "worker")
    assert meta["metrics"] == ["hlt.worker.cpu", "hlt.worker.event_rate"]
    assert meta["trained"]["n_entities"] == 4
    # windows touching the 30 READY points or the 20 alert points (+ window - 1 before each) are left out
    windows_per_node = (400 - 12) // 2 + 1
    left_out = meta["trained"]["excluded_windows"]
    assert 4 * 20 <= left_out <= 4 * 35
    assert meta["trained"]["n_samples"] == 4 * windows_per_node - left_out
    model = load(tmp_path / "models" / "worker", window=12, step=2)
    assert model.peer_calibrator is not None

    assert main(["models", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "worker" in listing and "yes" in listing
    assert main(["models", "show", "worker", "-c", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["family"] == "worker" and "calibration" not in shown


def test_train_command_reports_config_problems_in_one_line_each(tmp_path, capsys):
    from farmwatch.cli import main

    config = tmp_path / "farmwatch.toml"
    config.write_text('[detect.families.worker]\nseries = ["x"]\nentity = ["host"]\nkind = "forest"\nwindo = 3\n')
    assert main(["train", "-c", str(config), "--from", "1d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("detect.families.worker" in line and "forest" in line for line in err)
    assert any("windo" in line for line in err)
    config.write_text('[detect.families.worker]\nseries = ["x"]\nentity = ["host"]\n')
    assert main(["train", "-c", str(config), "--from", "1d", "--family", "nodes"]) == 2
    assert "no family nodes (have: worker)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_train_on_a_dask_cluster_gives_the_same_model(tmp_path, capsys):
    """`farmwatch train --dask-scheduler ADDRESS` extracts the features on a real Dask cluster with
    tsfresh's ClusterDaskDistributor: the features equal the local ones, and so does the model."""
    from distributed import LocalCluster

    from farmwatch.cli import main
    from farmwatch.detect import features as F
    from farmwatch.detect.dask import dask_compute
    from farmwatch.model import Batch, labels
    from farmwatch.store import SQLiteStore

    frames = node_frames(n_nodes=3, n=120, seed=5)
    t0 = frames["hltwk01"].index[0].timestamp()
    with SQLiteStore(tmp_path / "farmwatch.db") as store:
        batches = []
        for i in range(120):
            b = Batch(t0 + 10 * i)
            for host, frame in frames.items():
                b.add(("hlt.worker.event_rate", labels(unit="hlt01", host=host)), float(frame.iloc[i, 0]))
            batches.append(b)
        store.write(batches)
    features = list(F.DEFAULT_FEATURES[:8])
    body = f"""
[store]
path = "farmwatch.db"

[detect]
models = "{{models}}"
[detect.families.worker]
series = ["hlt.worker.*"]
entity = ["host"]
window = 12
step = 4
freq = "10s"
features = {json.dumps(features)}
"""
    start, end = frames["hltwk01"].index[0].isoformat(), frames["hltwk01"].index[-1].isoformat()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        windows = F.windows_of(frames["hltwk01"].iloc[:, 0].to_numpy(), 12, 4)
        np.testing.assert_allclose(dask_compute(cluster.scheduler_address)(windows, features), F.compute(windows, features),
                                   rtol=1e-9, atol=1e-12, equal_nan=True)
        for name, extra in (("local", []), ("dask", ["--dask-scheduler", cluster.scheduler_address])):
            config = tmp_path / f"{name}.toml"
            config.write_text(body.replace("{models}", f"models-{name}"))
            assert main(["train", "-c", str(config), "--from", start, "--to", end, *extra]) == 0
    capsys.readouterr()
    local = load(tmp_path / "models-local" / "worker")
    remote = load(tmp_path / "models-dask" / "worker")
    for m in (local, remote):
        assert m.features == tuple(features) or list(m.features) == features
    probe = {host: frame.iloc[-40:] for host, frame in frames.items()}
    from farmwatch.detect import score_family
    a = sorted((e.entity, round(e.score, 9)) for e in score_family(local, probe, freq="10s"))
    b = sorted((e.entity, round(e.score, 9)) for e in score_family(remote, probe, freq="10s"))
    assert a == b and len(a) == 3
