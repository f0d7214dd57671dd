"""The multi-encoder (ensemble) attack: one perturbation against several VAEs of different channels/factors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.objective import EnsembleObjective
from pca_attack.attack.pgd import Protector
from pca_attack.errors import ConfigError, ModelNotFoundError
from pca_attack.models.encoder import Encoder, load_encoder
from pca_attack.models.ensemble import Ensemble, load_model, padding_multiple, split_specs

FAST = AttackConfig(steps=6, eps=16.0)


def make_vae(folder: Path, *, blocks: int, latent_channels: int, seed: int) -> Path:
    """A random AutoencoderKL of spatial factor 2**(blocks-1) with a few thousand parameters."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(
        block_out_channels=(8,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=4,
        layers_per_block=1,
        latent_channels=latent_channels,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny encoders: 4 channels at factor 4, and 8 channels at factor 8."""
    a = make_vae(tmp_path_factory.mktemp("f4c4"), blocks=3, latent_channels=4, seed=11)
    b = make_vae(tmp_path_factory.mktemp("f8c8"), blocks=4, latent_channels=8, seed=12)
    return str(a), str(b)


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 30, 37, generator=g)  # sizes that are multiples of neither factor
    return (x * 255).round() / 255


def _normalised(encoder: Encoder, x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    from pca_attack.attack.losses import pca_loss

    with torch.no_grad():
        mean, logvar = encoder.posterior(x)
        return pca_loss(mean, logvar, 1e-8) / clean


def _clean_losses(encoders: list[Encoder], x: torch.Tensor) -> list[torch.Tensor]:
    from pca_attack.attack.losses import pca_loss

    with torch.no_grad():
        return [pca_loss(*e.posterior(x), 1e-8) for e in encoders]


def test_ensemble_lowers_both_normalised_losses(pair: tuple[str, str], images: torch.Tensor) -> None:
    model = load_model(",".join(pair), device="cpu")
    assert isinstance(model, Ensemble)
    members = list(model.members)
    assert {m.downsample_factor for m in members} == {4, 8} and {m.latent_channels for m in members} == {4, 8}
    out = Protector(model, FAST).protect(images).images
    clean = _clean_losses(members, images)
    for member, c in zip(members, clean, strict=True):
        assert (_normalised(member, out, c) < 0.95).all(), member.name


def test_worst_moves_the_larger_normalised_loss(pair: tuple[str, str], images: torch.Tensor) -> None:
    """After a step budget, 'worst' leaves a smaller maximum normalised loss than 'mean' does."""
    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble)
    members = list(model.members)
    clean = _clean_losses(members, images)
    finals = {}
    for aggregation in ("mean", "worst"):
        config = FAST.with_(aggregation=aggregation, model_weights=(1.0, 50.0))  # mean leans on member 2
        result = Protector(model, config).protect(images)
        per_member = torch.stack([_normalised(m, result.images, c) for m, c in zip(members, clean, strict=True)])
        finals[aggregation] = per_member.max(dim=0).values  # (B,)
        if aggregation == "worst":
            assert torch.allclose(result.final_loss, finals["worst"], rtol=1e-4)
    assert (finals["worst"] < finals["mean"]).all()


def test_worst_gradient_is_a_soft_max_over_members(pair: tuple[str, str], images: torch.Tensor) -> None:
    """'worst' reports the largest normalised loss and steps along the gradient of T * logsumexp(L_m / T)."""
    from pca_attack.attack.losses import pca_loss
    from pca_attack.attack.objective import WORST_TEMPERATURE
    from pca_attack.models.encoder import pad_to_multiple

    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble) and WORST_TEMPERATURE > 0
    protector = Protector(model, FAST.with_(aggregation="worst"))
    assert isinstance(protector.tiled, EnsembleObjective)
    x = images.clone()
    protector.tiled.prepare(x, 1e-8)
    loss, grad = protector.loss_and_grad(x, 1e-8, torch.Generator().manual_seed(0), 1.0)
    leaf = x.clone().requires_grad_(True)
    padded = pad_to_multiple(leaf, 8)
    clean = _clean_losses(list(model.members), pad_to_multiple(x, 8))
    normed = torch.stack([pca_loss(*m.posterior(padded), 1e-8) / c for m, c in zip(model.members, clean, strict=True)])
    smooth = WORST_TEMPERATURE * torch.logsumexp(normed / WORST_TEMPERATURE, dim=0)  # (B,)
    (expected,) = torch.autograd.grad(smooth.sum(), leaf)
    assert torch.allclose(loss, normed.max(dim=0).values.detach(), rtol=1e-5)
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_smooth_worst_gains_on_the_weaker_member(
    pair: tuple[str, str], images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soft max leaves the member furthest from the goal lower than hard switching (temperature 0) does."""
    import pca_attack.attack.objective as objective

    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble)
    members = list(model.members)
    clean = _clean_losses(members, images)
    worst = {}
    for temperature in (0.0, objective.WORST_TEMPERATURE):
        monkeypatch.setattr(objective, "WORST_TEMPERATURE", temperature)
        out = Protector(model, FAST.with_(aggregation="worst", steps=12)).protect(images).images
        per_member = torch.stack([_normalised(m, out, c) for m, c in zip(members, clean, strict=True)])  # (2, B)
        worst[temperature] = per_member.max(dim=0).values  # (B,)
    hard, smooth = worst.values()
    assert (smooth < hard).all(), (hard, smooth)


