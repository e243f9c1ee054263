"""The Docker sandbox's OCI runtimes the tests run under (README: Sandbox runtimes).

A module names the ones its tests run under with `pytest.mark.runtimes(...)` (default: runc
alone); every test that takes the fixture `docker_runtime`, or one built on it (`docker_settings`),
then runs once per runtime, module by module (a module-scoped stack is started once per runtime).
NANOGRID_TEST_RUNTIMES (comma-separated) narrows that down for a quick local run; CI runs them all.
The marker is registered in setup.cfg.
"""

from __future__ import annotations

import os

import pytest

DEFAULT = ("runc",)


def chosen(runtimes) -> list[str]:
    """runtimes, narrowed down to NANOGRID_TEST_RUNTIMES when it is set."""
    wanted = os.environ.get("NANOGRID_TEST_RUNTIMES")
    return [name for name in runtimes if not wanted or name in wanted.split(",")]


def parametrize_runtimes(metafunc: pytest.Metafunc) -> None:
    if "docker_runtime" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("runtimes")
    metafunc.parametrize("docker_runtime", chosen(marker.args if marker else DEFAULT), scope="module")
