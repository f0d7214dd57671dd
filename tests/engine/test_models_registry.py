"""Registry entries of today's editors' families, ``pca-protect models list``, and fail-fast hub errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pca_attack import ModelNotFoundError
from pca_attack.models.registry import REGISTRY
from pca_attack.models.weights import load_config_and_tensors, resolve_source
from pca_cli import app


def test_registry_states_factor_posterior_and_that_no_hub_weights_ran_here() -> None:
    assert REGISTRY["sana"].spatial_factor == 32 and REGISTRY["sana"].posterior == "deterministic"
    assert REGISTRY["qwen-image"].latent_channels == 16 and REGISTRY["qwen-image"].posterior == "gaussian"
    assert all(REGISTRY[n].posterior == "deterministic" for n in ("taesd", "taesdxl", "taesd3", "taef1"))
    assert not any(e.ran_here for e in REGISTRY.values() if e.repo_id is not None)


def test_models_list_shows_channels_factor_posterior_and_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # an ordinary terminal: nothing the table must show is cut
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "latent", "posterior", "run", "here", "cached"]
    rows = [line for line in lines if line.split(" ")[0] in REGISTRY]
    assert len(rows) == len(REGISTRY) and all(len(row) <= 80 for row in rows)  # the rows fit; only prose wraps
    at = next(i for i, line in enumerate(lines) if line.startswith("sana "))
    assert lines[at].split() == ["sana", "32ch", "f32", "deterministic", "no", "no"]
    assert lines[at + 2].split() == ["weights:", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers"]


def test_missing_hub_model_fails_after_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[str] = []

    def unreachable(url: str, **_: object) -> None:
        calls.append(url)
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    with pytest.raises(ModelNotFoundError, match="--offline") as info:
        load_config_and_tensors(resolve_source("owner-that-does-not-exist/no-such-vae"), ("encoder.",), offline=False)
    assert len(calls) == 1  # one request, no retries, no second folder tried
    assert "One attempt" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
        load_config_and_tensors(resolve_source("owner-that-does-not-exist/no-such-vae"), ("encoder.",), offline=True)
    assert len(calls) == 1  # offline: no request at all
