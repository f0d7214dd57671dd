"""Regenerate the plots in docs/theory.md and print their numbers as JSON.

    python benchmarks/theory_plots.py [--out docs/img]

Writes theory_singular_values.png (closed form vs a minibatch-trained linear VAE),
theory_active_vs_beta.png (active modes vs beta, VAE and CVAE) and theory_cvae_correlation.png
(active CVAE modes vs the x-y correlation).  Deterministic (fixed seeds); about a minute on CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pca_attack.analysis import linear_cvae, linear_vae
from pca_attack.analysis.plots import (
    correlated_pair,
    correlation_sweep,
    plot_active_vs_beta,
    plot_active_vs_correlation,
    plot_singular_values,
    sweep_beta,
)
from pca_attack.analysis.simulate import theory_vs_trained


def gaussian(n: int, variances: list[float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(len(variances), len(variances))))
    return np.asarray(rng.normal(size=(n, len(variances))) * np.sqrt(variances) @ Q.T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--steps", type=int, default=6000, help="Adam steps of the minibatch run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    X = gaussian(20_000, [4.0, 2.5, 1.6, 0.4])
    cmp = theory_vs_trained(
        "vae", X, method="minibatch", beta=1.0, steps=args.steps, batch_size=1024, lr=1e-2, lr_final=3e-4
    )
    plot_singular_values(
        cmp.theory,
        cmp.trained,
        args.out / "theory_singular_values.png",
        title=f"Linear VAE, beta=1: closed form (o) vs minibatch Adam (x, {args.steps} steps)",
    )

    betas = list(np.geomspace(0.05, 10, 40))
    Xc, Yc = correlated_pair(0.5, n=20_000)
    sweeps = {
        "VAE (4-d Gaussian)": sweep_beta(linear_vae, betas, X=X),
        "CVAE (rho = 1/2)": sweep_beta(linear_cvae, betas, X=Xc, Y=Yc),
    }
    plot_active_vs_beta(sweeps, args.out / "theory_active_vs_beta.png")

    corr = correlation_sweep(beta=1.0)
    plot_active_vs_correlation(corr, args.out / "theory_cvae_correlation.png")

    print(
        json.dumps(
            {
                "minibatch_vs_theory": {
                    "max_abs_diff": cmp.max_abs_diff,
                    "theory_loss": cmp.theory_loss,
                    "trained_loss": cmp.trained_loss,
                },
                "active_vs_beta": {
                    k: {"beta": [round(b, 4) for b in v["beta"]], "n_active": v["n_active"]} for k, v in sweeps.items()
                },
                "cvae_correlation": {"rho": corr["rho"], "n_active": corr["n_active"]},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
