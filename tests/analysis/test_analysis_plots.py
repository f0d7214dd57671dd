"""Sweeps and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pca_attack.analysis import linear_vae
from pca_attack.analysis.plots import (
    correlation_sweep,
    plot_active_vs_beta,
    plot_active_vs_correlation,
    plot_singular_values,
    sweep_beta,
)


def test_correlation_sweep_library() -> None:
    sweep = correlation_sweep()  # exact moments: rho = independent, 1/8, 1/4, 1/2, 1
    assert sweep["rho"] == [0.0, 1 / 8, 1 / 4, 1 / 2, 1.0]
    assert sweep["n_active"] == [4, 3, 2, 1, 0]  # strictly falling as rho grows
    sampled = correlation_sweep([None, 0.5, 1.0], sampled=True, n=5000)
    assert sampled["n_active"][0] > sampled["n_active"][1] > sampled["n_active"][2] == 0


def test_plots_are_pngs(tmp_path: Path) -> None:
    A = np.diag([4.0, 2.0, 0.5])
    sweep = sweep_beta(linear_vae, [0.1, 0.6, 1.0, 3.0, 5.0], Sxx=A)
    assert sweep["n_active"] == [3, 2, 2, 1, 0]
    res = linear_vae(Sxx=A)
    theory = {"omega": res.omega, "lam": res.lam, "sigma": res.sigma}
    paths = [
        plot_active_vs_beta({"vae": sweep}, tmp_path / "a.png"),
        plot_active_vs_correlation(correlation_sweep(), tmp_path / "b.png"),
        plot_singular_values(theory, theory, tmp_path / "sub" / "c.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG"