def test_one_model_in_a_list_is_the_single_model_path(pair: tuple[str, str], images: torch.Tensor) -> None:
    encoder = load_encoder(pair[0], device="cpu")
    single = Protector(encoder, FAST).protect(images)
    listed = Protector([encoder], FAST).protect(images)
    assert torch.equal(single.images, listed.images)
    assert torch.equal(single.final_loss, listed.final_loss)
    assert load_model([pair[0]], device="cpu") is encoder


def test_padding_uses_the_least_common_multiple(pair: tuple[str, str], images: torch.Tensor) -> None:
    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble)
    assert padding_multiple(model.members) == 8 == model.downsample_factor
    seen: list[tuple[int, int]] = []
    def record(_module: object, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.members]
    try:
        Protector(model, FAST.with_(steps=1)).protect(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(shape == (32, 40) for shape in seen)  # 30x37 padded to multiples of lcm(4, 8) = 8

    class Fake:
        def __init__(self, factor: int) -> None:
            self.downsample_factor = factor

    assert padding_multiple([Fake(8), Fake(12)]) == 24  # type: ignore[list-item]


def test_gradient_accumulates_members_one_after_another(pair: tuple[str, str], images: torch.Tensor) -> None:
    """The ensemble gradient equals the gradient of the summed normalised losses computed in one graph."""
    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble)
    protector = Protector(model, FAST)
    assert isinstance(protector.tiled, EnsembleObjective)
    x = images.clone()
    protector.tiled.prepare(x, 1e-8)
    loss, grad = protector.loss_and_grad(x, 1e-8, torch.Generator().manual_seed(0), 1.0)
    from pca_attack.attack.losses import pca_loss
    from pca_attack.models.encoder import pad_to_multiple

    leaf = x.clone().requires_grad_(True)
    padded = pad_to_multiple(leaf, 8)
    clean = _clean_losses(list(model.members), pad_to_multiple(x, 8))
    total = sum(0.5 * pca_loss(*m.posterior(padded), 1e-8) / c for m, c in zip(model.members, clean, strict=True))
    (expected,) = torch.autograd.grad(total.sum(), leaf)  # type: ignore[union-attr]
    assert torch.allclose(loss, total.detach(), rtol=1e-5)  # type: ignore[union-attr]
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_unknown_member_is_named(pair: tuple[str, str]) -> None:
    with pytest.raises(ModelNotFoundError, match="'no-such-vae'.*member 2 of 2"):
        load_model(f"{pair[0]},no-such-vae", device="cpu")


