"""Prometheus metrics of the API (/metrics) and of the worker (its exporter), on real processes.

`nanogrid api` (gunicorn, 2 workers by default) and `nanogrid worker` run as an operator runs
them, on a real redis-server, embedded storage and the process sandbox; the tests read /metrics
with prometheus_client's own parser. `Stack` is also used by test_logs.py and test_status.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from nanogrid import metrics
from nanogrid.api import create_app
from nanogrid.config import ConfigError, Settings
from nanogrid.services import Services
from support.servers import free_port, wait_for_http

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OK = "def handler(event, context):\n    return event['n'] * 2\n"
FAILS = "def handler(event, context):\n    raise ValueError('kaput')\n"
SLEEPS = "import time\ndef handler(event, context):\n    time.sleep(event['s'])\n    return 'slept'\n"


# --- A running API and worker ---------------------------------------------------------------------

class Stack:
    """`nanogrid api` + `nanogrid worker` in their own sessions, their stderr (the logs) in files."""

    def __init__(self, tmp: Path, redis_url: str, redis_db: int, **extra_env: str):
        base = redis_url.rsplit("/", 1)[0]
        self.redis_url = f"{base}/{redis_db}"
        redis.Redis.from_url(self.redis_url).flushdb()
        self.tmp = tmp
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.node = f"ops-{uuid.uuid4().hex[:8]}@test"
        env = {k: v for k, v in os.environ.items() if k not in (metrics.MULTIPROC_ENV, metrics.PRIVATE_ENV)}
        self.env = {
            **env,
            "PYTHONPATH": str(REPO),
            "NANOGRID_REDIS_URL": self.redis_url,
            "NANOGRID_BROKER_URL": self.redis_url,
            "NANOGRID_DATA_DIR": str(tmp / "data"),
            "NANOGRID_STORAGE": "local",
            "NANOGRID_ARCHIVE": "none",
            "NANOGRID_SANDBOX": "process",
            "NANOGRID_BIND": f"127.0.0.1:{self.port}",
            "NANOGRID_WORKER_METRICS_PORT": str(self.metrics_port),
            "NANOGRID_LOG_FORMAT": "json",
            **extra_env,
        }
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.start("api", [])
        self.start("worker", ["-n", self.node, "--concurrency", "2"])
        if not wait_for_http(self.url + "/health", 60, alive=lambda: self.procs["api"].poll() is None):
            self.fail("the API did not come up")
        deadline = time.monotonic() + 60
        while f"{self.node} ready." not in self.log("worker"):
            if self.procs["worker"].poll() is not None or time.monotonic() > deadline:
                self.fail("the worker did not come up")
            time.sleep(0.1)
        self.multiproc_dirs = {name: self.environ_of(name).get(metrics.MULTIPROC_ENV) for name in self.procs}

    def start(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "nanogrid.cli", name, *args], env=self.env,
                                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                start_new_session=True)

    def environ_of(self, name: str) -> dict:
        """The environment the process was exec'd with (`nanogrid api|worker` exec gunicorn|celery)."""
        raw = Path(f"/proc/{self.procs[name].pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def fail(self, what: str) -> None:
        details = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)
        self.stop()
        pytest.fail(f"{what}:\n{details}")

    def stop(self) -> dict[str, int]:
        codes = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        return codes

    # The API, as a client uses it.

    def deploy(self, name: str, code: str, **extra) -> str:
        response = requests.post(f"{self.url}/functions", json={"name": name, "code": code, **extra}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["function_id"]

    def run(self, function_id: str, event=None, wait_s: float = 60) -> dict:
        response = requests.post(f"{self.url}/functions/{function_id}/run", json={"input": event, "wait_s": wait_s},
                                 timeout=wait_s + 30)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def wait_running(self, job_id: str, timeout_s: float = 30) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = requests.get(f"{self.url}/jobs/{job_id}", timeout=10).json()
            if job["status"] != "PENDING" or time.monotonic() > deadline:
                assert job["status"] == "PROCESSING", job
                return job
            time.sleep(0.1)


def scrape(url: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]} from a /metrics page, via prometheus_client's parser."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def scrape_until(url: str, ready, timeout_s: float = 10) -> dict[str, list]:
    """Scrape until ready(samples) holds (or the time is up: the caller's assertions then say why)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        try:
            if ready(samples):
                return samples
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples called name whose labels include these."""
    found = [v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items()]
    assert found, f"no sample {name}{labels}; have: {sorted(samples)}"
    return sum(found)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url):
    running = Stack(tmp_path_factory.mktemp("metrics"), redis_url, redis_db=3)
    yield running
    running.stop()


