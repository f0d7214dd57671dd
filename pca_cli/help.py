"""How the subcommands show their help: every help text literally (rich would read ``pca-protect[ray]`` or
``[default: x]`` in a text as markup and drop it), and the choices of options whose table lives in a torch
module (the red-team channels) listed when help is shown, so ``pca-protect`` still starts without
importing torch. ``app.command(..., cls=Command)`` in ``pca_cli/__init__.py`` applies it to every subcommand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.markup import escape
from typer.core import TyperCommand


def transform_names() -> list[str]:
    """The red-team channels (``redteam --transforms``)."""
    from pca_attack.redteam.channels import ON_DEMAND
    from pca_attack.redteam.channels import transform_names as names

    return names() + [f"{prefix}N" for prefix in ON_DEMAND]


LAZY_CHOICES: dict[str, Callable[[], list[str]]] = {"transforms": transform_names}


def with_choices(help_text: str, name: str) -> str:
    """``help_text`` ending with the option's choices when they are listed lazily (else unchanged)."""
    names = LAZY_CHOICES.get(name)
    return help_text if names is None else f"{help_text.rstrip('.')}; one of: {', '.join(names())}."


class Command(TyperCommand):
    """A typer command whose help texts are shown as written, with the lazily known choices added."""

    _help_ready = False

    def format_help(self, ctx: Any, formatter: Any) -> None:  # click's Context/HelpFormatter (typer vendors click)
        if not self._help_ready:
            self._help_ready = True
            for param in self.params:
                text = getattr(param, "help", None)
                if text and param.name:
                    param.help = escape(with_choices(text, param.name))  # type: ignore[attr-defined]
            if self.help:
                self.help = escape(self.help)
        super().format_help(ctx, formatter)
