"""nanogrid_ai: call the private AI node (Ollama) from a NanoGrid function. Nothing to install.

    import nanogrid_ai

    def handler(event, context):
        answer = nanogrid_ai.generate("llama3.2", "Summarise: " + event["text"], temperature=0.2)
        return answer["response"]

The sandbox has no network; these calls go through the run's AI channel (a Unix socket the
worker serves), which forwards them to the Ollama node the installation is configured with.
Requests and answers are Ollama's own (https://github.com/ollama/ollama/blob/main/docs/api.md):

    generate(model, prompt, **options)    -> {"response": "...", "done": True, "eval_count": ..., ...}
    chat(model, messages, **options)      -> {"message": {"role": "assistant", "content": "..."}, ...}
    embed(model, input, **options)        -> {"embeddings": [[...], ...], ...}  (input: str or list of str)
    embeddings(model, prompt)             -> {"embedding": [...]}  (Ollama's older endpoint)
    generate_stream(...), chat_stream(...) -> iterator of Ollama's streamed objects, the last with done=True
    models()                              -> the model names the node serves (GET /api/tags)
    show(model)                           -> the model's details (POST /api/show)

Keyword arguments that are top-level request fields in Ollama's API (system, format, images,
tools, keep_alive, ...) are sent as such; every other keyword (temperature, num_predict, seed,
num_ctx, ...) goes into "options", merged over an explicit options={...}.

Errors raise AIError or one of its kinds:
    AIUnavailable    the AI node is down, silent, or this installation has no AI node
    AIRefused        the request is not allowed (model management, a model outside the allow-list,
                     a request body over the size limit)
    AIQuotaExceeded  the run has used its budget of AI calls or tokens
Other errors of the AI node (an unknown model: status 404, a bad request: 400) raise AIError
with .status set.

Standard library only: it runs on the bare Python of the runtime image.
"""

import http.client
import json
import socket

__all__ = [
    "AIError", "AIUnavailable", "AIRefused", "AIQuotaExceeded",
    "generate", "generate_stream", "chat", "chat_stream", "embed", "embeddings", "models", "show",
]

SOCKET_PATH = "/run/nanogrid-ai/ai.sock"  # where the Docker sandbox mounts the run's channel
DEFAULT_TIMEOUT_S = 600.0
KIND_HEADER = "X-NanoGrid-AI"
MAX_ERROR_BYTES = 64 * 1024

GENERATE_FIELDS = ("suffix", "system", "template", "context", "raw", "format", "images", "keep_alive", "think")
CHAT_FIELDS = ("tools", "format", "keep_alive", "think")
EMBED_FIELDS = ("truncate", "keep_alive", "dimensions")

_settings = {"socket": SOCKET_PATH, "timeout_s": DEFAULT_TIMEOUT_S}


class AIError(Exception):
    """A call to the AI node failed. status: the HTTP status, when there was one."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class AIUnavailable(AIError):
    """The AI node did not answer (down, too slow, or not configured on this installation)."""


class AIRefused(AIError):
    """The request is not allowed through the AI channel."""


class AIQuotaExceeded(AIError):
    """The run has used its budget of AI calls or tokens."""


def configure(socket=None, timeout_s=None):  # noqa: A002 - named like the run file's field
    """Set by the runner from the run file; functions do not need to call it."""
    if socket:
        _settings["socket"] = socket
    if timeout_s:
        _settings["timeout_s"] = float(timeout_s)


# -- the API -------------------------------------------------------------------------------------

def generate(model, prompt, **options):
    """One completion: Ollama's POST /api/generate with stream false; returns its JSON object."""
    return _call("/api/generate", _body({"model": model, "prompt": prompt}, GENERATE_FIELDS, options, False))


def generate_stream(model, prompt, **options):
    """Yield Ollama's streamed /api/generate objects as they arrive ("response": the next piece)."""
    return _stream("/api/generate", _body({"model": model, "prompt": prompt}, GENERATE_FIELDS, options, True))


def chat(model, messages, **options):
    """One chat turn: Ollama's POST /api/chat with stream false; the reply is result["message"]."""
    return _call("/api/chat", _body({"model": model, "messages": list(messages)}, CHAT_FIELDS, options, False))


def chat_stream(model, messages, **options):
    """Yield Ollama's streamed /api/chat objects as they arrive (["message"]["content"]: the next piece)."""
    return _stream("/api/chat", _body({"model": model, "messages": list(messages)}, CHAT_FIELDS, options, True))


