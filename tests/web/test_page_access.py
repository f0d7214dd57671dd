"""The page for everyone: phone-sized screens, labels, contrast, and servers that ask for an API key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import Served, open_page, png_with_alpha, start_server, upload

PHONE = (390, 844)
AA_CONTRAST = 4.5

# WCAG 2 contrast ratio of each visible text element against the first opaque background behind it.
CONTRAST_JS = """(selector) => {
  const parse = (text) => {
    const p = text.match(/rgba?\\(([^)]+)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.a > 0.5) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const out = [];
  for (const el of document.querySelectorAll(selector)) {
    if (!el.getClientRects().length || !el.textContent.trim()) continue;
    const [hi, lo] = [lum(parse(getComputedStyle(el).color)), lum(background(el))].sort((a, b) => b - a);
    out.push([el.tagName + " " + el.textContent.trim().slice(0, 40), (hi + 0.05) / (lo + 0.05)]);
  }
  return out;
}"""

UNLABELLED_JS = """() => [...document.querySelectorAll("input, select, textarea, button, a[href], canvas, img")]
  .filter((e) => e.getClientRects().length && e.type !== "file")
  .filter((e) => {
    if (e.tagName === "IMG") return !e.alt;
    if (e.tagName === "CANVAS") return !e.getAttribute("aria-label");
    return !((e.labels && e.labels.length) || e.getAttribute("aria-label") || e.textContent.trim());
  })
  .map((e) => e.outerHTML.slice(0, 120))"""


def test_phone_width_labels_and_contrast(server: Served, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context, page, watch = open_page(browser, server.url, *PHONE)
    try:
        page.set_input_files("#file-input", [upload("phone.png", "image/png", png_with_alpha(61, 47))])
        page.fill("#opt-steps", "2")
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator(".result")).to_have_count(1, timeout=90_000)
        page.locator("details summary").click()  # the generic fields too
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0], "no sideways scrolling"
        for selector in ("#protect", ".result a[download]", ".result .split", "#opt-eps"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE[0], selector
        assert page.evaluate(UNLABELLED_JS) == []
        ratios = page.evaluate(CONTRAST_JS, "h1, h2, h3, h4, p, label, small, button, a, dt, dd, figcaption, "
                               "summary, output, strong, .status, .name, .dims")
        assert len(ratios) > 30
        low = [(text, round(ratio, 2)) for text, ratio in ratios if ratio < AA_CONTRAST]
        assert low == [], f"text below WCAG AA contrast {AA_CONTRAST}:1: {low}"
        page.get_by_role("button", name="Red-team report").click()
        table = page.locator(".result .redteam table")
        expect(table).to_be_visible(timeout=90_000)
        assert table.locator("tbody tr").count() >= 3  # one row per publishing channel
        assert not watch.errors, watch.errors
    finally:
        context.close()


def test_cancel_deletes_the_job(server: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    context, page, _ = open_page(browser, server.url)
    try:
        created: list[str] = []
        page.on("response", lambda r: created.append(r.json()["id"]) if r.request.method == "POST"
                and r.url.endswith("/v1/jobs") and r.status == 202 else None)
        files = [upload(f"slow{i}.png", "image/png", png_with_alpha(96, 96)) for i in range(2)]
        page.set_input_files("#file-input", files)
        page.fill("#opt-steps", "60")
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator('#progress li[data-status="running"]').first).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator('#progress li[data-status="cancelled"]')).to_have_count(2)
        expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
        assert httpx.get(f"{server.url}/v1/jobs/{created[0]}", timeout=10).status_code == 404
        expect(page.locator(".result")).to_have_count(0)
    finally:
        context.close()


def body_props(schema: dict[str, Any]) -> dict[str, Any]:
    """The form fields of POST /v1/jobs in an OpenAPI document."""
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    return schema["components"]["schemas"][body["$ref"].split("/")[-1]]["properties"]  # type: ignore[no-any-return]


def test_strength_stops_drive_the_slider(server: Served, browser: Any) -> None:
    """Named stops set eps; the slider's bounds come from the server's OpenAPI schema."""
    from playwright.sync_api import expect

    context, page, _ = open_page(browser, server.url)
    try:
        schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
        eps = body_props(schema)["eps"]
        slider = page.locator("#opt-eps")
        expect(slider).to_have_attribute("max", str(int(eps["maximum"])))
        expect(slider).to_have_value(str(int(eps["default"])))
        page.get_by_role("button", name="Strong 24").click()
        expect(slider).to_have_value("24")
        expect(page.locator("#eps-out")).to_have_text("24 of 255 levels (strong)")
        expect(page.get_by_role("button", name="Strong 24")).to_have_attribute("aria-pressed", "true")
        slider.focus()
        page.keyboard.press("ArrowLeft")
        expect(page.locator("#eps-out")).to_have_text("23 of 255 levels")
        if "intensity" in body_props(schema):  # named stops send the server's intensity knob, others a plain eps
            expect(page.locator("#opt-intensity")).to_have_value("")
            page.get_by_role("button", name="Strong 24").click()
            expect(page.locator("#opt-intensity")).to_have_value("strong")
            assert "intensity" not in page.locator("#options-more").inner_html()
        page.select_option("#opt-format", "jpeg")
        expect(page.locator("#lossy-warning")).to_contain_text("lossy")
        page.select_option("#opt-format", "png")
        expect(page.locator("#lossy-warning")).to_be_hidden()
    finally:
        context.close()


@pytest.fixture(scope="module")
def keyed_server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    served = start_server(tmp_path_factory.mktemp("web_keyed"), "--api-key", "s3cret-key")
    try:
        yield served
    finally:
        served.stop()


def test_api_key_field_when_the_server_requires_one(keyed_server: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    context, page, _ = open_page(browser, keyed_server.url.rstrip("/"), wait_ready=False)
    try:
        key_field = page.get_by_label("This server asks for an API key")
        expect(key_field).to_be_visible()
        expect(key_field).to_be_focused()
        key_field.fill("wrong")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#errors")).to_contain_text("Missing or wrong API key")
        key_field.fill("s3cret-key")
        page.get_by_role("button", name="Use this key").click()
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#key-section")).to_be_hidden()
        assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [1, 0]
        page.set_input_files("#file-input", [upload("k.png", "image/png", png_with_alpha(33, 35))])
        page.fill("#opt-steps", "1")
        page.get_by_role("button", name="Protect", exact=True).click()
        expect(page.locator(".result")).to_have_count(1, timeout=90_000)
    finally:
        context.close()
    other, page2, _ = open_page(browser, keyed_server.url, wait_ready=False)
    try:  # a new session does not know the key
        expect(page2.get_by_label("This server asks for an API key")).to_be_visible()
    finally:
        other.close()
