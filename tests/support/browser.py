"""A real Chromium for the console's tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download cannot run here, so it launches the Debian binary
(executable_path), headless, with a fresh profile of the test's own and Chromium's background
traffic (updates, sync, first-run pages) switched off, so every request it makes is the page's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("the console's browser tests need Debian's chromium on PATH (apt-get install chromium; "
                    "the README test command installs it)")
    return found


@contextmanager
def browser_context(profile: Path) -> Iterator:
    """A Playwright BrowserContext of a headless Chromium with the profile directory profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860})
        try:
            yield context
        finally:
            context.close()
