"""The in-sandbox runner: runs one function invocation and reports it as frames on stdout.

Usage: python3 -I -B runner.py RUN_DIR

RUN_DIR holds the function's bundle (main.py, ...), `.nanogrid-run.json` (handler name and
context) and `.nanogrid-input.json` (the event). The user code runs in a forked child whose
stdout and stderr are pipes; this process relays them as frames and then reports the handler's
result and the child's exit status, so the worker gets binary-safe output, a result channel
that print() cannot corrupt, and the exit status even when the code segfaults. Standard library
only: it runs on the bare Python of the runtime image.

The runner makes itself non-dumpable, so the user code (same uid) can neither ptrace it nor open
its file descriptors through /proc to forge frames, and a child subreaper, so processes the user
code double-forks into the background are reparented to it and killed when the run ends.
"""

import asyncio
import importlib
import inspect
import json
import os
import runpy
import select
import signal
import struct
import sys
import time
import traceback

HEADER = struct.Struct(">cI")
CHUNK = 64 * 1024
RESULT_CAP = 8 * 1024 * 1024
DRAIN_S = 0.2
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# How long the runner keeps killing leftover background processes (a fork bomb may race it).
ORPHAN_KILL_S = 1.0


def prctl(option, value):
    """Best effort: without ctypes (or off Linux) the run still works, with less self-protection."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        return False


class Context:
    """The second argument of handler(event, context)."""

    def __init__(self, job_id, function_id, function_version, deadline):
        self.job_id = job_id
        self.function_id = function_id
        self.function_version = function_version
        self.deadline = deadline

    def remaining_time_ms(self):
        return max(0, int((self.deadline - time.time()) * 1000))

    def __repr__(self):
        return f"Context(job_id={self.job_id!r}, function_id={self.function_id!r})"


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def frame(fd, kind, payload):
    write_all(fd, HEADER.pack(kind, len(payload)) + payload)


def print_user_traceback(exc):
    """Print the traceback without the runner's own frames: the user should see only theirs."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen")):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def exit_code_of(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_user_code(run_dir, spec, result_fd):
    # The runner runs with -I (PYTHONPATH ignored); its own folder holds nanogrid_ai.
    sys.path[:0] = [run_dir, os.path.dirname(os.path.abspath(__file__))]
    sys.argv = [os.path.join(run_dir, "main.py")]
    sys.dont_write_bytecode = True
    handler = spec.get("handler")
    try:
        if spec.get("ai"):  # this run's AI channel (socket path, timeout), for nanogrid_ai
            importlib.import_module("nanogrid_ai").configure(**spec["ai"])
        if handler is None:
            runpy.run_path(sys.argv[0], run_name="__main__")
            return 0
        module = importlib.import_module("main")
        function = getattr(module, handler)
        event = json.load(sys.stdin)
        value = function(event, Context(**spec["context"]))
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
        try:
            payload = json.dumps({"ok": True, "value": value}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            payload = json.dumps({
                "ok": False,
                "error": "invalid_result",
                "message": f"the handler's return value is not JSON-serialisable: {exc}",
            })
        write_all(result_fd, payload.encode())
        return 0
    except SystemExit as exc:
        return exit_code_of(exc)
    except MemoryError as exc:
        print_user_traceback(exc)
        write_all(result_fd, json.dumps({"ok": False, "error": "memory_limit", "message": "MemoryError"}).encode())
        return 1
    except BaseException as exc:  # noqa: B036 - everything the user raises is reported, then exit 1
        print_user_traceback(exc)
        return 1


def child(run_dir, spec, pipes):
    # The user code gets an ordinary process: readable /proc/self, core-dump rules as usual.
    prctl(PR_SET_DUMPABLE, 1)
    (r_out, w_out), (r_err, w_err), (r_res, w_res) = pipes
    for fd in (r_out, r_err, r_res):
        os.close(fd)
    os.dup2(w_out, 1)
    os.dup2(w_err, 2)
    os.close(w_out)
    os.close(w_err)
    input_fd = os.open(os.path.join(run_dir, ".nanogrid-input.json"), os.O_RDONLY)
    os.dup2(input_fd, 0)
    os.close(input_fd)
    os.chdir(run_dir)
    # Python ignores SIGXFSZ and raises EFBIG instead; the default action lets the worker see
    # the file size limit as what it is.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    os.environ.update(spec.get("env") or {})
    code = run_user_code(run_dir, spec, w_res)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not change the exit code
            pass
    os._exit(code & 0xFF if code >= 0 else 1)


def reap(pid):
    """Reap every exited child (orphans reparented to this subreaper included); pid's (status, rusage) or None."""
    found = None
    while True:
        try:
            done, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if done == 0:
            return found
        if done == pid:
            found = (status, usage)


def children():
    """This process's children, from /proc (the task's children file needs a kernel option)."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ")" are safe.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(name))
    return found


def kill_orphans():
    """Kill what the user code left running in the background; they were reparented to this subreaper."""
    deadline = time.monotonic() + ORPHAN_KILL_S
    while time.monotonic() < deadline:
        reap(None)
        pids = children()
        if not pids:
            return
        for orphan in pids:
            try:
                os.kill(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def relay(pid, pipes, out_fd):
    readers = {pipes[0][0]: b"o", pipes[1][0]: b"e", pipes[2][0]: b"r"}
    result = bytearray()
    status = usage = None
    exited_at = None
    while readers:
        ready, _, _ = select.select(list(readers), [], [], 0.05 if status is not None else 0.5)
        for fd in ready:
            data = os.read(fd, CHUNK)
            if not data:
                del readers[fd]
            elif readers[fd] == b"r":
                if len(result) <= RESULT_CAP:  # one byte over is enough to know it is too big
                    result += data[:RESULT_CAP + 1 - len(result)]
            else:
                frame(out_fd, readers[fd], data)
        if status is None:
            reaped = reap(pid)
            if reaped is not None:
                (status, usage), exited_at = reaped, time.monotonic()
        # A double-forked orphan can hold the pipes open forever: stop shortly after the child ends.
        elif not ready or time.monotonic() - exited_at > DRAIN_S * 5:
            break
    if status is None:
        _, status, usage = os.wait4(pid, 0)
    return status, usage, bytes(result)


def main():
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    run_dir = sys.argv[1]
    with open(os.path.join(run_dir, ".nanogrid-run.json")) as f:
        spec = json.load(f)
    out_fd = os.dup(1)
    sys.stdout.flush()
    pipes = [os.pipe(), os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:
        os.close(out_fd)
        child(run_dir, spec, pipes)
    for _, w in pipes:
        os.close(w)
    status, usage, result = relay(pid, pipes, out_fd)
    kill_orphans()
    # The user process's own accounting (its waited-for descendants included); the Docker
    # sandbox prefers the container's cgroup figures when it can read them.
    exit_info = {"exit_code": None, "signal": None, "memory_error": False,
                 "max_rss_kb": usage.ru_maxrss, "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000)}
    if os.WIFSIGNALED(status):
        exit_info["signal"] = os.WTERMSIG(status)
    else:
        exit_info["exit_code"] = os.WEXITSTATUS(status)
    if len(result) > RESULT_CAP:
        result = json.dumps({"ok": False, "error": "invalid_result",
                             "message": f"the handler's return value is over {RESULT_CAP} bytes of JSON"}).encode()
    if result:
        try:  # the user code can write anything into its result pipe
            exit_info["memory_error"] = json.loads(result).get("error") == "memory_limit"
        except (ValueError, RecursionError, AttributeError):
            pass
        frame(out_fd, b"r", result)
    frame(out_fd, b"x", json.dumps(exit_info).encode())


if __name__ == "__main__":
    main()
