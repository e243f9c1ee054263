"""Security headers on every answer, HSTS only over https, and no internals in a 5xx body."""

from __future__ import annotations

import io

import pytest
from openapi_check import conforms

from nanogrid.api import auth
from nanogrid.config import RateLimit

EXPECTED = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


def has_security_headers(response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (response.status_code, name, dict(response.headers))


def test_every_kind_of_answer_carries_the_headers(make_app):
    app = make_app(rate_limit=RateLimit(30, 60), max_code_bytes=1024)
    client = app.client
    fn = client.post("/functions", json={"name": "h", "code": "x = 1\n"})
    answers = [
        fn,  # 201
        client.get("/health/live"), client.get("/metrics"), client.get("/limits"), client.get("/openapi.json"),
        client.get("/health"),  # 503: no worker behind this app
        client.get(f"/functions/{fn.get_json()['function_id']}"),  # 200
        client.get("/functions/fn-0123456789abcdef"),  # 404
        client.get("/nowhere"),  # 404 outside the API's routes
        client.delete("/limits"),  # 405
        client.post("/functions", data="{", content_type="application/json"),  # 400
        client.post("/functions", data="x", content_type="text/plain"),  # 415
        client.post("/functions", content_type="multipart/form-data",
                    data={"name": "big", "file": (io.BytesIO(b"#" * 5000), "main.py")}),  # 413
        client.delete(f"/functions/{fn.get_json()['function_id']}"),  # 204
    ]
    statuses = sorted({r.status_code for r in answers})
    assert statuses == [200, 201, 204, 400, 404, 405, 413, 415, 503], statuses
    for response in answers:
        has_security_headers(response)
        assert "Strict-Transport-Security" not in response.headers  # plain http
    assert client.delete("/limits").headers["Allow"]  # a 405 still says what is allowed
    app.keys.create("acme")
    has_security_headers(client.get("/limits"))  # 401
    limited = [client.get("/limits") for _ in range(40)][-1]
    assert limited.status_code == 429
    has_security_headers(limited)


def test_hsts_only_over_https(make_app):
    app = make_app()
    secure = app.client.get("/limits", base_url="https://nanogrid.example")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    # Behind a trusted proxy (NANOGRID_TRUSTED_PROXIES=1) its X-Forwarded-Proto says so; otherwise it is ignored.
    assert "Strict-Transport-Security" not in app.client.get("/limits", headers={"X-Forwarded-Proto": "https"}).headers
    proxied = make_app(trusted_proxies=1)
    forwarded = proxied.client.get("/limits", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.1"})
    assert "Strict-Transport-Security" in forwarded.headers


@pytest.mark.parametrize("failure", [RuntimeError("boom at /srv/nanogrid/secret.py line 7 token=hunter2"),
                                     KeyError("AWS_SECRET_ACCESS_KEY")])
def test_a_5xx_tells_the_client_nothing_internal(make_app, monkeypatch, failure):
    app = make_app()
    doc = app.client.get("/openapi.json").get_json()

    def broken(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(app.services.functions, "list", broken)
    response = app.client.get("/functions")
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal_error", "message": "internal error"}}
    text = response.get_data(as_text=True)
    for needle in ("boom", "hunter2", "Traceback", "secret", "AWS_SECRET", "File "):
        assert needle not in text
    has_security_headers(response)
    conforms(doc, "GET", "/functions", response)


def test_open_endpoints_are_exactly_the_health_probes():
    assert auth.OPEN_ENDPOINTS == {"api.health", "api.health_live"}
