"""The collaborative /demo editor in a real headless Chromium, against a real server's /yjs/.

The page runs the real Yjs and y-websocket provider from npm, installed and bundled at test time
by config/build_demo.py, the script `make run` uses (never a CDN, never a browser download). Two
people type at once, one in the middle of the text and one at its end, then both at one spot:
both textareas converge on one text holding everything each typed, a JSON client on /ws/ reads
that text (and its own edit reaches both pages), the store holds it, and each page lists the
other person. The pages load nothing from another origin and log no error.

Node.js and npm are required (never skipped: `.ci/run` installs them); Chromium is found as for
test_demo_browser.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from itertools import zip_longest
from pathlib import Path

import anyio
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, expect

from tests.support.browser import WAIT_MS, launched_chromium
from tests.support.clients import member
from tests.support.server import ROOT, ServerProcess, running_server
from tests.support.stores import sqlite_text
from tests.support.yjs import YjsClient

BUILD_SCRIPT = ROOT / "config" / "build_demo.py"
# A first build downloads the pinned packages; a later one reuses them and takes a second or two.
BUILD_TIMEOUT = 660.0
PROJECT = "e2e-yjs"
# The page's default document.
DOCUMENT_ID = "main.tex"
SEED = "The quick fox."
# Long enough to connect and sync, short enough to wait for.
SHORT_TTL = 4.0
JSON_EDIT = "\n% added over /ws/"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "editor.js"
    try:
        done = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building the editor took more than {BUILD_TIMEOUT:.0f}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"config/build_demo.py failed ({done.returncode}); the editor test needs Node.js "
            f"18+ and npm (.ci/run installs them):\n{done.stderr}",
            pytrace=False,
        )
    return out


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("documents") / "d.sqlite3"


@pytest.fixture(scope="module")
def server(bundle: Path, database: Path) -> Iterator[ServerProcess]:
    env = {
        "DEMO_BUNDLE": str(bundle),
        "DOCUMENT_STORE": f"sqlite:///{database}",
        # No leeway: the expiry test's token ends its session when it says it expires.
        "JWT_LEEWAY": "0s",
    }
    with running_server(env) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


class EditorTab:
    """One person on /demo, in a browser context of their own."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.context: BrowserContext = browser.new_context(viewport={"width": 900, "height": 900})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.problems: list[str] = []
        self.requests: list[str] = []
        self.sockets: list[str] = []
        # Any script error or console error (a CSP violation, a refused WebSocket) fails the test.
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("websocket", lambda socket: self.sockets.append(socket.url))
        self.page.goto(f"{server.http_url}/demo")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    @property
    def text(self) -> Locator:
        return self.page.get_by_test_id("text")

    def join(self, user: str) -> None:
        self.page.get_by_test_id("project").fill(PROJECT)
        self.page.get_by_test_id("document").fill(DOCUMENT_ID)
        self.page.get_by_test_id("user").fill(user)
        self.page.get_by_test_id("connect").click()
        expect(self.page.get_by_test_id("status")).to_have_attribute("data-state", "connected")
        expect(self.page.get_by_test_id("synced")).to_have_attribute("data-synced", "true")
        expect(self.text).to_be_enabled()

    def present(self, user: str) -> Locator:
        return self.page.locator(f'[data-testid="presence-user"][data-user-id="{user}"]')

    def cursor_of(self, user: str) -> Locator:
        return self.page.locator(f'[data-testid="cursor"][data-user-id="{user}"]')

    def caret_after(self, prefix: str) -> None:
        """Put the caret after `prefix` with the keyboard, as a person would."""
        self.text.focus()
        self.page.keyboard.press("Control+Home")
        for _ in prefix:
            self.page.keyboard.press("ArrowRight")
        expect(self.page.get_by_test_id("my-cursor")).to_have_attribute(
            "data-offset", str(len(prefix))
        )

    def close(self) -> None:
        if not self.page.is_closed():
            self.page.close()
        self.context.close()


@pytest.fixture
def tabs(browser: Browser, server: ServerProcess) -> Iterator[tuple[EditorTab, EditorTab]]:
    first, second = EditorTab(browser, server), EditorTab(browser, server)
    try:
        yield first, second
    finally:
        # E2E_SCREENSHOTS=<directory> keeps a picture of each tab as the test left it.
        screenshots = os.environ.get("E2E_SCREENSHOTS")
        for name, tab in (("a", first), ("b", second)):
            if screenshots and not tab.page.is_closed():
                tab.page.screenshot(path=Path(screenshots) / f"editor-{name}.png", full_page=True)
            tab.close()


def interleave(a: EditorTab, a_text: str, b: EditorTab, b_text: str) -> None:
    """Type both texts one keystroke each in turn: no page waits to see the other's last key,
    so edits cross on the way."""
    for left, right in zip_longest(a_text, b_text, fillvalue=""):
        if left:
            a.page.keyboard.type(left)
        if right:
            b.page.keyboard.type(right)


