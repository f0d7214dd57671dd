"""Results written to docs/ name models the way a reader can reproduce them, not by this machine's paths.

A model given as a local folder or file (e.g. the TAEF2 weights beside a checkout) is recorded as
``<NAME folder>`` / ``<NAME file>``; registry names (``demo``, ``sd15``) are kept as they are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_LOCAL = re.compile(r"(?:\.{1,2}/|/)[^\s\"',]*?/([A-Za-z0-9_.-]+?)(/|\.pth|\.safetensors)?(?=[\s\"',]|$)")


def public(value: Any) -> Any:
    """``value`` (a JSON-like tree) with every local model path replaced by a placeholder naming the model."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and "/models/" in value:
        return _LOCAL.sub(_placeholder, value)
    return value


def publish(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Print ``result`` with local model paths replaced (``public``) as JSON, and write it to ``out`` when given."""
    result = public(result)
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        out.write_text(text + "\n")
    return result


def _placeholder(match: re.Match[str]) -> str:
    kind = "file" if match.group(2) in (".pth", ".safetensors") else "folder"
    return f"<{match.group(1).removesuffix('_encoder')} {kind}>"
