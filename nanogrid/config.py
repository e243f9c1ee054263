"""Settings: the one place where NanoGrid reads its environment.

Every setting is declared once, below, with the variable it comes from, its default, how its text
is parsed and what values it accepts; `Settings.from_env` reads the table and `validate` checks
the rules that tie settings together. Names from the founding document (SQS_QUEUE_URL,
REDIS_HOST, S3_CODE_BUCKET, AI_ENDPOINT, GCP_BUCKET_NAME, ...) are kept as they are; everything
else is NANOGRID_*. A bad value stops the process at startup with a message naming the variable,
instead of failing mid-run. Variables of other programs that NanoGrid only passes along (Google's
credentials file, the GCS emulator, Flower's authentication) are kept in `extra`.

A plain dataclass rather than pydantic-settings: the founding names, the paired run limits
(NANOGRID_DEFAULT_x / NANOGRID_MAX_x) and the settings derived from others (the Redis URL from
REDIS_HOST, the broker from SQS_QUEUE_URL) map onto it directly, without a new dependency.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


@dataclass(frozen=True)
class Limit:
    """A run limit: what a function gets by default, and the most it may ask for."""

    default: float
    ceiling: float

    def clamp(self, requested: float | None) -> float:
        if requested is None:
            return self.default
        return min(requested, self.ceiling)


_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE_PATTERN = re.compile(r"^\s*(\d+)\s*(?:per|/)\s*(\d+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """At most `count` requests per `period_s` seconds; count 0 turns rate limiting off."""

    count: int
    period_s: int

    @classmethod
    def parse(cls, text: str) -> "RateLimit":
        """'1000 per 5 minutes', '20 per minute', '10/second'; 'off' (or '0') for no limit."""
        if text.strip().lower() in ("off", "0", "none"):
            return cls(0, 1)
        match = _RATE_PATTERN.match(text)
        if not match:
            raise ValueError("expected 'N per [M] second|minute|hour|day' (e.g. '1000 per 5 minutes') or 'off'")
        count, multiple, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3).lower()
        if count < 1 or multiple < 1:
            raise ValueError("the count and the period must be positive")
        return cls(count, multiple * _RATE_UNITS[unit])

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        return f"{self.count} per {self.period_s} seconds" if self.enabled else "off"


# --- How a setting is read ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Env:
    """Where a setting comes from and what it accepts."""

    name: str  # the variable; for a Limit, the suffix of NANOGRID_DEFAULT_<suffix> / NANOGRID_MAX_<suffix>
    parse: Callable[[str], Any]
    accepts: Callable[[Any], bool] = lambda value: True
    rule: str = ""  # what `accepts` means, for the error message

    def names(self, limit: bool) -> tuple[str, ...]:
        return (f"NANOGRID_DEFAULT_{self.name}", f"NANOGRID_MAX_{self.name}") if limit else (self.name,)

    def read(self, env: Mapping[str, str], default: Any) -> Any:
        if isinstance(default, Limit):
            low, high = self.names(True)
            return Limit(self._one(env, low, default.default), self._one(env, high, default.ceiling))
        return self._one(env, self.name, default)

    def _one(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = self.parse(raw)
        except ValueError as exc:
            detail = str(exc) if self.parse in _SELF_EXPLAINING else f"expected {_KIND.get(self.parse, 'a valid value')}"
            raise ConfigError(f"{name}={raw!r}: {detail}") from None
        if not self.accepts(value):
            raise ConfigError(f"{name}={raw!r}: must be {self.rule}")
        return value


def _flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError(raw)
    return raw == "1"


def _names(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks (10.1.0.0/16, 127.0.0.1, fd00::/8), normalised."""
    networks = []
    for item in _names(raw):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8, 127.0.0.1)") from None
    return tuple(networks)


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _web_address(raw: str) -> str:
    """An http(s) URL a browser is sent to (nothing else may become a link's target)."""
    address = urlparse(raw.strip())
    if address.scheme not in ("http", "https") or not address.netloc:
        raise ValueError(f"{raw!r} is not an http:// or https:// URL")
    return raw.strip()


