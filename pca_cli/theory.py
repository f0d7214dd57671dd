"""`pca-protect theory ...`: the collapse-theory calculators from the command line.

Inputs are ``.npz`` (arrays ``X``/``Y`` or ``Sxx``/``Syy``/``Sxy``; ``H``/``labels``/``W``/``b`` for
neural collapse), ``.npy`` (just ``X``) or ``.json`` (the same keys, nested lists).  Each command
prints a table, and can write the full result as JSON (``--json-out``) and a PNG (``--plot``).
Heavy imports (torch, matplotlib) happen inside the commands that need them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from pca_cli.messages import say

theory_app = typer.Typer(
    name="theory",
    help="Posterior-collapse theory (linear VAE/CVAE/HVAE) and neural-collapse metrics.",
    no_args_is_help=True,
)
app = theory_app
console = Console()

InputArg = Annotated[Path, typer.Argument(help=".npz / .npy / .json with X[,Y] or Sxx[,Syy,Sxy].", exists=True)]
JsonOut = Annotated[  # -o/--output: where a command writes its results (here one JSON file)
    Path | None, typer.Option("--output", "-o", "--json-out", help="Write the full result as JSON to this file.")
]
Beta = Annotated[float, typer.Option("--beta", "-b", help="KL weight beta (> 0).")]
EtaEnc = Annotated[float, typer.Option("--eta-enc", help="Prior standard deviation eta_enc.")]
EtaDec = Annotated[float, typer.Option("--eta-dec", help="Decoder standard deviation eta_dec.")]
LatentDim = Annotated[int | None, typer.Option("--latent-dim", "-k", help="Number of latent slots.")]
Center = Annotated[bool, typer.Option("--center/--no-center", help="Subtract means (models with biases).")]
PlotOut = Annotated[Path | None, typer.Option("--plot", "-p", help="Write a PNG plot here.")]

_KEYS = ("X", "Y", "Sxx", "Syy", "Sxy", "H", "labels", "W", "b")


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """Arrays from ``.npz`` / ``.npy`` (taken as ``X``) / ``.json``; unknown keys are ignored."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"X": np.load(path, allow_pickle=False)}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in _KEYS if k in z.files}
    if suffix == ".json":
        raw = json.loads(path.read_text())
        return {k: np.asarray(raw[k]) for k in _KEYS if k in raw and raw[k] is not None}
    raise typer.BadParameter(f"{path}: expected a .npz, .npy or .json file.")


def _moment_inputs(arrays: dict[str, np.ndarray], *, with_y: bool = True) -> dict[str, Any]:
    keys = ("X", "Y", "Sxx", "Syy", "Sxy") if with_y else ("X", "Sxx")
    return {k: arrays[k] for k in keys if k in arrays}


def _fail(exc: ValueError) -> typer.Exit:
    say(console, str(exc), label="error:")
    return typer.Exit(code=2)


def _calculate(name: str, inputs: Path, *, with_y: bool = True, **kwargs: Any) -> Any:
    """Run ``pca_attack.analysis.<name>`` on the moments in ``inputs``; bad input exits 2 with the message."""
    import pca_attack.analysis as analysis

    try:
        return getattr(analysis, name)(**_moment_inputs(load_inputs(inputs), with_y=with_y), **kwargs)
    except ValueError as exc:
        raise _fail(exc) from exc


def _write_json(result: Any, path: Path | None) -> None:
    if path is None:
        return
    data = result.to_dict() if hasattr(result, "to_dict") else result
    path.write_text(json.dumps(data, indent=2))
    say(console, f"wrote {path}")