def in_a_thread(function: Callable[[], Awaitable[str]]) -> str:
    """Run an async function on an event loop of its own: Playwright's sync API holds this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result: str = pool.submit(anyio.run, function).result()
    return result


def json_client_reads_then_appends(server: ServerProcess) -> str:
    """A JSON-protocol client of the same document: the text it syncs, before its own edit
    (appended at the end, and acknowledged, so stored) goes out."""

    async def run() -> str:
        url = server.ws_url(PROJECT, server.token("carol"))
        async with member(url) as (ws, state):
            carol = YjsClient("carol", ws, state, document_id=DOCUMENT_ID)
            await carol.sync_with_server()
            await carol.read_until(lambda: carol.synced)
            seen = str(carol)
            carol.text.insert(len(carol.text), JSON_EDIT)
            await carol.flush()
            await carol.read_until(lambda: carol.saved and carol.acks > 0)
            return seen

    return in_a_thread(run)


def test_two_people_typing_at_once_converge_everywhere(
    tabs: tuple[EditorTab, EditorTab], server: ServerProcess, database: Path
) -> None:
    a, b = tabs
    assert a.page.locator("body").get_attribute("data-editor") == "yjs"
    a.join("alice")
    b.join("bob")
    for tab, me, other in ((a, "alice", "bob"), (b, "bob", "alice")):
        expect(tab.present(other)).to_have_attribute("data-self", "false")
        expect(tab.present(me)).to_have_attribute("data-self", "true")

    a.text.focus()
    a.page.keyboard.type(SEED)
    expect(b.text).to_have_value(SEED)

    # Alice in the middle, Bob at the end, at once. Each caret must keep its place through the
    # other's edits, or the words come out scrambled.
    a.caret_after("The quick ")
    b.caret_after(SEED)
    interleave(a, "brown ", b, " It jumps.")
    merged = "The quick brown fox. It jumps."
    expect(a.text).to_have_value(merged)
    expect(b.text).to_have_value(merged)

    # Both at one spot: Yjs orders the two words either way, but each stays whole.
    a.caret_after("The quick brown fox.")
    b.caret_after("The quick brown fox.")
    interleave(a, "[alice]", b, "[bob]")
    either = re.compile(r"The quick brown fox\.(\[alice\]\[bob\]|\[bob\]\[alice\]) It jumps\.")
    expect(a.text).to_have_value(either)
    final = a.text.input_value()
    expect(b.text).to_have_value(final)
    # Each sees where the other's caret is: right after the other's own word.
    for tab, other, word in ((a, "bob", "[bob]"), (b, "alice", "[alice]")):
        offset = final.index(word) + len(word)
        expect(tab.cursor_of(other)).to_have_attribute("data-offset", str(offset))

    # The JSON protocol's view of the same server-side document, and its edit reaching the pages.
    assert json_client_reads_then_appends(server) == final
    expect(a.text).to_have_value(final + JSON_EDIT)
    expect(b.text).to_have_value(final + JSON_EDIT)
    # Its edit was acknowledged, so stored, after everything the pages sent before it.
    assert sqlite_text(database, PROJECT, DOCUMENT_ID) == final + JSON_EDIT

    # Bob closes his tab: Alice sees him go.
    b.page.close()
    expect(a.present("bob")).to_have_count(0)
    expect(a.present("alice")).to_have_count(1)
    expect(a.page.get_by_test_id("log")).to_contain_text("bob left")

    # Nothing came from anywhere but the server: not a script, not a socket.
    for tab in (a, b):
        outside = [
            url for url in tab.requests if not url.startswith((f"{server.http_url}/", "data:"))
        ]
        assert outside == []
        assert f"{server.http_url}/demo/editor.js" in tab.requests
        # One socket, and the token is not in its URL (it goes as the `bearer` subprotocol).
        assert tab.sockets == [f"ws://127.0.0.1:{server.port}/yjs/{PROJECT}/{DOCUMENT_ID}"]
        assert tab.problems == []


def test_a_refused_token_says_why_and_stops(browser: Browser, server: ServerProcess) -> None:
    tab = EditorTab(browser, server)
    try:
        # A pasted token that does not verify: /yjs accepts the WebSocket only to send
        # y-protocols' permission-denied message with the reason (a browser is never told why an
        # upgrade was refused), which the stock provider would only log before retrying.
        tab.page.get_by_test_id("token").fill("not.a.token")
        tab.page.get_by_test_id("user").fill("mallory")
        tab.page.get_by_test_id("connect").click()
        expect(tab.page.get_by_test_id("status")).to_have_attribute("data-state", "closed")
        expect(tab.page.get_by_test_id("status")).to_contain_text("Refused: unauthorized")
        expect(tab.page.get_by_test_id("close-reason")).to_contain_text(
            "permission denied: unauthorized"
        )
        expect(tab.page.get_by_test_id("connect")).to_be_enabled()
        expect(tab.text).to_be_disabled()
        assert tab.problems == []
    finally:
        tab.close()


def test_a_pasted_token_that_expires_ends_the_session_with_the_reason(
    browser: Browser, server: ServerProcess
) -> None:
    tab = EditorTab(browser, server)
    try:
        # A pasted token cannot be renewed by the page, so at its expiry the session ends (the
        # server's 4401) instead of reconnecting with it.
        tab.page.get_by_test_id("token").fill(server.token("dave", ttl=SHORT_TTL))
        tab.join("dave")
        expect(tab.page.get_by_test_id("status")).to_have_attribute("data-state", "closed")
        expect(tab.page.get_by_test_id("status")).to_contain_text("Refused: token_expired")
        expect(tab.text).to_be_disabled()
        assert len(tab.sockets) == 1, tab.sockets
        assert tab.problems == []
    finally:
        tab.close()
