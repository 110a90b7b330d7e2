"""The system's Chromium under Playwright, for the browser tests in tests/e2e.

Playwright drives the Chromium the machine has (Debian: `apt-get install chromium`), never one it
downloads. Without one the tests are skipped with a message, except under CI=true, where they
fail: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
CHROMIUM_ARGS = [
    # The page is our own, on localhost; the sandbox cannot start as root or in most containers.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# A guard against a hung test: every wait ends as soon as its condition holds.
WAIT_MS = 10_000


def chromium_executable() -> str:
    """The Chromium to drive: $CHROMIUM_PATH, else the first on PATH; skip or fail without."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"CHROMIUM_PATH={configured} is not an executable file", pytrace=False)
        return configured
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = (
        "the browser test needs Chromium: install it with `sudo apt-get install chromium` "
        "(Debian; `chromium-browser` on Ubuntu) or point CHROMIUM_PATH at a Chromium or Chrome "
        "binary. Playwright's own browser download is not used."
    )
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@contextmanager
def launched_chromium() -> Iterator[Browser]:
    """A headless system Chromium, closed on exit; `expect` waits at most WAIT_MS."""
    executable = chromium_executable()
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()