def _mode_table(title: str, result: Any, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    table.add_column("mode", justify="right")
    for col in columns:
        table.add_column(col, justify="right")
    table.add_column("status")
    for i, status in enumerate(result.status):
        table.add_row(str(i + 1), *(f"{float(getattr(result, c)[i]):.6g}" for c in columns), status)
    return table


def _report(title: str, result: Any, columns: tuple[str, ...], json_out: Path | None) -> None:
    console.print(_mode_table(title, result, columns))
    console.print(f"loss at the optimum: {result.loss:.8g}")
    _write_json(result, json_out)


@theory_app.command("linear-vae")
def linear_vae_cmd(
    inputs: InputArg,
    beta: Beta = 1.0,
    eta_enc: EtaEnc = 1.0,
    eta_dec: EtaDec = 1.0,
    latent_dim: LatentDim = None,
    sigma: Annotated[float | None, typer.Option(help="Fix the encoder std to this value (default: learn).")] = None,
    center: Center = False,
    json_out: JsonOut = None,
) -> None:
    """Optimal linear (beta-)VAE: which modes collapse (y = x unless Y/Syy/Sxy are given)."""
    scales: dict[str, Any] = {"beta": beta, "eta_enc": eta_enc, "eta_dec": eta_dec}
    res = _calculate("linear_vae", inputs, latent_dim=latent_dim, sigma=sigma, center=center, **scales)
    _report("Linear VAE", res, ("zeta", "omega", "lam", "sigma", "kl_per_dim"), json_out)


@theory_app.command("linear-cvae")
def linear_cvae_cmd(
    inputs: InputArg,
    latent_dim: LatentDim = None,
    beta: Beta = 1.0,
    eta_enc: EtaEnc = 1.0,
    eta_dec: EtaDec = 1.0,
    center: Center = False,
    json_out: JsonOut = None,
) -> None:
    """Optimal linear conditional VAE: collapse from the residual covariance of y given x."""
    scales: dict[str, Any] = {"beta": beta, "eta_enc": eta_enc, "eta_dec": eta_dec}
    res = _calculate("linear_cvae", inputs, latent_dim=latent_dim, center=center, **scales)
    _report("Linear CVAE", res, ("kappa", "omega", "lam", "sigma", "kl_per_dim"), json_out)


@theory_app.command("linear-hvae")
def linear_hvae_cmd(
    inputs: InputArg,
    beta1: Annotated[float, typer.Option(help="Weight of the z1 KL.")] = 1.0,
    beta2: Annotated[float, typer.Option(help="Weight of the z2 KL.")] = 1.0,
    sigma1: Annotated[float, typer.Option(help="Fixed std of q(z1|x).")] = 1.0,
    sigma2: Annotated[float | None, typer.Option(help="Fix the std of q(z2|z1) (default: learn).")] = None,
    eta_enc: EtaEnc = 1.0,
    eta_dec: EtaDec = 1.0,
    latent_dim: LatentDim = None,
    center: Center = False,
    json_out: JsonOut = None,
) -> None:
    """Optimal two-level linear HVAE: z1 mean collapse and z2 collapse per mode."""
    scales = {
        "beta1": beta1,
        "beta2": beta2,
        "sigma1": sigma1,
        "sigma2": sigma2,
        "eta_enc": eta_enc,
        "eta_dec": eta_dec,
    }
    res = _calculate("linear_hvae", inputs, with_y=False, latent_dim=latent_dim, center=center, **scales)
    _report(f"Linear HVAE (case {res.case})", res, ("theta", "lam", "omega", "sigma", "kl_per_dim"), json_out)
    console.print(
        f"z2 collapsed: {res.z2_collapsed.tolist()}  posterior = prior: {res.posterior_equals_prior.tolist()}"
    )


@theory_app.command("neural-collapse")
def neural_collapse_cmd(
    inputs: Annotated[
        Path, typer.Argument(help=".npz / .json with H (N, d), labels (N,), optional W (C, d), b.", exists=True)
    ],
    global_mean: Annotated[str, typer.Option(help="'sample' or 'class' (mean of class means).")] = "sample",
    json_out: JsonOut = None,
) -> None:
    """NC1-NC4 metrics of features, labels and (optionally) a classifier."""
    from pca_attack.analysis import neural_collapse_metrics

    arrays = load_inputs(inputs)
    if "H" not in arrays or "labels" not in arrays:
        raise _fail(ValueError(f"{inputs} must contain arrays 'H' (N, d) and 'labels' (N,)."))
    try:
        res = neural_collapse_metrics(
            arrays["H"], arrays["labels"], arrays.get("W"), arrays.get("b"), global_mean=global_mean
        )
    except ValueError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"Neural collapse ({res.n_classes} classes)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in res.to_dict().items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.6g}")
    console.print(table)
    _write_json(res, json_out)


