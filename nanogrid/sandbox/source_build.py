"""Building wheels from source distributions, in a throwaway container (opt-in).

A source distribution installs only by building it, which runs its build code. NanoGrid never
does that on the host: with NANOGRID_BUILD_FROM_SOURCE=1 the builder runs `pip wheel` in a
container of the runtime image made for this one build and removed after it: the sandbox's user,
no capabilities, a read-only root with a private /tmp, bounded memory and processes, the network
named by NANOGRID_BUILD_NETWORK (Docker's bridge: it reaches the index and the internet, nothing
of the host's files) and of the host only the installer (pip's own package, read-only), the
requirements and an empty folder for the wheels. What it builds is then installed on the host
like any wheel (installing a wheel runs nothing). The runtime image has no compilers, so a
package with C extensions and no wheel still fails, with pip's message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import docker
import docker.errors
from docker.types import Mount

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox.docker import SANDBOX_USER, connect
from nanogrid.sandbox.janitor import DOCKER_ERRORS

MiB = 1024 * 1024
BUILD_MEMORY_MB = 2048
BUILD_PIDS = 512
BUILD_TMPFS_MB = 2048
CA_BUNDLE = "/etc/nanogrid/ca-bundle.pem"
LABEL_BUILD = "nanogrid.build"  # the layer a source build works for


@dataclass
class Built:
    ok: bool
    log: str
    timed_out: bool = False


def build_wheels(settings: Settings, pip_package: Path, requirements: Path, wheel_dir: Path,
                 pip_environment: Mapping[str, str], timeout_s: float, layer: str) -> Built:
    """`pip wheel -r requirements` into wheel_dir, in a container of its own; Unavailable without dockerd."""
    client = connect()
    wheel_dir.chmod(0o777)  # written by the sandbox's user
    environment = {"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/installer", **pip_environment}
    mounts = [Mount(target="/opt/installer/pip", source=str(pip_package), type="bind", read_only=True),
              Mount(target="/build/requirements.txt", source=str(requirements), type="bind", read_only=True),
              Mount(target="/wheels", source=str(wheel_dir), type="bind", read_only=False)]
    if settings.pip_cert:
        mounts.append(Mount(target=CA_BUNDLE, source=str(Path(settings.pip_cert).resolve()), type="bind",
                            read_only=True))
        environment["PIP_CERT"] = CA_BUNDLE
    try:
        container = client.containers.create(
            image=settings.runtime_image, user=SANDBOX_USER, working_dir="/tmp", environment=environment,
            command=["python3", "-m", "pip", "wheel", "--no-cache-dir", "--progress-bar", "off",
                     "--wheel-dir", "/wheels", "-r", "/build/requirements.txt"],
            mounts=mounts, network_mode=settings.build_network, read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={BUILD_TMPFS_MB}m,mode=1777"},
            mem_limit=BUILD_MEMORY_MB * MiB, memswap_limit=BUILD_MEMORY_MB * MiB, pids_limit=BUILD_PIDS,
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"], runtime=settings.docker_runtime,
            labels={LABEL_BUILD: layer}, detach=True)
    except docker.errors.ImageNotFound as exc:
        raise Unavailable(f"the runtime image {settings.runtime_image} does not exist") from exc
    except DOCKER_ERRORS as exc:
        raise Unavailable(f"cannot create the source build's container: {exc}") from exc
    started = time.monotonic()
    try:
        container.start()
        try:
            status = container.wait(timeout=timeout_s)
            timed_out = False
        except DOCKER_ERRORS:  # the wait's read timed out: the build ran past its bound
            timed_out = True
            container.kill()
            status = {"StatusCode": None}
        log = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    except DOCKER_ERRORS as exc:
        raise Unavailable(f"the source build's container failed: {exc}") from exc
    finally:
        try:
            container.remove(force=True)
        except DOCKER_ERRORS:
            pass
    if timed_out:
        log += f"\nthe source build took longer than {timeout_s:g} s and was stopped\n"
    took = time.monotonic() - started
    log += f"\nsource build: exit {status.get('StatusCode')} after {took:.1f} s\n"
    built = any(name.endswith(".whl") for name in os.listdir(wheel_dir))
    return Built(status.get("StatusCode") == 0 and built, log, timed_out)
