"""The web console in a real browser (Debian's Chromium through Playwright) against `nanogrid dev`:
create a function from the editor, run it and watch its output arrive, find it in the history,
open the job; hostile output stays text and no script of it runs; a wrong key gets a clear
error; keys on and open mode; and no request leaves the API's origin.

With NANOGRID_CONSOLE_SCREENSHOTS=<folder> the tests also save the screenshots the README shows.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from support.functions import Gate
from support.stack import Stack

# Prints a line, then the rest once the test has seen it on the page (support.functions.Gate).
GREETS = """
import os, time

def handler(event, context):
    print(f"line 1 for {event['name']}", flush=True)
    while not os.path.exists(event["release"]):
        time.sleep(0.05)
    for n in (2, 3):
        print(f"line {n} for {event['name']}", flush=True)
    return {"greeting": "Hello, " + event["name"]}
"""
LINES = "".join(f"line {n} for console\n" for n in (1, 2, 3))
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
PRINTS_MARKUP = f"""
import sys

def handler(event, context):
    print({XSS!r})
    print({XSS!r}, file=sys.stderr)
    if event.get("fail"):
        raise ValueError({XSS!r})
    return {{"html": {XSS!r}}}
"""
SCREENSHOTS = os.environ.get("NANOGRID_CONSOLE_SCREENSHOTS")


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


# A function of two modules, uploaded as a .zip from the new-function form.
BUNDLE = zipped({"main.py": "import helper\n\ndef handler(event, context):\n    return helper.WORDS\n",
                 "helper.py": "WORDS = 'from the helper module'\n"})
FLOWER = "http://127.0.0.1:5555/"  # a link only: nothing listens there


@pytest.fixture(scope="module")
def open_stack(processes, tmp_path_factory):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("console-open"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def keyed_stack(processes, tmp_path_factory):
    """A dev stack with one API key (printed alone on stdout by `nanogrid keys create`)."""
    stack = Stack.dev(processes, tmp_path_factory.mktemp("console-keyed"), env={"NANOGRID_FLOWER_URL": FLOWER})
    created = stack.cli("keys", "create", "--tenant", "console")
    assert created.returncode == 0, created.stderr
    yield stack, created.stdout.strip()
    stack.stop()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    yield page
    page.close()


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def only_the_api(page, url: str) -> None:
    assert page.requested and all(requested.startswith(url + "/") for requested in page.requested), page.requested


def run_to_its_end(page) -> str:
    """Click Run and wait until this run (not an earlier one on the page) has ended: its status line."""
    earlier = page.get_attribute(".live", "data-job") if page.locator(".live").count() else ""
    page.click("#run")
    page.wait_for_selector(f".live:not([data-job='{earlier}']) .live-status:has-text('ended')", timeout=60_000)
    return page.inner_text(".live-status")


def no_script_ran(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0


def test_create_run_watch_and_find_a_function_in_open_mode(page, open_stack, tmp_path):
    page.goto(open_stack.url + "/")
    assert page.url == open_stack.url + "/console#/functions" or page.url.startswith(open_stack.url + "/console")
    page.wait_for_selector("text=No functions yet")
    assert "open installation" in page.inner_text("#mode")
    assert page.is_hidden("#sign-out") and page.locator("#flower").count() == 0  # no Flower named

    page.click("text=New function")
    page.wait_for_selector("#code")
    assert "at most" in page.inner_text("form")  # the ceilings, from /limits
    page.fill("#name", "greets")
    page.fill("#code", GREETS)
    page.fill("#timeout_s", "20")
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text-is('greets')")
    function_id = page.url.rsplit("/", 1)[1]
    assert function_id.startswith("fn-") and "timeout_s 20" in page.inner_text(".facts")

    with Gate(tmp_path) as gate:
        page.fill("#input", json.dumps({"name": "console", **gate.event}))
        page.click("#run")
        page.wait_for_selector("pre[data-stream=stdout]:has-text('line 1 for console')", timeout=60_000)
        # Live: the first line is on the page while the run still waits for the gate.
        assert page.inner_text(".live-status") == "PROCESSING running"
        assert page.inner_text("pre[data-stream=stdout]") == "line 1 for console\n"
    page.wait_for_selector(".live-status:has-text('ended')", timeout=60_000)
    assert page.inner_text(".live-status").startswith("SUCCESS")
    assert json.loads(page.inner_text("pre[data-field=result]")) == {"greeting": "Hello, console"}
    assert page.inner_text("pre[data-stream=stdout]") == LINES
    page.wait_for_selector("#recent-runs >> text=SUCCESS")  # the run is in the function's recent runs
    screenshot(page, "function")

    page.click("nav >> text=Jobs")
    page.wait_for_selector("table")
    [job_id] = [cell for cell in page.locator("tbody tr td:first-child").all_inner_texts()]
    assert "SUCCESS" in page.inner_text("tbody")
    screenshot(page, "jobs")
    page.select_option("#status", "FAILED")
    page.click("text=Filter")
    page.wait_for_selector("text=No job matches these filters.")
    page.select_option("#status", "SUCCESS")
    page.click("text=Filter")
    page.click(f"text={job_id}")
    page.wait_for_selector("pre[data-field=stdout]")
    assert page.inner_text("pre[data-field=stdout]") == LINES
    assert "created" in page.inner_text(".timeline") and "succeeded" in page.inner_text(".timeline")
    assert "peak memory" in page.inner_text(".outcome")
    screenshot(page, "job")

    page.click("nav >> text=Functions")
    page.wait_for_selector("text=greets")
    page.fill("#search", "nothing-like-it")
    page.wait_for_selector("text=No function matches.")
    page.fill("#search", "gre")
    page.wait_for_selector("tbody >> text=greets")
    screenshot(page, "functions")
    only_the_api(page, open_stack.url)


def test_a_refused_name_and_hostile_output_stay_text(page, open_stack):
    page.goto(open_stack.url + "/console#/functions/new")
    page.wait_for_selector("#name")
    page.evaluate("document.getElementById('name').removeAttribute('pattern')")  # what the API itself says
    page.fill("#name", XSS)
    page.click("button[type=submit]")
    page.wait_for_selector(".error")
    assert page.inner_text(".error").startswith("name must match")
    no_script_ran(page)

    page.fill("#name", "prints-markup")
    page.fill("#code", PRINTS_MARKUP)
    page.click("button[type=submit]")
    page.wait_for_selector("#run")
    assert run_to_its_end(page).startswith("SUCCESS")
    assert page.inner_text("pre[data-stream=stdout]") == XSS + "\n"
    assert page.inner_text("pre[data-stream=stderr]") == XSS + "\n"
    assert json.loads(page.inner_text("pre[data-field=result]")) == {"html": XSS}
    no_script_ran(page)

    page.fill("#input", json.dumps({"fail": True}))
    assert run_to_its_end(page).startswith("FAILED")
    assert page.inner_text(".outcome .error").endswith(f"ValueError: {XSS}")
    page.click(".outcome >> a")  # the job page shows the same as text
    page.wait_for_selector("pre[data-field=stderr]")
    assert XSS in page.inner_text("pre[data-field=stderr]") and XSS in page.inner_text("pre[data-field=stdout]")
    no_script_ran(page)
    page.go_back()
    page.wait_for_selector("#run")
    page.fill("#input", "{not json")
    page.click("#run")
    assert page.inner_text(".error").startswith("The input is not valid JSON")
    only_the_api(page, open_stack.url)


def test_with_keys_a_wrong_key_is_refused_clearly_and_the_right_one_signs_in(page, keyed_stack):
    keyed_stack, key = keyed_stack
    page.goto(keyed_stack.url + "/console")
    page.wait_for_selector("#api-key")
    assert page.inner_text("#mode") == "keys required"
    page.wait_for_selector("#flower")  # the operators' Flower, which the keyed stack names
    assert page.get_attribute("#flower", "href") == FLOWER
    page.fill("#api-key", "ng_0000000000000000_wrong")
    page.click("button:text-is('Sign in')")
    page.wait_for_selector(".error")
    assert page.inner_text(".error") == ("The API refused this key: the API key is not valid (unknown, revoked or "
                                         "malformed).")
    screenshot(page, "sign-in")
    page.fill("#api-key", key)
    page.click("button:text-is('Sign in')")
    page.wait_for_selector("text=No functions yet")
    assert page.is_visible("#sign-out")
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.getItem('nanogrid.key')") == key
    assert not any(key in url for url in page.requested)  # the key travels only in a header

    page.click("text=New function")
    page.fill("#name", "uploaded")
    page.set_input_files("#file", files=[{"name": "bundle.zip", "mimeType": "application/zip", "buffer": BUNDLE}])
    page.click("button[type=submit]")
    page.wait_for_selector("#run")
    assert run_to_its_end(page).startswith("SUCCESS")
    assert page.inner_text("pre[data-field=result]") == '"from the helper module"'

    # The history's time filters: nothing before the run started, the run up to now.
    page.click("nav >> text=Jobs")
    page.wait_for_selector("tbody")
    page.fill("#until", "2001-01-01T00:00")
    page.click("text=Filter")
    page.wait_for_selector("text=No job matches these filters.")
    page.fill("#until", "")
    page.fill("#since", "2001-01-01T00:00")
    page.click("text=Filter")
    page.wait_for_selector("tbody >> text=SUCCESS")

    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('nanogrid.key')") is None
    page.goto(keyed_stack.url + "/console#/jobs")
    page.wait_for_selector("#api-key")  # signed out: the history is not shown
    only_the_api(page, keyed_stack.url)


def test_requirements_are_declared_in_the_editor_and_the_function_page_shows_its_build(page, open_stack):
    page.goto(open_stack.url + "/console#/functions/new")
    page.wait_for_selector("#requirements")
    page.fill("#name", "with-deps")
    page.fill("#requirements", "-e git+https://example.com/x.git")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('pip options (-e) are not accepted')")  # the API's 400, as text
    page.fill("#requirements", "Six>=1\n")
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text-is('with-deps')")
    facts = page.inner_text(".facts")
    assert "six>=1" in facts and "init\nonce" in facts, facts
    assert page.inner_text("#build-status").split()[0] in ("pending", "building", "ready", "failed")
    page.click("summary:text-is('Build log')")
    page.wait_for_selector("#build-log:not(:empty)")
    assert page.locator("h2:text-is('Versions') + table tbody tr").count() == 1  # v1, listed
    only_the_api(page, open_stack.url)
