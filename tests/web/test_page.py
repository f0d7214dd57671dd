"""The artists' page in a real browser (Debian Chromium + Playwright) against a live
``pca-protect serve --model demo``: upload, wait, download, and check the downloaded bytes."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.web.conftest import (
    EXIF_ORIENTATION,
    Served,
    exif_rotated_jpeg,
    open_page,
    png_with_alpha,
    upload,
)

STEPS = "2"
TIMEOUT_MS = 90_000


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _job_ids(page: Any) -> list[str]:
    """Ids of the jobs the page creates (read from its own POST /v1/jobs answers)."""
    ids: list[str] = []

    def on_response(response: Any) -> None:
        if response.request.method == "POST" and response.url.endswith("/v1/jobs") and response.status == 202:
            ids.append(response.json()["id"])

    page.on("response", on_response)
    return ids


def _download(page: Any, card: Any) -> tuple[str, bytes]:
    with page.expect_download() as info:
        card.locator("a[download]").click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


def _linf(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _sentence(message: str) -> str:
    text = message.strip()
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def test_two_photos_round_trip_through_the_page(server: Served, browser: Any, tmp_path: Path) -> None:
    """Odd-sized RGBA PNG + EXIF-rotated JPEG: the downloaded files keep size, alpha and upright
    orientation, stay within the L-inf budget, and the certificate panel shows the server's numbers."""
    context, page, watch = open_page(browser, server.url)
    expect = _expect()
    try:
        jobs = _job_ids(page)
        png, jpg = png_with_alpha(), exif_rotated_jpeg()
        files = [upload("art.png", "image/png", png), upload("photo.jpg", "image/jpeg", jpg)]
        page.set_input_files("#file-input", files)
        expect(page.locator("#picked li")).to_have_count(2)
        page.fill("#opt-steps", STEPS)
        page.get_by_role("button", name="Standard 16").click()
        page.locator("summary", has_text="More settings").click()
        expect(page.locator("#opt-editor_resolution")).to_have_value("1024")  # the server's default
        page.fill("#opt-editor_resolution", "80")  # both pictures are larger: each also collapsed at 80 px
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator(".result")).to_have_count(2, timeout=TIMEOUT_MS)
        expect(page.locator("#progress-summary")).to_have_text("2 of 2 done.")
        page.locator(".result canvas.difference").first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
        assert (tmp_path / "results.png").stat().st_size > 10_000

        name, data = _download(page, page.locator('.result[data-name="art.png"]'))
        assert name == "art.png"
        out, src = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(png))
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == (97, 75)
        out_a, src_a = np.asarray(out), np.asarray(src)
        assert np.array_equal(out_a[..., 3], src_a[..., 3]), "alpha must come back byte for byte"
        assert 0 < _linf(out_a[..., :3], src_a[..., :3]) <= 16

        name, data = _download(page, page.locator('.result[data-name="photo.jpg"]'))
        assert name == "photo.png"
        out = Image.open(io.BytesIO(data))
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(jpg))).convert("RGB")
        assert out.format == "PNG" and out.size == (64, 96) == upright.size
        assert int(out.getexif().get(EXIF_ORIENTATION, 1)) == 1, "stored upright: no rotation left to apply"
        assert 0 < _linf(np.asarray(out.convert("RGB")), np.asarray(upright)) <= 16

        assert len(jobs) == 1
        job = httpx.get(f"{server.url}/v1/jobs/{jobs[0]}", timeout=10).json()
        if "intensity" in job["settings"]:  # the named stop was sent as the server's intensity knob
            assert job["settings"]["intensity"] == "standard"
        for item in job["items"]:
            cert = item["certificate"]
            panel = page.locator(f'.result[data-name="{item["filename"]}"] .certificate')
            fields = panel.locator("[data-field]")
            assert fields.count() >= 9
            for n in range(fields.count()):
                field, value = fields.nth(n).get_attribute("data-field"), fields.nth(n).get_attribute("data-value")
                assert cert[field] is not None and math.isclose(float(value), cert[field], rel_tol=1e-12), field
            expect(panel.locator('[data-field="psnr_db"]')).to_have_text(f"{cert['psnr_db']:.1f} dB")
            expect(panel.locator('[data-field="linf_255"]')).to_have_text(f"{cert['linf_255']:.0f}")
            expect(panel).to_contain_text("within the limit" if cert["budget_ok"] else "over the limit")
            assert cert["editor_resolution"] == 80
            expect(panel.locator('[data-field="editor_resolution"]')).to_have_text("80 px")
        assert not [u for u in watch.requests if not u.startswith((server.url, "blob:", "data:"))]
        assert not watch.errors, watch.errors
    finally:
        context.close()


