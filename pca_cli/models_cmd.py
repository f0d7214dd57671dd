"""``pca-protect models list|download``: the registry and the Hugging Face cache; ``models list --model A,B``
(loaded here) or ``--server URL`` (asked of a service, ``GET /v1/models``) shows the same table of the models a
protection would attack: every member of an ensemble, then the ensemble's aggregation and weights."""

from __future__ import annotations

from typing import Annotated, Any

import typer

REGISTRY_ROW = "{:<12}{:<10}{:<15}{:<10}{}"  # name, latent, posterior, run here, cached

models_app = typer.Typer(help="List known VAEs and pre-fetch their weights into the Hugging Face cache.")


def _cached(repo_id: str, subfolder: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    name = f"{subfolder}/config.json" if subfolder else "config.json"
    return isinstance(try_to_load_from_cache(repo_id, name), str)


@models_app.command("list")
def list_command(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Load these models here (a comma list or repeated) and list every member instead.",
    )] = None,
    server: Annotated[str | None, typer.Option(
        "--server", envvar="PCA_SERVER", help="List the models a service has loaded (GET /v1/models).",
    )] = None,
    device: Annotated[str, typer.Option("--device", "-d", help="With --model: auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Show registry names, where their weights come from, and whether they are cached here; with --model or
    --server, the loaded models instead (channels, factor, posterior, decoder; the ensemble's aggregation)."""
    if model or server:
        _print_loaded(_loaded_here(model or [], device) if model else _loaded_on(str(server)))
        return
    from pca_attack.models.downloads import is_cached, models_folder
    from pca_attack.models.registry import DEFAULT_MODEL, DEMO_MODEL_DIR, REGISTRY

    typer.echo(REGISTRY_ROW.format("name", "latent", "posterior", "run here", "cached"))
    for entry in REGISTRY.values():
        if entry.bundled:
            source, ok = str(DEMO_MODEL_DIR), (DEMO_MODEL_DIR / "config.json").is_file()
        else:
            source = entry.weights_source
            ok = is_cached(entry) if entry.files else _cached(str(entry.repo_id), entry.subfolder)
        run_here = "bundled" if entry.bundled else ("yes" if entry.ran_here else "no")
        latent = f"{entry.latent_channels}ch f{entry.spatial_factor}"
        typer.echo(REGISTRY_ROW.format(entry.name, latent, entry.posterior, run_here, "yes" if ok else "no"))
        typer.echo(f"{'':12}{entry.description}\n{'':12}weights: {source}")
    typer.echo(f"default (no --model, no PCA_MODEL): {DEFAULT_MODEL}. run here: whether this project ever ran those "
               f"weights; cached: downloaded here (the Hugging Face cache; files fetched by URL: {models_folder()}).")
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
    """Fetch only the VAE files of each model: hub models into the Hugging Face cache (HF_HOME), models
    published as files (taef2, taesana) into PCA_MODELS_DIR (default ~/.cache/pca-attack/models), checked."""
    from huggingface_hub import snapshot_download

    from pca_attack.errors import ModelNotFoundError
    from pca_attack.models.downloads import fetch
    from pca_attack.models.registry import REGISTRY

    failed = 0
    for name in names:
        entry = REGISTRY.get(name.lower())
        if entry is not None and entry.bundled:
            typer.echo(f"{name}: bundled with the package, nothing to download")
            continue
        if entry is not None and entry.files:
            try:
                paths = [fetch(entry, role, offline=False) for role in ("encoder", "decoder")]
                typer.echo(f"{name}: cached at {', '.join(str(p) for p in paths if p)} (checksums match)")
            except ModelNotFoundError as exc:
                failed += 1
                typer.echo(f"{name}: download failed: {exc}", err=True)
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


def _loaded_here(model: list[str], device: str) -> dict[str, Any]:
    """``GET /v1/models``'s members and ensemble, for models loaded in this process."""
    from pca_attack.attack.objective import ensemble_facts
    from pca_attack.models.ensemble import member_facts
    from pca_attack.pipeline import Engine

    engine = Engine.from_spec(model, device=device)
    if engine.ensemble is None:
        return {"members": member_facts(engine.encoder, {engine.encoder.name: engine.decoder is not None})}
    loaded = {name: decoder is not None for name, decoder in engine.decoders.items()}
    return {"members": member_facts(engine.ensemble, loaded), "ensemble": ensemble_facts(engine.ensemble)}


def _loaded_on(server: str) -> dict[str, Any]:
    from pca_client.http import PCAClient

    with PCAClient(server) as client:
        return client.models()


def _print_loaded(answer: dict[str, Any]) -> None:
    """One row per member, then the ensemble line (the same for --model and --server)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "latent ch.", "factor", "posterior", "decoder", "parameters", "device", "dtype")
    for m in answer["members"]:
        table.add_row(m["name"], str(m["latent_channels"]), f"f{m['downsample_factor']}", m["posterior"],
                      "yes" if m["decoder_loaded"] else "no", f"{m['parameters']:,}", m["device"], m["dtype"])
    Console(width=200).print(table)
    ensemble = answer.get("ensemble")
    if ensemble:
        weights = ", ".join(f"{name} {w:g}" for name, w in ensemble["weights"].items())
        typer.echo(f"ensemble of {len(answer['members'])}: aggregation {ensemble['aggregation']} (choices: "
                   f"{', '.join(ensemble['aggregations'])}), weights {weights}, padded to multiples of "
                   f"{ensemble['padding_multiple']}")
