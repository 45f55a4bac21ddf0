"""Anomaly detection: tsfresh features, calibrated scikit-learn family models, peers, explanations.

The library API for notebooks and for evaluation on data from other systems::

    from farmwatch.detect import stream_scores, score_frame
    scores = stream_scores(df.index, df["value"])          # one series → one score in [0, 1] per point
    scores = score_frame(train_df, test_df)                 # one entity, many metrics → pandas.Series

and the pieces the services use::

    model = train_family({"hltwk01": df1, …}, family="worker", window=60)   # shared model + peers
    for e in score_family(model, latest_frames): print(e.markdown())       # scores + explanations
    history = score_history(model, frames, freq="10s")                      # time × entity scores
    save(model, "models/worker"); model = load("models/worker")             # joblib + JSON sidecar

Scores are calibrated: on normal data they are about uniform on [0, 1], so ``score >= 1 - rate``
raises about ``rate`` false alarms. See ``docs/detection.md``.

The names below are imported when first used (PEP 562): the services and the config import
``farmwatch.detect.settings`` without paying for pandas, scikit-learn and joblib.
"""

from farmwatch.lazy import exports

_WHERE = {
    "default_warmup": "api", "score_frame": "api", "stream_scores": "api",
    "latest_features": "family", "score_family": "family", "score_history": "family", "train_family": "family",
    "MODELS": "models", "Contribution": "models", "Explanation": "models", "FamilyModel": "models",
    "register_model": "models", "train": "models",
    "IncompatibleModel": "persist", "load": "persist", "read_metadata": "persist", "save": "persist",
    "Calibrator": "scoring", "combine": "scoring",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = exports(__name__, _WHERE)
