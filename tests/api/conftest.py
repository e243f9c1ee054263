"""The API under Flask's test client, on embedded storage and a real Redis."""

from __future__ import annotations

import pytest

from nanogrid.api import create_app
from nanogrid.services import Services


@pytest.fixture
def services(local_settings):
    return Services(local_settings)


@pytest.fixture
def api(services):
    return create_app(services.settings, services).test_client()
