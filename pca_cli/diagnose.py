"""``pca-protect diagnose IMAGE [PROTECTED]``: posterior statistics of an image, or of a clean/protected pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pca_attack.models.registry import DEFAULT_MODEL
from pca_cli.options import DecoderOpt, DeviceOpt, ModelOpt, OfflineOpt


def diagnose_command(
    image: Annotated[Path, typer.Argument(help="The (clean) image.", exists=True, dir_okay=False)],
    protected: Annotated[
        Path | None, typer.Argument(help="Optional protected version of IMAGE.", exists=True, dir_okay=False)
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    decoder: DecoderOpt = None,
) -> None:
    """Print KL to the prior and to each preset's target, per-channel summaries, drift (JSON)."""
    from pca_attack.certify.diagnostics import image_stats, pair_stats
    from pca_attack.errors import PCAError
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine

    try:
        engine = Engine.from_spec(model, device=device, offline=offline or None,
                                  decoder=str(decoder) if decoder else None)
        clean = decode_image(image).to_tensor()
        if protected is None:
            stats = image_stats(engine.encoder, clean, engine.decoder)
        else:
            other = decode_image(protected).to_tensor()
            if other.shape != clean.shape:
                raise typer.BadParameter(f"sizes differ: {tuple(clean.shape)} vs {tuple(other.shape)}")
            stats = pair_stats(engine.encoder, clean, other, engine.decoder)
    except PCAError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"model": engine.encoder.name, **stats}, indent=2))
