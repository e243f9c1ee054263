"""The web console's page and assets as the API serves them (the browser tests: tests/e2e/test_console.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanogrid.api import console
from nanogrid.config import ConfigError, Settings

ASSETS = Path(console.__file__).parent / "static" / "console"


def test_the_page_and_its_assets_are_served_with_a_policy_that_allows_only_this_origin(app):
    page = app.client.get("/console")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert policy == console.CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy and "script-src 'self'" in policy
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    for asset, mimetype in (("console.js", "text/javascript"), ("console.css", "text/css"),
                            ("icon.svg", "image/svg+xml")):
        answer = app.client.get(f"/console/static/{asset}")
        assert answer.status_code == 200 and answer.mimetype == mimetype, asset
        assert answer.headers["Content-Security-Policy"] == console.CONTENT_SECURITY_POLICY
    # The API's own answers keep the API's policy.
    assert app.client.get("/limits").headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_the_page_has_no_inline_script_and_names_nothing_outside_the_api():
    html = (ASSETS / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/console/static/' in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers either
    for asset in ASSETS.iterdir():
        text = asset.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), asset.name
    script = (ASSETS / "console.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert "document.cookie" not in script and "localStorage" not in script


def test_a_browser_at_the_root_is_sent_to_the_console_and_an_api_client_gets_json(app):
    browser = app.client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 302 and browser.headers["Location"] == "/console"
    api_client = app.client.get("/", headers={"Accept": "application/json"})
    assert api_client.status_code == 200
    assert api_client.get_json() == {"service": "nanogrid", "console": "/console", "openapi": "/openapi.json",
                                     "flower": None}


def test_the_flower_link_is_the_operators_http_address_and_nothing_else(make_app):
    flower = "http://127.0.0.1:5555/"
    assert make_app(flower_url=flower).client.get("/").get_json()["flower"] == flower
    for refused in ("javascript:alert(1)", "127.0.0.1:5555", "ftp://flower.example/"):
        with pytest.raises(ConfigError, match="NANOGRID_FLOWER_URL"):
            Settings.from_env({"NANOGRID_FLOWER_URL": refused})


def test_with_keys_the_page_needs_none_but_the_api_behind_it_does(app):
    key, _ = app.keys.create("acme")
    assert app.client.get("/console").status_code == 200
    assert app.client.get("/console/static/console.js").status_code == 200
    refused = app.client.get("/functions")
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    assert app.client.get("/functions", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_the_assets_ship_in_the_package():
    setup = (Path(__file__).parents[2] / "setup.cfg").read_text()
    assert "nanogrid.api = static/console/*" in setup
    assert {path.name for path in ASSETS.iterdir()} == {"index.html", "console.js", "console.css", "icon.svg"}
