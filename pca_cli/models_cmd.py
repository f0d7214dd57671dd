"""``pca-protect models list|download``: the registry and the Hugging Face cache."""

from __future__ import annotations

from typing import Annotated

import typer

models_app = typer.Typer(help="List known VAEs and pre-fetch their weights into the Hugging Face cache.")


def _cached(repo_id: str, subfolder: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    name = f"{subfolder}/config.json" if subfolder else "config.json"
    return isinstance(try_to_load_from_cache(repo_id, name), str)


@models_app.command("list")
def list_command() -> None:
    """Show registry names, where their weights come from, and whether they are cached here."""
    from rich.console import Console
    from rich.table import Table

    from pca_attack.models.registry import DEMO_MODEL_DIR, REGISTRY

    table = Table("name", "source", "latent ch.", "factor", "posterior", "hub weights run here", "available",
                  "description")
    for entry in REGISTRY.values():
        if entry.repo_id is None:
            source, ok = str(DEMO_MODEL_DIR), (DEMO_MODEL_DIR / "config.json").is_file()
        else:
            source = entry.repo_id + (f" ({entry.subfolder})" if entry.subfolder else "")
            ok = _cached(entry.repo_id, entry.subfolder)
        table.add_row(
            entry.name, source, str(entry.latent_channels), f"f{entry.spatial_factor}", entry.posterior,
            "bundled" if entry.repo_id is None else ("yes" if entry.ran_here else "no"),
            "yes" if ok else "no", entry.description,
        )
    Console().print(table)
    typer.echo(
        "Local weights work too: --model PATH takes a diffusers folder (AutoencoderKL, AutoencoderKLFlux2, "
        "AutoencoderKLQwenImage, AutoencoderDC, AutoencoderTiny), a .safetensors file, or a tiny "
        "autoencoder's *_encoder.pth (or its folder)."
    )


@models_app.command("download")
def download_command(
    names: Annotated[list[str], typer.Argument(help="Registry names or hub ids (owner/name).")],
    token: Annotated[str | None, typer.Option("--token", envvar="HF_TOKEN", help="Hub token (gated models).")] = None,
) -> None:
    """Fetch only the VAE files of each model into the Hugging Face cache (HF_HOME)."""
    from huggingface_hub import snapshot_download

    from pca_attack.models.registry import REGISTRY

    failed = 0
    for name in names:
        entry = REGISTRY.get(name.lower())
        if entry is not None and entry.repo_id is None:
            typer.echo(f"{name}: bundled with the package, nothing to download")
            continue
        repo = entry.repo_id if entry else name
        sub = entry.subfolder if entry else None
        patterns = [f"{sub}/config.json", f"{sub}/diffusion_pytorch_model.*"] if sub else [
            "config.json", "diffusion_pytorch_model.*", "vae/config.json", "vae/diffusion_pytorch_model.*"
        ]
        try:
            path = snapshot_download(str(repo), allow_patterns=patterns, token=token)
            typer.echo(f"{name}: cached at {path}")
        except Exception as exc:  # network, auth and not-found errors all end here
            failed += 1
            typer.echo(f"{name}: download failed: {type(exc).__name__}: {exc}", err=True)
    if failed:
        raise typer.Exit(1)
