"""The README's first steps, as a newcomer takes them: `nanogrid dev` on a port of its own, the
banner's commands from an operator shell, the examples, and what the CLI says when something is
wrong (one readable line, never a traceback)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from support.stack import CLI, Stack, clean_environ

REPO = Path(__file__).resolve().parents[2]
SLOW = "import time\ndef handler(event, context):\n    time.sleep(3)\n    return 'late'\n"


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory, runtime_image):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("newcomer"), runtime_image)
    yield stack
    stack.stop()


def operator_shell(dev) -> dict[str, str]:
    """A shell that ran `source operator.env`, as the banner says, and nothing else of NanoGrid's."""
    return {**clean_environ(), **dev.operator_env}


def cli(env: dict[str, str], *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_the_banner_and_operator_env_point_the_cli_at_this_api(dev):
    assert dev.operator_env["NANOGRID_URL"] == dev.url
    banner = dev.log("dev")
    assert f"NanoGrid is running at {dev.url}" in banner
    worker_metrics = re.search(rf"metrics:  {re.escape(dev.url)}/metrics \(API\), (http://127.0.0.1:(\d+)/metrics) "
                               r"\(worker\)", banner)
    assert worker_metrics and worker_metrics.group(2) != "9808", banner  # a free port, not the fixed default
    assert "nanogrid_" in requests.get(worker_metrics.group(1), timeout=30).text
    assert "nanogrid deploy examples/hello.py --name hello" in banner


def test_the_tour_with_the_examples_in_the_repository(dev):
    env = operator_shell(dev)
    deployed = cli(env, "deploy", "examples/hello.py", "--name", "hello")
    assert deployed.returncode == 0 and "deployed hello" in deployed.stdout, deployed.stderr
    invoked = cli(env, "invoke", "hello", "--input", '{"name": "you"}')
    assert invoked.returncode == 0, invoked.stderr
    assert "SUCCESS" in invoked.stdout and '"greeting": "Hello, you!"' in invoked.stdout
    assert "greeting you" in invoked.stdout
    absent = cli(env, "invoke", "hello")  # no input: the handler gets {}
    assert absent.returncode == 0 and "Hello, world!" in absent.stdout, absent.stdout + absent.stderr
    assert cli(env, "deploy", "examples/sum.py", "--name", "sum").returncode == 0
    summed = cli(env, "invoke", "sum", "--input", "[1, 2, 3]")
    assert summed.returncode == 0 and "sum: 6" in summed.stdout
    failed = cli(env, "invoke", "sum", "--input", '"oops"')
    assert failed.returncode == 1 and "runtime_error" in failed.stdout
    assert 'File "/code/main.py"' in failed.stdout and "importlib" not in failed.stdout
    assert "runner" not in failed.stdout.split("--- stderr", 1)[1]


def test_a_run_that_outlasts_the_wait_says_how_to_follow_it_and_job_wait_gets_it(dev, tmp_path):
    env = operator_shell(dev)
    source = tmp_path / "slow.py"
    source.write_text(SLOW)
    assert cli(env, "deploy", str(source), "--name", "slow").returncode == 0
    invoked = cli(env, "invoke", "slow", "--wait", "0")
    assert invoked.returncode == 3, invoked.stdout + invoked.stderr
    hint = invoked.stderr.strip().splitlines()[-1]
    assert hint.startswith("the job has not ended; follow it with: nanogrid job ")
    job_id = hint.split("nanogrid job ", 1)[1].split()[0]
    waited = cli(env, "job", job_id, "--wait")
    assert waited.returncode == 0 and "SUCCESS" in waited.stdout and '"late"' in waited.stdout, waited.stdout


@pytest.mark.parametrize("args, says", [
    (("deploy", "no-such-file.py", "--name", "x"), "no-such-file.py"),
    (("invoke", "no-such-function"), "no-such-function"),
    (("invoke", "hello", "--input", "{not json"), "--input"),
    (("job", "00000000-0000-0000-0000-000000000000"), "not_found"),
])
def test_cli_errors_are_one_readable_line(dev, args, says):
    env = operator_shell(dev)
    cli(env, "deploy", "examples/hello.py", "--name", "hello")
    assert says in one_line_error(cli(env, *args))


def test_without_a_url_the_cli_says_where_it_looked(tmp_path):
    env = {**clean_environ(), "NANOGRID_URL": "http://127.0.0.1:9"}  # nothing listens on port 9
    line = one_line_error(cli(env, "invoke", "hello"))
    assert line.startswith("error: cannot reach the NanoGrid API at http://127.0.0.1:9: nothing answers there")
    assert "NANOGRID_URL" in line and len(line) < 250, line


def test_keys_commands_name_their_store_and_refuse_to_guess(processes, tmp_path):
    bare = {**clean_environ(), "HOME": str(tmp_path)}  # no operator env, no installation at ~/.nanogrid
    refused = one_line_error(cli(bare, "keys", "list"))
    assert "NANOGRID_" in refused, refused
    # A stack of its own: the first key closes its API.
    stack = Stack.dev(processes, tmp_path)
    env = operator_shell(stack)
    created = cli(env, "keys", "create", "--tenant", "newcomer")
    assert created.returncode == 0, created.stderr
    said = re.search(r"created key (\S+) for tenant newcomer in (.+?); it is shown only now", created.stderr)
    assert said and str(tmp_path) in said.group(2), created.stderr  # which store it wrote to
    assert "belong to the tenant 'default': this key cannot see them" in created.stderr
    listed = cli(env, "keys", "list")
    assert said.group(1) in listed.stdout and "newcomer" in listed.stdout
    revoked = cli(env, "keys", "revoke", said.group(1))
    assert revoked.returncode == 0 and f"revoked key {said.group(1)} of tenant newcomer in" in revoked.stdout
    assert stack.stop() == {"dev": 0}
