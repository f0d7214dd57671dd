"""The robustness preset (EoT) on the artists' page, in a real browser against ``pca-protect serve --model demo``:
a select built from the options schema's choices (no name to guess), "none" first and chosen by default (nothing
sent: no EoT), and the chosen preset is what the job the server made carries."""

from __future__ import annotations

from typing import Any

from pca_attack.attack.eot_names import EOT_DESCRIPTIONS
from tests.web.conftest import Served, open_page, png_with_alpha, upload


def _posted_job(page: Any) -> dict[str, Any]:
    """Press Protect with one picture and 1 step: the job the server made from the page's POST /v1/jobs."""
    page.set_input_files("#file-input", [upload("art.png", "image/png", png_with_alpha())])
    page.fill("#opt-steps", "1")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/jobs")) as answer:
        page.get_by_role("button", name="Protect", exact=True).click()
    assert answer.value.status == 202
    return dict(answer.value.json())


def test_eot_is_a_select_of_the_presets_with_none_by_default(server: Served, browser: Any) -> None:
    from playwright.sync_api import expect

    context, page, watch = open_page(browser, server.url)
    try:
        select = page.locator("#opt-eot")
        assert select.evaluate("node => node.tagName") == "SELECT"
        values = select.locator("option").evaluate_all("nodes => nodes.map(n => n.value)")
        assert values == ["", *EOT_DESCRIPTIONS]
        expect(select).to_have_value("")
        job = _posted_job(page)
        assert job["settings"].get("eot") is None
        assert not watch.errors, watch.errors
    finally:
        context.close()
    context, page, watch = open_page(browser, server.url)
    try:
        page.locator("summary", has_text="More settings").click()
        page.select_option("#opt-eot", "jpeg-75")
        job = _posted_job(page)
        assert job["settings"]["eot"] == "jpeg-75"
        assert not watch.errors, watch.errors
    finally:
        context.close()
