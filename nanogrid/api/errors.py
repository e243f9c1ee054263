"""One JSON error shape for every failure: {"error": {"code", "message"}} with the right status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from nanogrid.errors import Conflict, NotConfigured, NotFound, Unavailable
from nanogrid.jobs import IdempotencyConflict, QuotaExceeded

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return error_response(404, "not_found", f"no such resource: {exc.args[0] if exc.args else ''}")

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict):
        return error_response(409, "conflict", str(exc))

    @app.errorhandler(IdempotencyConflict)
    def idempotency_conflict(exc: IdempotencyConflict):
        return error_response(422, "idempotency_conflict", str(exc))

    @app.errorhandler(QuotaExceeded)
    def quota_exceeded(exc: QuotaExceeded):
        return error_response(429, "quota_exceeded", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.errorhandler(NotConfigured)
    def not_configured(exc: NotConfigured):
        log.error("not configured: %s", exc)
        return error_response(503, "not_configured", str(exc), {"Retry-After": "300"})

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable):
        log.error("dependency unavailable: %s", exc)
        return error_response(503, "unavailable", "a dependency is unavailable; try again later",
                              {"Retry-After": "5"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        # Keep what the exception's own response would carry, e.g. Allow on a 405.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code or 500, code, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        # The client gets no internals; the log gets everything.
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
