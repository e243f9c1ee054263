"""Wiring: the objects each process needs, built once from Settings.

The API and the worker each hold one Services; tests build their own from the Settings they
want. Backends are chosen by the factories in nanogrid.storage, so nothing here names a
provider. `current()` is the process's own, built from its environment on first use (the
worker's tasks, bootsteps and control commands share it).
"""

from __future__ import annotations

import functools
import os
import socket

import redis

from nanogrid import storage
from nanogrid.config import Settings
from nanogrid.functions import FunctionRegistry
from nanogrid.callbacks import Guard
from nanogrid.jobs import JobStore
from nanogrid.jobs.callbacks import Callbacks
from nanogrid.keys import SigningSecrets
from nanogrid.layers import LayerRegistry
from nanogrid.schedules import ScheduleStore
from nanogrid.sandbox import Sandbox
from nanogrid.transport.broker import Broker


REDIS_TIMEOUT_S = 5
REDIS_BACKGROUND_CONNECTIONS = 8


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings

    @functools.cached_property
    def redis(self) -> redis.Redis:
        # Sized to the process's threads: a request thread waiting on a run holds a subscription and
        # borrows a second connection for its reads; the rest covers the background threads
        # (heartbeats, leases, the reaper). A thread beyond that waits for a connection, briefly,
        # instead of opening connections without bound.
        pool = redis.BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=2 * self.settings.api_threads + REDIS_BACKGROUND_CONNECTIONS,
            timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=2,
            retry_on_timeout=True, health_check_interval=10)
        return redis.Redis(connection_pool=pool)

    @functools.cached_property
    def functions(self) -> FunctionRegistry:
        return FunctionRegistry(storage.function_table(self.settings), storage.code_store(self.settings))

    @functools.cached_property
    def secrets(self) -> storage.SecretStore:
        return storage.secret_store(self.settings)

    @functools.cached_property
    def layers(self) -> LayerRegistry:
        return LayerRegistry(storage.function_table(self.settings), storage.code_store(self.settings))

    @functools.cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings, storage.job_table(self.settings), self.redis,
                        storage.output_store(self.settings), self.broker)

    @functools.cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(storage.function_table(self.settings))

    @functools.cached_property
    def signing_secrets(self) -> SigningSecrets:
        return SigningSecrets(storage.function_table(self.settings))

    @functools.cached_property
    def callback_guard(self) -> Guard:
        return Guard(self.settings)

    @functools.cached_property
    def callbacks(self) -> Callbacks:
        return Callbacks(self.settings, self.jobs, self.signing_secrets, self.callback_guard)

    @functools.cached_property
    def archive(self) -> storage.Archive | None:
        return storage.archive(self.settings)

    @functools.cached_property
    def broker(self) -> Broker:
        return Broker(self.settings)

    @functools.cached_property
    def sandbox(self) -> Sandbox:
        if self.settings.sandbox == "docker":
            from nanogrid.sandbox.docker import DockerSandbox

            return DockerSandbox(self.settings, worker_id())
        from nanogrid.sandbox.process import ProcessSandbox

        return ProcessSandbox(self.settings, worker_id())


@functools.cache
def current() -> Services:
    """This process's Services, from its environment."""
    return Services(Settings.from_env())


def worker_id(pid: int | None = None) -> str:
    """Who holds a lease: host and process (this one, or pid), since each pool process runs its own
    sandboxes; a worker's main process by the same name holds the runs parked for its engine."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"
