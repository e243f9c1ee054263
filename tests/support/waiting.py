"""Waiting on evidence: poll a check until it holds, and fail with what was awaited when it does not."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """check()'s first truthy result, polled every interval_s; fails the test naming `what` when
    none came within timeout_s. An exception from check() ends the wait at once: a check asserts
    what must hold while it waits, and returns a falsy value for what is not there yet.

    timeout_s bounds a wait for something that will happen, so it is generous (a slow machine
    only waits longer); it is never the thing a test measures.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what} (last check: {result!r:.2000})")
        time.sleep(interval_s)
