"""Names of the VAEs the engine knows, mapped to where their weights live.

Every entry is the ``vae`` of a latent-diffusion model on the Hugging Face hub, except ``demo``, the small
KL-VAE bundled with this package (a demo: it does not protect against real diffusion models).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo_vae"


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry."""

    name: str
    repo_id: str | None  # hub repository, or None for the bundled demo
    subfolder: str | None  # folder of the VAE inside the repository
    latent_channels: int
    description: str
    gated: bool = False  # the hub requires accepting a licence (and a token) before download


REGISTRY: dict[str, ModelEntry] = {
    "sd14": ModelEntry("sd14", "CompVis/stable-diffusion-v1-4", "vae", 4, "Stable Diffusion 1.4 VAE"),
    "sd15": ModelEntry(
        "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "vae", 4,
        "Stable Diffusion 1.5 VAE (reference default surrogate)",
    ),
    "sd20": ModelEntry("sd20", "stabilityai/stable-diffusion-2", "vae", 4, "Stable Diffusion 2.0 VAE"),
    "sd21": ModelEntry("sd21", "stabilityai/stable-diffusion-2-1", "vae", 4, "Stable Diffusion 2.1 VAE"),
    "sdxl": ModelEntry(
        "sdxl", "madebyollin/sdxl-vae-fp16-fix", None, 4,
        "SDXL VAE, fp16-fix variant (the original gives NaNs in fp16)",
    ),
    "sd3": ModelEntry(
        "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", "vae", 16,
        "Stable Diffusion 3 VAE (16 latent channels)", gated=True,
    ),
    "flux": ModelEntry(
        "flux", "black-forest-labs/FLUX.1-schnell", "vae", 16, "FLUX.1 VAE (16 latent channels)",
    ),
    "demo": ModelEntry(
        "demo", None, None, 4,
        "Bundled demo KL-VAE (a few MB, trained on public-domain photos). DEMO ONLY: it does not protect "
        "against real diffusion models.",
    ),
}


def registry_names() -> list[str]:
    """The names accepted by ``load_encoder``."""
    return list(REGISTRY)
