"""WSGI entry point: `gunicorn wsgi:app`."""

from nanogrid.api import create_app

app = create_app()
