"""Requirements through the API (Flask's test client, embedded storage, a real Redis): the three
ways to declare them, their normalisation and what is refused, the build message on the builds
queue, the build's document, a version per change, and runs of a function whose build is pending
(held until it ends) or failed (409)."""

from __future__ import annotations

import io
import zipfile

import pytest

from nanogrid import layers
from nanogrid.task_names import BUILD_TASK, RUN_TASK
from nanogrid.worker import execute
from support.app import RecordingBroker

HANDLER = "def handler(event, context):\n    return 1\n"


@pytest.fixture
def app(make_app):
    return make_app(broker=RecordingBroker())


def builds_sent(app) -> list:
    return [sent for sent in app.broker.sent if sent.task == BUILD_TASK]


def finish_build(app, sha: str, ok: bool, error: str | None = None) -> None:
    registry = app.services.layers
    claim = registry.claim(sha, lease_s=60)
    assert claim is not None
    registry.finish(claim, ok=ok, log="pip said things\n", size_bytes=123 if ok else None, error=error)


def test_json_requirements_are_normalised_and_their_build_is_queued_on_the_builds_queue(app):
    fn = app.deploy("np", HANDLER, requirements="# tools\nNumPy>=2 # arrays\n\nrequests ==2.*\n")
    assert fn["requirements"] == "numpy>=2\nrequests==2.*"
    sha = layers.layer_key(fn["requirements"], app.settings)
    assert fn["build"] == {"status": "pending", "layer_sha256": sha, "size_bytes": None, "error": None}
    [sent] = builds_sent(app)
    assert sent.job_id == sha and sent.queue == app.settings.build_queue_name
    finish_build(app, sha, ok=True)
    # The same set, written otherwise: ready at once, and no build is queued for it.
    again = app.deploy("np2", HANDLER, requirements="requests==2.*\nnumpy>=2")
    assert again["build"]["status"] == "ready" and again["build"]["layer_sha256"] == sha
    assert len(builds_sent(app)) == 1
    build = app.client.get(f"/functions/{again['function_id']}/build").get_json()
    assert build["log"] == "pip said things\n" and build["size_bytes"] == 123


def test_a_zips_requirements_txt_and_a_multipart_field_or_file_declare_them_too(app):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", HANDLER)
        archive.writestr("requirements.txt", "pydantic\n")
    zipped = app.client.post("/functions", data={"name": "z", "file": (io.BytesIO(buffer.getvalue()), "f.zip")})
    assert zipped.status_code == 201 and zipped.get_json()["requirements"] == "pydantic", zipped.get_json()
    field = app.client.post("/functions", data={"name": "m", "requirements": "six\n",
                                                "file": (io.BytesIO(HANDLER.encode()), "main.py")})
    assert field.status_code == 201 and field.get_json()["requirements"] == "six"
    part = app.client.post("/functions", data={"name": "p", "requirements": (io.BytesIO(b"attrs\n"), "r.txt"),
                                               "file": (io.BytesIO(HANDLER.encode()), "main.py")})
    assert part.status_code == 201 and part.get_json()["requirements"] == "attrs"
    twice = app.client.post("/functions", data={"name": "t", "requirements": "six",
                                                "file": (io.BytesIO(buffer.getvalue()), "f.zip")})
    assert twice.status_code == 400 and "given twice" in twice.get_json()["error"]["message"]


@pytest.mark.parametrize("text, says", [
    ("-e git+https://example.com/pkg.git", "pip options (-e) are not accepted"),
    ("--index-url https://evil.example/simple\nsix", "pip options (--index-url) are not accepted"),
    ("pkg @ https://example.com/pkg.whl", "direct references"),
    ("this is not a requirement", "is not a requirement"),
    ("six\nSix==1.0", "six is listed twice"),
])
def test_what_a_requirement_may_not_be_is_a_clear_400(app, text, says):
    response = app.client.post("/functions", json={"name": "bad", "code": HANDLER, "requirements": text})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_requirements"
    assert says in response.get_json()["error"]["message"]
    assert app.client.get("/functions").get_json()["functions"] == []  # nothing was made


def test_changing_the_requirements_makes_a_new_version_and_removing_them_drops_the_build(app):
    fn = app.deploy("v", HANDLER, requirements="six")
    same = app.client.put(f"/functions/{fn['function_id']}", json={"requirements": "Six"}).get_json()
    assert same["version"] == 1
    changed = app.client.put(f"/functions/{fn['function_id']}", json={"requirements": "six\nattrs"}).get_json()
    assert changed["version"] == 2 and changed["build"]["layer_sha256"] != fn["build"]["layer_sha256"]
    removed = app.client.put(f"/functions/{fn['function_id']}", json={"requirements": ""}).get_json()
    assert removed["version"] == 3 and removed["build"] is None and removed["requirements"] is None
    response = app.client.get(f"/functions/{fn['function_id']}/build")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "no_build"


def test_a_run_waits_in_pending_for_its_build_and_is_dispatched_when_it_is_ready(app):
    fn = app.deploy("wait", HANDLER, requirements="six")
    sha = fn["build"]["layer_sha256"]
    queued = app.client.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0}).get_json()
    assert execute.run(app.services, queued["job_id"]) == "waiting_for_build"
    assert app.client.get(f"/jobs/{queued['job_id']}").get_json()["status"] == "PENDING"
    runs_before = app.broker.job_ids(RUN_TASK).count(queued["job_id"])
    finish_build(app, sha, ok=False, error="No matching distribution found for six")
    assert app.services.jobs.release_waiting(sha) == 1
    assert app.broker.job_ids(RUN_TASK).count(queued["job_id"]) == runs_before + 1  # dispatched again
    execute.run(app.services, queued["job_id"])
    job = app.client.get(f"/jobs/{queued['job_id']}").get_json()
    assert job["status"] == "FAILED" and job["error"]["type"] == "build_failed", job
    assert "No matching distribution found for six" in job["error"]["message"]
    refused = app.client.post(f"/functions/{fn['function_id']}/run", json={})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "build_failed"
    # Deploying again (the same requirements) retries a failed build.
    builds = len(builds_sent(app))
    app.client.put(f"/functions/{fn['function_id']}", json={"requirements": "six"})
    assert app.client.get(f"/functions/{fn['function_id']}").get_json()["build"]["status"] == "pending"
    assert len(builds_sent(app)) == builds + 1
