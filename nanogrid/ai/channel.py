"""The per-run AI channel: an allow-listed HTTP proxy from a Unix socket to the Ollama node.

The worker opens one Channel per run, when AI_ENDPOINT is set. It listens on `ai.sock` in a
fresh private directory (0755, the socket 0666 so the sandbox user can connect); the Docker
sandbox bind-mounts that directory read-only and keeps network_mode "none", so the socket is the
sandbox's only way out, and it leads only here. For every request the channel:

- forwards only Ollama's /api/generate, /api/chat, /api/embed, /api/embeddings (POST) and the
  read-only /api/tags (GET) and /api/show (POST); model management (/api/pull, /api/push,
  /api/create, /api/copy, /api/delete) and anything else is refused with 403 and never reaches
  the AI node;
- refuses request bodies over settings.ai_max_request_bytes (413), models outside the optional
  allow-list settings.ai_models (403; /api/tags then lists only the allowed ones);
- enforces the run's budgets before forwarding (429 once used up): ai_max_calls forwarded calls,
  ai_max_tokens prompt + eval tokens. A generate or chat call may produce at most the tokens
  left in the budget when it starts (its options.num_predict is lowered to that), so a call
  cannot run far past it; the calls in progress when the budget runs out (at most
  MAX_CONCURRENT_CALLS) and their prompt tokens can still take the total somewhat over;
- relays the answer as it comes, chunk by chunk (Ollama's NDJSON stream passes through
  unchanged) and reads prompt_eval_count / eval_count from the final object of a stream or the
  JSON of a non-streamed answer, so the job record can carry the run's AI usage.

Errors the channel itself produces are Ollama-shaped ({"error": "..."}) and carry the header
X-NanoGrid-AI naming their kind (refused, too_large, quota, unavailable, bad_request), which
nanogrid_ai turns into AIRefused, AIQuotaExceeded or AIUnavailable. The AI node being down or
silent is reported within ai_connect_timeout_s / ai_timeout_s as 502/503/504 "unavailable".
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from nanogrid.ai import ALLOWED_PATHS, MANAGEMENT_PATHS, SOCKET_NAME
from nanogrid.config import Settings

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
KIND_HEADER = "X-NanoGrid-AI"
# Calls of one run in flight at the AI node at once; more wait for a slot (then 429).
MAX_CONCURRENT_CALLS = 4
# How long a sandbox may take to send its request line, headers and body.
REQUEST_READ_TIMEOUT_S = 30
# A refused oversized body is read and dropped up to this much, so the client sees the 413.
MAX_DRAIN_BYTES = 64 * 1024 * 1024
# /api/tags answers are read whole to apply the model allow-list.
MAX_BUFFERED_RESPONSE = 16 * 1024 * 1024
# A streamed line longer than this is not parsed; its counters are looked for in its tail.
MAX_LINE_BYTES = 8 * 1024 * 1024
LINE_TAIL = 4096
COUNTER = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d+)')
TOKEN_LIMITED_PATHS = ("/api/generate", "/api/chat")


class Refusal(Exception):
    """A request the channel answers itself, with an Ollama-shaped error."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    eval_tokens: int = 0
    time_ms: int = 0

    def document(self) -> dict:
        return asdict(self)


