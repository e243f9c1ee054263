"""Run limits: what a function or a run may ask for, checked against the installation's ceilings.

Every layer shares these values: the API validates requests with `Limits.check`, the worker
resolves a run's limits with `Limits.resolve`, and the sandboxes enforce the resolved `Limits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanogrid.config import Settings


class LimitError(ValueError):
    """A requested limit is malformed, below the floor, or above the installation's ceiling."""


# The smallest values a run can work with: the runner itself needs a few processes, files and MB,
# and crun sets up the container under the container's own RLIMIT_NOFILE (at 32 it cannot start
# one: "openat2 proc/fs: Too many open files"; 48 was enough here, 64 leaves room).
LIMIT_FLOORS = {"timeout_s": 0.1, "memory_mb": 16, "cpus": 0.05, "pids": 8, "open_files": 64, "file_size_mb": 1,
                "tmpfs_mb": 1, "output_bytes": 1024, "init_timeout_s": 0.1}
FRACTIONAL_LIMITS = frozenset({"timeout_s", "cpus", "init_timeout_s"})


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    open_files: int
    file_size_mb: int
    tmpfs_mb: int
    output_bytes: int
    # How long main.py's one import (init once) may take, on top of the first run's timeout_s.
    init_timeout_s: float = 60.0

    @classmethod
    def resolve(cls, settings: Settings, requested: dict | None = None) -> "Limits":
        """Defaults from settings; a function may lower a limit but never raise it past the ceiling."""
        requested = requested or {}
        values = {name: getattr(settings, name).clamp(requested.get(name)) for name in cls.__dataclass_fields__}
        return cls(**{n: (v if n in FRACTIONAL_LIMITS else int(v)) for n, v in values.items()})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    @classmethod
    def check(cls, settings: Settings, requested) -> dict:
        """Validate limits a function or a run asks for: {name: value}, each within floor..ceiling.

        Returns them normalised (whole numbers where the limit is one); raises LimitError with a
        message fit for the API's 400 answer.
        """
        if requested is None:
            return {}
        if not isinstance(requested, dict):
            raise LimitError(f"limits must be an object with any of: {', '.join(cls.names())}")
        unknown = sorted(set(requested) - set(cls.names()))
        if unknown:
            raise LimitError(f"unknown limit(s): {', '.join(unknown)}; known: {', '.join(cls.names())}")
        checked = {}
        for name, value in requested.items():
            if value is None:
                continue
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise LimitError(f"{name} must be a number") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise LimitError(f"{name} must be a number")
            if name not in FRACTIONAL_LIMITS:
                if value != int(value):
                    raise LimitError(f"{name} must be a whole number")
                value = int(value)
            floor, ceiling = LIMIT_FLOORS[name], getattr(settings, name).ceiling
            if value < floor:
                raise LimitError(f"{name} must be at least {floor:g}")
            if value > ceiling:
                raise LimitError(f"{name} may be at most {ceiling:g} on this installation (GET /limits)")
            checked[name] = value
        return checked
