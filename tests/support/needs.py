"""Markers that say what a test needs, derived from the fixtures it uses so that they cannot lie.

Collection marks every test by the fixtures its signature reaches (`redis_url` -> redis, ...);
a fixture a test reaches only at run time (request.getfixturevalue, a parametrized backend) is
marked on its parameter, and after each test the markers are checked against every fixture it
really used, both ways. `pytest -m "not docker"` thus selects exactly the tests that run without
dockerd. Registered in setup.cfg ([tool:pytest] markers).
"""

from __future__ import annotations

import pytest

# Fixture -> the marker of a test that uses it.
NEEDS = {
    "redis_url": "redis",
    "runtime_image": "docker",
    "moto_server": "aws",
    "gcs_emulator": "gcs",
    "processes": "processes",
    "browser": "browser",
}


def add_markers(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def check(request: pytest.FixtureRequest) -> None:
    """Fail the test whose needs markers differ from the fixtures it used, run-time ones included."""
    used = {NEEDS[name] for name in request.fixturenames if name in NEEDS}
    marked = {mark.name for mark in request.node.iter_markers() if mark.name in NEEDS.values()}
    if used != marked:
        pytest.fail(f"{request.node.nodeid}: its markers say it needs {sorted(marked)}, the fixtures it used "
                    f"{sorted(used)} (a fixture reached at run time is marked on the parameter that reaches it)")