def model_key(name: str) -> str:
    """A model name as Ollama resolves it: without a tag it means <name>:latest."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "its host name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "it closed the connection without answering"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class Channel:
    """One run's channel. start() before the sandbox starts, close() after it ended."""

    def __init__(self, settings: Settings, parent: str | os.PathLike | None = None):
        if not settings.ai_endpoint:
            raise ValueError("the AI channel needs settings.ai_endpoint (AI_ENDPOINT)")
        self.settings = settings
        self.parent = parent
        endpoint = urlsplit(settings.ai_endpoint)
        self.https = endpoint.scheme == "https"
        self.host = endpoint.hostname
        self.port = endpoint.port or (443 if self.https else 80)
        self.prefix = endpoint.path.rstrip("/")
        self.authorization = None
        if endpoint.username is not None:  # AI_ENDPOINT=http://user:pass@host:port behind an authenticating proxy
            pair = f"{unquote(endpoint.username)}:{unquote(endpoint.password or '')}"
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        self.models = frozenset(model_key(m) for m in settings.ai_models)
        self.usage = Usage()
        self.directory: Path | None = None
        self._own_directory = True
        self._lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT_CALLS)
        self._upstreams: set[socket.socket] = set()
        self._closed = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def socket_path(self) -> Path:
        assert self.directory is not None, "the channel is not started"
        return self.directory / SOCKET_NAME

    def start(self, directory: str | os.PathLike | None = None) -> "Channel":
        """Listen in a fresh private directory, or in `directory` (an existing one, such as a warm
        container's AI directory, which then stays: close() removes only the socket)."""
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="nanogrid-ai-", dir=self.parent) if directory is None
                              else directory)
        try:
            if self._own_directory:
                self.directory.chmod(0o755)
            else:
                self.socket_path.unlink(missing_ok=True)  # an earlier run's, if its close did not happen
            self._server = _Server(str(self.socket_path), _Handler)
            self._server.channel = self
            os.chmod(self.socket_path, 0o666)
        except BaseException:
            self._remove_socket()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"ai-channel-{self.directory.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> dict:
        """Stop serving, cut calls still in progress at the AI node, remove the socket; the usage."""
        with self._lock:
            already, self._closed = self._closed, True
            upstreams = list(self._upstreams)
        if not already and self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for sock in upstreams:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._remove_socket()
        return self.usage_document()

    def _remove_socket(self) -> None:
        if self.directory is None:
            return
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            try:
                self.socket_path.unlink(missing_ok=True)
            except OSError:
                pass

    def usage_document(self) -> dict:
        with self._lock:
            return self.usage.document()

    def __enter__(self) -> "Channel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- policy ------------------------------------------------------------------------------

    def check_model(self, path: str, body: dict) -> None:
        name = body.get("model") or (body.get("name") if path == "/api/show" else None)
        if not isinstance(name, str) or not name.strip():
            raise Refusal(400, "bad_request", "the request names no model (field \"model\")")
        if self.models and model_key(name) not in self.models:
            allowed = ", ".join(sorted(self.models))
            raise Refusal(403, "refused", f"model {name!r} is not allowed on this installation; allowed: {allowed}")

    def admit(self, path: str, body: dict | None) -> bool:
        """Take one call from the budget, or refuse with 429; True if the body was changed."""
        settings = self.settings
        with self._lock:
            if self._closed:
                raise Refusal(503, "unavailable", "the AI channel is closed: the run has ended")
            if settings.ai_max_calls and self.usage.calls >= settings.ai_max_calls:
                raise Refusal(429, "quota", f"this run has used its budget of {settings.ai_max_calls} AI calls")
            changed = False
            if settings.ai_max_tokens:
                left = settings.ai_max_tokens - self.usage.prompt_tokens - self.usage.eval_tokens
                if left <= 0:
                    raise Refusal(429, "quota", f"this run has used its budget of {settings.ai_max_tokens} AI tokens")
                if path in TOKEN_LIMITED_PATHS and body is not None:
                    options = body.setdefault("options", {})
                    if not isinstance(options, dict):
                        raise Refusal(400, "bad_request", "options must be a JSON object")
                    wanted = options.get("num_predict")
                    if isinstance(wanted, bool) or not isinstance(wanted, int) or not 0 <= wanted <= left:
                        options["num_predict"] = left  # absent, -1 (unbounded), -2 (fill context) or too many
                        changed = True
            self.usage.calls += 1
            return changed

    def settle(self, prompt_tokens: int, eval_tokens: int, seconds: float) -> None:
        with self._lock:
            self.usage.prompt_tokens += prompt_tokens
            self.usage.eval_tokens += eval_tokens
            self.usage.time_ms += int(seconds * 1000)

    # -- the AI node ---------------------------------------------------------------------------

    def open_upstream(self, method: str, path: str, body: bytes | None) -> tuple[http.client.HTTPConnection,
                                                                                 http.client.HTTPResponse]:
        settings = self.settings
        factory = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = factory(self.host, self.port, timeout=settings.ai_connect_timeout_s)
        try:
            connection.connect()
        except TimeoutError:
            connection.close()
            raise Refusal(504, "unavailable", "the AI node is unavailable: it did not accept a connection within "
                                              f"{settings.ai_connect_timeout_s:g} s") from None
        except OSError as exc:
            connection.close()
            raise Refusal(503, "unavailable", f"the AI node is unavailable: {_reason(exc)}") from None
        connection.sock.settimeout(settings.ai_timeout_s)
        with self._lock:
            if self._closed:
                connection.close()
                raise Refusal(503, "unavailable", "the AI channel is closed: the run has ended")
            self._upstreams.add(connection.sock)
        headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson, application/json",
                   "User-Agent": "nanogrid-ai-channel"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            connection.request(method, self.prefix + path, body=body, headers=headers)
            return connection, connection.getresponse()
        except TimeoutError:
            self.drop_upstream(connection)
            raise Refusal(504, "unavailable", f"the AI node is unavailable: no answer within "
                                              f"{settings.ai_timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            self.drop_upstream(connection)
            raise Refusal(502, "unavailable", f"the AI node is unavailable: {_reason(exc)}") from None

    def drop_upstream(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._upstreams.discard(connection.sock)
        connection.close()

    def filter_tags(self, data: bytes) -> bytes:
        if not self.models:
            return data
        try:
            document = json.loads(data)
            document["models"] = [m for m in document.get("models") or []
                                  if model_key(str(m.get("model") or m.get("name") or "")) in self.models]
        except (ValueError, AttributeError, TypeError):
            return data
        return json.dumps(document).encode()


class _Counters:
    """Finds prompt_eval_count and eval_count in an answer as it streams past, line by line."""

    def __init__(self):
        self.line = bytearray()
        self.overflowed = False
        self.prompt_tokens = 0
        self.eval_tokens = 0

    def feed(self, data: bytes) -> None:
        self.line += data
        while (end := self.line.find(b"\n")) >= 0:
            self._parse(bytes(self.line[:end]))
            del self.line[:end + 1]
            self.overflowed = False
        if len(self.line) > MAX_LINE_BYTES:
            del self.line[:-LINE_TAIL]
            self.overflowed = True

    def finish(self) -> None:
        if self.line.strip():
            self._parse(bytes(self.line))
        self.line.clear()

    def _parse(self, line: bytes) -> None:
        if self.overflowed:
            # The counters are the last fields of Ollama's final objects.
            found = dict((m.group(1), int(m.group(2))) for m in COUNTER.finditer(line))
        else:
            try:
                found = json.loads(line)
            except ValueError:
                return
            if not isinstance(found, dict):
                return
        for key, attribute in ((b"prompt_eval_count", "prompt_tokens"), (b"eval_count", "eval_tokens")):
            value = found.get(key if self.overflowed else key.decode())
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                setattr(self, attribute, getattr(self, attribute) + value)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # A function's concurrent connects wait in the backlog (a full one is EAGAIN on a Unix socket).
    request_queue_size = 64
    channel: Channel

    def handle_error(self, request, client_address) -> None:
        log.exception("AI channel: error while serving a request")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nanogrid-ai"
    sys_version = ""
    timeout = REQUEST_READ_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("AI channel: " + format, *args)

    def address_string(self) -> str:
        return "sandbox"

    def _serve_command(self) -> None:
        self._serve(self.command)

    # BaseHTTPRequestHandler looks up do_<METHOD>; every method goes through the same allow-list.
    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = _serve_command

    # -----------------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        self.close_connection = True
        self.body_read = False
        channel = self.server.channel
        path = urlsplit(self.path).path
        try:
            if path in MANAGEMENT_PATHS:
                raise Refusal(403, "refused", f"{path} is model management, which functions may not use")
            if path not in ALLOWED_PATHS:
                allowed = ", ".join(sorted(ALLOWED_PATHS))
                raise Refusal(403, "refused", f"{path} is not available to functions; allowed: {allowed}")
            if method != ALLOWED_PATHS[path]:
                raise Refusal(405, "bad_request", f"{path} takes {ALLOWED_PATHS[path]}, not {method}")
            raw = self._read_body()
            body = None
            if method == "POST":
                body = self._json_object(raw)
                channel.check_model(path, body)
        except Refusal as refusal:
            self._refuse(refusal)
            return
        if not channel.slots.acquire(timeout=channel.settings.ai_timeout_s):
            self._refuse(Refusal(429, "quota", f"more than {MAX_CONCURRENT_CALLS} AI calls of one run at once"))
            return
        try:
            try:
                changed = channel.admit(path, body)
            except Refusal as refusal:
                self._refuse(refusal)
                return
            if changed:
                raw = json.dumps(body).encode()  # with num_predict lowered to what the budget has left
            started = time.monotonic()
            counters = _Counters()
            try:
                self._forward(channel, method, path, raw if method == "POST" else None, counters)
            finally:
                counters.finish()
                channel.settle(counters.prompt_tokens, counters.eval_tokens, time.monotonic() - started)
        finally:
            channel.slots.release()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise Refusal(411, "bad_request", "send the request body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise Refusal(400, "bad_request", "bad Content-Length") from None
        if length < 0:
            raise Refusal(400, "bad_request", "bad Content-Length")
        limit = self.server.channel.settings.ai_max_request_bytes
        if length > limit:
            self._drain(length)
            raise Refusal(413, "too_large", f"the request body has {length} bytes; the limit is {limit}")
        data = self.rfile.read(length)
        self.body_read = True
        if len(data) < length:
            raise Refusal(400, "bad_request", "the request body ended early")
        return data

    def _drain(self, length: int) -> None:
        """Read and drop a refused body, so the client is not cut off before it reads the refusal."""
        self.body_read = True
        left = min(length, MAX_DRAIN_BYTES)
        try:
            while left > 0:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    return
                left -= len(data)
        except OSError:
            return

    @staticmethod
    def _json_object(raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise Refusal(400, "bad_request", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "bad_request", "the request body must be a JSON object")
        return body

    def _refuse(self, refusal: Refusal) -> None:
        if not self.body_read and "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            try:
                self._drain(int(self.headers.get("Content-Length") or 0))
            except ValueError:
                pass
        payload = json.dumps({"error": refusal.message}).encode()
        try:
            self.send_response(refusal.status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header(KIND_HEADER, refusal.kind)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the sandbox hung up

    def _forward(self, channel: Channel, method: str, path: str, body: bytes | None, counters: _Counters) -> None:
        try:
            connection, response = channel.open_upstream(method, path, body)
        except Refusal as refusal:
            log.warning("AI channel: %s", refusal.message)
            self._refuse(refusal)
            return
        try:
            if path == "/api/tags" and channel.models:
                try:
                    data = channel.filter_tags(response.read(MAX_BUFFERED_RESPONSE))
                except (OSError, http.client.HTTPException) as exc:
                    self._refuse(Refusal(502, "unavailable", f"the AI node is unavailable: {_reason(exc)}"))
                    return
                self._relay_whole(response, data)
            else:
                self._relay_stream(channel, response, counters)
        finally:
            channel.drop_upstream(connection)

    def _relay_whole(self, response: http.client.HTTPResponse, data: bytes) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.getheader("Content-Type") or "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def _relay_stream(self, channel: Channel, response: http.client.HTTPResponse, counters: _Counters) -> None:
        """Pass the answer on as it arrives, each piece the AI node sent as one chunk."""
        content_type = response.getheader("Content-Type") or "application/json"
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
        except OSError:
            return
        while True:
            try:
                data = response.read1(CHUNK)
            except TimeoutError:
                problem = f"the AI node is unavailable: it stopped answering for {channel.settings.ai_timeout_s:g} s"
                break
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = f"the AI node is unavailable: the answer broke off ({_reason(exc)})"
                break
            if not data:
                problem = None
                break
            counters.feed(data)
            if not self._chunk(data):
                return  # the sandbox hung up (or was stopped): dropping the connection stops the generation
        if problem is None:
            self._chunk(b"")
            return
        log.warning("AI channel: %s", problem)
        if "ndjson" in content_type:
            # Ollama reports a failure mid-stream as one more line holding "error"; the extra field
            # tells nanogrid_ai that this one is the AI node failing.
            tail = b"" if not counters.line else b"\n"
            line = json.dumps({"error": problem, "nanogrid_ai": "unavailable"}).encode()
            if self._chunk(tail + line + b"\n"):
                self._chunk(b"")
        # Otherwise the chunked body stays unterminated: the client sees an incomplete answer.

    def _chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return True
        except OSError:
            return False
