"""Fixtures of the API security tests: apps on embedded storage and a real Redis, with keys."""

from __future__ import annotations

import pytest

from nanogrid.api import create_app
from nanogrid.services import Services


class App:
    """A Flask test client with its Services and key store, and helpers to act as a tenant."""

    def __init__(self, settings):
        self.services = Services(settings)
        self.flask = create_app(settings, self.services)
        self.client = self.flask.test_client()
        self.keys = self.flask.extensions["nanogrid_guard"].keys

    @property
    def settings(self):
        return self.services.settings

    def new_key(self, tenant: str) -> dict:
        key, _ = self.keys.create(tenant)
        return bearer(key)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_app(local_settings):
    """make_app(**settings changes) -> App on a fresh data dir and a flushed Redis."""

    def make(**changes) -> App:
        return App(local_settings.replace(**changes))

    return make