def embed(model, input, **options):  # noqa: A002 - Ollama's field name
    """Embeddings of a string or a list of strings: Ollama's POST /api/embed; see result["embeddings"]."""
    return _call("/api/embed", _body({"model": model, "input": input}, EMBED_FIELDS, options, None))


def embeddings(model, prompt, **options):
    """One embedding with Ollama's older POST /api/embeddings; see result["embedding"]."""
    return _call("/api/embeddings", _body({"model": model, "prompt": prompt}, ("keep_alive",), options, None))


def models():
    """The names of the models the AI node serves (those this installation allows)."""
    return [m.get("name") or m.get("model") for m in _call("/api/tags", None, method="GET").get("models") or []]


def show(model):
    """Ollama's POST /api/show: the model's details, parameters and template."""
    return _call("/api/show", {"model": model})


# -- the channel ---------------------------------------------------------------------------------

def _body(body, fields, options, stream):
    extra = options.pop("options", None) or {}
    if "stream" in options:
        raise TypeError("use generate_stream / chat_stream to stream; the others never stream")
    merged = dict(extra)
    for name, value in options.items():
        if name in fields:
            if value is not None:
                body[name] = value
        else:
            merged[name] = value
    if merged:
        body["options"] = merged
    if stream is not None:
        body["stream"] = stream
    return body


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _open(path, body, method="POST"):
    """Send one request through the channel; the response, once its status is known good."""
    socket_path, timeout = _settings["socket"], _settings["timeout_s"]
    connection = _UnixConnection(socket_path, timeout)
    try:
        connection.connect()
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        connection.close()
        raise AIUnavailable("the AI node is unavailable: this run has no AI channel "
                            "(AI_ENDPOINT is not configured on this NanoGrid installation)") from None
    except OSError as exc:
        connection.close()
        raise AIUnavailable(f"the AI node is unavailable: cannot open the AI channel ({exc})") from None
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/x-ndjson, application/json", "Connection": "close"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        try:
            connection.request(method, path, body=data, headers=headers)
        except OSError:
            pass  # the channel may have answered (413) and stopped reading: its answer explains
        response = connection.getresponse()
    except TimeoutError:
        connection.close()
        raise AIUnavailable(f"the AI node is unavailable: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise AIUnavailable(f"the AI node is unavailable: the AI channel broke off ({exc})") from None
    if response.status != 200:
        try:
            raw = response.read(MAX_ERROR_BYTES)
        except (OSError, http.client.HTTPException):
            raw = b""
        finally:
            connection.close()
        raise _error(response.status, response.getheader(KIND_HEADER), raw)
    return connection, response


def _error(status, kind, raw):
    try:
        message = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        message = None
    message = message or raw.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    if kind == "quota" or status == 429:
        return AIQuotaExceeded(message, status)
    if kind in ("refused", "too_large") or status in (403, 413):
        return AIRefused(message, status)
    if kind == "unavailable" or status in (502, 503, 504):
        if not message.startswith("the AI node is unavailable"):
            message = f"the AI node is unavailable: {message}"
        return AIUnavailable(message, status)
    return AIError(f"{message} (HTTP {status})", status)


def _read(what, read):
    """read(), with a stall or a broken connection reported as AIUnavailable naming `what`."""
    try:
        return read()
    except TimeoutError:
        raise AIUnavailable(f"the AI node is unavailable: the {what} stopped arriving") from None
    except (OSError, http.client.HTTPException) as exc:
        raise AIUnavailable(f"the AI node is unavailable: the {what} broke off ({exc})") from None


def _call(path, body, method="POST"):
    connection, response = _open(path, body, method)
    try:
        raw = _read("answer", response.read)
    finally:
        connection.close()
    try:
        document = json.loads(raw)
    except ValueError:
        raise AIError("the AI node's answer is not JSON", response.status) from None
    if isinstance(document, dict) and document.get("error"):
        raise AIError(str(document["error"]), response.status)
    return document


def _stream(path, body):
    # Opened at once, so that an error surfaces at the call rather than at the first next().
    connection, response = _open(path, body)
    return _lines(connection, response)


def _lines(connection, response):
    try:
        while True:
            line = _read("stream", response.readline)
            if not line:
                raise AIUnavailable("the AI node is unavailable: the stream ended before its final object")
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise AIError("the AI node sent a line that is not JSON", response.status) from None
            if isinstance(item, dict) and item.get("error"):
                if item.get("nanogrid_ai") == "unavailable":
                    raise AIUnavailable(str(item["error"]), response.status)
                raise AIError(str(item["error"]), response.status)
            yield item
            if isinstance(item, dict) and item.get("done"):
                return
    finally:
        connection.close()
