"""Functions calling the AI node from real Docker sandboxes, through the worker's own code path.

Each run goes API -> job record -> execute.run (the worker's code) -> DockerSandbox with the run's
AI channel -> the fake Ollama server, and is read back from the API, so what the tests check is
the job record a user gets. Fails, never skips, without dockerd (the runtime_image fixture).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import shutil
import socket
import subprocess
import uuid

import pytest

from nanogrid.ai import SANDBOX_SOCKET_DIR
from nanogrid.ai.channel import Channel
from nanogrid.sandbox import Limits, RunSpec
from nanogrid.sandbox.docker import GVISOR_HOST_UDS_FLAGS, DockerSandbox
from support.servers import free_port

USES_EVERYTHING = '''
import nanogrid_ai

def handler(event, context):
    text = event["text"]
    generated = nanogrid_ai.generate("llama3.2", "Summarise: " + text, temperature=0)
    replied = nanogrid_ai.chat("llama3.2", [{"role": "user", "content": text}])
    vectors = nanogrid_ai.embed("nomic-embed-text", [text, "second input"])
    tokens = [piece["response"] for piece in nanogrid_ai.generate_stream("llama3.2", text)]
    chat_pieces = [piece["message"]["content"] for piece in nanogrid_ai.chat_stream(
        "llama3.2", [{"role": "user", "content": "stream " + text}])]
    return {
        "generate": generated["response"], "generate_counts": [generated["prompt_eval_count"],
                                                               generated["eval_count"]],
        "chat": replied["message"], "embeddings": vectors["embeddings"],
        "stream": tokens, "chat_stream": chat_pieces, "models": nanogrid_ai.models(),
    }
'''

# The summarising function of README: Private AI (the README example).
SUMMARISE = '''
import nanogrid_ai

def handler(event, context):
    text = event["text"]
    answer = nanogrid_ai.generate(
        event.get("model", "llama3.2"),
        "Summarise the following text in one or two sentences:\\n\\n" + text,
        temperature=0.2,
    )
    return {"summary": answer["response"].strip(), "tokens": answer["eval_count"]}
'''

UNHANDLED = '''
import nanogrid_ai

def handler(event, context):
    print("asking the AI node")
    return nanogrid_ai.generate("llama3.2", "hello")["response"]
'''

HANDLED = '''
import nanogrid_ai

def handler(event, context):
    try:
        return nanogrid_ai.generate("llama3.2", "hello")["response"]
    except nanogrid_ai.AIUnavailable as exc:
        return {"fallback": True, "why": str(exc)}
'''

QUOTA = '''
import nanogrid_ai

def handler(event, context):
    answers = []
    for n in range(4):
        try:
            answers.append(nanogrid_ai.generate("llama3.2", f"call {n}")["response"])
        except nanogrid_ai.AIQuotaExceeded as exc:
            answers.append(f"{type(exc).__name__} {exc.status}: {exc}")
    return answers
'''

MANAGEMENT = '''
import http.client, json, socket
import nanogrid_ai

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/run/nanogrid-ai/ai.sock")

def handler(event, context):
    statuses = {}
    for method, path in [("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"),
                         ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("GET", "/api/ps"),
                         ("POST", "/api/generate/../pull")]:
        connection = Unix("localhost")
        connection.request(method, path, body=json.dumps({"model": "llama3.2", "name": "llama3.2",
                                                          "source": "llama3.2", "destination": "x"}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        statuses[method + " " + path] = [response.status, json.loads(response.read())["error"]]
    try:
        nanogrid_ai._call("/api/pull", {"model": "llama3.2"})
    except nanogrid_ai.AIRefused as exc:
        statuses["nanogrid_ai"] = str(exc)
    return statuses
'''

ESCAPE = '''
import errno, json, os, socket
import nanogrid_ai

def attempt(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return [exc.errno, str(exc)]

def handler(event, context):
    found = {name: attempt(host, port) for name, (host, port) in event["targets"].items()}
    try:
        socket.getaddrinfo(event["hostname"], 443)
        found["dns"] = "resolved"
    except OSError as exc:
        found["dns"] = [exc.errno, str(exc)]
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"\\0" * 12, ("8.8.8.8", 53))
        found["udp_dns"] = "sent"
    except OSError as exc:
        found["udp_dns"] = [exc.errno, str(exc)]
    found["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    found["channel_dir"] = sorted(os.listdir("/run/nanogrid-ai"))
    try:
        open("/run/nanogrid-ai/planted", "w").close()
        found["write"] = "written"
    except OSError as exc:
        found["write"] = exc.errno
    found["ai"] = nanogrid_ai.generate("llama3.2", "still works")["response"]
    return found
'''


@pytest.fixture
def docker_app(make_app, runtime_image, fake_ollama):
    """docker_app(**settings changes) -> App with the Docker sandbox and AI_ENDPOINT set."""

    def docker_app(**changes):
        return make_app(**{"sandbox": "docker", "runtime_image": runtime_image.runtime_image,
                           "ai_endpoint": fake_ollama.url, "ai_timeout_s": 10.0, **changes})

    return docker_app


def run_function(app, code: str, event=None, name: str = "ai-fn", **fields) -> dict:
    """Deploy code as a new function and run it in-process: the job as the API shows it."""
    function = app.deploy(f"{name}-{uuid.uuid4().hex[:8]}", code, **fields)
    return app.run(function["function_id"], event)


def test_function_uses_generate_chat_embed_and_streaming(docker_app, fake_ollama):
    app = docker_app()
    job = run_function(app, USES_EVERYTHING, {"text": "the quick brown fox"})
    assert job["status"] == "SUCCESS", job
    result = job["result"]
    assert result["generate"] == "echo: Summarise: the quick brown fox"
    assert result["generate_counts"] == [5, 6]
    assert result["chat"] == {"role": "assistant", "content": "echo: the quick brown fox"}
    assert result["embeddings"] == [[19.0, 4.0, 1.0], [12.0, 2.0, 1.0]]
    assert result["stream"] == ["echo:", " the", " quick", " brown", " fox", ""]
    assert result["chat_stream"] == ["echo:", " stream", " the", " quick", " brown", " fox", ""]
    assert result["models"] == ["llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    assert fake_ollama.paths() == ["/api/generate", "/api/chat", "/api/embed", "/api/generate", "/api/chat",
                                   "/api/tags"]
    # Usage, from the servers' own counters: 5+4+6+4+5 prompt tokens, 6+5+5+6 eval tokens.
    usage = job["ai_usage"]
    assert (usage["calls"], usage["prompt_tokens"], usage["eval_tokens"]) == (6, 24, 22), usage
    assert 0 <= usage["time_ms"] <= job["duration_ms"]
    record = app.services.jobs.get(job["job_id"])
    assert record["ai_usage"] == usage


def test_summarising_example_from_the_docs(docker_app, fake_ollama):
    app = docker_app()
    job = run_function(app, SUMMARISE, {"text": "NanoGrid runs functions. It has a private AI node."},
                       name="summarise")
    assert job["status"] == "SUCCESS", job
    assert job["result"]["summary"].startswith("echo: Summarise the following text")
    assert job["ai_usage"]["calls"] == 1 and job["ai_usage"]["eval_tokens"] == job["result"]["tokens"]
    assert fake_ollama.requests[0]["body"]["options"]["temperature"] == 0.2


def test_runs_without_ai_calls_report_zero_usage_and_without_ai_endpoint_none(docker_app):
    app = docker_app()
    job = run_function(app, "def handler(e, c):\n    return 1\n")
    assert job["status"] == "SUCCESS" and job["ai_usage"] == {"calls": 0, "prompt_tokens": 0, "eval_tokens": 0,
                                                              "time_ms": 0}
    app = docker_app(ai_endpoint="")
    job = run_function(app, HANDLED)
    assert job["status"] == "SUCCESS" and job["ai_usage"] is None
    assert job["result"]["fallback"] is True and "no AI channel" in job["result"]["why"]


def test_ai_node_down_fails_the_run_with_a_clear_message(docker_app, fake_ollama):
    app = docker_app(ai_endpoint=f"http://127.0.0.1:{free_port()}")
    job = run_function(app, UNHANDLED)
    assert job["status"] == "FAILED", job
    assert job["error"]["type"] == "ai_unavailable", job
    assert job["error"]["message"] == ("the AI node is unavailable and the function did not handle it: "
                                       "connection refused")
    assert "nanogrid_ai.AIUnavailable: the AI node is unavailable: connection refused" in job["stderr"]
    assert job["stdout"] == "asking the AI node\n" and job["ai_usage"]["calls"] == 1

    handled = run_function(app, HANDLED, name="handles-it")
    assert handled["status"] == "SUCCESS", handled
    assert handled["result"] == {"fallback": True, "why": "the AI node is unavailable: connection refused"}


def test_silent_ai_node_fails_the_run_within_the_configured_timeout(docker_app, fake_ollama):
    app = docker_app(ai_timeout_s=2.0)
    fake_ollama.hang = True
    job = run_function(app, UNHANDLED)
    assert job["status"] == "FAILED" and job["error"]["type"] == "ai_unavailable", job
    # The channel's timeout ended the call, long before the run's own deadline (30 s) could.
    assert "no answer within 2 s" in job["error"]["message"]
    assert job["duration_ms"] >= 2000, job["duration_ms"]


def test_under_gvisor_the_channel_needs_runsc_with_host_uds(docker_app, fake_ollama, caplog):
    """gVisor refuses a sandbox's connect() to a host Unix socket unless runsc runs with
    --host-uds=open (README: Sandbox runtimes). Where the engine's runsc has it, the channel works
    as under runc; where it has not (the test command's engine), the function's AI call fails with
    EPERM, which it can handle, and the worker's start-up check warned about it."""
    app = docker_app(docker_runtime="runsc")
    arguments = app.services.sandbox.client.info()["Runtimes"]["runsc"].get("runtimeArgs") or []
    with caplog.at_level(logging.WARNING, logger="nanogrid.sandbox.docker"):
        app.services.sandbox.check_runtime()
    job = run_function(app, HANDLED)
    assert job["status"] == "SUCCESS", job
    if any(argument in GVISOR_HOST_UDS_FLAGS for argument in arguments):
        assert job["result"] == "echo: hello" and "--host-uds" not in caplog.text
    else:
        assert job["result"] == {"fallback": True, "why": "the AI node is unavailable: cannot open the AI channel "
                                                          "([Errno 1] Operation not permitted)"}, job["result"]
        assert "registered without --host-uds=open" in caplog.text


def test_budget_exceeded_is_a_clear_error_in_the_function(docker_app, fake_ollama):
    app = docker_app(ai_max_calls=2)
    job = run_function(app, QUOTA)
    assert job["status"] == "SUCCESS", job
    assert job["result"][:2] == ["echo: call 0", "echo: call 1"]
    assert job["result"][2:] == ["AIQuotaExceeded 429: this run has used its budget of 2 AI calls"] * 2
    assert len(fake_ollama.requests) == 2 and job["ai_usage"]["calls"] == 2
    unhandled = run_function(app, "import nanogrid_ai\nfor _ in range(3):\n"
                                            "    nanogrid_ai.embed('nomic-embed-text', 'x')\n", name="script")
    assert unhandled["status"] == "FAILED" and unhandled["error"]["type"] == "runtime_error"
    assert unhandled["error"]["message"].endswith(
        "nanogrid_ai.AIQuotaExceeded: this run has used its budget of 2 AI calls")


def test_model_management_is_refused_from_the_sandbox(docker_app, fake_ollama):
    app = docker_app()
    job = run_function(app, MANAGEMENT)
    assert job["status"] == "SUCCESS", job
    statuses = job["result"]
    for request, (status, error) in ((k, v) for k, v in statuses.items() if k != "nanogrid_ai"):
        assert status == 403, (request, status, error)
    assert "model management" in statuses["POST /api/pull"][1]
    assert "model management" in statuses["nanogrid_ai"]
    assert fake_ollama.requests == []  # none of them reached the AI node
    assert job["ai_usage"]["calls"] == 0


def host_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback, docker0's included."""
    found = set()
    if shutil.which("hostname"):
        output = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
        found.update(a for a in output.split() if ":" not in a)
    with open("/proc/net/fib_trie") as trie:  # every local address appears as "/32 host LOCAL"
        lines = trie.read().splitlines()
    for previous, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            found.add(previous.split()[-1])
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


def test_with_the_channel_the_sandbox_still_reaches_nothing_else(docker_app, fake_ollama):
    app = docker_app()
    addresses = host_addresses()
    assert addresses, "no host address to test against"
    targets = {"public_ip_https": ("1.1.1.1", 443), "public_ip_dns": ("8.8.8.8", 53),
               "ai_node_loopback": ("127.0.0.1", fake_ollama.port)}
    redis_port = int(app.settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    for address in addresses:
        targets[f"ai_node_{address}"] = (address, fake_ollama.port)
        targets[f"redis_{address}"] = (address, redis_port)
        # From the host these are open: only the sandbox's isolation can keep it out.
        with socket.create_connection((address, fake_ollama.port), timeout=3):
            pass
    fake_ollama.reset()
    job = run_function(app, ESCAPE, {"targets": targets, "hostname": "example.com"}, timeout_s=60)
    assert job["status"] == "SUCCESS", job
    found = job["result"]
    for name in targets:
        assert found[name] != "connected", (name, found[name])
        expected = errno.ECONNREFUSED if name == "ai_node_loopback" else errno.ENETUNREACH
        assert found[name][0] == expected, (name, found[name])
    assert found["dns"] != "resolved" and found["udp_dns"][0] == errno.ENETUNREACH, found
    assert found["interfaces"] == ["lo"]
    assert found["channel_dir"] == ["ai.sock"] and found["write"] == errno.EROFS
    assert found["ai"] == "echo: still works"
    assert fake_ollama.paths() == ["/api/generate"]  # the channel is the only thing that reached it


def test_the_container_keeps_network_none_with_the_channel_mounted_read_only(runtime_image, fake_ollama, tmp_path):
    sandbox = DockerSandbox(runtime_image, "test-worker")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    limits = Limits.resolve(runtime_image)
    with Channel(runtime_image.replace(ai_endpoint=fake_ollama.url)) as channel:
        container = sandbox._create(RunSpec("test-ai-net", "fn", run_dir, None, limits,
                                            ai_socket_dir=channel.directory))
        try:
            container.reload()
            host_config = container.attrs["HostConfig"]
            mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        finally:
            container.remove(force=True)
    assert host_config["NetworkMode"] == "none"
    assert mounts[SANDBOX_SOCKET_DIR]["Source"] == str(channel.directory.resolve())
    assert mounts[SANDBOX_SOCKET_DIR]["RW"] is False and mounts["/code"]["RW"] is False


def test_process_sandbox_reaches_the_channel_through_its_host_path(make_app, fake_ollama):
    job = run_function(make_app(ai_endpoint=fake_ollama.url), SUMMARISE, {"text": "short text"})
    assert job["status"] == "SUCCESS", job
    assert job["result"]["summary"].startswith("echo: Summarise") and job["ai_usage"]["calls"] == 1
    assert json.loads(fake_ollama.requests[0]["raw"])["model"] == "llama3.2"
