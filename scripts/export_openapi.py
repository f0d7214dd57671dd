"""Write the service's OpenAPI document to ``openapi.yaml`` (or check that it is up to date).

    python scripts/export_openapi.py            # rewrite openapi.yaml at the repository root
    python scripts/export_openapi.py --check    # exit 1 when the file and the app differ

The document does not depend on settings or on a loaded model: the app is built but never started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "openapi.yaml"


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document as plain JSON types."""
    sys.path.insert(0, str(ROOT))
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir=Path("/nonexistent/pca-openapi")))  # never started: nothing is written
    return json.loads(json.dumps(app.openapi()))


def render(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; run: python scripts/export_openapi.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
