"""Theory of posterior collapse in linear VAEs / CVAEs / HVAEs and neural-collapse diagnostics.

Calculators (closed forms restated in docs/theory.md) take data ``X``/``Y`` (N, d) or second moments
``Sxx``/``Syy``/``Sxy`` and return dataclasses with per-mode arrays ``omega``, ``lam``, ``sigma``,
``kl_per_dim``, ``collapsed``, ``status`` and the ``loss`` at the optimum.  PyTorch trainers that check
the theory against training live in :mod:`pca_attack.analysis.simulate` (imported lazily: it needs torch).
"""

from pca_attack.analysis.deep_linear import DeepLinearGeometry, deep_linear_mse_geometry, gram_deviation
from pca_attack.analysis.linear_cvae import LinearCVAEResult, linear_cvae, residual_covariance
from pca_attack.analysis.linear_hvae import LinearHVAEResult, linear_hvae
from pca_attack.analysis.linear_vae import LinearVAEResult, linear_vae, whitened_singular_values
from pca_attack.analysis.moments import (
    AnalysisInputError,
    InvalidParameterError,
    Moments,
    NotPSDError,
    NumericRangeError,
    ShapeMismatchError,
    SingularMomentError,
    moments_from_data,
    resolve_moments,
)
from pca_attack.analysis.neural_collapse import (
    NeuralCollapseResult,
    PerturbedCollapseResult,
    class_means,
    neural_collapse_metrics,
    noise_baselines,
    perturbed_collapse,
    simplex_etf,
)

__all__ = [
    "AnalysisInputError",
    "DeepLinearGeometry",
    "InvalidParameterError",
    "LinearCVAEResult",
    "LinearHVAEResult",
    "LinearVAEResult",
    "Moments",
    "NeuralCollapseResult",
    "NotPSDError",
    "NumericRangeError",
    "PerturbedCollapseResult",
    "ShapeMismatchError",
    "SingularMomentError",
    "class_means",
    "deep_linear_mse_geometry",
    "gram_deviation",
    "linear_cvae",
    "linear_hvae",
    "linear_vae",
    "moments_from_data",
    "neural_collapse_metrics",
    "noise_baselines",
    "perturbed_collapse",
    "residual_covariance",
    "resolve_moments",
    "simplex_etf",
    "whitened_singular_values",
]
