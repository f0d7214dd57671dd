"""The ``pca-protect`` console script: one small module per subcommand, heavy imports inside commands.

    pca-protect protect INPUT... -o OUTDIR     protect files/folders in-process
    pca-protect models list|download            manage the Hugging Face cache
    pca-protect diagnose IMAGE [PROTECTED]      posterior statistics of an image or a pair
    pca-protect batch SRC DST --server URL      resumable folder batch (or --local)
    pca-protect serve --model NAME              the REST service (see openapi.yaml)
    pca-protect redteam IMAGE_OR_FOLDER         protect, then measure what survives JPEG, resizing, ...
    pca-protect theory ...                      posterior-collapse theory calculators and plots
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from pca_attack._version import __version__
from pca_cli.batch import batch_command
from pca_cli.diagnose import diagnose_command
from pca_cli.help import Command
from pca_cli.models_cmd import models_app
from pca_cli.protect import protect_command
from pca_cli.redteam import redteam_command
from pca_cli.serve import serve_command
from pca_cli.theory import theory_app

app = typer.Typer(
    name="pca-protect",
    help="Protect images against latent-diffusion editing (Posterior Collapse Attack).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pca-protect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the engine chooses.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("pca_attack.downloads").setLevel(logging.INFO)  # a first run says what it fetches, and where


app.command("protect", cls=Command)(protect_command)
app.command("diagnose", cls=Command)(diagnose_command)
app.command("batch", cls=Command)(batch_command)
app.command("serve", cls=Command)(serve_command)
app.command("redteam", cls=Command)(redteam_command)
app.add_typer(models_app, name="models")
app.add_typer(theory_app, name="theory")


def main() -> None:
    """Console-script entry point."""
    app()