# --- In one process: the route label and the fallback registry -------------------------------------

def test_api_counts_by_url_rule_without_multiprocess_dir(local_settings, monkeypatch):
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    api = create_app(local_settings, Services(local_settings)).test_client()

    def count(route: str, status: str) -> float:
        samples = {}
        for family in text_string_to_metric_families(api.get("/metrics").get_data(as_text=True)):
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.labels, s.value))
        found = [v for labels, v in samples.get("nanogrid_http_requests_total", [])
                 if labels["route"] == route and labels["status"] == status and labels["method"] == "GET"]
        return sum(found)

    before_job, before_unmatched = count("/jobs/<job_id>", "404"), count("<unmatched>", "404")
    for _ in range(3):
        assert api.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert api.get("/no/such/path").status_code == 404
    assert count("/jobs/<job_id>", "404") == before_job + 3  # the rule, never the raw path with its id
    assert count("<unmatched>", "404") == before_unmatched + 1


def test_error_type_labels_stay_bounded():
    assert metrics._error_label(None) == ""
    assert metrics._error_label("runtime_error") == "runtime_error"
    assert metrics._error_label("Not A Type!") == "other"
    assert metrics._error_label("x" * 80) == "other"


def test_worker_port_setting():
    assert Settings.from_env({}).worker_metrics_port == 9808
    assert Settings.from_env({"NANOGRID_WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ConfigError, match="NANOGRID_WORKER_METRICS_PORT"):
            Settings.from_env({"NANOGRID_WORKER_METRICS_PORT": bad})


def test_private_dir_only_when_the_operator_set_none(tmp_path):
    env: dict[str, str] = {}
    made = metrics.prepare_multiproc_dir(Settings.from_env(env), env)
    try:
        assert made and Path(made).is_dir() and env[metrics.MULTIPROC_ENV] == env[metrics.PRIVATE_ENV] == made
        assert oct(Path(made).stat().st_mode & 0o777) == "0o700"
        assert Path(made).name.startswith(f"{metrics.PRIVATE_DIR_PREFIX}{os.getpid()}-")  # its owner
    finally:
        os.rmdir(made)
    operator = {metrics.MULTIPROC_ENV: str(tmp_path)}
    assert metrics.prepare_multiproc_dir(Settings.from_env(operator), operator) == str(tmp_path)
    assert metrics.PRIVATE_ENV not in operator


def test_a_dead_owners_private_dir_is_removed_by_the_next_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"{metrics.PRIVATE_DIR_PREFIX}{dead.pid}-"))
    (left / "counter_1.db").write_bytes(b"x")
    mine = Path(tempfile.mkdtemp(prefix=f"{metrics.PRIVATE_DIR_PREFIX}{os.getpid()}-"))
    env: dict[str, str] = {}
    made = metrics.prepare_multiproc_dir(Settings.from_env(env), env)
    try:
        assert not left.exists(), "a killed service's directory stays behind"
        assert mine.is_dir(), "a live process's directory was removed"
    finally:
        os.rmdir(made)
        os.rmdir(mine)


# --- Real processes --------------------------------------------------------------------------------

def test_each_service_gets_its_own_private_metrics_dir(stack):
    api_dir, worker_dir = stack.multiproc_dirs["api"], stack.multiproc_dirs["worker"]
    assert api_dir and worker_dir and api_dir != worker_dir
    assert Path(api_dir).is_dir() and Path(worker_dir).is_dir()


