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
"""

from farmwatch.detect.api import default_warmup, score_frame, stream_scores
from farmwatch.detect.family import latest_features, score_family, score_history, train_family
from farmwatch.detect.models import MODELS, Contribution, Explanation, FamilyModel, register_model, train
from farmwatch.detect.persist import IncompatibleModel, load, read_metadata, save
from farmwatch.detect.scoring import Calibrator, combine

__all__ = [
    "MODELS", "Calibrator", "Contribution", "Explanation", "FamilyModel", "IncompatibleModel", "combine",
    "default_warmup", "latest_features", "load", "read_metadata", "register_model", "save", "score_family",
    "score_frame", "score_history", "stream_scores", "train", "train_family",
]
