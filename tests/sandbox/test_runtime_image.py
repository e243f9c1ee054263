"""The runtime image carries the manylinux2014 baseline: the libraries manylinux wheels (numpy,
pandas, ...) link against load in a sandbox run (no network, the sandbox's unprivileged user), so
a function whose bundle ships such a wheel can import it. libGL is the one library of the policy
left out (nanogrid/sandbox/image.py: MANYLINUX_PACKAGES says why)."""

from __future__ import annotations

import hashlib
import json
import uuid

from nanogrid.limits import Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import RunSpec
from nanogrid.sandbox.docker import DockerSandbox

# PEP 599's manylinux2014 library list, by soname, libGL left out; libc's own are there anyway.
MANYLINUX2014_LIBRARIES = (
    "libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6", "libnsl.so.1",
    "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "libX11.so.6", "libXext.so.6", "libXrender.so.1",
    "libICE.so.6", "libSM.so.6", "libgobject-2.0.so.0", "libgthread-2.0.so.0", "libglib-2.0.so.0",
    "libz.so.1", "libexpat.so.1", "libgomp.so.1",
)
LIMITS = Limits(timeout_s=30, memory_mb=256, cpus=1.0, pids=64, open_files=256, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)
CODE = """
import ctypes, json, socket
def handler(event, context):
    failed = {}
    for name in event["libraries"]:
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            failed[name] = str(exc)
    return {"failed": failed, "interfaces": [name for _, name in socket.if_nameindex()]}
"""


def test_the_manylinux2014_libraries_load_in_a_sandbox(docker_settings, tmp_path):
    code_dir = tmp_path / "code"
    code_dir.mkdir(mode=0o755)
    (code_dir / "main.py").write_text(CODE)
    (code_dir / "main.py").chmod(0o644)
    sandbox = DockerSandbox(docker_settings, "test-worker")
    try:
        spec = RunSpec(f"test-{uuid.uuid4().hex[:12]}", "fn-image", code_dir, "handler", LIMITS, version=1,
                       code_sha=hashlib.sha256(CODE.encode()).hexdigest(),
                       input_json=json.dumps({"libraries": MANYLINUX2014_LIBRARIES}))
        raw = sandbox.run(spec)
    finally:
        sandbox.pool.close()
    outcome = classify(raw, LIMITS)
    assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
    assert outcome.result["failed"] == {}
    assert outcome.result["interfaces"] == ["lo"]  # the run had no network (--network none)
