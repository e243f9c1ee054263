"""Hostile-looking but legitimate code is just code: a 100 KB Python file whose string literals hold
<script> and ' OR 1=1 -- uploads (JSON and multipart) and runs, and comes back byte for byte."""

from __future__ import annotations

import hashlib
import io

from openapi_check import conforms

from nanogrid.worker import execute

LITERALS = ["<script>alert('x')</script>", "' OR 1=1 --", "\"; DROP TABLE functions; --", "../../etc/passwd",
            "{{7*7}}", "${jndi:ldap://x}", "<img src=x onerror=alert(1)>", "%00", "\\x00"]


def hostile_source(size: int = 100 * 1024) -> str:
    lines = ["# A function whose data looks like an attack and is not one.", "PAYLOADS = ["]
    i = 0
    while sum(len(line) + 1 for line in lines) < size - 400:
        lines.append(f"    {LITERALS[i % len(LITERALS)]!r},  # {i}")
        i += 1
    lines += ["]", "",
              "def handler(event, context):",
              "    print(PAYLOADS[0])",
              "    return {'count': len(PAYLOADS), 'first': PAYLOADS[:2], 'echo': event}", ""]
    source = "\n".join(lines)
    assert 95 * 1024 <= len(source.encode()) <= 100 * 1024, len(source)
    return source


def test_a_100_kb_file_of_attack_strings_uploads_and_runs(make_app):
    app = make_app()
    headers = app.new_key("tenant-a")
    doc = app.client.get("/openapi.json", headers=headers).get_json()
    source = hostile_source()
    as_json = app.client.post("/functions", json={"name": "payloads", "code": source}, headers=headers)
    assert as_json.status_code == 201, as_json.get_json()
    conforms(doc, "POST", "/functions", as_json)
    fn = as_json.get_json()
    as_file = app.client.post("/functions", headers=headers, content_type="multipart/form-data",
                              data={"name": "payloads-file", "file": (io.BytesIO(source.encode()), "main.py")})
    assert as_file.status_code == 201, as_file.get_json()
    assert as_file.get_json()["code_sha256"] == fn["code_sha256"]  # the same bundle, byte for byte
    stored = app.services.functions.code_of(app.services.functions.get(fn["function_id"]))
    assert hashlib.sha256(stored).hexdigest() == fn["code_sha256"]

    event = {"q": "' OR 1=1 --", "html": "<script>document.cookie</script>"}
    queued = app.client.post(f"/functions/{fn['function_id']}/run", json={"input": event, "wait_s": 0},
                             headers=headers)
    assert queued.status_code == 202, queued.get_json()
    assert execute.run(app.services, queued.get_json()["job_id"]) == "SUCCESS"
    job = app.client.get(f"/jobs/{queued.get_json()['job_id']}", headers=headers)
    conforms(doc, "GET", f"/jobs/{queued.get_json()['job_id']}", job)
    body = job.get_json()
    assert body["status"] == "SUCCESS", body
    assert body["result"]["first"] == LITERALS[:2] and body["result"]["echo"] == event
    assert body["result"]["count"] > 2000
    assert body["stdout"] == LITERALS[0] + "\n"
    # Served as JSON that a browser will not sniff into HTML.
    assert job.mimetype == "application/json" and job.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" in job.get_data(as_text=True)  # escaped by nothing but JSON: data, not markup
