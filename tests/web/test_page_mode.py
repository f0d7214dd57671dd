"""The mode selector of the artists' page (issue 18) in a real browser against ``pca-protect serve --model
demo``: shown when GET /v1/models reports a generator (the demo model ships one), absent when it reports none;
the chosen mode (pgd, fast, fast+N) is what POST /v1/jobs carries and what the server ran."""

from __future__ import annotations

from typing import Any

import httpx

from tests.web.conftest import Served, open_page, png_with_alpha, upload

TIMEOUT_MS = 90_000


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _posted_job(page: Any, choose: Any) -> dict[str, Any]:
    """Run `choose(page)`, press Protect: the job the server made from the page's POST /v1/jobs (its settings
    are the form fields the server received; Chromium does not expose a multipart body with files)."""
    page.set_input_files("#file-input", [upload("art.png", "image/png", png_with_alpha())])
    choose(page)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/jobs")) as answer:
        page.get_by_role("button", name="Protect", exact=True).click()
    assert answer.value.status == 202
    return dict(answer.value.json())


def test_mode_selector_posts_the_chosen_mode(server: Served, browser: Any) -> None:
    generator_id = httpx.get(f"{server.url}/v1/models", timeout=10).json()["generator_id"]
    assert generator_id, "the demo model ships a generator"
    expect = _expect()

    def fast_plus_3(page: Any) -> None:
        page.select_option("#opt-mode-choice", "fast+N")
        expect(page.locator("#opt-mode-steps")).to_be_visible()
        expect(page.locator("#opt-steps")).to_be_disabled()
        page.fill("#opt-mode-steps", "3")

    for choose, expected in ((lambda page: page.select_option("#opt-mode-choice", "fast"), "fast"),
                             (fast_plus_3, "fast+3")):
        context, page, watch = open_page(browser, server.url)
        try:
            expect(page.locator("#opt-mode-choice")).to_have_value("pgd")  # the default stays the full attack
            expect(page.locator("#opt-mode-steps")).to_be_hidden()
            job = _posted_job(page, choose)
            assert job["settings"]["mode"] == expected
            expect(page.locator(".result")).to_have_count(1, timeout=TIMEOUT_MS)
            done = httpx.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()
            certificate = done["items"][0]["certificate"]
            assert certificate["mode"] == expected and certificate["generator_id"] == generator_id
            assert not watch.errors, watch.errors
        finally:
            context.close()


def test_no_selector_without_a_generator(server: Served, browser: Any) -> None:
    """A server that reports no generator (here: its /v1/models answer with generator_id null) gets no mode
    control (not even under "More settings"), and the job runs the server's default, pgd."""
    context = browser.new_context()
    page = context.new_page()

    def without_generator(route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), "generator_id": None})

    page.route("**/v1/models", without_generator)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert page.locator("#opt-mode-choice").count() == 0 and page.locator('[name="mode"]').count() == 0
        job = _posted_job(page, lambda p: p.fill("#opt-steps", "1"))
        assert job["settings"].get("mode", "pgd") == "pgd"  # nothing sent: the server's default
    finally:
        context.close()
