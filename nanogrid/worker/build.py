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
import shutil
import tarfile
import tempfile
from pathlib import Path

from nanogrid import layers
from nanogrid.errors import Unavailable
from nanogrid.pip import Installed, Pip, Target, package_dir
from nanogrid.sandbox import source_build
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
    archive = None
    with tempfile.TemporaryDirectory(prefix="nanogrid-build-") as workdir:
        requirements_file = Path(workdir, "requirements.txt")
        requirements_file.write_text(claim.requirements + "\n")
        try:
            target_dir, text, error = install(settings, pip, requirements_file, Path(workdir), sha)
        except Unavailable as exc:  # the source build's engine: fail now rather than hold the claim
            target_dir, text, error = Path(workdir), "", f"the source build could not run: {exc}"
        if error is None:
            try:
                archive, files, size = pack(target_dir, settings.layer_max_mb * MiB, settings.layer_max_files)
                text += f"\nlayer: {files} files, {size / MiB:.1f} MiB installed, {len(archive) / MiB:.1f} MiB packed\n"
            except BoundExceeded as exc:
                error = str(exc)
    if error is None:
        try:
            registry.store.put(layers.archive_key(sha), archive)
        except Unavailable as exc:
            error = f"the code store did not take the layer: {exc}"
    if error is None:
        done = registry.finish(claim, ok=True, log=text, size_bytes=len(archive))
    else:
        done = registry.finish(claim, ok=False, log=text + f"\nbuild failed: {error}\n", error=error)
    status = done["status"] if done else "lost"
    log.info("layer %s: %s%s", sha[:12], status, f" ({error})" if error else "", extra={"layer": sha})
    services.jobs.release_waiting(sha)
    return status


def install(settings, pip: Pip, requirements_file: Path, workdir: Path, sha: str) -> tuple[Path, str, str | None]:
    """Install the requirements into workdir/layer: (that folder, the log, the error or None)."""
    target_dir = workdir / "layer"
    installed = pip.install(requirements_file, target_dir, TARGET, settings.build_timeout_s)
    if installed.ok:
        return target_dir, installed.log, None
    source_only = installed.no_match if installed.no_match and pip.published(installed.no_match) else None
    if source_only is None or not settings.build_from_source:
        return target_dir, installed.log, failure_message(installed, source_only, settings.build_timeout_s)
    # Only a source distribution: built in a throwaway container (opt-in), then installed as a wheel.
    text = installed.log + f"\n{source_only} has no wheel for the runtime: building from source in a container\n"
    wheel_dir = workdir / "wheels"
    wheel_dir.mkdir()
    built = source_build.build_wheels(settings, package_dir(), requirements_file, wheel_dir, pip.index_environment(),
                                      settings.build_timeout_s, sha)
    text += pip.redact(built.log)
    if not built.ok:
        reason = "took too long" if built.timed_out else (pip_errors(built.log) or "see the build log")
        return target_dir, text, f"building {source_only} from source failed: {pip.redact(reason)}"
    shutil.rmtree(target_dir, ignore_errors=True)
    installed = pip.install(requirements_file, target_dir, TARGET, settings.build_timeout_s, find_links=[wheel_dir])
    text += "\n" + installed.log
    if not installed.ok:
        return target_dir, text, failure_message(installed, None, settings.build_timeout_s)
    return target_dir, text, None


def failure_message(installed: Installed, source_only: str | None, timeout_s: float) -> str:
    if installed.timed_out:
        return f"the build took longer than {timeout_s:g} s (NANOGRID_BUILD_TIMEOUT_S)"
    if source_only:
        return (f"{source_only} has no wheel for the runtime (CPython {TARGET.python_version}, manylinux "
                "x86_64): only source distributions (or wheels for other platforms), and building from source "
                "is not enabled (NANOGRID_BUILD_FROM_SOURCE=1 builds them in a throwaway container)")
    return pip_errors(installed.log) or "pip failed; see the build log"


def pip_errors(text: str) -> str:
    """pip's ERROR lines, joined and bounded: the reason a build failed, as pip gave it."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip().startswith("ERROR:"))[:1000]


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
