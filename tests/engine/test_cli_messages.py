"""`pca_cli.messages.say`: user data printed verbatim, on one logical line, after a styled label."""

from __future__ import annotations

import io

from rich.console import Console

from pca_cli.messages import say


def test_say_keeps_brackets_and_inserts_no_line_break() -> None:
    out = io.StringIO()
    console = Console(file=out, width=20, color_system=None)
    message = "/photos/[red]cat[/red]/a-very-long-file-name-of-a-photo.png: not an image"
    say(console, message, label="failed")
    assert out.getvalue() == f"failed {message}\n"


def test_say_without_label_prints_the_message_only() -> None:
    out = io.StringIO()
    say(Console(file=out, width=10, color_system=None), "wrote /tmp/x [1].png")
    assert out.getvalue() == "wrote /tmp/x [1].png\n"
