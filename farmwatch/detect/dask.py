"""Feature extraction on a Dask cluster, for training on long histories (``farmwatch train
--dask-scheduler ADDRESS``), through tsfresh's own distributor.

The windows go to ``tsfresh.extract_features`` with ``ClusterDaskDistributor``; the values equal
``features.compute``'s (the parity tests hold the two together), so a model trained this way scores
exactly like one trained locally. Needs the ``distributed`` package (``pip install 'farmwatch[dask]'``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from farmwatch.detect.features import to_tsfresh_settings


def dask_compute(address: str) -> Callable[[np.ndarray, Sequence[str]], np.ndarray]:
    """A ``compute(windows, features)`` that extracts on the Dask scheduler at ``address``."""
    try:
        from tsfresh.utilities.distribution import ClusterDaskDistributor
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(f"--dask-scheduler needs the 'distributed' package: pip install 'farmwatch[dask]' ({exc})") from None

    def compute(windows: np.ndarray, features: Sequence[str]) -> np.ndarray:
        from tsfresh import extract_features

        n, length = windows.shape
        if n == 0:
            return np.empty((0, len(features)))
        long = pd.DataFrame({"id": np.repeat(np.arange(n), length), "time": np.tile(np.arange(length), n),
                             "value": windows.ravel()})
        found = extract_features(long, column_id="id", column_sort="time",
                                 default_fc_parameters=to_tsfresh_settings(features),
                                 distributor=ClusterDaskDistributor(address), disable_progressbar=True)
        return np.array(found.reindex(index=range(n))[list(features)].to_numpy(dtype=np.float64))  # a writable copy

    return compute


__all__ = ["dask_compute"]
