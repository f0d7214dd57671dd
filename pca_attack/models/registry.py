"""Names of the VAEs the engine knows, mapped to where their weights live.

Every entry is the ``vae`` of a latent-diffusion model on the Hugging Face hub (or a tiny autoencoder of one's
latent space), except ``demo``, the small KL-VAE bundled with this package (a demo: it does not protect
against real diffusion models), and ``taef2`` / ``taesana``, tiny autoencoders published as plain ``.pth``
files on GitHub (``files``: a URL pinned to one commit and the SHA-256 of the bytes this project ran; fetched
by ``pca_attack.models.downloads``). Hub ids are the ones the models' own diffusers documentation or model
cards use. None of the hub weights was ever run by this project (``ran_here``): the engine's loaders for each
family are tested on tiny random configs, and on real weights only for TAEF2 and TAESana. FLUX.2's own VAE
has no entry: no diffusers page naming its hub id was found; load a local FLUX.2 ``vae`` folder with
``--model PATH`` (``taef2`` covers its latent space).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo_vae"
DEFAULT_MODEL = "taef2"  # what the CLI and the service load without --model / PCA_MODEL: fetched once, then offline
DEMO_WARNING = (
    "the 'demo' model is a toy VAE bundled for trying the tool offline: it does NOT protect against real "
    "diffusion editors. Use a real encoder: --model taef2 (FLUX.2's tiny autoencoder, 5 MB, fetched once, "
    "runs well on a CPU), --model sd15 / sdxl / flux / qwen-image / sana (hub weights), a local diffusers "
    "folder, or a tiny-autoencoder .pth file"
)
TAESD_GITHUB = "https://raw.githubusercontent.com/madebyollin/taesd"  # + /<commit>/<file>


def uses_demo(names: list[str]) -> bool:
    """True when one of the attacked models is the bundled demo VAE."""
    return "demo" in names


@dataclass(frozen=True)
class RemoteFile:
    """One weights file published at a fixed URL, with the size and SHA-256 of the bytes this project ran."""

    url: str
    sha256: str
    size: int  # bytes
    role: str  # "encoder" | "decoder"

    @property
    def name(self) -> str:
        """The file's name (the URL's last part)."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry."""

    name: str
    repo_id: str | None  # hub repository, or None for the bundled demo
    subfolder: str | None  # folder of the VAE inside the repository
    latent_channels: int
    description: str
    gated: bool = False  # the hub requires accepting a licence (and a token) before download
    spatial_factor: int = 8  # image side / latent side
    posterior: str = "gaussian"  # "gaussian" (mean + log-variance) or "deterministic" (the latent itself)
    ran_here: bool = False  # whether these hub weights were ever run by this project
    files: tuple[RemoteFile, ...] = ()  # weights published as plain files (not on the hub), fetched by URL

    @property
    def bundled(self) -> bool:
        """The weights ship inside this package (the demo VAE)."""
        return self.repo_id is None and not self.files

    @property
    def weights_source(self) -> str:
        """Where the weights come from, in words (``models list``)."""
        if self.files:
            return f"{self.files[0].url.rsplit('/', 1)[0]} ({', '.join(f.name for f in self.files)})"
        return self.repo_id + (f" ({self.subfolder})" if self.subfolder else "") if self.repo_id else "bundled"


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
    "qwen-image": ModelEntry(
        "qwen-image", "Qwen/Qwen-Image", "vae", 16,
        "Qwen-Image / Qwen-Image-Edit VAE (Wan-2.1 causal 3-D VAE, used on one frame)",
    ),
    "sana": ModelEntry(
        "sana", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers", None, 32,
        "Sana deep-compression autoencoder DC-AE f32c32 (deterministic)", spatial_factor=32,
        posterior="deterministic",
    ),
    **{
        name: ModelEntry(name, f"madebyollin/{name}", None, channels, f"tiny autoencoder of the {what} latent space",
                         posterior="deterministic")
        for name, channels, what in (
            ("taesd", 4, "SD 1.x/2.x"), ("taesdxl", 4, "SDXL"), ("taesd3", 16, "SD3"), ("taef1", 16, "FLUX.1"),
        )
    },
    "taef2": ModelEntry(
        "taef2", None, None, 32,
        "tiny autoencoder of the FLUX.2 latent space (MIT, GitHub madebyollin/taesd; the model this project's "
        "numbers are measured on)", posterior="deterministic", ran_here=True,
        files=(
            RemoteFile(f"{TAESD_GITHUB}/5cccb12dc72074a4be35680c3b108548a7c69978/taef2_encoder.pth",
                       "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6", 2704692, "encoder"),
            RemoteFile(f"{TAESD_GITHUB}/5cccb12dc72074a4be35680c3b108548a7c69978/taef2_decoder.pth",
                       "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5", 2704756, "decoder"),
        ),
    ),
    "taesana": ModelEntry(
        "taesana", None, None, 32,
        "tiny encoder of Sana's DC-AE f32c32 latent space (MIT, GitHub madebyollin/taesd; encoder only: "
        "certificates carry no round trip)", spatial_factor=32, posterior="deterministic", ran_here=True,
        files=(
            RemoteFile(f"{TAESD_GITHUB}/2a1b4149efda2cb6da482e8d3ff017bdb4f98fc3/taesana_encoder.pth",
                       "858f4e4cc293f88efaf58107f4154b960b9ced0cb5d9c050dad11f926b618c1f", 2537004, "encoder"),
        ),
    ),
    "demo": ModelEntry(
        "demo", None, None, 4,
        "Bundled demo KL-VAE (a few MB, trained on public-domain photos). DEMO ONLY: it does not protect "
        "against real diffusion models.", ran_here=True,
    ),
}


def registry_names() -> list[str]:
    """The names accepted by ``load_encoder``."""
    return list(REGISTRY)
