"""AI_ENDPOINT through the whole platform: `nanogrid dev` with the Docker sandbox, `nanogrid ai-check`
and the optional AI component of /health."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.fake_ollama import FakeOllama
from support.servers import free_port
from support.stack import Stack

SUMMARISE = '''
import nanogrid_ai

def handler(event, context):
    answer = nanogrid_ai.generate("llama3.2", "Summarise the following text in one or two sentences:\\n\\n"
                                  + event["text"], temperature=0.2)
    return {"summary": answer["response"].strip(), "tokens": answer["eval_count"]}
'''
CLI = [sys.executable, "-m", "nanogrid.cli"]


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama() as server:
        yield server


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory, runtime_image, ollama):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("dev-ai"), runtime_image, env={
        "AI_ENDPOINT": ollama.url, "NANOGRID_AI_MAX_CALLS": "3", "NANOGRID_DEFAULT_TIMEOUT_S": "20"})
    yield stack
    stack.stop()


def test_health_lists_the_ai_node(dev):
    health = dev.client.health()
    assert health["status"] == "ok", health
    assert health["components"]["ai"] == {"status": "ok", "optional": True}


def test_deployed_function_summarises_through_the_ai_node(dev, ollama, tmp_path):
    source = tmp_path / "summarise.py"
    source.write_text(SUMMARISE)
    env = {**os.environ, "NANOGRID_URL": dev.url}
    deployed = subprocess.run([*CLI, "deploy", str(source), "--name", "summarise"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    ollama.reset()
    invoked = subprocess.run([*CLI, "invoke", "summarise", "--json", "--input",
                              json.dumps({"text": "Functions run in sandboxes without a network."})],
                             env=env, capture_output=True, text=True, timeout=120)
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    job = json.loads(invoked.stdout)
    assert job["status"] == "SUCCESS", job
    assert job["result"]["summary"] == ("echo: Summarise the following text in one or two sentences: "
                                        "Functions run in sandboxes without a network.")
    assert job["ai_usage"]["calls"] == 1
    assert job["ai_usage"]["prompt_tokens"] == 16 and job["ai_usage"]["eval_tokens"] == job["result"]["tokens"] == 17
    assert dev.client.job(job["job_id"])["ai_usage"] == job["ai_usage"]
    assert ollama.paths() == ["/api/generate"]


def test_budget_from_the_environment_applies(dev, ollama):
    code = ("import nanogrid_ai\n"
            "def handler(event, context):\n"
            "    for n in range(5):\n"
            "        nanogrid_ai.embed('nomic-embed-text', f'text {n}')\n")
    job = dev.client.invoke(dev.client.create("greedy", code)["function_id"], None, wait_s=60)
    assert job["status"] == "FAILED", job
    assert job["error"]["message"].endswith("nanogrid_ai.AIQuotaExceeded: this run has used its budget of 3 AI calls")
    assert job["ai_usage"]["calls"] == 3


def test_ai_check_command(ollama):
    checked = subprocess.run([*CLI, "ai-check"], env={**os.environ, "AI_ENDPOINT": ollama.url},
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"AI node at {ollama.url} answers (Ollama 0.6.5); 3 model(s):" in checked.stdout
    assert "  llama3.2:latest\n" in checked.stdout and "  nomic-embed-text:latest\n" in checked.stdout

    allowed = subprocess.run([*CLI, "ai-check", "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "AI_ENDPOINT": ollama.url, "NANOGRID_AI_MODELS": "llama3.2,mistral"})
    document = json.loads(allowed.stdout)
    assert allowed.returncode == 0 and document["ok"] and document["allowed"] == ["llama3.2"]
    assert document["error"] == "allowed by NANOGRID_AI_MODELS but not on the node: mistral"

    down_url = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run([*CLI, "ai-check", "--endpoint", down_url], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and f"AI node at {down_url} does not answer" in down.stdout

    unset = subprocess.run([*CLI, "ai-check"], env={k: v for k, v in os.environ.items() if k != "AI_ENDPOINT"},
                           capture_output=True, text=True, timeout=60)
    assert unset.returncode == 1 and "AI_ENDPOINT is not set" in unset.stdout


@pytest.mark.parametrize("endpoint, status", [("", "disabled"), ("fake", "ok"), ("down", "down")])
def test_health_ai_component_is_optional(make_app, ollama, endpoint, status):
    url = {"": "", "fake": ollama.url, "down": f"http://127.0.0.1:{free_port()}"}[endpoint]
    response = make_app(ai_endpoint=url).client.get("/health")
    body = response.get_json()
    assert body["failing"] == ["worker"], body  # this app has no worker; the AI node never fails it
    assert body["components"]["ai"] == {"status": status, "optional": True}
