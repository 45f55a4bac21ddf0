"""The cross-metric part of a detector: how a row sits against the usual correlations of its columns.

Metrics of one entity move together (event rate, CPU and network of a node; a server's memory and
swap). A principal component analysis of normal rows finds the usual directions; a new row is then
two numbers: Hotelling's T² (how far it went *along* the usual directions, in units of their normal
spread) and the squared prediction error SPE (how far it is *off* them: a broken correlation, such
as events falling while CPU stays). Neither is visible to a detector that looks at one column at a
time, and on real server metrics they are what a plain PCA baseline wins with (docs/detection.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Correlations"]

VARIANCE = 0.95     # components kept: this share of the normal rows' variance
MAX_ROWS = 20_000   # rows used for the fit (a random subset of longer histories)


@dataclass(frozen=True)
class Correlations:
    """Principal subspace of standardised normal rows: ``mean``, ``components`` (k × d), ``variances`` (k)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray

    @classmethod
    def fit(cls, z: np.ndarray, variance: float = VARIANCE, random_state: int = 0) -> Correlations | None:
        """Fit on standardised rows ``z`` (n × d); None when there is nothing to correlate (d < 2 or n < 3)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] < 2 or z.shape[0] < 3:
            return None
        if len(z) > MAX_ROWS:
            z = z[np.random.default_rng(random_state).choice(len(z), MAX_ROWS, replace=False)]
        from sklearn.decomposition import PCA

        pca = PCA(n_components=variance, svd_solver="full").fit(z)
        keep = pca.explained_variance_ > 1e-12 * max(float(pca.explained_variance_.max()), 1e-300)
        return cls(pca.mean_, pca.components_[keep], pca.explained_variance_[keep])

    @property
    def has_residual(self) -> bool:
        """Whether any direction is left outside the subspace (otherwise SPE is always ~0)."""
        return self.components.shape[0] < self.components.shape[1]

    def parts(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², SPE) of each standardised row."""
        centred = np.asarray(z, dtype=np.float64) - self.mean
        scores = centred @ self.components.T
        residual = centred - scores @ self.components
        return np.sum(scores ** 2 / self.variances, axis=1), np.sum(residual ** 2, axis=1)

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(), "variances": self.variances.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> Correlations:
        return cls(np.asarray(d["mean"], float), np.asarray(d["components"], float).reshape(-1, len(d["mean"])),
                   np.asarray(d["variances"], float))
