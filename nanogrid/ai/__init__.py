"""Private AI: how functions reach the Ollama node at AI_ENDPOINT without a network.

A sandbox has no network at all. For each run the worker opens a `Channel` (channel.py): a small
HTTP proxy on a Unix socket in a private directory, which the Docker sandbox bind-mounts
read-only at SANDBOX_SOCKET_DIR. The proxy forwards only Ollama's inference endpoints and the
read-only model listing, caps request bodies, enforces the run's call and token budgets and the
optional model allow-list, and counts what the run used; the job record carries that as
`ai_usage`. Function code talks to the socket with `nanogrid_ai` (sandbox/runtime/nanogrid_ai.py),
which is on the sandbox's import path.

client.py holds the worker-side probe behind `nanogrid ai-check` and the AI line of /health.
"""

from __future__ import annotations

# Where the channel's directory appears inside a Docker sandbox, and the socket's name in it.
SANDBOX_SOCKET_DIR = "/run/nanogrid-ai"
SOCKET_NAME = "ai.sock"

# Ollama's endpoints a function may call, with their method.
INFERENCE_PATHS = {"/api/generate": "POST", "/api/chat": "POST", "/api/embed": "POST", "/api/embeddings": "POST"}
READ_ONLY_PATHS = {"/api/tags": "GET", "/api/show": "POST"}
ALLOWED_PATHS = {**INFERENCE_PATHS, **READ_ONLY_PATHS}
# Model management: always refused with 403, never forwarded.
MANAGEMENT_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})
