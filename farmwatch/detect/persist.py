"""Saving and loading trained family models: a joblib file plus a JSON sidecar that says what it is.

The sidecar (``<name>.json``) is what ``farmwatch models list|show`` read and what ``load`` checks
*before* unpickling anything: the feature set, window and metrics the model expects, the training
range and size, the calibration table, and the versions of numpy, scikit-learn and farmwatch it was
trained with. A pickled scikit-learn estimator is only reliable with the scikit-learn major.minor
that wrote it (scikit-learn's own rule), so another major.minor is refused with one line that says
what to do instead of failing later in some estimator internals. The sidecar also holds the
SHA-256 of the joblib file, so a sidecar that does not belong to its model file is noticed.

Only load model files you (or your training service) wrote: joblib files are pickles.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import farmwatch

if TYPE_CHECKING:  # imported where a model is saved or loaded: reading sidecars (`models list`) stays cheap
    from farmwatch.detect.models import FamilyModel

SKLEARN_VERSION = version("scikit-learn")
NUMPY_VERSION = version("numpy")  # the metadata, as for scikit-learn: `models list` imports neither

FORMAT = 2  # 2: bounded surprises, cross-metric part (format 1 models must be retrained)


class IncompatibleModel(Exception):
    """A saved model that this farmwatch cannot use as it is (the message says why and what to do)."""


def versions() -> dict[str, str]:
    """Library versions that decide whether a saved model can be loaded."""
    return {"numpy": NUMPY_VERSION, "sklearn": SKLEARN_VERSION,
            "farmwatch": getattr(farmwatch, "__version__", "0"), "python": platform.python_version()}


def paths(path: str | Path) -> tuple[Path, Path]:
    """(model file, sidecar) for ``path`` given with or without a suffix."""
    base = Path(path)
    if base.suffix in (".joblib", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".joblib"), base.with_name(base.name + ".json")


def metadata(model: FamilyModel) -> dict[str, Any]:
    """The sidecar's content (everything but the estimator and the per-column arrays)."""
    return {
        "format": FORMAT,
        "family": model.family,
        "kind": model.kind,
        "metrics": list(model.metrics),
        "features": list(model.features),
        "window": model.window,
        "step": model.step,
        "n_columns": len(model.columns),
        "target_false_alarm": model.target_false_alarm,
        "threshold": model.threshold,
        "trained": model.trained,
        "versions": versions(),
        "calibration": {"model": model.calibrator.to_dict(),
                        "peers": None if model.peer_calibrator is None else model.peer_calibrator.to_dict(),
                        "range": None if model.range_calibrator is None else model.range_calibrator.to_dict(),
                        "joint": None if model.joint_calibrator is None else model.joint_calibrator.to_dict(),
                        "t2": None if model.t2_calibrator is None else model.t2_calibrator.to_dict(),
                        "spe": None if model.spe_calibrator is None else model.spe_calibrator.to_dict(),
                        "total": None if model.total_calibrator is None else model.total_calibrator.to_dict()},
    }


