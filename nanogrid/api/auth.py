"""Who a request acts for, whether it may, and the headers every answer carries.

Before each request (but /health and /health/live): the bearer key is verified (nanogrid.keys), the
request is counted against the rate limit of its key, or of its client address when it has no
valid key, and then refused with 401 if the installation has keys and this request has none that
is valid. The tenant of the key (or `default` while no key exists) is in `principal()` for the
routes.

The client address is the TCP peer unless NANOGRID_TRUSTED_PROXIES=N says N proxies (a load
balancer, a reverse proxy) stand in front: then werkzeug's ProxyFix takes the address those
proxies appended to X-Forwarded-For (and the scheme from X-Forwarded-Proto). Without trusted
proxies X-Forwarded-For is ignored, so a client cannot pick a fresh address per request.

API keys appear nowhere in logs: only key ids are logged, and gunicorn's access lines carry no
request headers.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from nanogrid import keys, storage
from nanogrid.api import console
from nanogrid.api.errors import ApiError
from nanogrid.api.ratelimit import QueueDepth, RateLimiter
from nanogrid.config import Settings

log = logging.getLogger(__name__)
# No key and no rate limit: the readiness probe and the load balancer's liveness probe.
OPEN_ENDPOINTS = frozenset({"api.health", "api.health_live"})
# A scraper needs a key like any client once keys exist (metrics name functions and tenants' activity),
# but is never rate limited.
UNLIMITED_ENDPOINTS = frozenset({"metrics"})
HSTS = "max-age=31536000; includeSubDomains"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


class Guard:
    """Per application: the key store, the rate limiter and the queue-depth gauge."""

    def __init__(self, settings: Settings, redis_client, key_store: keys.KeyStore | None = None):
        self.settings = settings
        self.keys = key_store or keys.KeyStore(storage.key_table(settings))
        self.limiter = RateLimiter(redis_client, settings.rate_limit)
        self.queue = QueueDepth(settings)


def register(app: Flask, settings: Settings, redis_client) -> Guard:
    guard = Guard(settings, redis_client)
    app.extensions["nanogrid_guard"] = guard
    if settings.trusted_proxies > 0:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)
    app.before_request(_before_request)
    app.after_request(_security_headers)
    return guard


def guard() -> Guard:
    return current_app.extensions["nanogrid_guard"]


def principal() -> keys.Principal:
    """The tenant (and key) the current request acts for."""
    return g.nanogrid_principal


def tenant() -> str:
    return principal().tenant


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _before_request():
    if request.endpoint in OPEN_ENDPOINTS:
        return
    gd = guard()
    token = bearer_token()
    found = gd.keys.verify(token) if token else None
    # The console's page and assets hold no data (their script signs in and sends the key itself).
    required = found is None and not console.is_page() and gd.keys.any_keys()
    identity = f"key:{found.key_id}" if found is not None else f"addr:{request.remote_addr or 'unknown'}"
    decision = gd.limiter.hit(identity) if request.endpoint not in UNLIMITED_ENDPOINTS else None
    if decision is not None and not decision.allowed:
        raise ApiError(f"rate limit exceeded ({gd.settings.rate_limit}); retry in {decision.retry_after_s} s",
                       status=429, code="rate_limited", headers={"Retry-After": str(decision.retry_after_s)})
    if required:
        if token:
            match = keys.KEY_PATTERN.match(token)  # the key id only, never any part of a secret
            log.info("request refused: %s from %s", f"unknown or revoked key {match.group(1)}" if match
                     else "malformed key", request.remote_addr)
        raise ApiError("this API needs a key: send Authorization: Bearer <key>" if not token else
                       "the API key is not valid (unknown, revoked or malformed)",
                       status=401, code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="nanogrid"'})
    g.nanogrid_principal = found or keys.Principal(keys.DEFAULT_TENANT)


def _security_headers(response):
    response.headers.update(SECURITY_HEADERS)
    if console.is_page():
        response.headers["Content-Security-Policy"] = console.CONTENT_SECURITY_POLICY
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = HSTS
    return response