def _choice(*options: str, fold_case: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if fold_case:
            raw = raw.strip().lower()
        if raw not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw

    _SELF_EXPLAINING.add(parse)
    return parse


_SELF_EXPLAINING: set[Callable] = {RateLimit.parse, _networks, _web_address}
_KIND = {int: "a whole number", _finite: "a number", str: "text", _flag: "0 or 1", _path: "a path",
         _names: "a comma-separated list"}


def _setting(name: str, default: Any, parse: Callable[[str], Any] | None = None,
             accepts: Callable[[Any], bool] | None = None, rule: str = "", **options) -> Any:
    """A field read from the variable `name` (see _Env); parse defaults to the default's type."""
    if parse is None:
        parse = {bool: _flag, int: int, float: _finite, Limit: _finite}.get(type(default), str)
    spec = _Env(name, parse, accepts or (lambda value: True), rule)
    return field(default=default, metadata={"env": spec}, **options)


def _derived(default: Any, **options) -> Any:
    """A field computed from other variables in Settings.from_env (see there)."""
    return field(default=default, metadata={"derived": True}, **options)


DOCKER_RUNTIMES = ("runc", "crun", "runsc")
_AT_LEAST_0 = {"accepts": lambda v: v >= 0, "rule": "0 or more"}
_AT_LEAST_1 = {"accepts": lambda v: v >= 1, "rule": "at least 1"}
_POSITIVE = {"accepts": lambda v: v > 0, "rule": "positive"}
_PORT = {"accepts": lambda v: 0 <= v <= 65535, "rule": "a port number (0 to 65535)"}


@dataclass(frozen=True)
class Settings:
    # API
    host: str = _setting("NANOGRID_HOST", "127.0.0.1")
    port: int = _setting("NANOGRID_PORT", 8080, **_PORT)
    bind: str = _setting("NANOGRID_BIND", "")  # gunicorn's address; empty: host:port
    api_workers: int = _setting("NANOGRID_API_WORKERS", 2, **_AT_LEAST_1)
    # gunicorn threads per worker: a synchronous run request holds one while it waits.
    api_threads: int = _setting("NANOGRID_API_THREADS", 16, **_AT_LEAST_1)
    max_code_bytes: int = _setting("NANOGRID_MAX_CODE_BYTES", 10 * 1024 * 1024, **_AT_LEAST_1)
    max_input_bytes: int = _setting("NANOGRID_MAX_INPUT_BYTES", 256 * 1024, **_AT_LEAST_1)
    max_zip_members: int = _setting("NANOGRID_MAX_ZIP_MEMBERS", 1000, **_AT_LEAST_1)
    max_unpacked_bytes: int = _setting("NANOGRID_MAX_UNPACKED_BYTES", 50 * 1024 * 1024, **_AT_LEAST_1)
    max_compression_ratio: int = _setting("NANOGRID_MAX_COMPRESSION_RATIO", 100, **_AT_LEAST_1)
    # A function's versions kept (runnable, listed) besides those an alias points at; older ones
    # and their code are removed.
    keep_versions: int = _setting("NANOGRID_KEEP_VERSIONS", 20, **_AT_LEAST_1)
    default_wait_s: float = _setting("NANOGRID_DEFAULT_WAIT_S", 30.0, **_AT_LEAST_0)
    max_wait_s: float = _setting("NANOGRID_MAX_WAIT_S", 300.0, **_AT_LEAST_0)
    # The longest one event stream (SSE) stays open; then the client reconnects with Last-Event-ID.
    max_stream_s: float = _setting("NANOGRID_MAX_STREAM_S", 3600.0, **_POSITIVE)

    # API security (README: API security): keys and tenants, rate limits, quotas, backpressure
    keys_table: str = _setting("NANOGRID_KEYS_TABLE", "NanoGridApiKeys")
    # The founding document's WAF rule: 1000 per 5 minutes.
    rate_limit: RateLimit = _setting("NANOGRID_RATE_LIMIT", RateLimit(1000, 300), RateLimit.parse)
    # Proxies in front of the API whose X-Forwarded-For / -Proto are believed.
    trusted_proxies: int = _setting("NANOGRID_TRUSTED_PROXIES", 0, **_AT_LEAST_0)
    tenant_max_running: int = _setting("NANOGRID_TENANT_MAX_RUNNING", 100, **_AT_LEAST_0)  # 0: no limit
    tenant_max_queued: int = _setting("NANOGRID_TENANT_MAX_QUEUED", 1000, **_AT_LEAST_0)  # 0: no limit
    # Waiting broker messages above which run requests get 503; 0: off.
    max_queue_depth: int = _setting("NANOGRID_MAX_QUEUE_DEPTH", 10000, **_AT_LEAST_0)

    # Broker and job state. broker_url and redis_url are derived: see from_env.
    broker_url: str = _derived("")
    sqs_queue_url: str = _setting("SQS_QUEUE_URL", "")
    redis_url: str = _derived("redis://127.0.0.1:6379/0")
    aws_region: str = _derived("ap-northeast-2")
    aws_endpoint_url: str | None = _setting("AWS_ENDPOINT_URL", None)
    sqs_visibility_timeout: int = _setting("NANOGRID_SQS_VISIBILITY_TIMEOUT", 3600, **_AT_LEAST_1)
    # Where messages no worker can process go (nanogrid/transport/deadletters.py); empty: the task
    # queue's URL with "-dlq" appended, the queue deploy/terraform makes beside it.
    dead_letter_queue_url: str = _setting("NANOGRID_DEAD_LETTER_QUEUE_URL", "")
    worker_concurrency: int = _setting("NANOGRID_WORKER_CONCURRENCY", 2, **_AT_LEAST_1)

    # Storage backends: "local" keeps everything under data_dir; "aws" uses S3 and DynamoDB.
    storage: str = _setting("NANOGRID_STORAGE", "local", _choice("local", "aws"))
    data_dir: Path = _setting("NANOGRID_DATA_DIR", Path("~/.nanogrid").expanduser(), _path)
    s3_code_bucket: str = _setting("S3_CODE_BUCKET", "nanogrid-code-bucket")
    s3_user_data_bucket: str = _setting("S3_USER_DATA_BUCKET", "nanogrid-user-data")
    functions_table: str = _setting("NANOGRID_FUNCTIONS_TABLE", "NanoGridFunctions")
    jobs_table: str = _setting("NANOGRID_JOBS_TABLE", "NanoGridJobs")
    archive: str = _derived("local")  # NANOGRID_ARCHIVE; its default depends on GCP_BUCKET_NAME
    gcp_bucket_name: str = _setting("GCP_BUCKET_NAME", "")
    inline_output_bytes: int = _setting("NANOGRID_INLINE_OUTPUT_BYTES", 64 * 1024, **_AT_LEAST_0)

    # Sandbox
    sandbox: str = _setting("NANOGRID_SANDBOX", "docker", _choice("docker", "process"))
    runtime_image: str = _setting("NANOGRID_RUNTIME_IMAGE", "nanogrid-runtime:latest")
    # The OCI runtime of the sandbox containers: runc (Docker's default), crun, or runsc (gVisor);
    # it must be registered with the engine (README: Sandbox runtimes).
    docker_runtime: str = _setting("NANOGRID_DOCKER_RUNTIME", "runc", _choice(*DOCKER_RUNTIMES))
    timeout_s: Limit = _setting("TIMEOUT_S", Limit(30, 86400))
    memory_mb: Limit = _setting("MEMORY_MB", Limit(256, 4096))
    cpus: Limit = _setting("CPUS", Limit(1.0, 2.0))
    pids: Limit = _setting("PIDS", Limit(128, 1024))
    open_files: Limit = _setting("OPEN_FILES", Limit(256, 4096))
    file_size_mb: Limit = _setting("FILE_SIZE_MB", Limit(64, 1024))
    tmpfs_mb: Limit = _setting("TMPFS_MB", Limit(64, 1024))
    output_bytes: Limit = _setting("OUTPUT_BYTES", Limit(1024 * 1024, 16 * 1024 * 1024))
    # main.py's import when a sandbox initialises once (its first run gets this on top of timeout_s).
    init_timeout_s: Limit = _setting("INIT_TIMEOUT_S", Limit(60, 900))
    # Warm containers (nanogrid/sandbox/warm.py), per worker PROCESS: each prefork child keeps its own.
    # Idle containers per function version; 0: no reuse, a container per run.
    warm_pool_size: int = _setting("NANOGRID_WARM_POOL_SIZE", 2, **_AT_LEAST_0)
    warm_idle_ttl_s: float = _setting("NANOGRID_WARM_IDLE_TTL_S", 300.0, **_POSITIVE)
    warm_max_containers: int = _setting("NANOGRID_WARM_MAX_CONTAINERS", 8, **_AT_LEAST_0)
    # The sum of the memory limits of a process's warm containers.
    warm_memory_budget_mb: int = _setting("NANOGRID_WARM_MEMORY_BUDGET_MB", 2048, **_AT_LEAST_0)
    # Stem cells per worker process: containers started ahead of demand for the default limits, so
    # the first run of a new version needs no container start (warm.py); 0: none.
    stem_cells: int = _setting("NANOGRID_STEM_CELLS", 1, **_AT_LEAST_0)
    # Celery task events from the start (Flower turns them on itself; README: Performance).
    task_events: bool = _setting("NANOGRID_TASK_EVENTS", False)

    # Dependencies (nanogrid/layers.py): a function's requirements, installed once into a layer
    # shared by every function that asks for the same set. pip runs with these settings only (no
    # pip.conf, no PIP_* variables of the host): credentials in an index URL stay out of every
    # document and log line. NANOGRID_PIP_NO_INDEX=1 with a wheelhouse: the air-gapped recipe.
    pip_index_url: str = _setting("NANOGRID_PIP_INDEX_URL", "", repr=False)
    pip_extra_index_url: str = _setting("NANOGRID_PIP_EXTRA_INDEX_URL", "", repr=False)
    pip_find_links: str = _setting("NANOGRID_PIP_FIND_LINKS", "")
    pip_cert: str = _setting("NANOGRID_PIP_CERT", "")
    # Hosts whose plain-HTTP index pip may use (it refuses any but localhost otherwise).
    pip_trusted_host: str = _setting("NANOGRID_PIP_TRUSTED_HOST", "")
    pip_no_index: bool = _setting("NANOGRID_PIP_NO_INDEX", False)
    build_timeout_s: float = _setting("NANOGRID_BUILD_TIMEOUT_S", 600.0, **_POSITIVE)
    # 1: a package with no wheel is built from its source distribution, in a throwaway container
    # of the runtime image on this Docker network (nanogrid/sandbox/source_build.py); 0: it fails.
    build_from_source: bool = _setting("NANOGRID_BUILD_FROM_SOURCE", False)
    build_network: str = _setting("NANOGRID_BUILD_NETWORK", "bridge")
    # A layer's installed size and file count; a build past either fails.
    layer_max_mb: int = _setting("NANOGRID_LAYER_MAX_MB", 1024, **_AT_LEAST_1)
    layer_max_files: int = _setting("NANOGRID_LAYER_MAX_FILES", 50_000, **_AT_LEAST_1)
    # Each worker host unpacks a layer once into this cache (all its processes share it), least
    # recently used layers removed past the size, never one a container of the host mounts.
    layer_cache_dir: Path = _setting("NANOGRID_LAYER_CACHE_DIR", Path("/var/tmp/nanogrid-layers"), _path)
    layer_cache_mb: int = _setting("NANOGRID_LAYER_CACHE_MB", 8192, **_AT_LEAST_1)
    # The builds' own queue (empty: the task queue's URL with "-builds" appended), consumed by
    # `nanogrid builder`, so a long build never holds a run's slot.
    build_queue_url: str = _setting("NANOGRID_BUILD_QUEUE_URL", "")
    build_concurrency: int = _setting("NANOGRID_BUILD_CONCURRENCY", 1, **_AT_LEAST_1)

    # Secrets (README: Secrets): the embedded store's encryption key (Fernet), and where they live in
    # AWS Secrets Manager (<prefix><tenant>/<name>).
    secrets_key: str = _setting("NANOGRID_SECRETS_KEY", "", repr=False)
    secrets_prefix: str = _setting("NANOGRID_SECRETS_PREFIX", "nanogrid/")

    # Which installation this is, for its sandboxes' labels (default: the Redis it uses).
    instance_id: str = _setting("NANOGRID_INSTANCE_ID", "")
    # How long a worker's warm shutdown waits for runs in progress before it stops them (FAILED,
    # worker_lost, with the output they had printed); unset: as long as they take.
    shutdown_grace_s: float | None = _setting("NANOGRID_SHUTDOWN_GRACE_S", None, _finite, **_AT_LEAST_0)

    # Exactly-once and crash recovery (README: How it works)
    lease_s: float = _setting("NANOGRID_LEASE_S", 30.0, accepts=lambda v: v >= 1, rule="at least 1 (seconds)")
    reaper_interval_s: float = _setting("NANOGRID_REAPER_INTERVAL_S", 5.0, **_POSITIVE)
    redispatch_after_s: float = _setting("NANOGRID_REDISPATCH_AFTER_S", 300.0, **_POSITIVE)
    pending_timeout_s: float = _setting("NANOGRID_PENDING_TIMEOUT_S", 6 * 3600.0, **_POSITIVE)
    # How long a finished job's record stays findable (GET /jobs/<id>, the history); Redis keeps
    # its own copy of a job's status for a day either way.
    job_retention_days: float = _setting("NANOGRID_JOB_RETENTION_DAYS", 7.0, **_POSITIVE)

    # Private AI: the Ollama node runs reach through a per-run, allow-listed channel (nanogrid/ai)
    ai_endpoint: str = _setting("AI_ENDPOINT", "")
    ai_connect_timeout_s: float = _setting("NANOGRID_AI_CONNECT_TIMEOUT_S", 5.0, **_POSITIVE)
    ai_timeout_s: float = _setting("NANOGRID_AI_TIMEOUT_S", 120.0, **_POSITIVE)  # longest wait for the next bytes
    ai_max_calls: int = _setting("NANOGRID_AI_MAX_CALLS", 100, **_AT_LEAST_0)  # per run; 0: no limit
    ai_max_tokens: int = _setting("NANOGRID_AI_MAX_TOKENS", 100_000, **_AT_LEAST_0)  # prompt + eval per run
    ai_max_request_bytes: int = _setting("NANOGRID_AI_MAX_REQUEST_BYTES", 4 * 1024 * 1024, **_AT_LEAST_1)
    ai_models: tuple[str, ...] = _setting("NANOGRID_AI_MODELS", (), _names)  # empty: every model the node serves

    # Completion callbacks (nanogrid/callbacks.py): the networks they may reach beyond the public
    # and private ones (loopback, link-local and the platform's own addresses are refused without
    # this), the wait for the receiver, and how long to keep trying.
    callback_allowed_networks: tuple[str, ...] = _setting("NANOGRID_CALLBACK_ALLOWED_NETWORKS", (), _networks)
    callback_timeout_s: float = _setting("NANOGRID_CALLBACK_TIMEOUT_S", 10.0, **_POSITIVE)
    callback_max_attempts: int = _setting("NANOGRID_CALLBACK_MAX_ATTEMPTS", 8, **_AT_LEAST_1)
    callback_backoff_s: float = _setting("NANOGRID_CALLBACK_BACKOFF_S", 2.0, **_POSITIVE)  # doubled each attempt

    # Operations: logs, the Prometheus multiprocess directory, the worker's exporter
    log_format: str = _setting("NANOGRID_LOG_FORMAT", "json", _choice("json", "text", fold_case=True))
    # prometheus_client's own variable (it reads it too), and the one NanoGrid sets beside it when
    # it made that directory itself (then it removes the directory at exit).
    metrics_dir: str = _setting("PROMETHEUS_MULTIPROC_DIR", "")
    metrics_private_dir: str = _setting("NANOGRID_METRICS_PRIVATE_DIR", "")
    worker_metrics_port: int = _setting("NANOGRID_WORKER_METRICS_PORT", 9808, **_PORT)  # 0: no exporter
    worker_metrics_host: str = _setting("NANOGRID_WORKER_METRICS_HOST", "127.0.0.1")

    # The queue-depth scaling publisher (nanogrid/scaling/publisher.py)
    worker_asg: str = _setting("NANOGRID_WORKER_ASG", "")
    metric_namespace: str = _setting("NANOGRID_METRIC_NAMESPACE", "NanoGrid")
    backlog_metric: str = _setting("NANOGRID_BACKLOG_METRIC", "BacklogPerInstance")
    scaling_interval_s: float = _setting("NANOGRID_SCALING_INTERVAL_S", 60.0, **_POSITIVE)

    # Where operators open Flower: the web console links to it (none: no link).
    flower_url: str = _setting("NANOGRID_FLOWER_URL", "", _web_address)

    # The CLI's way to a running API
    url: str = _setting("NANOGRID_URL", "http://127.0.0.1:8080")
    api_key: str = _setting("NANOGRID_API_KEY", "", repr=False)

    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # The variables of the table that the environment set (the CLI refuses to guess an installation).
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # Variables of other programs, passed along as they are.
    EXTRA = ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "FLOWER_BASIC_AUTH", "FLOWER_AUTH")

    @property
    def queue_name(self) -> str:
        if self.sqs_queue_url:
            return urlparse(self.sqs_queue_url).path.rstrip("/").rsplit("/", 1)[-1]
        return "nanogrid"

    @property
    def build_queue_name(self) -> str:
        if self.uses_sqs:
            return urlparse(self.build_queue).path.rstrip("/").rsplit("/", 1)[-1]
        return f"{self.queue_name}-builds"

    @property
    def build_queue(self) -> str:
        """The builds queue's SQS URL (SQS brokers only)."""
        return self.build_queue_url or f"{self.sqs_queue_url}-builds"

    @property
    def dead_letter_queue(self) -> str:
        """The SQS dead-letter queue's URL (SQS brokers only)."""
        return self.dead_letter_queue_url or f"{self.sqs_queue_url}-dlq"

    @property
    def uses_sqs(self) -> bool:
        return self.broker_url.startswith("sqs://")

    @property
    def bind_address(self) -> str:
        return self.bind or f"{self.host}:{self.port}"

    def limits_document(self) -> dict:
        names = ("timeout_s", "memory_mb", "cpus", "pids", "open_files", "file_size_mb", "tmpfs_mb", "output_bytes",
                 "init_timeout_s")
        return {n: {"default": getattr(self, n).default, "ceiling": getattr(self, n).ceiling} for n in names}

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def environment_names(cls) -> set[str]:
        """Every variable Settings reads (the fleet cross-checks hold the templates to it)."""
        names = set(cls.EXTRA) | {"NANOGRID_REDIS_URL", "REDIS_HOST", "REDIS_PORT", "NANOGRID_BROKER_URL",
                                  "AWS_REGION", "AWS_DEFAULT_REGION", "NANOGRID_ARCHIVE"}
        for item in dataclasses.fields(cls):
            spec = item.metadata.get("env")
            if spec is not None:
                names.update(spec.names(isinstance(item.default, Limit)))
        return names

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values = {item.name: item.metadata["env"].read(env, item.default)
                  for item in dataclasses.fields(cls) if "env" in item.metadata}
        # Derived: the founding document names Redis by REDIS_HOST (and REDIS_PORT); NANOGRID_REDIS_URL
        # says it all at once. The broker is SQS when SQS_QUEUE_URL is set, else that Redis.
        port = _Env("REDIS_PORT", int, **_PORT).read(env, 6379)
        values["redis_url"] = env.get("NANOGRID_REDIS_URL") or f"redis://{env.get('REDIS_HOST') or '127.0.0.1'}:{port}/0"
        values["broker_url"] = env.get("NANOGRID_BROKER_URL") or ("sqs://" if values["sqs_queue_url"]
                                                                  else values["redis_url"])
        values["aws_region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cls.aws_region
        # An archive bucket named in the environment means the GCS archive, unless said otherwise.
        archive_default = "gcs" if env.get("GCP_BUCKET_NAME") else "local"
        values["archive"] = _Env("NANOGRID_ARCHIVE", _choice("local", "gcs", "none")).read(env, archive_default)
        values["extra"] = {name: env[name] for name in cls.EXTRA if name in env}
        values["given"] = frozenset(name for name in cls.environment_names() if env.get(name))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """The rules that tie settings together (each setting's own range is checked as it is read)."""
        if self.broker_url.startswith("sqs://") and not self.sqs_queue_url:
            raise ConfigError("an sqs:// broker needs SQS_QUEUE_URL")
        if self.archive == "gcs" and not self.gcp_bucket_name:
            raise ConfigError("NANOGRID_ARCHIVE=gcs needs GCP_BUCKET_NAME")
        if not 0 <= self.default_wait_s <= self.max_wait_s:
            raise ConfigError("NANOGRID_DEFAULT_WAIT_S must be from 0 to NANOGRID_MAX_WAIT_S")
        if self.ai_endpoint and (urlparse(self.ai_endpoint).scheme not in ("http", "https")
                                 or not urlparse(self.ai_endpoint).hostname):
            raise ConfigError(f"AI_ENDPOINT={self.ai_endpoint!r}: expected http://host:port (Ollama's address)")
        # init_timeout_s is a limit like the others but not (yet) in GET /limits, whose names are pinned.
        for name, limit in {**self.limits_document(), "init_timeout_s": {"default": self.init_timeout_s.default,
                                                                          "ceiling": self.init_timeout_s.ceiling}}.items():
            if not 0 < limit["default"] <= limit["ceiling"]:
                raise ConfigError(f"limit {name}: need 0 < default <= ceiling, got {limit}")