def save(model: FamilyModel, path: str | Path) -> tuple[Path, Path]:
    """Write ``<path>.joblib`` and its ``<path>.json`` sidecar; returns both paths."""
    model_path, meta_path = paths(path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"estimator": model.estimator, "columns": list(model.columns),
               "center": model.center, "scale": model.scale, "ignored": model.ignored,
               "peer_scale": model.peer_scale, "correlations": model.correlations}
    tmp = model_path.with_name(model_path.name + ".tmp")
    import joblib

    joblib.dump(payload, tmp)
    meta = metadata(model)
    meta["sha256"] = _sha256(tmp)
    tmp.replace(model_path)
    meta_tmp = meta_path.with_name(meta_path.name + ".tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1, default=_jsonable))
    meta_tmp.replace(meta_path)
    return model_path, meta_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The sidecar of a saved model (cheap: the model itself is not loaded)."""
    _, meta_path = paths(path)
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise IncompatibleModel(f"{meta_path}: model sidecar not found") from None
    except (OSError, ValueError) as exc:
        raise IncompatibleModel(f"{meta_path}: unreadable model sidecar ({exc})") from None


def check(meta: dict[str, Any], where: str, *, features: Sequence[str] | None = None,
          window: int | None = None, step: int | None = None, metrics: Sequence[str] | None = None) -> None:
    """Raise ``IncompatibleModel`` with one line if the saved model cannot be used here as asked."""
    if meta.get("format") != FORMAT:
        raise IncompatibleModel(f"{where}: model format {meta.get('format')!r}, this farmwatch reads {FORMAT}: retrain it")
    saved = str(meta.get("versions", {}).get("sklearn", "?"))
    if _major_minor(saved) != _major_minor(SKLEARN_VERSION):
        raise IncompatibleModel(
            f"{where}: trained with scikit-learn {saved}, but {SKLEARN_VERSION} is installed "
            f"(models only load with the same major.minor): retrain it with 'farmwatch train'")
    saved_np = str(meta.get("versions", {}).get("numpy", "?"))
    if saved_np.split(".")[0] != NUMPY_VERSION.split(".")[0]:
        raise IncompatibleModel(f"{where}: trained with numpy {saved_np}, but {NUMPY_VERSION} is installed: retrain it")
    wanted = {"features": None if features is None else list(features), "window": window, "step": step,
              "metrics": None if metrics is None else list(metrics)}
    for key, value in wanted.items():
        if value is not None and meta.get(key) != value:
            raise IncompatibleModel(f"{where}: model has {key} {meta.get(key)!r}, but {value!r} is configured: "
                                    f"retrain it with the current settings")


def load(path: str | Path, *, features: Sequence[str] | None = None, window: int | None = None,
         step: int | None = None, metrics: Sequence[str] | None = None) -> FamilyModel:
    """Load a saved model, refusing (``IncompatibleModel``) one that does not fit this installation
    or the given feature set / window / step / metrics."""
    model_path, meta_path = paths(path)
    meta = read_metadata(path)
    check(meta, str(model_path), features=features, window=window, step=step, metrics=metrics)
    if not model_path.exists():
        raise IncompatibleModel(f"{model_path}: model file not found (its sidecar {meta_path.name} exists)")
    if meta.get("sha256") != _sha256(model_path):
        raise IncompatibleModel(f"{model_path}: does not match its sidecar {meta_path.name} (checksum differs): "
                                f"copy both files together or retrain")
    import joblib
    import numpy as np

    from farmwatch.detect.models import FamilyModel
    from farmwatch.detect.scoring import Calibrator

    payload = joblib.load(model_path)
    cal = meta["calibration"]
    return FamilyModel(
        family=meta["family"], kind=meta["kind"], metrics=tuple(meta["metrics"]),
        features=tuple(meta["features"]), columns=tuple(payload["columns"]), window=int(meta["window"]),
        step=int(meta["step"]), estimator=payload["estimator"], center=np.asarray(payload["center"]),
        scale=np.asarray(payload["scale"]), calibrator=Calibrator.from_dict(cal["model"]),
        peer_calibrator=None if cal.get("peers") is None else Calibrator.from_dict(cal["peers"]),
        range_calibrator=None if cal.get("range") is None else Calibrator.from_dict(cal["range"]),
        joint_calibrator=None if cal.get("joint") is None else Calibrator.from_dict(cal["joint"]),
        t2_calibrator=None if cal.get("t2") is None else Calibrator.from_dict(cal["t2"]),
        spe_calibrator=None if cal.get("spe") is None else Calibrator.from_dict(cal["spe"]),
        total_calibrator=None if cal.get("total") is None else Calibrator.from_dict(cal["total"]),
        correlations=payload.get("correlations"),
        target_false_alarm=float(meta["target_false_alarm"]), trained=dict(meta.get("trained") or {}),
        ignored=payload.get("ignored"), peer_scale=payload.get("peer_scale"))


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


__all__ = ["FORMAT", "IncompatibleModel", "check", "load", "metadata", "paths", "read_metadata", "save",
           "versions"]
