"""The page at /: served with the catalog's choices, switchable off, and working in a real
browser (Debian's headless Chromium) against the real service on the embedded model."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from service.api.app import create_app
from service.recommend.answer import Answer, render
from service.recommend.catalog import CATEGORIES
from service.recommend.contract import MSG_MESSAGE_TOO_SHORT
from service.settings import Settings
from tests.fakes import ScriptedEngine
from tests.support.service_process import ROOT, ServiceProcess

ARTIFACTS = ROOT / "test-artifacts"
ANSWER_TIMEOUT_S = 180


async def get_page(settings: Settings) -> httpx.Response:
    app = create_app(settings, ScriptedEngine())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get("/")


def test_the_page_offers_the_catalog_and_loads_nothing_from_elsewhere() -> None:
    response = asyncio.run(get_page(Settings(_env_file=None)))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for category in CATEGORIES:
        assert category.label in response.text
    assert not re.search(r"(src|href)=\"(https?:)?//", response.text)  # no CDN
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_the_page_can_be_switched_off() -> None:
    response = asyncio.run(get_page(Settings(_env_file=None, page_enabled=False)))
    assert response.status_code == 404
    assert response.json()["status"] == 404


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return server_factory("page")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make test`, which installs it (Debian package chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            # As root, and on a machine with no network but loopback: no sandbox, nothing in
            # the background that would try to reach the internet.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


def wait_for_answer(page: Page) -> dict[str, Any]:
    """Waits until the page has shown the answer of the request it just made. Polled from
    here: the page's Content-Security-Policy (kept on in the test) forbids the eval that
    Playwright's wait_for_function needs."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        close: dict[str, Any] | None = page.evaluate("window.leafreshLastClose")
        if close is not None and page.locator("#send").is_enabled():
            return close
        page.wait_for_timeout(100)
    raise AssertionError(f"no answer within {ANSWER_TIMEOUT_S} s")


def send(page: Page, action: Callable[[], None]) -> dict[str, Any]:
    page.evaluate("window.leafreshLastClose = null")
    action()
    return wait_for_answer(page)


def assert_cards_show(page: Page, close: dict[str, Any], code: str) -> None:
    assert close["status"] == 200, close
    challenges = close["data"]["challenges"]
    cards = page.locator("#cards .card")
    assert cards.count() == 3
    for index, challenge in enumerate(challenges):
        card = cards.nth(index)
        assert card.locator("h3").text_content() == challenge["title"]
        assert card.locator("p").text_content() == challenge["description"]
        assert card.locator(".badge").text_content() == challenge["label"]
        assert card.locator(".badge").get_attribute("data-category") == code == challenge["category"]
    # What streamed in, live, was exactly the rendering of the answer the cards show; the
    # introduction stays above the cards.
    assert page.evaluate("window.leafreshLastStream") == render(Answer.model_validate(close["data"]))
    assert page.locator("#live").text_content() == close["data"]["recommend"]


def test_a_phone_user_gets_challenges_then_continues_the_conversation_and_sees_errors(
    server: ServiceProcess, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(f"{server.base_url}/")
        page.select_option("#location", "바닷가")
        page.select_option("#workType", "재택근무")
        page.select_option("#category", "플로깅")
        close = send(page, lambda: page.click("#recommend"))
        assert_cards_show(page, close, "PLOGGING")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-phone-answer.png"), full_page=True)

        # The chat continues the same session, from the keyboard: type, then Enter.
        page.fill("#message", "채식 위주로 바꾸고 싶어요")
        close = send(page, lambda: page.press("#message", "Enter"))
        assert_cards_show(page, close, "VEGAN")

        # A message too short: the server's Korean message, and a way to try again.
        page.fill("#message", "안녕")
        close = send(page, lambda: page.press("#message", "Enter"))
        assert close["status"] == 422
        assert page.locator("#error-message").text_content() == MSG_MESSAGE_TOO_SHORT
        assert page.locator("#retry").is_visible()
        assert page.locator("#cards .card").count() == 0
        page.screenshot(path=str(ARTIFACTS / "page-phone-error.png"), full_page=True)
    finally:
        page.close()
    assert problems == []
