"""Screenshot of the web page's result card (with the round-trip pictures) after protecting one picture.

    python scripts/web_screenshot.py examples/chelsea.png --steps 40 --out docs/img/web-page-roundtrip.png \
        --page-out docs/img/web-page.png

Starts ``pca-protect serve --model MODEL`` (default: the default model, taef2, from ``PCA_MODELS_DIR`` or
fetched) on a free port, as the browser tests do, drives Debian's Chromium with Playwright, prints the
certificate numbers the page shows and the seconds to the result as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pca_attack.models.registry import DEFAULT_MODEL  # noqa: E402  (after the path insert above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model the server loads")
    parser.add_argument("--out", type=Path, default=Path("web-page-roundtrip.png"))
    parser.add_argument("--page-out", type=Path, help="also save the whole page (1000 px wide) here")
    parser.add_argument("--colours", type=int, default=128, help="palette size of the saved PNG (smaller file)")
    args = parser.parse_args()

    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, start_server

    served = start_server(Path(tempfile.mkdtemp(prefix="pca-shot-")), model=args.model)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000 if args.page_out else 1100, "height": 900})
            page.goto(served.url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            page.set_input_files("#file-input", str(args.image))
            page.fill("#opt-steps", str(args.steps))
            page.get_by_role("button", name="Standard 16").click()
            started = time.monotonic()
            page.get_by_role("button", name="Protect", exact=True).click()
            expect(page.locator(".result")).to_have_count(1, timeout=1_800_000)
            seconds = time.monotonic() - started
            expect(page.locator(".roundtrip[data-ready=true]")).to_have_count(1, timeout=600_000)
            fields = {f.get_attribute("data-field"): f.get_attribute("data-value")
                      for f in page.locator("[data-field]").all()}
            shot = page.locator(".result").screenshot()
            whole = page.screenshot(full_page=True) if args.page_out else None
            browser.close()
    finally:
        served.stop()
    for data, path in ((shot, args.out), (whole, args.page_out)):
        if data is not None and path is not None:
            Image.open(io.BytesIO(data)).convert("RGB").quantize(args.colours).save(path, optimize=True)
    print(json.dumps({"model": args.model, "seconds_to_result": round(seconds, 1), "fields": fields,
                      "out": str(args.out)}, indent=2))


if __name__ == "__main__":
    main()
