"""Worker-side look at the AI node: does AI_ENDPOINT answer, and which models does it serve.

Used by `nanogrid ai-check` and by the AI line of /health. It speaks Ollama's HTTP API directly
(GET /api/version, GET /api/tags), with the standard library only.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from nanogrid.config import Settings

HEALTH_TIMEOUT_S = 1.0  # /health must stay fast even when the AI node black-holes connections


@dataclass
class Check:
    endpoint: str  # without credentials
    ok: bool
    version: str | None = None
    models: list[str] = field(default_factory=list)
    allowed: list[str] | None = None  # the models functions may use, when NANOGRID_AI_MODELS is set
    error: str | None = None

    def document(self) -> dict:
        return {"endpoint": self.endpoint, "ok": self.ok, "version": self.version, "models": self.models,
                "allowed": self.allowed, "error": self.error}


def display(endpoint: str) -> str:
    """The endpoint without any user:password."""
    parts = urlsplit(endpoint)
    if parts.username is None:
        return endpoint
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _get(endpoint: str, path: str, timeout: float) -> dict:
    parts = urlsplit(endpoint)
    request = urllib.request.Request(display(endpoint).rstrip("/") + path, headers={"Accept": "application/json"})
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read(16 * 1024 * 1024))


def check(settings: Settings, timeout: float = 5.0) -> Check:
    """Ask the AI node for its version and models; never raises for a node that is down."""
    endpoint = settings.ai_endpoint
    if not endpoint:
        return Check("", False, error="AI_ENDPOINT is not set: functions have no AI node")
    result = Check(display(endpoint), False)
    try:
        tags = _get(endpoint, "/api/tags", timeout)
        models = [str(m.get("name") or m.get("model")) for m in tags.get("models") or [] if isinstance(m, dict)]
    except urllib.error.HTTPError as exc:
        result.error = f"GET /api/tags answered HTTP {exc.code}"
        return result
    except (OSError, ValueError, AttributeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        result.error = f"no answer: {reason}"
        return result
    result.ok, result.models = True, sorted(models)
    try:
        result.version = str(_get(endpoint, "/api/version", timeout).get("version"))
    except (OSError, ValueError, AttributeError):
        pass  # an older or proxied node without /api/version is still usable
    if settings.ai_models:
        from nanogrid.ai.channel import model_key

        served = {model_key(m) for m in result.models}
        result.allowed = [m for m in settings.ai_models if model_key(m) in served]
        missing = [m for m in settings.ai_models if model_key(m) not in served]
        if missing:
            result.error = f"allowed by NANOGRID_AI_MODELS but not on the node: {', '.join(missing)}"
    return result


def health(settings: Settings) -> dict:
    """The /health component: optional, so a node that is down never fails the platform's health."""
    if not settings.ai_endpoint:
        return {"status": "disabled", "optional": True}
    try:
        _get(settings.ai_endpoint, "/api/tags", HEALTH_TIMEOUT_S)
    except (OSError, ValueError):
        return {"status": "down", "optional": True}
    return {"status": "ok", "optional": True}
