"""The AI channel (nanogrid/ai/channel.py) and nanogrid_ai against the fake Ollama server, no sandbox."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time

import pytest

from nanogrid.ai.channel import Channel, model_key
from nanogrid.config import ConfigError, Settings
from support.servers import free_port

# Far beyond how long anything here takes on a slow machine, and far from the 1 s timeouts tested.
FAR_S = 60


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def request(channel: Channel, method: str, path: str, body=None, raw: bytes | None = None):
    """One raw request through the channel: (status, headers, body bytes)."""
    connection = UnixHTTP(channel.socket_path)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = connection.getresponse()
    content = response.read()
    connection.close()
    return response.status, response, content


# -- what passes, unchanged ------------------------------------------------------------------

def test_generate_chat_embed_answers_come_from_the_server(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel()
    answer = nanogrid_ai.generate("llama3.2", "tell me a story", system="be brief", temperature=0.2, seed=7)
    assert answer["response"] == "echo [be brief]: tell me a story"
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (6, 7)
    sent = fake_ollama.requests[-1]
    assert (sent["method"], sent["path"]) == ("POST", "/api/generate")
    assert sent["body"]["model"] == "llama3.2" and sent["body"]["prompt"] == "tell me a story"
    assert sent["body"]["system"] == "be brief" and sent["body"]["stream"] is False
    assert sent["body"]["options"]["temperature"] == 0.2 and sent["body"]["options"]["seed"] == 7

    reply = nanogrid_ai.chat("llama3.2", [{"role": "system", "content": "terse"},
                                           {"role": "user", "content": "hello there"}])
    assert reply["message"] == {"role": "assistant", "content": "echo: hello there"} and reply["done"] is True
    assert fake_ollama.requests[-1]["body"]["messages"][1] == {"role": "user", "content": "hello there"}

    vectors = nanogrid_ai.embed("nomic-embed-text", ["one two", "three"])
    assert vectors["embeddings"] == [[7.0, 2.0, 1.0], [5.0, 1.0, 1.0]] and vectors["prompt_eval_count"] == 3
    single = nanogrid_ai.embed("nomic-embed-text", "just one")
    assert single["embeddings"] == [[8.0, 2.0, 1.0]]
    assert fake_ollama.requests[-1]["body"] == {"model": "nomic-embed-text", "input": "just one"}
    assert nanogrid_ai.embeddings("nomic-embed-text", "old api")["embedding"] == [7.0, 2.0, 1.0]

    assert nanogrid_ai.models() == ["llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest"]
    assert nanogrid_ai.show("llama3.2")["modelfile"] == "FROM llama3.2\n"
    assert fake_ollama.paths() == ["/api/generate", "/api/chat", "/api/embed", "/api/embed", "/api/embeddings",
                                   "/api/tags", "/api/show"]
    usage = channel.close()
    assert usage["calls"] == 7
    assert usage["prompt_tokens"] == 6 + 3 + 3 + 2  # generate, chat, both embeds
    assert usage["eval_tokens"] == 7 + 3
    assert usage["time_ms"] >= 0


def test_streams_pass_through_byte_for_byte(open_channel, fake_ollama):
    channel = open_channel()
    for path, body in (("/api/generate", {"model": "llama3.2", "prompt": "one two three four"}),
                       ("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "a b c"}]})):
        status, response, content = request(channel, "POST", path, body)
        assert status == 200 and response.getheader("Content-Type") == "application/x-ndjson"
        assert content == b"".join(fake_ollama.requests[-1]["sent"])
        lines = [json.loads(line) for line in content.splitlines()]
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        final = lines[-1]
        assert {"done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"} <= set(final)
    status, _, content = request(channel, "POST", "/api/generate",
                                 {"model": "llama3.2", "prompt": "x", "stream": False})
    assert status == 200 and content == fake_ollama.requests[-1]["sent"][0]
    usage = channel.close()
    assert usage == {"calls": 3, "prompt_tokens": 4 + 3 + 1, "eval_tokens": 5 + 4 + 2, "time_ms": usage["time_ms"]}


def test_stream_arrives_token_by_token_not_buffered(open_channel, fake_ollama, nanogrid_ai):
    """The server holds its stream after the first token: the function must already have that token."""
    open_channel()
    fake_ollama.gate = threading.Event()
    stream = nanogrid_ai.generate_stream("llama3.2", "alpha beta gamma")
    first = next(stream)
    assert first == {"model": "llama3.2", "created_at": first["created_at"], "response": "echo:", "done": False}
    assert not fake_ollama.gate.is_set()  # the rest of the answer does not exist yet
    fake_ollama.gate.set()
    rest = list(stream)
    assert "".join(item["response"] for item in [first, *rest]) == "echo: alpha beta gamma"
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 4

    fake_ollama.gate = threading.Event()
    chat = nanogrid_ai.chat_stream("llama3.2", [{"role": "user", "content": "hi"}])
    assert next(chat)["message"] == {"role": "assistant", "content": "echo:"}
    fake_ollama.gate.set()
    assert [item["message"]["content"] for item in chat] == [" hi", ""]


def test_each_streamed_token_reaches_the_function_before_the_next_is_sent(open_channel, fake_ollama, nanogrid_ai):
    """In lockstep, the server sends a token only once the function has the one before: a channel
    that buffered any part of the stream would leave the server waiting, and the stream unfinished."""
    open_channel()
    fake_ollama.lockstep = True
    pieces = []
    for piece in nanogrid_ai.generate_stream("llama3.2", "a b c d"):
        pieces.append(piece)
        fake_ollama.ack()
    assert [p["response"] for p in pieces] == ["echo:", " a", " b", " c", " d", ""]
    assert pieces[-1]["done"] is True


# -- what is refused ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
    ("DELETE", "/api/delete"), ("POST", "/api/delete"),
])
def test_model_management_is_refused_and_never_reaches_the_node(open_channel, fake_ollama, nanogrid_ai,
                                                                method, path):
    channel = open_channel()
    status, response, content = request(channel, method, path, {"model": "llama3.2", "source": "a",
                                                                "destination": "b"})
    assert status == 403 and response.getheader("X-NanoGrid-AI") == "refused"
    assert "model management" in json.loads(content)["error"]
    with pytest.raises(nanogrid_ai.AIRefused) as refused:
        nanogrid_ai._call(path, {"model": "llama3.2"}, method=method)
    assert refused.value.status == 403
    assert fake_ollama.requests == []
    assert channel.close()["calls"] == 0


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 403), ("GET", "/api/version", 403), ("GET", "/api/ps", 403), ("POST", "/api/blobs/sha256:00", 403),
    ("POST", "/api/generate/../pull", 403), ("POST", "//api/pull", 403), ("POST", "/api/%70ull", 403),
    ("GET", "/api/generate", 405), ("POST", "/api/tags", 405), ("DELETE", "/api/chat", 405),
])
def test_other_paths_and_methods_are_refused(open_channel, fake_ollama, method, path, status):
    channel = open_channel()
    got, _, content = request(channel, method, path, {"model": "llama3.2", "prompt": "x"})
    assert got == status and "error" in json.loads(content)
    assert fake_ollama.requests == []


def test_query_strings_are_not_forwarded(open_channel, fake_ollama):
    channel = open_channel()
    status, _, _ = request(channel, "GET", "/api/tags?insecure=true")
    assert status == 200 and fake_ollama.paths() == ["/api/tags"]


@pytest.mark.parametrize("raw, message", [
    (b"not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b'{"prompt": "no model"}', "names no model"),
])
def test_bad_bodies_get_400(open_channel, fake_ollama, raw, message):
    channel = open_channel()
    status, response, content = request(channel, "POST", "/api/generate", raw=raw)
    assert status == 400 and message in json.loads(content)["error"]
    assert fake_ollama.requests == []


def test_request_body_cap(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel(ai_max_request_bytes=2000)
    assert nanogrid_ai.generate("llama3.2", "x " * 500)["done"]  # ~1 KB: allowed
    with pytest.raises(nanogrid_ai.AIRefused) as refused:
        nanogrid_ai.generate("llama3.2", "x" * 5000)
    assert refused.value.status == 413 and "limit is 2000" in str(refused.value)
    with pytest.raises(nanogrid_ai.AIRefused):  # far beyond any socket buffer: still a clean 413
        nanogrid_ai.embed("nomic-embed-text", ["y" * 1_000_000] * 8)
    assert fake_ollama.paths() == ["/api/generate"]
    status, _, _ = request(channel, "POST", "/api/generate", raw=b"{" + b" " * 3000 + b"}")
    assert status == 413
    assert channel.close()["calls"] == 1


def test_call_budget(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel(ai_max_calls=2)
    nanogrid_ai.generate("llama3.2", "one")
    nanogrid_ai.embed("nomic-embed-text", "two")
    with pytest.raises(nanogrid_ai.AIQuotaExceeded) as exceeded:
        nanogrid_ai.chat("llama3.2", [{"role": "user", "content": "three"}])
    assert exceeded.value.status == 429 and "budget of 2 AI calls" in str(exceeded.value)
    with pytest.raises(nanogrid_ai.AIQuotaExceeded):
        list(nanogrid_ai.generate_stream("llama3.2", "four"))
    assert len(fake_ollama.requests) == 2
    assert channel.close()["calls"] == 2


def test_token_budget_bounds_each_call_and_then_refuses(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel(ai_max_tokens=10)
    first = nanogrid_ai.generate("llama3.2", "a b c")  # 3 prompt + 4 eval tokens
    assert first["response"] == "echo: a b c"
    assert fake_ollama.requests[-1]["body"]["options"] == {"num_predict": 10}
    second = nanogrid_ai.generate("llama3.2", "d e f", num_predict=50)  # 3 tokens left: cut to 3
    assert fake_ollama.requests[-1]["body"]["options"] == {"num_predict": 3}
    assert second["response"] == "echo: d e" and second["done_reason"] == "length"
    with pytest.raises(nanogrid_ai.AIQuotaExceeded) as exceeded:
        nanogrid_ai.chat("llama3.2", [{"role": "user", "content": "more"}])
    assert "budget of 10 AI tokens" in str(exceeded.value)
    with pytest.raises(nanogrid_ai.AIQuotaExceeded):
        nanogrid_ai.embed("nomic-embed-text", "more")
    assert len(fake_ollama.requests) == 2
    assert channel.close() == {"calls": 2, "prompt_tokens": 6, "eval_tokens": 7, "time_ms": channel.usage.time_ms}


def test_token_budget_keeps_a_smaller_num_predict(open_channel, fake_ollama, nanogrid_ai):
    open_channel(ai_max_tokens=1000)
    nanogrid_ai.generate("llama3.2", "a b c", num_predict=2, options={"temperature": 0})
    assert fake_ollama.requests[-1]["body"]["options"] == {"temperature": 0, "num_predict": 2}
    open_channel(ai_max_tokens=0)  # no limit: the request is forwarded as written
    nanogrid_ai.generate("llama3.2", "a b c")
    assert "options" not in fake_ollama.requests[-1]["body"]
    assert fake_ollama.requests[-1]["raw"] == json.dumps({"model": "llama3.2", "prompt": "a b c",
                                                          "stream": False}).encode()


def test_model_allow_list(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel(ai_models=("llama3.2", "nomic-embed-text:latest"))
    assert nanogrid_ai.generate("llama3.2:latest", "ok")["response"] == "echo: ok"
    assert nanogrid_ai.embed("nomic-embed-text", "ok")["embeddings"]
    with pytest.raises(nanogrid_ai.AIRefused) as refused:
        nanogrid_ai.generate("qwen2.5:0.5b", "not this one")
    assert refused.value.status == 403 and "'qwen2.5:0.5b' is not allowed" in str(refused.value)
    with pytest.raises(nanogrid_ai.AIRefused):
        nanogrid_ai.show("qwen2.5:0.5b")
    assert nanogrid_ai.models() == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert fake_ollama.paths() == ["/api/generate", "/api/embed", "/api/tags"]
    assert channel.close()["calls"] == 3


def test_model_key():
    assert model_key("llama3.2") == "llama3.2:latest"
    assert model_key("llama3.2:1b") == "llama3.2:1b"
    assert model_key("registry.local:5000/team/model") == "registry.local:5000/team/model:latest"


def test_server_errors_are_ai_errors_with_their_status(open_channel, fake_ollama, nanogrid_ai):
    open_channel()
    with pytest.raises(nanogrid_ai.AIError) as error:
        nanogrid_ai.generate("no-such-model", "x")
    assert type(error.value) is nanogrid_ai.AIError and error.value.status == 404
    assert 'model "no-such-model" not found' in str(error.value)
    with pytest.raises(nanogrid_ai.AIError) as error:
        nanogrid_ai.generate("llama3.2", "x", context="not a list")
    assert error.value.status == 400
    with pytest.raises(TypeError):
        nanogrid_ai.generate("llama3.2", "x", stream=True)


# -- the AI node down or silent ----------------------------------------------------------------

def test_ai_node_down_is_reported_at_once(open_channel, nanogrid_ai):
    # A refused connection is reported when it is refused: well before the connect timeout.
    channel = open_channel(endpoint=f"http://127.0.0.1:{free_port()}", ai_connect_timeout_s=FAR_S,
                           ai_timeout_s=FAR_S)
    started = time.monotonic()
    with pytest.raises(nanogrid_ai.AIUnavailable) as down:
        nanogrid_ai.generate("llama3.2", "hello")
    assert time.monotonic() - started < FAR_S / 2
    assert down.value.status == 503 and str(down.value) == "the AI node is unavailable: connection refused"
    with pytest.raises(nanogrid_ai.AIUnavailable):
        list(nanogrid_ai.chat_stream("llama3.2", [{"role": "user", "content": "hi"}]))
    assert channel.close()["calls"] == 2


def test_unresolvable_ai_node(open_channel, nanogrid_ai, monkeypatch):
    # The resolver answers at once that the name does not exist (the host's own resolver may be slow or absent).
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "ollama.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    open_channel(endpoint="http://ollama.invalid:11434", ai_connect_timeout_s=FAR_S)
    started = time.monotonic()
    with pytest.raises(nanogrid_ai.AIUnavailable, match="the AI node is unavailable"):
        nanogrid_ai.embed("nomic-embed-text", "x")
    assert time.monotonic() - started < FAR_S / 2


def test_silent_ai_node_times_out_within_the_configured_timeout(open_channel, fake_ollama, nanogrid_ai):
    open_channel(ai_timeout_s=1)
    fake_ollama.hang = True
    started = time.monotonic()
    with pytest.raises(nanogrid_ai.AIUnavailable) as silent:
        nanogrid_ai.generate("llama3.2", "hello")
    elapsed = time.monotonic() - started
    # The channel's 1 s ended it, not the function's own socket timeout (the channel's timeouts
    # plus 5 s), nor the server's hang (120 s).
    assert 0.9 <= elapsed < FAR_S, elapsed
    assert silent.value.status == 504 and "no answer within 1 s" in str(silent.value)
    assert fake_ollama.paths() == ["/api/generate"]


def test_stream_that_stalls_ends_in_ai_unavailable(open_channel, fake_ollama, nanogrid_ai):
    open_channel(ai_timeout_s=1)
    fake_ollama.stall_after = 2
    stream = nanogrid_ai.generate_stream("llama3.2", "one two three four")
    received = [next(stream), next(stream)]
    assert [r["response"] for r in received] == ["echo:", " one"]
    started = time.monotonic()
    with pytest.raises(nanogrid_ai.AIUnavailable, match="stopped answering for 1 s"):
        next(stream)
    assert time.monotonic() - started < FAR_S  # the server would stay silent for 120 s


def test_no_channel_is_ai_unavailable(nanogrid_ai, tmp_path):
    nanogrid_ai.configure(socket=str(tmp_path / "missing.sock"))
    with pytest.raises(nanogrid_ai.AIUnavailable, match="this run has no AI channel"):
        nanogrid_ai.generate("llama3.2", "x")


# -- the channel's own lifecycle -----------------------------------------------------------------

def test_socket_directory_permissions_and_removal(fake_ollama):
    channel = Channel(Settings(ai_endpoint=fake_ollama.url)).start()
    directory = channel.directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755
    assert stat.S_ISSOCK(os.stat(channel.socket_path).st_mode)
    assert stat.S_IMODE(os.stat(channel.socket_path).st_mode) == 0o666
    assert os.listdir(directory) == ["ai.sock"]
    channel.close()
    assert not directory.exists()
    assert channel.close() == {"calls": 0, "prompt_tokens": 0, "eval_tokens": 0, "time_ms": 0}


def test_close_cuts_a_call_in_progress(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel()
    fake_ollama.stall_after = 1
    stream = nanogrid_ai.generate_stream("llama3.2", "one two three")
    next(stream)
    started = time.monotonic()
    channel.close()
    with pytest.raises(nanogrid_ai.AIUnavailable):
        next(stream)
    assert time.monotonic() - started < FAR_S  # the server would stay silent for 120 s


def test_concurrent_calls_are_all_counted(open_channel, fake_ollama, nanogrid_ai):
    channel = open_channel()
    fake_ollama.token_delay = 0.05
    errors = []

    def call(n):
        try:
            assert nanogrid_ai.generate("llama3.2", f"n {n}")["response"] == f"echo: n {n}"
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert channel.close() == {"calls": 10, "prompt_tokens": 20, "eval_tokens": 30,
                               "time_ms": channel.usage.time_ms}


# -- settings --------------------------------------------------------------------------------------

def test_settings_from_env():
    settings = Settings.from_env({
        "AI_ENDPOINT": "http://10.0.0.5:11434", "NANOGRID_AI_TIMEOUT_S": "30", "NANOGRID_AI_CONNECT_TIMEOUT_S": "2",
        "NANOGRID_AI_MAX_CALLS": "5", "NANOGRID_AI_MAX_TOKENS": "0", "NANOGRID_AI_MAX_REQUEST_BYTES": "1000",
        "NANOGRID_AI_MODELS": "llama3.2, nomic-embed-text ,",
    })
    assert (settings.ai_endpoint, settings.ai_timeout_s, settings.ai_connect_timeout_s) == (
        "http://10.0.0.5:11434", 30, 2)
    assert (settings.ai_max_calls, settings.ai_max_tokens, settings.ai_max_request_bytes) == (5, 0, 1000)
    assert settings.ai_models == ("llama3.2", "nomic-embed-text")
    assert Settings.from_env({}).ai_models == () and Settings.from_env({}).ai_endpoint == ""


@pytest.mark.parametrize("env", [
    {"AI_ENDPOINT": "10.0.0.5:11434"}, {"AI_ENDPOINT": "ftp://x"}, {"NANOGRID_AI_TIMEOUT_S": "0"},
    {"NANOGRID_AI_MAX_CALLS": "-1"}, {"NANOGRID_AI_MAX_TOKENS": "many"},
])
def test_bad_ai_settings_are_refused_at_startup(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)
