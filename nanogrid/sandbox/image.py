"""The runtime image: Python 3.11 plus the in-sandbox runtime, tagged settings.runtime_image.

The image is built from nanogrid/sandbox/Dockerfile on one of two bases:

- "dockerfile": the Dockerfile's default base (python:3.11-slim), which needs a registry;
- "rootfs": a minimal Debian bookworm rootfs made locally with mmdebstrap and `docker import`ed
  as nanogrid-runtime-base:<hash of the mmdebstrap arguments>, which needs only a Debian mirror.

The image carries the label nanogrid.runtime.digest, a hash of the files it was built from, so
`image_status` can tell an operator that the image predates the installed NanoGrid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import docker.utils
from requests.exceptions import RequestException

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox import RUNTIME_DIR
from nanogrid.sandbox.docker import BUILD_HINT, connect

DOCKERFILE = Path(__file__).with_name("Dockerfile")
LABEL_DIGEST = "nanogrid.runtime.digest"
METHODS = ("auto", "dockerfile", "rootfs")
BASE_REPOSITORY = "nanogrid-runtime-base"
DEBIAN_SUITE = "bookworm"
# The libraries of the manylinux2014 policy (PEP 599), which manylinux wheels (numpy, pandas, ...)
# assume every system has, from the Debian packages that provide them: libstdc++.so.6, libgcc_s,
# libz, libgomp, libexpat, libglib/gobject/gthread, libX11, libXext, libXrender, libICE, libSM
# (libc, libm, libdl, libpthread, librt, libcrypt come with libc6). Left out: libGL, whose package
# (libgl1) pulls in Mesa's drivers, on the order of 100 MB, for a sandbox that has no GPU.
MANYLINUX_PACKAGES = ("libstdc++6", "libgcc-s1", "zlib1g", "libgomp1", "libexpat1", "libglib2.0-0", "libx11-6",
                      "libxext6", "libxrender1", "libice6", "libsm6")
MMDEBSTRAP_ARGS = (
    "--variant=essential",
    f"--include=python3,{','.join(MANYLINUX_PACKAGES)}",
    # Sets up merged /usr itself; otherwise bookworm installs usrmerge and with it all of perl.
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    *(f"--dpkgopt=path-exclude=/usr/share/{folder}/*" for folder in ("doc", "man", "locale", "info")),
)
# `docker import` gives an image without any config; processes need a PATH to find python3.
BASE_IMAGE_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
# Per socket read: an unreachable registry fails fast, a slow but working pull still completes.
PULL_TIMEOUT_S = 30
BUILD_TIMEOUT_S = 600


class ImageBuildError(RuntimeError):
    """The runtime image (or its base) could not be built."""


def runtime_files() -> list[Path]:
    """The files copied to /opt/nanogrid in the image, bytecode caches excluded."""
    return sorted(
        path for path in RUNTIME_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def runtime_digest() -> str:
    """Hash of everything the image is built from: the runtime files and the Dockerfile."""
    digest = hashlib.sha256()
    sources = [(f"runtime/{p.relative_to(RUNTIME_DIR).as_posix()}", p) for p in runtime_files()]
    for name, path in [*sources, ("Dockerfile", DOCKERFILE)]:
        content = path.read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:12]


def default_base() -> str:
    """The base named by the Dockerfile's `ARG BASE=...`, used when the build passes none."""
    match = re.search(r"^ARG BASE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise ImageBuildError(f"{DOCKERFILE} has no `ARG BASE=...` line")
    return match.group(1)


def rootfs_base_tag() -> str:
    arguments = json.dumps([*MMDEBSTRAP_ARGS, DEBIAN_SUITE]).encode()
    return f"{BASE_REPOSITORY}:{hashlib.sha256(arguments).hexdigest()[:12]}"


def image_status(settings: Settings) -> tuple[bool, str]:
    """Whether settings.runtime_image exists and was built from the installed runtime files."""
    name = settings.runtime_image
    try:
        image = connect().images.get(name)
    except Unavailable as exc:
        return False, str(exc)
    except docker.errors.ImageNotFound:
        return False, f"the runtime image {name} does not exist; {BUILD_HINT}"
    except (docker.errors.DockerException, RequestException) as exc:
        return False, f"cannot inspect the runtime image {name}: {exc}"
    built_from = (image.labels or {}).get(LABEL_DIGEST)
    current = runtime_digest()
    if built_from != current:
        return False, (f"the runtime image {name} was built from other runtime files "
                       f"(digest {built_from or 'none'}, installed {current}); {BUILD_HINT}")
    return True, f"the runtime image {name} is up to date (runtime digest {current})"


def build_image(settings: Settings, method: str = "auto", log: Callable[[str], None] = print) -> str:
    """Build settings.runtime_image and return its image id.

    "auto" uses the Dockerfile's base when a registry answers (or a copy is already local),
    and falls back to the mmdebstrap rootfs otherwise.
    """
    if method not in METHODS:
        raise ValueError(f"unknown image build method {method!r}: expected one of {', '.join(METHODS)}")
    client = connect(timeout=BUILD_TIMEOUT_S)
    if method == "dockerfile":
        base = default_base()
    elif method == "rootfs":
        base = _rootfs_base(client, log)
    else:
        base = _pulled_default_base(log) or _rootfs_base(client, log)
    digest = runtime_digest()
    log(f"building {settings.runtime_image} on {base} (runtime digest {digest})")
    with tempfile.TemporaryDirectory(prefix="nanogrid-image-") as context:
        _write_context(Path(context))
        try:
            for message in client.api.build(
                path=context, tag=settings.runtime_image, buildargs={"BASE": base},
                labels={LABEL_DIGEST: digest}, rm=True, forcerm=True, pull=False, decode=True,
            ):
                if "error" in message:
                    raise ImageBuildError(f"building {settings.runtime_image} failed: {message['error'].strip()}")
                text = message.get("stream", "").rstrip()
                if text:
                    log(text)
        except (docker.errors.DockerException, RequestException) as exc:
            raise ImageBuildError(f"building {settings.runtime_image} failed: {exc}") from exc
    image_id = client.images.get(settings.runtime_image).id
    log(f"built {settings.runtime_image} ({image_id})")
    return image_id


def _write_context(context: Path) -> None:
    """A build context holding exactly the files the digest covers, readable by the sandbox user."""
    shutil.copyfile(DOCKERFILE, context / "Dockerfile")
    for source in runtime_files():
        target = context / "runtime" / source.relative_to(RUNTIME_DIR)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
    for folder in [context / "runtime", *(context / "runtime").rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)


def _pulled_default_base(log: Callable[[str], None]) -> str | None:
    base = default_base()
    repository, tag = docker.utils.parse_repository_tag(base)
    client = connect(timeout=PULL_TIMEOUT_S)
    log(f"pulling {base}")
    try:
        client.images.pull(repository, tag=tag or "latest")
        return base
    except (docker.errors.DockerException, RequestException) as exc:
        log(f"cannot pull {base}: {exc}")
    try:
        client.images.get(base)
        log(f"using the local copy of {base}")
        return base
    except (docker.errors.DockerException, RequestException):
        log("falling back to a Debian rootfs built with mmdebstrap")
        return None


def _rootfs_base(client: docker.DockerClient, log: Callable[[str], None]) -> str:
    tag = rootfs_base_tag()
    try:
        client.images.get(tag)
        log(f"using the base image {tag}")
        return tag
    except docker.errors.ImageNotFound:
        pass
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageBuildError("mmdebstrap is not installed (apt-get install mmdebstrap), "
                              "and the runtime image's base cannot be pulled")
    repository, version = tag.split(":")
    with tempfile.TemporaryDirectory(prefix="nanogrid-rootfs-") as workdir:
        tarball = os.path.join(workdir, "rootfs.tar")
        command = [mmdebstrap, *MMDEBSTRAP_ARGS, DEBIAN_SUITE, tarball]
        log(f"building the base rootfs: {' '.join(command)}")
        # stdin closed: with no mirror argument mmdebstrap may read a sources.list from it.
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace") as process:
            for line in process.stdout:
                log(line.rstrip())
        if process.returncode != 0:
            raise ImageBuildError(f"mmdebstrap failed with exit code {process.returncode}")
        log(f"importing the rootfs as {tag}")
        try:
            answer = client.api.import_image_from_file(
                tarball, repository=repository, tag=version, changes=BASE_IMAGE_CHANGES)
        except (docker.errors.DockerException, RequestException) as exc:
            raise ImageBuildError(f"docker import of the rootfs failed: {exc}") from exc
    for line in answer.splitlines():
        message = json.loads(line) if line.strip().startswith("{") else {}
        if "error" in message:
            raise ImageBuildError(f"docker import of the rootfs failed: {message['error']}")
    return tag
