"""Runs handed straight to a sandbox backend (no API, no worker): a function version's code
directory, laid out as the worker extracts it, and the RunSpecs of its runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
import uuid
from pathlib import Path

from nanogrid.limits import Limits
from nanogrid.outcomes import Outcome, classify
from nanogrid.sandbox import RawRun, RunSpec

LIMITS = Limits(timeout_s=10, memory_mb=256, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)


def readable_tree(path: Path) -> Path:
    """path and everything below it readable by the sandbox's user (directories 755, files 644)."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    return path


class Function:
    """One function version: its code directory (shared by its runs, so they share warm containers)."""

    def __init__(self, directory: Path, code: str, handler: str | None = "handler", **changes):
        self.code = textwrap.dedent(code)
        self.handler = handler
        self.changes = changes  # RunSpec fields and limits every run gets
        self.code_dir = directory / f"fn-{uuid.uuid4().hex[:12]}"
        self.code_dir.mkdir(mode=0o755)
        (self.code_dir / "main.py").write_text(self.code)
        readable_tree(self.code_dir)

    def spec(self, event=None, **changes) -> RunSpec:
        changes = {**self.changes, **changes}
        limits = dataclasses.replace(LIMITS, **{k: changes.pop(k) for k in list(changes) if k in Limits.names()})
        return RunSpec(f"test-{uuid.uuid4().hex[:12]}", f"fn-{self.code_dir.name}", self.code_dir, self.handler,
                       limits, version=1, code_sha=hashlib.sha256(self.code.encode()).hexdigest(),
                       input_json=json.dumps(event if event is not None else {}), **changes)

    def run(self, sandbox, event=None, **changes) -> tuple[RawRun, Outcome]:
        spec = self.spec(event, **changes)
        raw = sandbox.run(spec)
        return raw, classify(raw, spec.limits)
