"""The ``jpeg-75-cubic`` EoT preset rounds its quantised DCT coefficients with the smooth cubic approximation
(round(x) + (x - round(x))^3), which kept more damage after a real JPEG q75 on TAEF2 than straight-through
rounding (``jpeg-75``); the approximation still tracks the real codec and gives a gradient of its own."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from pca_attack.attack.eot import RandomJPEG, build_eot, diff_jpeg, diff_round


def _photo() -> tuple[np.ndarray, torch.Tensor]:
    from skimage import data

    img = data.chelsea()[:64, :96]
    return img, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255  # (1, 3, 64, 96)


def test_jpeg75_cubic_preset_differs_from_jpeg75_only_in_rounding() -> None:
    cubic, ste = build_eot("jpeg-75-cubic"), build_eot("jpeg-75")
    assert isinstance(cubic, RandomJPEG) and isinstance(ste, RandomJPEG)
    assert (cubic.low, cubic.high, cubic.rounding) == (70, 80, "cubic")
    assert (ste.low, ste.high, ste.rounding) == (70, 80, "ste")


def test_cubic_rounding_is_exact_on_integers_and_smooth_between() -> None:
    x = torch.tensor([-2.0, 0.0, 3.0, 0.25, 1.4], requires_grad=True)
    y = diff_round(x, "cubic")
    assert torch.equal(y[:3], x[:3].detach())
    assert float((y[3:] - torch.round(x[3:])).abs().max().detach()) < 0.07  # within (0.4)^3 of the rounded value
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(grad, 3 * (x.detach() - torch.round(x.detach())) ** 2)


def test_cubic_jpeg_tracks_the_real_codec_like_straight_through() -> None:
    img, x = _photo()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=75)
    real = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255).permute(2, 0, 1)[None]
    err = {mode: float((diff_jpeg(x, 75, mode) - real).abs().mean()) for mode in ("ste", "cubic")}
    assert err["cubic"] < 0.6 * float((x - real).abs().mean())
    assert err["cubic"] < 1.5 * err["ste"]


def test_cubic_gradient_differs_from_straight_through() -> None:
    _, x = _photo()
    grads = {}
    for mode in ("ste", "cubic"):
        xr = x.clone().requires_grad_(True)
        (grads[mode],) = torch.autograd.grad(diff_jpeg(xr, 75, mode).pow(2).sum(), xr)
    assert torch.isfinite(grads["cubic"]).all() and float(grads["cubic"].abs().sum()) > 0
    assert not torch.allclose(grads["cubic"], grads["ste"])
