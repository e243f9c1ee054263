"""Building a layer: a function's requirements installed once, packed, and stored.

Runs in `nanogrid builder` (a Celery worker of its own on the builds queue), never in a run's
slot. The build claims the layer's document (compare-and-set, with a lease: a builder that died
mid-build leaves it to the next message), installs the requirements with pip for the runtime's
interpreter, wheels only (nanogrid/pip.py: no package code runs on the host), checks the bounds
(installed size and file count), packs the folder and stores it in the code store, then records
ready or failed with the log's tail. Then it dispatches the runs that waited for it.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
from pathlib import Path

from nanogrid import layers
from nanogrid.errors import Unavailable
from nanogrid.pip import Pip, Target
from nanogrid.services import Services

log = logging.getLogger(__name__)
TARGET = Target(layers.PYTHON_VERSION, layers.IMPLEMENTATION, layers.ABI, layers.PLATFORMS)
LEASE_MARGIN_S = 120  # beyond the build's own timeout: packing and storing
MiB = 1024 * 1024


class BoundExceeded(Exception):
    pass


def build(services: Services, sha: str) -> str:
    """Build the layer if it is ours to build; its status afterwards (or "skipped")."""
    settings = services.settings
    registry = services.layers
    claim = registry.claim(sha, settings.build_timeout_s + LEASE_MARGIN_S)
    if claim is None:
        log.info("layer %s is not pending (built, failed, or building elsewhere)", sha[:12])
        return "skipped"
    pip = Pip(settings)
    log.info("building layer %s", sha[:12], extra={"layer": sha})
    with tempfile.TemporaryDirectory(prefix="nanogrid-build-") as workdir:
        requirements_file = Path(workdir, "requirements.txt")
        requirements_file.write_text(claim.requirements + "\n")
        target_dir = Path(workdir, "layer")
        installed = pip.install(requirements_file, target_dir, TARGET, settings.build_timeout_s)
        text = installed.log
        error = None
        archive = None
        if not installed.ok:
            error = failure_message(pip, installed, settings.build_timeout_s)
        else:
            try:
                archive, files, size = pack(target_dir, settings.layer_max_mb * MiB, settings.layer_max_files)
                text += f"\nlayer: {files} files, {size / MiB:.1f} MiB installed, {len(archive) / MiB:.1f} MiB packed\n"
            except BoundExceeded as exc:
                error = str(exc)
        if error is not None:
            text += f"\nbuild failed: {error}\n"
            done = registry.finish(claim, ok=False, log=text, error=error)
        else:
            try:
                registry.store.put(layers.archive_key(sha), archive)
            except Unavailable as exc:
                error = f"the code store did not take the layer: {exc}"
                done = registry.finish(claim, ok=False, log=text + f"\nbuild failed: {error}\n", error=error)
            else:
                done = registry.finish(claim, ok=True, log=text, size_bytes=len(archive))
    status = done["status"] if done else "lost"
    log.info("layer %s: %s%s", sha[:12], status, f" ({error})" if error else "", extra={"layer": sha})
    services.jobs.release_waiting(sha)
    return status


def failure_message(pip: Pip, installed, timeout_s: float) -> str:
    if installed.timed_out:
        return f"the build took longer than {timeout_s:g} s (NANOGRID_BUILD_TIMEOUT_S)"
    if installed.no_match and pip.published(installed.no_match):
        return (f"{installed.no_match} has no wheel for the runtime (CPython {TARGET.python_version}, manylinux "
                "x86_64): only source distributions (or wheels for other platforms), and building from source "
                "is not enabled; publish a wheel of it to the index")
    lines = [line.strip() for line in installed.log.splitlines() if line.strip().startswith("ERROR:")]
    return " ".join(lines)[:1000] or "pip failed; see the build log"


def pack(folder: Path, max_bytes: int, max_files: int) -> tuple[bytes, int, int]:
    """The folder as a tar.gz of regular files and directories; BoundExceeded past a bound."""
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            if path.is_symlink() or not path.is_file():
                continue
            files += 1
            size += path.stat().st_size
            if files > max_files:
                raise BoundExceeded(f"the layer has more than {max_files} files (NANOGRID_LAYER_MAX_FILES)")
            if size > max_bytes:
                raise BoundExceeded(f"the layer installs more than {max_bytes // MiB} MiB (NANOGRID_LAYER_MAX_MB)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        archive.add(folder, arcname=".", filter=_plain)
    return buffer.getvalue(), files, size


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Regular files and directories only, owned by nobody in particular, readable by all."""
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info
