"""One way to print a message that holds user data (paths, file names, exception text) on a rich console.

Rich parses `[...]` as markup and hard-wraps at the terminal width: a file named `cat[1].png` would lose its
brackets, and a long model path in an error would be cut by line breaks the user then copies. `say` prints
the data verbatim on one logical line (the terminal wraps it, nothing is inserted) after an optional styled
label such as ``error:``.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def say(console: Console, message: str, label: str = "", style: str = "red") -> None:
    """Print `message` verbatim (no markup, no inserted line breaks), after `label` in `style` when given."""
    text = Text.assemble((label, style), " ", message) if label else Text(message)
    console.print(text, soft_wrap=True, highlight=False)
