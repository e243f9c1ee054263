"""Fixtures of every test layer; they live in tests/support (see its __init__)."""

from __future__ import annotations

from support.fixtures import (app, gcs_emulator, local_settings, make_app, moto_server,  # noqa: F401 - fixtures
                              processes, redis_url, runtime_image)
