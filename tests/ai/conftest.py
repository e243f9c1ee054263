"""Fixtures for the AI channel tests: the fake Ollama server and nanogrid_ai bound to a channel."""

from __future__ import annotations

import importlib
import sys
from typing import Iterator

import pytest

from support.fake_ollama import FakeOllama
from nanogrid.ai.channel import Channel
from nanogrid.config import Settings
from nanogrid.sandbox import RUNTIME_DIR


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A fresh Ollama-compatible server on a free port, listening on every interface."""
    with FakeOllama() as server:
        yield server


@pytest.fixture
def nanogrid_ai():
    """The in-sandbox client module, imported the way function code imports it."""
    if str(RUNTIME_DIR) not in sys.path:
        sys.path.insert(0, str(RUNTIME_DIR))
    module = importlib.import_module("nanogrid_ai")
    saved = dict(module._settings)
    yield module
    module._settings.update(saved)


@pytest.fixture
def open_channel(nanogrid_ai, fake_ollama):
    """open_channel(**settings changes) -> a started Channel to the fake server, nanogrid_ai bound to it."""
    channels: list[Channel] = []

    def open_channel(endpoint: str | None = None, **changes) -> Channel:
        settings = Settings(ai_endpoint=endpoint or fake_ollama.url, **changes)
        channel = Channel(settings).start()
        channels.append(channel)
        nanogrid_ai.configure(socket=str(channel.socket_path),
                              timeout_s=settings.ai_connect_timeout_s + settings.ai_timeout_s + 5)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()
