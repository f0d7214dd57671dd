"""`theory` CLI: every subcommand on small files, JSON output equal to the library, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pca_attack.analysis import deep_linear_mse_geometry, linear_cvae, linear_hvae, linear_vae
from pca_cli.theory import theory_app

runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) * [2.0, 1.0, 0.4]
    Y = 0.5 * X[:, :2] + rng.normal(size=(300, 2))
    np.savez(tmp_path / "xy.npz", X=X, Y=Y)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "m.json").write_text(json.dumps({"Sxx": np.diag([3.0, 1.0, 0.2]).tolist()}))
    labels = np.repeat(np.arange(3), 5)
    np.savez(tmp_path / "nc.npz", H=np.eye(3)[labels] + 0.01 * rng.normal(size=(15, 3)), labels=labels, W=np.eye(3))
    return {"xy": tmp_path / "xy.npz", "x": tmp_path / "x.npy", "m": tmp_path / "m.json", "nc": tmp_path / "nc.npz"}


def _invoke(*args: str) -> str:
    result = runner.invoke(theory_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_linear_vae_json(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vae.json"
    text = _invoke("linear-vae", data["x"], "--beta", "0.5", "-o", out)
    assert "Linear VAE" in text and "loss at the optimum" in text
    want = linear_vae(np.load(data["x"]), beta=0.5).to_dict()
    assert json.loads(out.read_text())["omega"] == pytest.approx(want["omega"])


def test_linear_cvae_and_hvae(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cvae.json"
    _invoke("linear-cvae", data["xy"], "--beta", "0.7", "--center", "-o", out)
    z = np.load(data["xy"])
    assert json.loads(out.read_text())["kappa"] == pytest.approx(
        linear_cvae(z["X"], z["Y"], beta=0.7, center=True).kappa.tolist()
    )
    out = tmp_path / "hvae.json"
    text = _invoke("linear-hvae", data["m"], "--beta2", "0.5", "--sigma1", "0.8", "-o", out)
    assert "case I" in text
    want = linear_hvae(Sxx=np.diag([3.0, 1.0, 0.2]), beta2=0.5, sigma1=0.8)
    assert json.loads(out.read_text())["lam"] == pytest.approx(want.lam.tolist())


def test_neural_collapse_and_deep_linear(data: dict[str, Path], tmp_path: Path) -> None:
    assert "nc1" in _invoke("neural-collapse", data["nc"])
    out = tmp_path / "geo.json"
    _invoke("deep-linear", "--n-k", "50,350", "--depth", "3", "--lambda-w", "0.015", "--lambda-h", "0.015", "-o", out)
    got = json.loads(out.read_text())
    assert got["collapsed"] == [True, False]
    assert got["loss"] == pytest.approx(
        deep_linear_mse_geometry([50, 350], depth=3, lambda_W=0.015, lambda_H=0.015).loss
    )


def test_sweeps_write_plots(data: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "beta.png"
    out = tmp_path / "beta.json"
    _invoke("sweep-beta", data["x"], "--betas", "0.1,1,10", "--plot", png, "-o", out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = json.loads(out.read_text())["n_active"]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    png = tmp_path / "rho.png"
    text = _invoke("sweep-correlation", "--plot", png)
    assert "independent" in text
    assert png.stat().st_size > 1000


def test_check_population_with_plot(data: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "check.png"
    out = tmp_path / "check.json"
    text = _invoke("check", data["xy"], "--model", "cvae", "--beta", "0.5", "--restarts", "2", "--plot", png, "-o", out)
    assert "theory vs trained" in text
    diffs = json.loads(out.read_text())["max_abs_diff"]
    assert max(diffs.values()) < 1e-4
    assert png.exists()


def test_errors_are_clean(data: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Sxx": [[1.0, 0.0], [0.0, -2.0]]}))
    result = runner.invoke(theory_app, ["linear-vae", str(bad)])
    assert result.exit_code == 2 and "not positive semi-definite" in result.output
    result = runner.invoke(theory_app, ["linear-vae", str(data["x"]), "--beta", "0"])
    assert result.exit_code == 2 and "beta must be" in result.output
    result = runner.invoke(theory_app, ["neural-collapse", str(data["x"])])
    assert result.exit_code == 2 and "'H'" in result.output
