"""Function sources the tests deploy: ordinary ones, and gated ones that run until the test lets
them finish instead of for a guessed number of seconds.

A run gated on a release file lasts exactly as long as the test needs it running, however slow the
machine: the test opens the gate (creates the file) once it has seen what it came to see. Only a
sandbox that sees the host's files honours it: the process sandbox does (it does not isolate).
"""

from __future__ import annotations

import uuid
from pathlib import Path

OK = "def handler(event, context):\n    return event['n'] * 2\n"
FAILS = "def handler(event, context):\n    raise ValueError('kaput')\n"
# Long enough for any test; the gate, not the timeout, ends the run.
GATED_TIMEOUT_S = 600
GATED = """
import os, time
def handler(event, context):
    while not os.path.exists(event["release"]):
        time.sleep(0.05)
    return "released"
"""


class Gate:
    """A release file: the event of a GATED run names it; open() lets every run waiting on it finish.

    As a context manager it opens at the end of the block whatever happened, so a failed test
    does not leave a run holding the worker it shares with the next test (a warm shutdown waits
    for its runs)."""

    def __init__(self, directory: Path):
        self.path = directory / f"release-{uuid.uuid4().hex}"

    @property
    def event(self) -> dict:
        return {"release": str(self.path)}

    def open(self) -> None:
        self.path.touch()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.open()
