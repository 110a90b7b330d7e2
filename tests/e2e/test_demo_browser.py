"""The classic /demo page in a real headless Chromium: two tabs see each other, share text and
cursors.

Needs a system Chromium (Debian: `apt-get install chromium`); skipped without it, except in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, expect

from tests.support.browser import WAIT_MS, launched_chromium
from tests.support.server import ServerProcess, running_server

PROJECT = "e2e-room"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No editor bundle, as on a machine without Node.js: /demo is this classic page, whatever
    # `make run` left in the checkout (test_demo_yjs_browser.py covers the editor).
    missing = tmp_path_factory.mktemp("no-bundle") / "editor.js"
    with running_server({"DEMO_BUNDLE": str(missing)}) as running:
        yield running


class Tab:
    """One browser tab on /demo, in its own context (its own storage, like another person)."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.context: BrowserContext = browser.new_context(viewport={"width": 900, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.problems: list[str] = []
        # Any script error or console error (a CSP violation shows up here) fails the test.
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.goto(f"{server.http_url}/demo")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def join(self, user: str, project: str = PROJECT) -> None:
        self.page.get_by_test_id("project").fill(project)
        self.page.get_by_test_id("user").fill(user)
        self.page.get_by_test_id("connect").click()
        expect(self.page.get_by_test_id("status")).to_have_attribute("data-state", "connected")

    def present(self, user: str) -> Locator:
        return self.page.locator(f'[data-testid="presence-user"][data-user-id="{user}"]')

    def cursor_of(self, user: str) -> Locator:
        return self.page.locator(f'[data-testid="cursor"][data-user-id="{user}"]')

    def close(self) -> None:
        if not self.page.is_closed():
            self.page.close()
        self.context.close()


@pytest.fixture
def tabs(browser: Browser, server: ServerProcess) -> Iterator[tuple[Tab, Tab]]:
    first, second = Tab(browser, server), Tab(browser, server)
    try:
        yield first, second
    finally:
        # E2E_SCREENSHOTS=<directory> keeps a picture of each tab as the test left it.
        screenshots = os.environ.get("E2E_SCREENSHOTS")
        for name, tab in (("a", first), ("b", second)):
            if screenshots and not tab.page.is_closed():
                tab.page.screenshot(path=Path(screenshots) / f"demo-{name}.png", full_page=True)
            tab.close()


def test_two_tabs_share_presence_text_cursors_and_leaving(tabs: tuple[Tab, Tab]) -> None:
    a, b = tabs
    a.join("alice")
    b.join("bob")
    # Presence: each lists both, itself marked, from presence_state and user_joined.
    for tab, me, other in ((a, "alice", "bob"), (b, "bob", "alice")):
        expect(tab.present(other)).to_have_attribute("data-self", "false")
        expect(tab.present(me)).to_have_attribute("data-self", "true")

    # Alice types: Bob sees the text, and that she is typing until she stops.
    a.page.get_by_test_id("text").click()
    a.page.keyboard.type("hello")
    expect(b.page.get_by_test_id("typing")).to_have_text("alice is typing…")
    expect(b.present("alice")).to_have_attribute("data-typing", "true")
    a.page.keyboard.press("Enter")
    a.page.keyboard.type("world")
    expect(b.page.get_by_test_id("text")).to_have_value("hello\nworld")
    expect(b.page.get_by_test_id("typing")).to_have_text("")

    # Alice moves her caret back two characters: Bob sees it at line 1, column 3 (from 0).
    a.page.keyboard.press("ArrowLeft")
    a.page.keyboard.press("ArrowLeft")
    expect(a.page.get_by_test_id("my-cursor")).to_have_attribute("data-column", "3")
    alice_in_b = b.cursor_of("alice")
    expect(alice_in_b).to_have_attribute("data-line", "1")
    expect(alice_in_b).to_have_attribute("data-column", "3")
    expect(alice_in_b).to_contain_text("line 2, column 4")
    expect(b.page.get_by_test_id("mirror").locator(".caret-label")).to_have_text("alice")

    # And the other way round: Bob appends, Alice sees his text and cursor.
    b.page.get_by_test_id("text").click()
    b.page.keyboard.press("Control+End")
    b.page.keyboard.type("!")
    expect(a.page.get_by_test_id("text")).to_have_value("hello\nworld!")
    bob_in_a = a.cursor_of("bob")
    expect(bob_in_a).to_have_attribute("data-line", "1")
    expect(bob_in_a).to_have_attribute("data-column", "6")
    # Alice's caret kept its place through Bob's edit.
    expect(a.page.get_by_test_id("my-cursor")).to_have_attribute("data-column", "3")

    # Bob disconnects: he sees the close code, Alice sees him leave.
    b.page.get_by_test_id("disconnect").click()
    expect(b.page.get_by_test_id("close-code")).to_have_text("1000")
    expect(b.page.get_by_test_id("status")).to_have_attribute("data-state", "closed")
    expect(a.present("bob")).to_have_count(0)
    expect(a.cursor_of("bob")).to_have_count(0)

    # Bob rejoins and gets the current text from Alice; then closes his tab.
    b.join("bob")
    expect(a.present("bob")).to_have_count(1)
    expect(b.page.get_by_test_id("text")).to_have_value("hello\nworld!")
    expect(b.cursor_of("alice")).to_have_attribute("data-column", "3")
    b.page.close()
    expect(a.present("bob")).to_have_count(0)
    expect(a.page.get_by_test_id("log")).to_contain_text("bob left")
    expect(a.page.get_by_test_id("status")).to_have_attribute("data-state", "connected")

    assert a.problems == []
    assert b.problems == []


def test_close_code_is_shown_when_the_server_refuses(
    browser: Browser, server: ServerProcess
) -> None:
    tab = Tab(browser, server)
    try:
        # A pasted token that does not verify: the upgrade is refused with 401, which browsers
        # report only as 1006.
        tab.page.get_by_test_id("token").fill("not.a.token")
        tab.page.get_by_test_id("connect").click()
        expect(tab.page.get_by_test_id("close-code")).to_have_text("1006")
        expect(tab.page.get_by_test_id("status")).to_have_attribute("data-state", "closed")
    finally:
        tab.close()