def test_model_lists_and_weights_are_checked(pair: tuple[str, str], images: torch.Tensor) -> None:
    assert split_specs(["a,b", " c "]) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="listed twice"):
        split_specs("demo,demo")
    with pytest.raises(ConfigError, match="no model"):
        split_specs(" , ")
    with pytest.raises(ConfigError, match="aggregation"):
        AttackConfig(aggregation="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="positive"):
        AttackConfig(model_weights=(1.0, -1.0))
    model = load_model(list(pair), device="cpu")
    with pytest.raises(ConfigError, match="3 model weights for 2 models"):
        Protector(model, FAST.with_(model_weights=(1.0, 1.0, 1.0)))


# -- certificate and interfaces --------------------------------------------------------------------------
def _png(seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_certificate_has_one_entry_per_model(pair: tuple[str, str]) -> None:
    from pca_attack.pipeline import Engine

    engine = Engine.from_spec(list(pair), device="cpu")
    assert engine.ensemble is not None and set(engine.decoders) == {m.name for m in engine.ensemble.members}
    cert = engine.protect_bytes(_png(), FAST.with_(model_weights=(3.0, 1.0))).certificate
    assert cert.models is not None and list(cert.models) == [m.name for m in engine.ensemble.members]
    assert cert.model == engine.ensemble.name and cert.budget_ok
    for report in cert.models.values():
        assert report.loss_protected < report.loss_clean and report.latent_drift > 0
        assert report.roundtrip_psnr_clean_db is not None  # both tiny VAEs have a decoder
    assert cert.aggregate is not None and cert.aggregate.weights == pytest.approx(
        dict(zip(cert.models, (0.75, 0.25), strict=True))
    )
    assert 0 < cert.aggregate.normalised_loss_protected < 1
    single = Engine.from_spec(pair[0], device="cpu").protect_bytes(_png(), FAST).certificate
    assert single.models is None and single.aggregate is None


def test_cli_accepts_comma_and_repeated_models(pair: tuple[str, str], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from pca_cli import app

    (tmp_path / "in.png").write_bytes(_png())
    runner = CliRunner()
    for flags in (["--model", f"{pair[0]},{pair[1]}"], ["-m", pair[0], "-m", pair[1]]):
        out = tmp_path / f"out{len(flags)}"
        result = runner.invoke(app, ["protect", str(tmp_path / "in.png"), "-o", str(out), *flags, "--steps", "2",
                                     "--device", "cpu", "--aggregation", "worst"])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "in.png.json").read_text())
        assert len(report["models"]) == 2 and report["aggregate"]["aggregation"] == "worst"
    bad = runner.invoke(app, ["protect", str(tmp_path / "in.png"), "-o", str(tmp_path / "bad"),
                              "-m", f"{pair[0]},no-such-vae", "--device", "cpu"])
    assert bad.exit_code == 2 and "no-such-vae" in bad.output


def test_service_and_client_accept_model_lists(pair: tuple[str, str], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pca_client.protocol import ProtectSettings
    from service.app import create_app
    from service.settings import Settings

    client_settings = ProtectSettings(aggregation="worst", model_weights="2,1")  # type: ignore[call-arg]
    assert (client_settings.aggregation, client_settings.model_weights) == ("worst", "2,1")  # type: ignore[attr-defined]
    common = {"device": "cpu", "dtype": "fp32", "offline": True, "max_steps": 4}
    settings = Settings(model=list(pair), data_dir=tmp_path / "data", **common)  # type: ignore[arg-type]
    assert settings.model == ",".join(pair)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/protect", params={"response": "json"}, files={"file": ("a.png", _png(), "image/png")},
                             data={"steps": "2", "aggregation": "mean", "model_weights": "1,2"})
        assert answer.status_code == 200, answer.text
        certificate = answer.json()["certificate"]
        assert len(certificate["models"]) == 2 and certificate["aggregate"]["weights"]
        bad = client.post("/v1/protect", files={"file": ("a.png", _png(), "image/png")},
                          data={"steps": "2", "model_weights": "1,2,3"})
        assert bad.status_code in (400, 422) and "3 model weights for 2 models" in bad.text
    unknown = Settings(model=f"{pair[0]},no-such-vae", data_dir=tmp_path / "data2", **common)  # type: ignore[arg-type]
    with pytest.raises(ModelNotFoundError, match="no-such-vae"), TestClient(create_app(unknown)):
        pass


def test_models_route_cli_and_client_list_every_member(
    pair: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/models lists each member (channels, factor, posterior, decoder) and the ensemble's defaults;
    ``models list --model`` (loaded here) prints what ``models list --server`` (through the client) prints."""
    from functools import partial

    import httpx
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import pca_client.http
    from pca_cli import app
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model=list(pair), data_dir=tmp_path / "data", device="cpu", dtype="fp32", offline=True)
    with TestClient(create_app(settings)) as service:
        answer = service.get("/v1/models").json()
        transport = httpx.ASGITransport(app=service.app)  # type: ignore[arg-type]
        monkeypatch.setattr(pca_client.http, "PCAClient", partial(pca_client.http.PCAClient, transport=transport))
        via_client = CliRunner().invoke(app, ["models", "list", "--server", "http://test"])
    members = answer["members"]
    names = [m["name"] for m in members]
    assert len(members) == 2 and answer["model"] == members[0]
    assert [(m["latent_channels"], m["downsample_factor"]) for m in members] == [(4, 4), (8, 8)]
    assert all(m["posterior"] == "gaussian" and m["decoder_loaded"] for m in members)
    assert answer["ensemble"] == {"name": ",".join(names), "padding_multiple": 8, "aggregation": "mean",
                                  "aggregations": ["mean", "worst"], "weights": dict.fromkeys(names, 0.5)}
    local = CliRunner().invoke(app, ["models", "list", "-m", pair[0], "-m", pair[1], "--device", "cpu"])
    assert local.exit_code == 0 == via_client.exit_code, local.output + via_client.output
    assert "aggregation mean" in local.output and "f4" in local.output and "f8" in local.output
    assert local.output == via_client.output


def test_tiled_ensemble_recuts_the_grid_per_member(pair: tuple[str, str], images: torch.Tensor) -> None:
    """A tile grid planned for one factor is re-cut per member (core and halo rounded up to its factor)."""
    from pca_attack.attack.tiling import TileGrid

    model = load_model(list(pair), device="cpu")
    assert isinstance(model, Ensemble)
    grid = TileGrid(height=30, width=37, factor=4, core=12, halo=4)
    events: list[tuple[int, int]] = []
    result = Protector(model, FAST.with_(steps=2)).protect(
        images, tiles=grid, progress=lambda e: events.append((e.tile, e.tiles))
    )
    assert (result.final_loss < result.clean_loss).all()
    tiles_per_step = events[0][1]
    assert tiles_per_step > 2 and {t for t, _ in events} == set(range(1, tiles_per_step + 1))


def test_real_tiny_autoencoders_as_an_ensemble(images: torch.Tensor) -> None:
    """TAEF2 (f8) and TAESana (f32), both deterministic: one perturbation lowers both normalised losses."""
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "models"
    specs = [shared / "taef2" / "taef2_encoder.pth", shared / "taesana" / "taesana_encoder.pth"]
    if not all(spec.is_file() for spec in specs):
        pytest.skip("the real tiny autoencoders (../shared/models/taef2, taesana) are not in this checkout")
    model = load_model([str(s) for s in specs], device="cpu", dtype="fp32")
    assert isinstance(model, Ensemble) and model.downsample_factor == 32
    result = Protector(model, FAST.with_(steps=3)).protect(images)
    assert (result.final_loss < result.clean_loss).all()  # normalised aggregate: clean is 1 per image
    assert torch.allclose(result.clean_loss, torch.ones(2), rtol=1e-4)