def test_run_counters_move_on_the_worker_exporter(stack):
    before = scrape(stack.metrics_url)
    assert value(before, "nanogrid_queue_depth_ok") == 1
    ok, fails = stack.deploy("doubler", OK), stack.deploy("failer", FAILS)
    assert stack.run(ok, {"n": 21})["result"] == 42
    job = stack.run(fails, {})
    assert job["status"] == "FAILED" and job["error"]["type"] == "runtime_error", job

    # The worker counts a run just after recording its job, which the client may see first.
    after = scrape_until(stack.metrics_url, lambda s: value(s, "nanogrid_run_duration_seconds_count") >= 2)
    assert value(after, "nanogrid_runs_total", status="SUCCESS", error_type="") >= 1
    assert value(after, "nanogrid_runs_total", status="FAILED", error_type="runtime_error") >= 1
    assert value(after, "nanogrid_run_duration_seconds_count") >= 2
    assert value(after, "nanogrid_run_duration_seconds_bucket", status="FAILED", le="+Inf") >= 1
    assert value(after, "nanogrid_sandbox_overhead_seconds_count", sandbox="process") >= 2
    assert value(after, "nanogrid_active_sandboxes") == 0
    assert value(after, "nanogrid_queue_messages", queue="nanogrid", state="visible") == 0
    assert value(after, "nanogrid_queue_messages", queue="nanogrid", state="in_flight") == 0


def test_active_sandboxes_and_queue_depth_while_busy(stack):
    slow = stack.deploy("sleeper", SLEEPS)
    # Concurrency 2: two run; the worker reserves more (in flight, not yet acknowledged); the rest wait.
    jobs = [stack.run(slow, {"s": 3}, wait_s=0)["job_id"] for _ in range(5)]
    stack.wait_running(jobs[0])
    stack.wait_running(jobs[1])
    deadline = time.monotonic() + 10  # claimed is not yet started: the code is fetched and unpacked first
    while value(busy := scrape(stack.metrics_url), "nanogrid_active_sandboxes") < 2:
        assert time.monotonic() < deadline, "two sandboxes never counted as active"
        time.sleep(0.1)
    assert value(busy, "nanogrid_active_sandboxes") == 2
    depth = (value(busy, "nanogrid_queue_messages", state="visible"),
             value(busy, "nanogrid_queue_messages", state="in_flight"))
    assert sum(depth) == 3 and depth[1] >= 1, depth

    # A pool process killed mid-run must not leave its sandbox counted (the scrape-time sweep).
    holder = Services(Settings.from_env(stack.env)).jobs.get(jobs[0])["worker_id"]  # "host:pid" of the pool process
    os.kill(int(holder.rsplit(":", 1)[1]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while value(scrape(stack.metrics_url), "nanogrid_active_sandboxes") > 1:
        assert time.monotonic() < deadline, "the killed pool process's sandbox is still counted"
        time.sleep(0.2)


def test_api_request_counter_sums_over_gunicorn_workers(stack):
    function_id = stack.deploy("counted", OK)
    route = "/functions/<function_id>"

    def counted() -> float:
        samples = scrape(stack.url + "/metrics").get("nanogrid_http_requests_total", [])
        return sum(v for labels, v in samples if labels["route"] == route and labels["status"] == "200")

    before, sent = counted(), 0

    def pids_serving() -> set[int]:
        pids = set()
        for line in stack.log("api").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("logger") == "gunicorn.access" and doc.get("path") == f"/functions/{function_id}":
                pids.add(doc["pid"])
        return pids

    # Fresh connections from several threads, until both gunicorn workers have served the route.
    while sent < 400:
        threads = [threading.Thread(target=lambda: requests.get(f"{stack.url}/functions/{function_id}", timeout=10))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += len(threads)
        time.sleep(0.2)  # the access line is written after the response
        if len(pids_serving()) >= 2:
            break
    assert len(pids_serving()) >= 2, "all requests went to one gunicorn worker"
    assert counted() - before >= sent
    latency = scrape(stack.url + "/metrics")
    assert value(latency, "nanogrid_http_request_duration_seconds_count", route=route) >= sent


def test_stopping_removes_the_private_metrics_dirs(stack):
    dirs = [Path(d) for d in stack.multiproc_dirs.values()]
    codes = stack.stop()
    assert codes == {"api": 0, "worker": 0}, {name: stack.log(name)[-2000:] for name, code in codes.items() if code}
    assert not any(d.exists() for d in dirs), dirs
