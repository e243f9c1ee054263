"""An Ollama-API-compatible server for tests, which records every request it sees.

It follows Ollama's published API (docs/api.md of ollama/ollama): POST /api/generate and
/api/chat stream NDJSON by default (one object per token with "done": false, then a final object
with "done": true, "done_reason" and the counters total_duration, load_duration,
prompt_eval_count, prompt_eval_duration, eval_count, eval_duration), or answer one JSON object
with "stream": false; POST /api/embed ({"embeddings": [[...]]}), the older POST /api/embeddings
({"embedding": [...]}), GET /api/tags, POST /api/show, GET /api/version; errors are
{"error": "..."} with 404 for an unknown model and 400 for a bad request. The model-management
endpoints answer success too, so that a test can only pass if they are never reached.

The answers are deterministic: generate echoes the prompt word by word ("echo: ..."), chat the
last message, an embedding is [characters, words, 1.0] of each input; prompt_eval_count is the
number of words of the prompt (or of all messages) and eval_count the number of tokens sent.

Test controls: `token_delay` (seconds between streamed tokens), `gate` (a threading.Event the
stream waits on after its first token), `lockstep` (stream each token only once the test has
called ack() for the one before), `hang` (accept requests and never answer), `stall_after`
(stream that many tokens, then go silent). Each recorded request holds its
method, path, headers, raw body, parsed body and "sent": the bytes of the answer, piece by piece.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ("llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest")
LOCKSTEP_WAIT_S = 60  # a lockstep stream waits this long for the test's ack, then gives up
MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
VERSION = "0.6.5"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _model(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class FakeOllama:
    def __init__(self, host: str = "0.0.0.0", models: tuple[str, ...] = MODELS):
        self.models = models
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.token_delay = 0.0
        self.gate: threading.Event | None = None
        self.hang = False
        self.stall_after: int | None = None
        self.lockstep = False
        self._acks = threading.Semaphore(0)
        self.release = threading.Event()  # ends hangs and stalls
        self.server = ThreadingHTTPServer((host, 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name="fake-ollama")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeOllama":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
        self.token_delay, self.gate, self.hang, self.stall_after, self.lockstep = 0.0, None, False, None, False
        self._acks = threading.Semaphore(0)
        self.release = threading.Event()

    def ack(self) -> None:
        """In lockstep: the test has received one more streamed token."""
        self._acks.release()

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.requests]

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def __enter__(self) -> "FakeOllama":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOllama"

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass

    @property
    def fake(self) -> FakeOllama:
        return self.server.fake

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    # ----------------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.entry = {"method": method, "path": self.path, "headers": dict(self.headers), "raw": raw,
                      "body": body, "at": time.monotonic(), "sent": []}
        self.fake.record(self.entry)
        if self.fake.hang:
            self.fake.release.wait(120)
            self.close_connection = True
            return
        routes = {
            ("POST", "/api/generate"): self._generate, ("POST", "/api/chat"): self._chat,
            ("POST", "/api/embed"): self._embed, ("POST", "/api/embeddings"): self._embeddings,
            ("GET", "/api/tags"): self._tags, ("POST", "/api/show"): self._show,
            ("GET", "/api/version"): lambda body: self._json(200, {"version": VERSION}),
        }
        if self.path in MANAGEMENT:
            self._json(200, {"status": "success"})
            return
        route = routes.get((method, self.path))
        if route is None:
            self._json(404, {"error": "404 page not found"})
            return
        if method == "POST" and not isinstance(body, dict):
            self._json(400, {"error": "invalid request body"})
            return
        route(body)

    def _json(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.entry["sent"].append(data)  # recorded first: the client may have it all before write() returns
        self.wfile.write(data)

    def _known_model(self, body: dict) -> str | None:
        name = body.get("model") or body.get("name")
        if not name:
            self._json(400, {"error": "model is required"})
            return None
        if _model(name) not in self.fake.models:
            self._json(404, {"error": f"model \"{name}\" not found, try pulling it first"})
            return None
        return name

    def _counters(self, prompt_tokens: int, eval_tokens: int) -> dict:
        return {"total_duration": 5_000_000 + eval_tokens * 1000, "load_duration": 1_000_000,
                "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 2_000_000,
                "eval_count": eval_tokens, "eval_duration": eval_tokens * 1000}

    def _tokens(self, text: str, options: dict) -> tuple[list[str], str]:
        words = text.split()
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _answer(self, body: dict, name: str, prompt_tokens: int, text: str, piece) -> None:
        tokens, reason = self._tokens(text, body.get("options") or {})

        def final(text: str) -> dict:
            return {"model": name, "created_at": _now(), **piece(text), "done": True, "done_reason": reason,
                    **self._counters(prompt_tokens, len(tokens))}

        if body.get("stream", True) is False:
            self._json(200, final("".join(tokens)))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, token in enumerate(tokens):
            if self.fake.stall_after is not None and index >= self.fake.stall_after:
                self.fake.release.wait(120)
                self.close_connection = True
                return
            self._chunk({"model": name, "created_at": _now(), **piece(token), "done": False})
            if index == 0 and self.fake.gate is not None:
                self.fake.gate.wait(30)
            if self.fake.lockstep and not self.fake._acks.acquire(timeout=LOCKSTEP_WAIT_S):
                self.close_connection = True  # the token never reached the test: end the stream unfinished
                return
            if self.fake.token_delay:
                time.sleep(self.fake.token_delay)
        self._chunk(final(""))
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, document: dict) -> None:
        line = json.dumps(document).encode() + b"\n"
        self.entry["sent"].append(line)  # recorded first: the client may have it before write() returns
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def _generate(self, body: dict) -> None:
        name = self._known_model(body)
        if name is None:
            return
        prompt = str(body.get("prompt", ""))
        if "context" in body and not isinstance(body["context"], list):
            self._json(400, {"error": "context must be a list of integers"})
            return
        system = str(body.get("system") or "")
        text = ("echo: " + prompt) if not system else f"echo [{system}]: {prompt}"
        self._answer(body, name, len((system + " " + prompt).split()), text, lambda piece: {"response": piece})

    def _chat(self, body: dict) -> None:
        name = self._known_model(body)
        if name is None:
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            self._json(400, {"error": "messages must be a list of {role, content}"})
            return
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        self._answer(body, name, prompt_tokens, f"echo: {last}",
                     lambda piece: {"message": {"role": "assistant", "content": piece}})

    @staticmethod
    def _vector(text: str) -> list[float]:
        return [float(len(text)), float(len(text.split())), 1.0]

    def _embed(self, body: dict) -> None:
        name = self._known_model(body)
        if name is None:
            return
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            self._json(400, {"error": "input must be a string or a list of strings"})
            return
        self._json(200, {"model": name, "embeddings": [self._vector(i) for i in inputs],
                         "total_duration": 1_000_000, "load_duration": 100_000,
                         "prompt_eval_count": sum(len(i.split()) for i in inputs)})

    def _embeddings(self, body: dict) -> None:
        if self._known_model(body) is None:
            return
        self._json(200, {"embedding": self._vector(str(body.get("prompt", "")))})

    def _tags(self, _body) -> None:
        self._json(200, {"models": [{
            "name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1_000_000 + i,
            "digest": f"{i:064x}",
            "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                        "parameter_size": "1B", "quantization_level": "Q4_K_M"},
        } for i, m in enumerate(self.fake.models)]})

    def _show(self, body: dict) -> None:
        name = self._known_model(body)
        if name is None:
            return
        self._json(200, {"modelfile": f"FROM {name}\n", "parameters": "temperature 0.7", "template": "{{ .Prompt }}",
                         "details": {"format": "gguf", "family": "llama", "parameter_size": "1B"},
                         "model_info": {"general.architecture": "llama"}, "capabilities": ["completion"]})