@theory_app.command("deep-linear")
def deep_linear_cmd(
    n_k: Annotated[str, typer.Option("--n-k", help="Class sizes, comma separated, e.g. 50,350.")],
    depth: Annotated[int, typer.Option(help="Number of linear layers M.")] = 1,
    lambda_w: Annotated[float, typer.Option("--lambda-w", help="Weight decay of every layer.")] = 5e-3,
    lambda_h: Annotated[float, typer.Option("--lambda-h", help="Feature decay lambda_H.")] = 5e-3,
    json_out: JsonOut = None,
) -> None:
    """Imbalanced MSE deep linear geometry: per-class norms and minority collapse."""
    from pca_attack.analysis import deep_linear_mse_geometry

    try:
        sizes = [float(s) for s in n_k.split(",") if s.strip()]
        res = deep_linear_mse_geometry(sizes, depth=depth, lambda_W=lambda_w, lambda_H=lambda_h)
    except ValueError as exc:
        raise _fail(exc) from exc
    _report(
        f"Deep linear UFM (depth {depth})", res, ("n_k", "x", "f_at_zero", "f_at_root", "w_norm2", "h_norm2"), json_out
    )


@theory_app.command("sweep-beta")
def sweep_beta_cmd(
    inputs: InputArg,
    model: Annotated[str, typer.Option(help="'vae' or 'cvae'.")] = "vae",
    betas: Annotated[str, typer.Option(help="Comma-separated beta values.")] = "0.05,0.1,0.2,0.5,1,2,5,10",
    center: Center = False,
    plot: PlotOut = None,
    json_out: JsonOut = None,
) -> None:
    """Number of active modes as beta varies."""
    from pca_attack.analysis import linear_cvae, linear_vae
    from pca_attack.analysis.plots import plot_active_vs_beta, sweep_beta

    calculators: dict[str, Callable[..., Any]] = {"vae": linear_vae, "cvae": linear_cvae}
    calc = calculators.get(model)
    if calc is None:
        raise _fail(ValueError(f"--model must be 'vae' or 'cvae', got {model!r}."))
    try:
        values = [float(b) for b in betas.split(",") if b.strip()]
        sweep = sweep_beta(calc, values, center=center, **_moment_inputs(load_inputs(inputs)))
    except ValueError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"Active modes vs beta ({model})")
    table.add_column("beta", justify="right")
    table.add_column("active modes", justify="right")
    for b, n in zip(sweep["beta"], sweep["n_active"], strict=True):
        table.add_row(f"{b:g}", f"{int(n)}")
    console.print(table)
    if plot is not None:
        say(console, f"wrote {plot_active_vs_beta({model: sweep}, plot)}")
    _write_json(sweep, json_out)


