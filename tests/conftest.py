"""Fixtures and markers of every test layer; they live in tests/support (see its __init__)."""

from __future__ import annotations

import pytest

from support import needs
from support.fixtures import (app, browser, docker_settings, gcs_emulator, local_settings, make_app,  # noqa: F401 - fixtures
                              moto_server, processes, redis_url, runtime_image, store_settings)
from support.runtimes import parametrize_runtimes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_runtimes(metafunc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs.add_markers(items)


@pytest.fixture(autouse=True)
def _markers_match_the_fixtures_used(request):
    yield
    needs.check(request)
