"""Celery settings for `celery -A nanogrid ...`, read from the environment via nanogrid.config."""

from nanogrid.config import Settings
from nanogrid.transport.app import celery_settings

globals().update(celery_settings(Settings.from_env()))