@theory_app.command("sweep-correlation")
def sweep_correlation_cmd(
    beta: Beta = 1.0,
    sampled: Annotated[bool, typer.Option(help="Draw samples instead of using exact moments.")] = False,
    n: Annotated[int, typer.Option(help="Synthetic samples per rho (with --sampled).")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plot: PlotOut = None,
    json_out: JsonOut = None,
) -> None:
    """Linear CVAE on synthetic x = rho y + sqrt(1-rho^2) xi: active modes fall as rho grows."""
    from pca_attack.analysis.plots import correlation_sweep, plot_active_vs_correlation

    sweep = correlation_sweep(beta=beta, sampled=sampled, n=n, seed=seed)
    table = Table(title=f"CVAE active modes vs correlation (beta={beta:g})")
    table.add_column("rho", justify="right")
    table.add_column("active modes", justify="right")
    for rho, act in zip(sweep["rho"], sweep["n_active"], strict=True):
        table.add_row("independent" if rho == 0 else f"{rho:g}", str(act))
    console.print(table)
    if plot is not None:
        say(console, f"wrote {plot_active_vs_correlation(sweep, plot)}")
    _write_json(sweep, json_out)


def _comparison_table(cmp: Any, title: str) -> Table:
    """Per mode: each quantity's theory and trained value side by side."""
    table = Table(title=title)
    table.add_column("mode", justify="right")
    for key in cmp.trained:
        table.add_column(f"{key} theory", justify="right")
        table.add_column(f"{key} trained", justify="right")
    for i in range(len(cmp.trained["omega"])):
        cells = [f"{v[i]:.5g}" for key in cmp.trained for v in (cmp.theory[key], cmp.trained[key])]
        table.add_row(str(i + 1), *cells)
    return table


@theory_app.command("check")
def check_cmd(
    inputs: InputArg,
    model: Annotated[str, typer.Option(help="'vae', 'cvae' or 'hvae'.")] = "vae",
    method: Annotated[
        str, typer.Option(help="'population' (exact loss, L-BFGS) or 'minibatch' (Adam).")
    ] = "population",
    beta: Beta = 1.0,
    eta_enc: EtaEnc = 1.0,
    eta_dec: EtaDec = 1.0,
    beta1: Annotated[float, typer.Option(help="HVAE: weight of the z1 KL.")] = 1.0,
    beta2: Annotated[float, typer.Option(help="HVAE: weight of the z2 KL.")] = 1.0,
    sigma1: Annotated[float, typer.Option(help="HVAE: fixed std of q(z1|x).")] = 1.0,
    latent_dim: LatentDim = None,
    steps: Annotated[int, typer.Option(help="Minibatch: Adam steps.")] = 30_000,
    batch_size: Annotated[int, typer.Option(help="Minibatch: batch size.")] = 128,
    restarts: Annotated[int, typer.Option(help="Population: random restarts.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plot: PlotOut = None,
    json_out: JsonOut = None,
) -> None:
    """Train the same linear model with PyTorch and print theory vs trained side by side."""
    from pca_attack.analysis.plots import plot_singular_values
    from pca_attack.analysis.simulate import Kind, theory_vs_trained

    params: dict[str, Any] = {"eta_enc": eta_enc, "eta_dec": eta_dec}
    params |= {"beta1": beta1, "beta2": beta2, "sigma1": sigma1} if model == "hvae" else {"beta": beta}
    try:
        if model not in ("vae", "cvae", "hvae") or method not in ("population", "minibatch"):
            raise ValueError(f"--model must be vae/cvae/hvae and --method population/minibatch, got {model}/{method}.")
        cmp = theory_vs_trained(
            cast(Kind, model),
            **_moment_inputs(load_inputs(inputs), with_y=model != "hvae"),
            method=cast(Literal["population", "minibatch"], method),
            latent_dim=latent_dim,
            restarts=restarts,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            **params,
        )
    except ValueError as exc:
        raise _fail(exc) from exc
    console.print(_comparison_table(cmp, f"{model.upper()}: theory vs trained ({method})"))
    console.print(f"loss: theory {cmp.theory_loss:.8g}  trained {cmp.trained_loss:.8g}")
    console.print("max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in cmp.max_abs_diff.items()))
    if plot is not None:
        console.print(
            f"wrote {plot_singular_values(cmp.theory, cmp.trained, plot, title=f'{model.upper()} ({method})')}"
        )
    _write_json(cmp, json_out)
