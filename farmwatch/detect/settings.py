"""``[detect]``: the anomaly-model families of a config (what ``farmwatch train`` trains and
``run``/``watch`` score).

A family is declared in the config::

    [detect]
    models = "models"                     # folder for <family>.joblib + .json, relative to the config
    [detect.families.worker]
    series = ["hlt.output.processed_events:rate", "hlt.worker.cpu"]   # one metric per series name (globs allowed)
    match = ["unit=~hlt0[1-4]"]           # label matchers, as in rules and `farmwatch query`
    entity = ["unit", "host"]             # the labels that identify one entity
    window = 60                           # points of the grid per window
    step = 5
    freq = "10s"                          # entities are resampled onto this grid (peers need one clock)

Validating these must stay cheap (every command reads the config): the default feature set is
defined here, so that only a family naming its own features imports the feature catalogue
(numpy), and the model kind is checked against ``BUILTIN_KINDS`` before the model registry
(which imports pandas) is consulted for kinds added with ``register_model``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from farmwatch.config.base import Section

BUILTIN_KINDS = ("isolation_forest", "lof", "ocsvm", "elliptic_envelope")
"""The kinds ``farmwatch.detect.models`` registers itself (a test keeps the two equal)."""

# Chosen by measurement (benchmarks/bench_features.py, docs/features.md): cheap on 20,000 windows,
# sensitive to at least one kind of fault, rarely NaN on non-constant windows, and not redundant
# (|Spearman rho| <= 0.9) with a feature earlier in this list.
DEFAULT_FEATURES: tuple[str, ...] = (
    "value__mean",
    "value__standard_deviation",
    "value__minimum",
    "value__maximum",
    "value__median",
    'value__linear_trend__attr_"slope"',
    'value__linear_trend__attr_"stderr"',
    "value__mean_abs_change",
    "value__mean_change",
    "value__mean_second_derivative_central",
    "value__autocorrelation__lag_1",
    "value__autocorrelation__lag_5",
    "value__skewness",
    "value__kurtosis",
    "value__quantile__q_0.1",
    "value__quantile__q_0.9",
    "value__count_above_mean",
    "value__longest_strike_above_mean",
    "value__longest_strike_below_mean",
    "value__first_location_of_maximum",
    "value__last_location_of_maximum",
    "value__first_location_of_minimum",
    "value__ratio_beyond_r_sigma__r_1",
    "value__ratio_beyond_r_sigma__r_2",
    "value__ratio_beyond_r_sigma__r_3",
    "value__percentage_of_reoccurring_values_to_all_values",
    'value__change_quantiles__f_agg_"var"__isabs_False__qh_0.8__ql_0.2',
    "value__number_peaks__n_3",
    'value__fft_coefficient__attr_"abs"__coeff_1',
    'value__fft_coefficient__attr_"abs"__coeff_2',
)


class FamilySettings(Section):
    series: list[str] = Field(min_length=1)
    """Series names (globs) whose values are the metrics of each entity, e.g. `hlt.output.sent_events:rate`."""
    match: list[str] = Field(default_factory=list)
    """Label matchers restricting the series (`app=distributor`, `host!=`)."""
    entity: list[str] = Field(min_length=1)
    """Labels that name an entity (e.g. `["unit", "host"]`: one worker node); peers share the other labels."""
    window: int = Field(default=60, ge=3)
    """Points per feature window (at `freq`)."""
    step: int = Field(default=1, ge=1)
    """Points between training windows."""
    freq: str = "10s"
    """The grid the series are resampled to (pandas offset)."""
    kind: str = "isolation_forest"
    """Model kind: `isolation_forest`, `lof`, `ocsvm`, `elliptic_envelope` (or one registered with `register_model`)."""
    features: list[str] = Field(default_factory=lambda: list(DEFAULT_FEATURES))
    """tsfresh feature names computed per metric window; default `farmwatch.detect.features.DEFAULT_FEATURES` (docs/features.md)."""
    target_false_alarm: float = Field(default=0.01, gt=0, lt=1)
    """False-alarm rate on normal history that sets the alert threshold (score >= 1 - rate)."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind in BUILTIN_KINDS:
            return kind
        from farmwatch.detect.models import MODELS  # a kind added with register_model (a notebook, a plugin)

        if kind not in MODELS:
            raise ValueError(f"{kind!r} is not a model kind (known: {', '.join(sorted(MODELS))})")
        return kind

    @field_validator("features")
    @classmethod
    def _supported(cls, features: list[str]) -> list[str]:
        from farmwatch.detect.features import supported

        unknown = sorted(set(features) - set(supported()))
        if unknown:
            raise ValueError(f"unsupported features: {', '.join(unknown)} (see farmwatch.detect.features.supported())")
        return features


class DetectSettings(Section):
    models: Path = Path("models")
    """Folder of the trained models (relative to the config file)."""
    families: dict[str, FamilySettings] = Field(default_factory=dict)
    """The model families by name."""


__all__ = ["BUILTIN_KINDS", "DEFAULT_FEATURES", "DetectSettings", "FamilySettings"]
