"""The fixtures tests/conftest.py offers to every test.

The servers fail, never skip, when they cannot start: a missing redis-server, dockerd or moto
must not pass as green.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox.docker import connect
from nanogrid.sandbox.image import build_image, image_status, runtime_digest
from nanogrid.storage.provision import ensure_resources
from support import servers
from support.app import App, RecordingBroker
from support.browser import browser_context
from support.processes import Processes


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server (Debian's) on a free port, database 0."""
    with servers.redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto server, with dummy AWS credentials in the environment."""
    with pytest.MonkeyPatch.context() as env, servers.moto_server() as endpoint:
        for name, value in servers.DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """host:port of an in-memory gcp-storage-emulator, also exported as STORAGE_EMULATOR_HOST."""
    with pytest.MonkeyPatch.context() as env, servers.gcs_emulator() as host:
        # google-cloud-storage treats the variable as a URL, so it needs the scheme.
        env.setenv("STORAGE_EMULATOR_HOST", f"http://{host}")
        yield host


@pytest.fixture(scope="session")
def runtime_image() -> Settings:
    """Settings whose runtime image exists and was built from this checkout's runtime files, built
    offline (rootfs) if there is none; dockerd must answer.

    Unless NANOGRID_RUNTIME_IMAGE names one, the image is tagged with the runtime files' digest
    rather than `latest`: a test run of another checkout on the same dockerd (with other runtime
    files) then uses an image of its own instead of retagging the one this run relies on."""
    try:
        client = connect()
    except Unavailable as exc:
        pytest.fail(f"the Docker sandbox tests need a running dockerd: {exc}")
    explicit = os.environ.get("NANOGRID_RUNTIME_IMAGE")
    repository = Settings.runtime_image.split(":", 1)[0]
    settings = Settings().replace(runtime_image=explicit or f"{repository}:{runtime_digest()[:12]}")
    latest = Settings()  # what `nanogrid image build` makes
    if not explicit and not image_status(settings)[0] and image_status(latest)[0]:
        client.images.get(latest.runtime_image).tag(settings.runtime_image)  # the same files: no new build
    ready, message = image_status(settings)
    if not ready:
        print(message)
        build_image(settings, method="rootfs", log=print)
    return settings


@pytest.fixture
def docker_settings(runtime_image, docker_runtime) -> Settings:
    """runtime_image's settings with the test's OCI runtime (docker_runtime: support.runtimes)."""
    return runtime_image.replace(docker_runtime=docker_runtime)


@pytest.fixture(scope="session")
def processes() -> Iterator[Processes]:
    """Starts the processes of a test (support.stack, support.processes); whatever a failed test
    left running is killed when the session ends."""
    started = Processes()
    yield started
    started.kill_leftovers()


@pytest.fixture
def local_settings(tmp_path: Path, redis_url: str) -> Settings:
    """Embedded storage in a fresh folder, a flushed Redis (database 0), the process sandbox."""
    redis.Redis.from_url(redis_url).flushdb()
    return Settings.from_env({
        "NANOGRID_DATA_DIR": str(tmp_path / "data"),
        "NANOGRID_REDIS_URL": redis_url,
        "NANOGRID_SANDBOX": "process",
    })


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws)])
def store_settings(request, local_settings) -> Settings:
    """local_settings on each job and function store in turn: the embedded one, and DynamoDB and
    S3 on the moto server (tables and buckets of the test's own, created as Terraform would)."""
    if request.param == "local":
        return local_settings
    # Reached at run time, hence the mark on the parameter.
    moto = request.getfixturevalue("moto_server")
    suffix = uuid.uuid4().hex[:10]
    settings = local_settings.replace(storage="aws", aws_endpoint_url=moto, aws_region="us-east-1",
                                      functions_table=f"functions-{suffix}", jobs_table=f"jobs-{suffix}",
                                      keys_table=f"keys-{suffix}", s3_code_bucket=f"code-{suffix}",
                                      s3_user_data_bucket=f"data-{suffix}")
    ensure_resources(settings)
    return settings


@pytest.fixture
def make_app(local_settings) -> Callable[..., App]:
    """make_app(broker=None, **settings changes) -> App on local_settings (a fresh data dir and a
    flushed Redis); broker: a support.app.RecordingBroker to publish to instead of the real one."""

    def make(broker: RecordingBroker | None = None, **changes) -> App:
        return App(local_settings.replace(**changes), broker)

    return make


@pytest.fixture
def app(make_app) -> App:
    """The API on local_settings, under Flask's test client."""
    return make_app()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    """A headless Chromium (Debian's, through Playwright) with a fresh profile: a BrowserContext."""
    with browser_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context
