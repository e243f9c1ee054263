"""Settings: the one place where NanoGrid reads its environment.

Names from the founding document (SQS_QUEUE_URL, REDIS_HOST, S3_CODE_BUCKET, AI_ENDPOINT,
GCP_BUCKET_NAME, ...) are kept as they are; everything else is NANOGRID_*. A bad value stops
the process at startup with a message naming the variable, instead of failing mid-run.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
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
            raise ValueError(f"{text!r}: expected 'N per [M] second|minute|hour|day' (e.g. '1000 per 5 minutes') "
                             "or 'off'")
        count, multiple, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3).lower()
        if count < 1 or multiple < 1:
            raise ValueError(f"{text!r}: the count and the period must be positive")
        return cls(count, multiple * _RATE_UNITS[unit])

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        return f"{self.count} per {self.period_s} seconds" if self.enabled else "off"


@dataclass(frozen=True)
class Settings:
    # API
    host: str = "127.0.0.1"
    port: int = 8080
    max_code_bytes: int = 10 * 1024 * 1024
    max_input_bytes: int = 256 * 1024
    max_zip_members: int = 1000
    max_unpacked_bytes: int = 50 * 1024 * 1024
    max_compression_ratio: int = 100
    default_wait_s: float = 30.0
    max_wait_s: float = 300.0

    # API security (README: API security): keys and tenants, rate limits, quotas, backpressure
    keys_table: str = "NanoGridApiKeys"
    rate_limit: RateLimit = RateLimit(1000, 300)  # the founding document's WAF rule: 1000 per 5 minutes
    trusted_proxies: int = 0  # proxies in front of the API whose X-Forwarded-For / -Proto are believed
    tenant_max_running: int = 100  # PROCESSING runs per tenant; 0: no limit
    tenant_max_queued: int = 1000  # PENDING runs per tenant; 0: no limit
    max_queue_depth: int = 10000  # waiting broker messages above which runs get 503; 0: off

    # Broker and job state
    broker_url: str = ""
    sqs_queue_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    aws_region: str = "ap-northeast-2"
    aws_endpoint_url: str | None = None
    sqs_visibility_timeout: int = 3600
    worker_concurrency: int = 2

    # Storage backends: "local" keeps everything under data_dir; "aws" uses S3 and DynamoDB.
    storage: str = "local"
    data_dir: Path = Path("~/.nanogrid").expanduser()
    s3_code_bucket: str = "nanogrid-code-bucket"
    s3_user_data_bucket: str = "nanogrid-user-data"
    functions_table: str = "NanoGridFunctions"
    jobs_table: str = "NanoGridJobs"
    archive: str = "local"
    gcp_bucket_name: str = ""
    inline_output_bytes: int = 64 * 1024

    # Sandbox
    sandbox: str = "docker"
    runtime_image: str = "nanogrid-runtime:latest"
    docker_runtime: str | None = None
    timeout_s: Limit = Limit(30, 86400)
    memory_mb: Limit = Limit(256, 4096)
    cpus: Limit = Limit(1.0, 2.0)
    pids: Limit = Limit(128, 1024)
    open_files: Limit = Limit(256, 4096)
    file_size_mb: Limit = Limit(64, 1024)
    tmpfs_mb: Limit = Limit(64, 1024)
    output_bytes: Limit = Limit(1024 * 1024, 16 * 1024 * 1024)
    # Warm containers (nanogrid/sandbox/warm.py), per worker PROCESS: each prefork child keeps its own;
    # and Celery task events (README: Performance).
    warm_pool_size: int = 2  # idle containers per function version; 0: no reuse, a container per run
    warm_idle_ttl_s: float = 300.0
    warm_max_containers: int = 8
    warm_memory_budget_mb: int = 2048  # the sum of the memory limits of a process's warm containers
    task_events: bool = False  # Celery task events from the start (Flower turns them on itself)

    # Exactly-once and crash recovery (see nanogrid/worker/lease.py)
    lease_s: float = 30.0
    reaper_interval_s: float = 5.0
    redispatch_after_s: float = 300.0
    pending_timeout_s: float = 6 * 3600

    # Private AI: the Ollama node runs reach through a per-run, allow-listed channel (nanogrid/ai)
    ai_endpoint: str = ""
    ai_connect_timeout_s: float = 5.0
    ai_timeout_s: float = 120.0  # longest wait for the AI node's next bytes
    ai_max_calls: int = 100  # per run; 0: no limit
    ai_max_tokens: int = 100_000  # prompt + eval tokens per run; 0: no limit
    ai_max_request_bytes: int = 4 * 1024 * 1024
    ai_models: tuple[str, ...] = ()  # empty: every model the node serves

    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def queue_name(self) -> str:
        if self.sqs_queue_url:
            return urlparse(self.sqs_queue_url).path.rstrip("/").rsplit("/", 1)[-1]
        return "nanogrid"

    @property
    def uses_sqs(self) -> bool:
        return self.broker_url.startswith("sqs://")

    def limits_document(self) -> dict:
        names = ("timeout_s", "memory_mb", "cpus", "pids", "open_files", "file_size_mb", "tmpfs_mb", "output_bytes")
        return {n: {"default": getattr(self, n).default, "ceiling": getattr(self, n).ceiling} for n in names}

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        read = _Reader(env)
        redis_host = env.get("REDIS_HOST")
        redis_url = read.str("NANOGRID_REDIS_URL", "")
        if not redis_url:
            redis_url = f"redis://{redis_host or '127.0.0.1'}:{read.int('REDIS_PORT', 6379)}/0"
        sqs_queue_url = read.str("SQS_QUEUE_URL", "")
        broker_url = read.str("NANOGRID_BROKER_URL", "")
        if not broker_url:
            broker_url = "sqs://" if sqs_queue_url else redis_url
        if broker_url.startswith("sqs://") and not sqs_queue_url:
            raise ConfigError("an sqs:// broker needs SQS_QUEUE_URL")
        settings = cls(
            host=read.str("NANOGRID_HOST", cls.host),
            port=read.int("NANOGRID_PORT", cls.port),
            max_code_bytes=read.int("NANOGRID_MAX_CODE_BYTES", cls.max_code_bytes),
            max_input_bytes=read.int("NANOGRID_MAX_INPUT_BYTES", cls.max_input_bytes),
            max_zip_members=read.int("NANOGRID_MAX_ZIP_MEMBERS", cls.max_zip_members),
            max_unpacked_bytes=read.int("NANOGRID_MAX_UNPACKED_BYTES", cls.max_unpacked_bytes),
            default_wait_s=read.float("NANOGRID_DEFAULT_WAIT_S", cls.default_wait_s),
            max_wait_s=read.float("NANOGRID_MAX_WAIT_S", cls.max_wait_s),
            keys_table=read.str("NANOGRID_KEYS_TABLE", cls.keys_table),
            rate_limit=_rate_limit(read.str("NANOGRID_RATE_LIMIT", ""), cls.rate_limit),
            trusted_proxies=read.int("NANOGRID_TRUSTED_PROXIES", cls.trusted_proxies),
            tenant_max_running=read.int("NANOGRID_TENANT_MAX_RUNNING", cls.tenant_max_running),
            tenant_max_queued=read.int("NANOGRID_TENANT_MAX_QUEUED", cls.tenant_max_queued),
            max_queue_depth=read.int("NANOGRID_MAX_QUEUE_DEPTH", cls.max_queue_depth),
            broker_url=broker_url,
            sqs_queue_url=sqs_queue_url,
            redis_url=redis_url,
            aws_region=read.str("AWS_REGION", env.get("AWS_DEFAULT_REGION", cls.aws_region)),
            aws_endpoint_url=read.str("AWS_ENDPOINT_URL", "") or None,
            sqs_visibility_timeout=read.int("NANOGRID_SQS_VISIBILITY_TIMEOUT", cls.sqs_visibility_timeout),
            worker_concurrency=read.int("NANOGRID_WORKER_CONCURRENCY", cls.worker_concurrency),
            storage=read.choice("NANOGRID_STORAGE", "local", ("local", "aws")),
            data_dir=Path(read.str("NANOGRID_DATA_DIR", str(cls.data_dir))).expanduser(),
            s3_code_bucket=read.str("S3_CODE_BUCKET", cls.s3_code_bucket),
            s3_user_data_bucket=read.str("S3_USER_DATA_BUCKET", cls.s3_user_data_bucket),
            functions_table=read.str("NANOGRID_FUNCTIONS_TABLE", cls.functions_table),
            jobs_table=read.str("NANOGRID_JOBS_TABLE", cls.jobs_table),
            archive=read.choice("NANOGRID_ARCHIVE", "gcs" if env.get("GCP_BUCKET_NAME") else "local",
                                ("local", "gcs", "none")),
            gcp_bucket_name=read.str("GCP_BUCKET_NAME", ""),
            inline_output_bytes=read.int("NANOGRID_INLINE_OUTPUT_BYTES", cls.inline_output_bytes),
            sandbox=read.choice("NANOGRID_SANDBOX", "docker", ("docker", "process")),
            runtime_image=read.str("NANOGRID_RUNTIME_IMAGE", cls.runtime_image),
            docker_runtime=read.str("NANOGRID_DOCKER_RUNTIME", "") or None,
            timeout_s=read.limit("TIMEOUT_S", cls.timeout_s),
            memory_mb=read.limit("MEMORY_MB", cls.memory_mb),
            cpus=read.limit("CPUS", cls.cpus),
            pids=read.limit("PIDS", cls.pids),
            open_files=read.limit("OPEN_FILES", cls.open_files),
            file_size_mb=read.limit("FILE_SIZE_MB", cls.file_size_mb),
            tmpfs_mb=read.limit("TMPFS_MB", cls.tmpfs_mb),
            output_bytes=read.limit("OUTPUT_BYTES", cls.output_bytes),
            warm_pool_size=read.int("NANOGRID_WARM_POOL_SIZE", cls.warm_pool_size),
            warm_idle_ttl_s=read.float("NANOGRID_WARM_IDLE_TTL_S", cls.warm_idle_ttl_s),
            warm_max_containers=read.int("NANOGRID_WARM_MAX_CONTAINERS", cls.warm_max_containers),
            warm_memory_budget_mb=read.int("NANOGRID_WARM_MEMORY_BUDGET_MB", cls.warm_memory_budget_mb),
            task_events=read.choice("NANOGRID_TASK_EVENTS", "0", ("0", "1")) == "1",
            lease_s=read.float("NANOGRID_LEASE_S", cls.lease_s),
            reaper_interval_s=read.float("NANOGRID_REAPER_INTERVAL_S", cls.reaper_interval_s),
            redispatch_after_s=read.float("NANOGRID_REDISPATCH_AFTER_S", cls.redispatch_after_s),
            pending_timeout_s=read.float("NANOGRID_PENDING_TIMEOUT_S", cls.pending_timeout_s),
            ai_endpoint=read.str("AI_ENDPOINT", ""),
            ai_connect_timeout_s=read.float("NANOGRID_AI_CONNECT_TIMEOUT_S", cls.ai_connect_timeout_s),
            ai_timeout_s=read.float("NANOGRID_AI_TIMEOUT_S", cls.ai_timeout_s),
            ai_max_calls=read.int("NANOGRID_AI_MAX_CALLS", cls.ai_max_calls),
            ai_max_tokens=read.int("NANOGRID_AI_MAX_TOKENS", cls.ai_max_tokens),
            ai_max_request_bytes=read.int("NANOGRID_AI_MAX_REQUEST_BYTES", cls.ai_max_request_bytes),
            ai_models=tuple(m.strip() for m in read.str("NANOGRID_AI_MODELS", "").split(",") if m.strip()),
            extra={k: v for k, v in env.items() if k in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")},
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.archive == "gcs" and not self.gcp_bucket_name:
            raise ConfigError("NANOGRID_ARCHIVE=gcs needs GCP_BUCKET_NAME")
        if self.lease_s < 1 or self.reaper_interval_s <= 0:
            raise ConfigError("NANOGRID_LEASE_S must be at least 1 s and NANOGRID_REAPER_INTERVAL_S positive")
        if min(self.warm_pool_size, self.warm_max_containers, self.warm_memory_budget_mb) < 0 \
                or self.warm_idle_ttl_s <= 0:
            raise ConfigError("NANOGRID_WARM_POOL_SIZE, NANOGRID_WARM_MAX_CONTAINERS and "
                              "NANOGRID_WARM_MEMORY_BUDGET_MB must be 0 or more, NANOGRID_WARM_IDLE_TTL_S positive")
        if self.worker_concurrency < 1:
            raise ConfigError("NANOGRID_WORKER_CONCURRENCY must be at least 1")
        if min(self.trusted_proxies, self.tenant_max_running, self.tenant_max_queued, self.max_queue_depth) < 0:
            raise ConfigError("NANOGRID_TRUSTED_PROXIES, NANOGRID_TENANT_MAX_RUNNING, NANOGRID_TENANT_MAX_QUEUED "
                              "and NANOGRID_MAX_QUEUE_DEPTH must be 0 or more")
        if not 0 <= self.default_wait_s <= self.max_wait_s:
            raise ConfigError("NANOGRID_DEFAULT_WAIT_S must be from 0 to NANOGRID_MAX_WAIT_S")
        if self.ai_endpoint and (urlparse(self.ai_endpoint).scheme not in ("http", "https")
                                 or not urlparse(self.ai_endpoint).hostname):
            raise ConfigError(f"AI_ENDPOINT={self.ai_endpoint!r}: expected http://host:port (Ollama's address)")
        if self.ai_connect_timeout_s <= 0 or self.ai_timeout_s <= 0:
            raise ConfigError("NANOGRID_AI_CONNECT_TIMEOUT_S and NANOGRID_AI_TIMEOUT_S must be positive")
        if min(self.ai_max_calls, self.ai_max_tokens) < 0 or self.ai_max_request_bytes < 1:
            raise ConfigError("NANOGRID_AI_MAX_CALLS and NANOGRID_AI_MAX_TOKENS must be 0 (no limit) or more, "
                              "NANOGRID_AI_MAX_REQUEST_BYTES positive")
        for name, limit in self.limits_document().items():
            if not 0 < limit["default"] <= limit["ceiling"]:
                raise ConfigError(f"limit {name}: need 0 < default <= ceiling, got {limit}")


def _rate_limit(raw: str, default: RateLimit) -> RateLimit:
    if not raw:
        return default
    try:
        return RateLimit.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"NANOGRID_RATE_LIMIT={exc}") from None


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _get(self, name: str, default, convert: Callable):
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return convert(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a valid {convert.__name__}") from None

    def str(self, name: str, default: str) -> str:
        return self._get(name, default, str)

    def int(self, name: str, default: int) -> int:
        return self._get(name, default, int)

    def float(self, name: str, default: float) -> float:
        return self._get(name, default, float)

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self.str(name, default)
        if value not in options:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(options)}")
        return value

    def limit(self, suffix: str, default: Limit) -> Limit:
        return Limit(
            self.float(f"NANOGRID_DEFAULT_{suffix}", default.default),
            self.float(f"NANOGRID_MAX_{suffix}", default.ceiling),
        )
