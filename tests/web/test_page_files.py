"""The page with real files: drag & drop, the folder picker, Unicode and colliding names through to the
downloads and the zip (the one naming scheme), and the round-trip pictures (POST /v1/roundtrip)."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.web.conftest import Served, exif_rotated_jpeg, open_page, png_with_alpha

TIMEOUT_MS = 90_000

# Build a DataTransfer in the page (what a drag from the desktop delivers) and drop it on the drop zone.
DROP_JS = """([files]) => {
  const dt = new DataTransfer();
  for (const [name, type, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], name, { type }));
  }
  const zone = document.getElementById("drop");
  zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
  const over = zone.classList.contains("over");
  zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  return over;
}"""


def _drop(page: Any, files: list[tuple[str, str, bytes]]) -> bool:
    payload = [(name, mime, base64.b64encode(data).decode()) for name, mime, data in files]
    return bool(page.evaluate(DROP_JS, [payload]))


def _names(page: Any) -> list[str]:
    return [str(n) for n in page.locator("#picked li .name").all_inner_texts()]


def test_drop_and_folder_pick_add_the_pictures(server: Served, browser: Any, tmp_path: Path) -> None:
    """A synthetic drop of two files and a folder chosen with the webkitdirectory input (its images only)."""
    from playwright.sync_api import expect

    folder = tmp_path / "holiday"
    (folder / "day 2").mkdir(parents=True)
    (folder / "beach.png").write_bytes(png_with_alpha(40, 30))
    (folder / "day 2" / "山.jpg").write_bytes(exif_rotated_jpeg())
    (folder / "notes.txt").write_text("not a picture")
    context, page, watch = open_page(browser, server.url)
    try:
        assert _drop(page, [("dropped.png", "image/png", png_with_alpha(33, 21)),
                            ("ß ü.jpg", "image/jpeg", exif_rotated_jpeg())]), "dragover must mark the zone"
        expect(page.locator("#picked li")).to_have_count(2)
        assert _names(page) == ["dropped.png", "ß ü.jpg"]
        expect(page.locator("#drop")).not_to_have_class("drop over")
        page.set_input_files("#folder-input", folder)
        expect(page.locator("#picked li")).to_have_count(4)
        assert sorted(_names(page)[2:]) == ["beach.png", "山.jpg"]  # notes.txt left out
        expect(page.locator("#picked li").nth(3).locator(".dims")).not_to_have_text("not readable by this browser")
        expect(page.locator("#protect")).to_be_enabled()
        assert not watch.errors, watch.errors
    finally:
        context.close()


def test_unicode_and_colliding_names_reach_downloads_zip_and_round_trips(server: Served, browser: Any) -> None:
    """`café 猫.png` + `café 猫.jpg`: downloads and zip entries keep the letters and get distinct names
    (`café 猫.png`, `café 猫.jpg.png`, certificates beside them); the round-trip pictures are the server's."""
    from playwright.sync_api import expect

    png, jpg = png_with_alpha(48, 40), exif_rotated_jpeg(48, 32)
    context, page, watch = open_page(browser, server.url)
    flight = {"now": 0, "most": 0, "done": 0}  # /v1/roundtrip requests in flight: the page sends one at a time

    def sent(request: Any) -> None:
        if request.url.endswith("/v1/roundtrip"):
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])

    def finished(request: Any) -> None:
        if request.url.endswith("/v1/roundtrip"):
            flight["now"] -= 1
            flight["done"] += 1

    page.on("request", sent)
    page.on("requestfinished", finished)
    try:
        _drop(page, [("café 猫.png", "image/png", png), ("café 猫.jpg", "image/jpeg", jpg)])
        expect(page.locator("#picked li")).to_have_count(2)
        page.fill("#opt-steps", "1")
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator(".result")).to_have_count(2, timeout=TIMEOUT_MS)
        downloads = {}
        for name in ("café 猫.png", "café 猫.jpg"):
            link = page.locator(f'.result[data-name="{name}"] a[download]')
            downloads[name] = link.get_attribute("download")
        assert downloads == {"café 猫.png": "café 猫.png", "café 猫.jpg": "café 猫.jpg.png"}

        with page.expect_download() as info:
            page.get_by_role("button", name="Download all as a zip").click()
        with zipfile.ZipFile(info.value.path()) as zf:
            entries = set(zf.namelist())
        assert {"café 猫.png", "café 猫.png.json", "café 猫.jpg.png", "café 猫.jpg.png.json"} <= entries

        section = page.locator('.result[data-name="café 猫.png"] .roundtrip')
        expect(section).to_have_attribute("data-ready", "true", timeout=TIMEOUT_MS)
        shown = section.locator('[data-field="roundtrip_original_psnr"]').get_attribute("data-value")
        direct = httpx.post(f"{server.url}/v1/roundtrip", files={"file": ("x.png", png, "image/png")}, timeout=60)
        assert direct.status_code == 200 and shown == direct.headers["x-pca-roundtrip-psnr-db"]
        size = section.locator(".roundtrip-protected img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert size == [48, 40] == list(Image.open(io.BytesIO(direct.content)).size)
        expect(page.locator('.result .roundtrip[data-ready="true"]')).to_have_count(2, timeout=TIMEOUT_MS)
        page.wait_for_function("() => true")  # let the last requestfinished event arrive
        assert flight["done"] == 4 and flight["most"] == 1, flight
        assert not watch.errors, watch.errors
    finally:
        context.close()
