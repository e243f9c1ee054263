"""The web console: one page and its script and style, served by the API itself at /console.

Everything it shows it reads from the REST API in the browser, with the key the user signed in
with, sent as `Authorization: Bearer` like any client's (no cookie, so no cross-site request can
act for the user). Its assets ship inside the package and nothing is fetched from anywhere else,
so it works air-gapped; its Content-Security-Policy allows scripts, styles and requests from the
API's own origin only, no inline script and no eval. The page and assets themselves hold no data:
they need no key (the sign-in form is on them), but count against the rate limit like any request.
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, request, send_from_directory, url_for

bp = Blueprint("console", __name__, static_folder="static/console", static_url_path="/console/static")

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
PAGE_ENDPOINTS = frozenset({"console.page", "console.static", "console.root"})


@bp.get("/console")
def page():
    return send_from_directory(bp.static_folder, "index.html", mimetype="text/html", max_age=0)


@bp.get("/")
def root():
    """A browser that opens the API's address lands on the console; an API client gets JSON
    (where the console, the OpenAPI document and the operators' Flower are)."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return redirect(url_for("console.page"))
    return {"service": "nanogrid", "console": url_for("console.page"), "openapi": url_for("api.openapi"),
            "flower": current_app.extensions["nanogrid"].settings.flower_url or None}


def is_page() -> bool:
    return request.endpoint in PAGE_ENDPOINTS
