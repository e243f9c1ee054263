"""A run's secrets (RunSpec.secrets) in the sandbox: files of the secrets folder (a tmpfs of the
container at /run/secrets), 0400 and the run's user's, never in its environment, in the zygote's
spec or in the next run; under every OCI runtime, and in the process sandbox (a private folder)."""

from __future__ import annotations

from typing import Iterator

import pytest

from nanogrid.config import Settings
from nanogrid.sandbox.docker import DockerSandbox
from nanogrid.sandbox.process import ProcessSandbox
from support.runs import Function

pytestmark = pytest.mark.runtimes("runc", "crun", "runsc")
VALUE = "a-secret-value-7f3e"
CODE = """
import os, stat
folder = os.environ.get("NANOGRID_SECRETS_DIR", "/run/secrets")
at_import = sorted(os.listdir(folder))

def handler(event, context):
    found = {}
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name))
        found[name] = {"value": open(os.path.join(folder, name)).read(), "mode": oct(stat.S_IMODE(st.st_mode)),
                       "mine": st.st_uid == os.getuid()}
    return {"folder": folder, "found": found, "environ": [k for k, v in os.environ.items() if "a-secret-value" in v]}
"""


@pytest.fixture
def docker(docker_settings) -> Iterator[DockerSandbox]:
    sandbox = DockerSandbox(docker_settings, "test-worker")
    yield sandbox
    sandbox.pool.close()


def check(sandbox, tmp_path, folder: str | None) -> None:
    function = Function(tmp_path, CODE)
    raw, outcome = function.run(sandbox, secrets={"DB_PASSWORD": VALUE})
    assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
    result = outcome.result
    assert result["found"] == {"DB_PASSWORD": {"value": VALUE, "mode": "0o400", "mine": True}}, result
    assert result["environ"] == [] and (folder is None or result["folder"] == folder)
    # The next run of the same (warm) sandbox has only its own secrets: none.
    raw, outcome = function.run(sandbox)
    assert outcome.status == "SUCCESS" and outcome.result["found"] == {}, (outcome, raw.runner_stderr)


def test_secrets_are_files_of_their_run_only_in_a_container(docker, tmp_path):
    check(docker, tmp_path, "/run/secrets")
    assert len(docker.pool.idle()) == 1  # both runs were served by one warm container


def test_secrets_are_files_of_their_run_only_in_the_process_sandbox(tmp_path):
    check(ProcessSandbox(Settings(), "test-worker"), tmp_path, None)
