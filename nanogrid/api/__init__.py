"""The REST API (Flask application factory). JSON in, JSON out, on port 8080 by default."""

from __future__ import annotations

from flask import Flask

from nanogrid.config import Settings
from nanogrid.services import Services


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("nanogrid")
    # Multipart uploads carry the code plus a little form overhead; per-route limits are tighter.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_code_bytes + 64 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_code_bytes + 64 * 1024
    app.json.sort_keys = False
    app.extensions["nanogrid"] = services or Services(settings)

    from nanogrid.api import auth, console, errors, metrics, routes

    errors.register(app)
    app.register_blueprint(routes.bp)
    app.register_blueprint(console.bp)  # the web console at /console (and / for browsers)
    # Request metrics, and GET /metrics as a plain app route: outside the blueprint and its guards.
    metrics.register(app, settings)
    # Keys and tenants, rate limit, security headers (after the metrics timer, which also times 401/429).
    auth.register(app, settings, app.extensions["nanogrid"].redis)
    return app