def test_non_image_upload_shows_the_api_message(server: Served, browser: Any) -> None:
    context, page, _ = open_page(browser, server.url)
    expect = _expect()
    try:
        page.set_input_files("#file-input", [upload("notes.txt", "text/plain", b"these are not pixels\n")])
        page.fill("#opt-steps", STEPS)
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/jobs")) as created:
            page.get_by_role("button", name="Protect", exact=True).click()  # (an event handler raced here once)
        job_id = created.value.json()["id"]
        expect(page.locator("#progress .error")).to_have_count(1, timeout=TIMEOUT_MS)
        message = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()["items"][0]["error"]
        assert message
        expect(page.locator("#progress .error")).to_have_text(f"notes.txt: {_sentence(message)}")
        expect(page.locator("#progress-summary")).to_have_text("0 of 1 done, 1 not protected.")
    finally:
        context.close()


def test_invalid_option_is_refused_with_a_sentence(server: Served, browser: Any) -> None:
    """Steps over the server's max_steps: the field itself says so before anything is uploaded."""
    context, page, _ = open_page(browser, server.url)
    expect = _expect()
    try:
        max_steps = httpx.get(f"{server.url}/v1/models", timeout=10).json()["limits"]["max_steps"]
        expect(page.locator("#opt-steps")).to_have_attribute("max", str(max_steps))
        page.set_input_files("#file-input", [upload("art.png", "image/png", png_with_alpha())])
        page.fill("#opt-steps", str(max_steps + 1))
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator("#errors .error")).to_contain_text(str(max_steps))
        expect(page.locator("#opt-steps")).to_be_focused()
        expect(page.locator("#progress li")).to_have_count(0)
    finally:
        context.close()


def _tab_to(page: Any, selector: str, limit: int = 60) -> None:
    """Press Tab until `selector` has the focus (fails if it never does)."""
    target = page.locator(selector)
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("e => e === document.activeElement"):
            return
    pytest.fail(f"{selector} cannot be reached with the Tab key")


def _intercept_choosers(page: Any) -> None:
    """Keep Chromium's file-chooser interception on from now: a listener that lives as long as the page."""
    page.on("filechooser", lambda chooser: None)


def _press_for_chooser(page: Any, key: str, tries: int = 3) -> Any:
    """Press `key` on the focused button until Playwright sees the file chooser. Playwright turns the
    browser's chooser interception on without waiting for it, so a waiter made just before the press could
    miss the chooser (1 run in 4 here; under CI load all three presses once): the caller keeps a listener
    from the page's opening (``_intercept_choosers``); the press is still repeated, and the test fails when
    no press ever opens one."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries):
        try:
            with page.expect_file_chooser(timeout=8_000) as chooser:
                page.keyboard.press(key)
            return chooser.value
        except PlaywrightTimeout:
            continue
    pytest.fail(f"pressing {key} on the focused button never opened a file chooser")


def test_keyboard_only_upload(server: Served, browser: Any) -> None:
    context, page, _ = open_page(browser, server.url)
    _intercept_choosers(page)
    expect = _expect()
    try:
        _tab_to(page, "#pick-files")
        _press_for_chooser(page, "Enter").set_files([upload("keys.png", "image/png", png_with_alpha(40, 33))])
        expect(page.locator("#picked li")).to_have_count(1)
        _tab_to(page, "#opt-steps")
        page.keyboard.press("Control+A")
        page.keyboard.type(STEPS)
        _tab_to(page, "#protect")
        page.keyboard.press("Enter")
        expect(page.locator(".result")).to_have_count(1, timeout=TIMEOUT_MS)
        _tab_to(page, ".result a[download]")
        with page.expect_download() as info:
            page.keyboard.press("Enter")
        assert Image.open(info.value.path()).size == (40, 33)
    finally:
        context.close()


def test_a_demo_server_says_so_on_the_page(server: Served, browser: Any) -> None:
    """The bundled demo VAE protects nothing real: the page says so where the server is described."""
    context, page, watch = open_page(browser, server.url)
    try:
        warning = page.locator("#model-warning")
        _expect()(warning).to_be_visible()
        assert "does not protect your pictures" in warning.inner_text()
        assert "--model taef2" in warning.inner_text() and not watch.errors
    finally:
        context.close()


def test_serve_printed_the_page_url(server: Served) -> None:
    assert f"web page at {server.url}/" in server.log.read_text()
