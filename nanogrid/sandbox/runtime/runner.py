"""The in-sandbox runner: runs function invocations, one at a time, and reports each as frames.

Usage: python3 -I -B runner.py CODE_DIR [--scrub DIR]... [--scrub-ipc]

CODE_DIR holds one function version's bundle (main.py, ...), read-only and shared by every run
of that version. Requests arrive on stdin as frames with the same header as the output frames:
type b"q", a 4-byte big-endian length, then JSON {"spec": {"handler", "env", "context", "ai"},
"input": "<the event as JSON text>"}, followed by a frame of type b"n" holding the run's nonce
(16 random bytes the worker chose for this run). The exit frame carries the nonce back; the run's
own processes never know it (it is read into one buffer, which the child wipes before anything
else), so no process of the run can forge the end of its run, even where it can write into the
runner's stdout (gVisor's /proc lets it open another process's descriptors; Linux's does not for
a non-dumpable one). Each request runs in a freshly forked child whose stdin is
the input and whose stdout and stderr are pipes; this process relays them as frames on its own
stdout, then reports the handler's result and the child's exit status, so the worker gets
binary-safe output, a result channel that print() cannot corrupt, and the exit status even when
the code segfaults. A handler that is a generator (or an async generator) streams: each item it
yields goes to the worker as an item frame at once, and the result is the list of the items.
The child's stdout and stderr are unbuffered, so what it prints reaches the worker as it prints it.
After the child has ended, and BEFORE the exit frame, the runner kills
whatever the run left running and empties every place the run could write to (the --scrub
directories, and with --scrub-ipc the System V IPC objects and POSIX message queues of the
sandbox's IPC namespace): when the worker reads the exit frame, the sandbox is as clean as the
next run needs it. Then it reads the next request; it exits at the end of its stdin.

Reuse contract: nothing survives from one run to the next. Every run is a new process forked
from this one (no module cache, no globals, no environment changes carry over), its files are
deleted and its processes killed. What is reused is the container and this interpreter, whose
start is what a run no longer pays for. If the clean-up cannot finish (a process that will not
die, a file that cannot be removed), the exit frame says so ("clean": false) and the runner
exits, so the worker never hands the sandbox to another run. EOF on stdin during a run (the
worker is gone) kills the run and ends the runner.

The runner makes itself non-dumpable, so the user code (same uid) can neither ptrace it nor open
its file descriptors through /proc to read requests or forge frames; in a container it is PID 1
(no init in between holding the same pipes), which also makes it immune to the user code's
signals (on Linux: gVisor delivers them, so there a function can kill its own runner, which ends
its own run and container). It is a child subreaper, so processes the user code double-forks into
the background stay its descendants.

Before the user code starts, the child installs a seccomp filter of its own (on x86-64 and
arm64): no new namespaces (unshare, setns, clone with CLONE_NEW*; clone3 is ENOSYS so the C
library falls back to clone), which Docker's default profile also refuses but gVisor does not
apply, and, with --scrub-ipc, none of the IPC objects this runner could not find again to remove
them (System V IPC without /proc/sysvipc, POSIX message queues without /dev/mqueue: gVisor has
both kinds but neither listing) are ENOSYS. Standard library only: it runs on the bare Python of
the runtime image.
"""

import gc
import importlib
import io
import json
import os
import select
import signal
import stat
import struct
import sys
import time
import types

# Only what every run needs is imported here: every module loaded makes each run's fork (and the
# memory it copies on write) bigger. asyncio, runpy and traceback are imported in the run's
# process when it needs them.

HEADER = struct.Struct(">cI")
REQUEST = b"q"
# Records the child writes on its result pipe, framed like the runner's own output: each item a
# streaming handler yields (forwarded at once), then the result.
ITEM, RESULT = b"i", b"r"
NONCE = b"n"
NONCE_SIZE = 16
CHUNK = 64 * 1024
RESULT_CAP = 8 * 1024 * 1024
REQUEST_CAP = 1024 * 1024 * 1024
DRAIN_S = 0.2
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
IPC_RMID = 0
# seccomp: the architecture's AUDIT_ARCH value and the numbers of the calls the filter looks at.
SYSCALLS = {
    "x86_64": (0xC000003E, {"clone": 56, "unshare": 272, "setns": 308, "clone3": 435, "mknod": 133,
                            "mknodat": 259, "shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240}),
    "aarch64": (0xC00000B7, {"clone": 220, "unshare": 97, "setns": 268, "clone3": 435, "mknodat": 33,
                             "shmget": 194, "semget": 190, "msgget": 186, "mq_open": 180}),
}
S_IFMT, S_IFCHR, S_IFBLK = 0o170000, 0o020000, 0o060000
# CLONE_NEWNS, CLONE_NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: what Docker's profile refuses.
CLONE_NEW_FLAGS = 0x7E020000
# How long the runner keeps killing leftover background processes (a fork bomb may race it).
ORPHAN_KILL_S = 1.0
# The cgroup files whose oom_kill counter tells an OOM kill from any other SIGKILL (v1, v2).
OOM_FILES = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")


class ProtocolError(Exception):
    """The worker's side of stdin broke the protocol (never the user code: it cannot reach it)."""


class Stop(Exception):
    """Stdin ended (the worker is gone) or sent something during a run: stop everything."""


# The current run's nonce: read straight into this one buffer (no other copy of it is ever made
# before the run's process is forked), wiped in that process, sent back in the exit frame.
nonce = bytearray(NONCE_SIZE)
# The seccomp program every run's process installs (see seccomp_filter), or None without one.
_filter = []

_libc = []


def libc():
    """The C library through ctypes (loaded once, before the forks), or None without ctypes."""
    if not _libc:
        try:
            import ctypes

            _libc.append(ctypes.CDLL(None, use_errno=True))
        except (ImportError, OSError):
            _libc.append(None)
    return _libc[0]


def prctl(option, value):
    """Best effort: without ctypes (or off Linux) the run still works, with less self-protection."""
    try:
        return libc().prctl(option, value, 0, 0, 0) == 0
    except AttributeError:
        return False


class Context:
    """The second argument of handler(event, context)."""

    def __init__(self, job_id, function_id, function_version, deadline, attempt=1):
        self.job_id = job_id
        self.function_id = function_id
        self.function_version = function_version
        self.deadline = deadline
        self.attempt = attempt  # 1, then 2, ... when the function's retry policy runs the job again

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


def read_exactly(fd, size):
    """size bytes from fd; None at EOF before the first byte, ProtocolError at EOF after it."""
    chunks, left = [], size
    while left:
        data = os.read(fd, min(left, CHUNK))
        if not data:
            if left == size:
                return None
            raise ProtocolError("stdin ended in the middle of a request")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def read_nonce(fd):
    """The run's nonce frame, read into `nonce` itself."""
    header = read_exactly(fd, HEADER.size)
    if header is None or HEADER.unpack(header) != (NONCE, NONCE_SIZE):
        raise ProtocolError("a request must be followed by its nonce frame")
    view, got = memoryview(nonce), 0
    while got < NONCE_SIZE:
        count = os.readv(fd, [view[got:]])
        if not count:
            raise ProtocolError("stdin ended in the middle of a nonce")
        got += count


def read_request(fd):
    """The next request from fd (its nonce read into `nonce`), or None at the end of the stream."""
    header = read_exactly(fd, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    if kind != REQUEST or length > REQUEST_CAP:
        raise ProtocolError(f"not a request frame: type {kind!r}, length {length}")
    payload = read_exactly(fd, length) if length else b""
    if payload is None:
        raise ProtocolError("stdin ended before the request's payload")
    try:
        request = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"the request is not JSON: {exc}") from None
    if (not isinstance(request, dict) or not isinstance(request.get("spec"), dict)
            or not isinstance(request.get("input", ""), str)):
        raise ProtocolError("the request must be {\"spec\": {...}, \"input\": \"<JSON text>\"}")
    read_nonce(fd)
    return request


def seccomp_filter(enosys):
    """The run's seccomp program (classic BPF) for this machine, or None on another architecture.

    New namespaces are refused (EPERM) as Docker's default profile refuses them to a container
    without CAP_SYS_ADMIN: unshare, setns, clone with a CLONE_NEW* flag; clone3, whose flags a
    filter cannot read, is ENOSYS, so the C library falls back to clone. So are device nodes
    (mknod of a character or block device), which Linux refuses without CAP_MKNOD and gVisor does
    not. The calls in `enosys`, and every call of another ABI (x32, i386), are ENOSYS. Everything
    else is allowed.
    """
    arch = SYSCALLS.get(os.uname().machine)
    if arch is None or sys.byteorder != "little":
        return None
    audit_arch, numbers = arch
    load, jeq, jge, jset, ret, and_ = 0x20, 0x15, 0x35, 0x45, 0x06, 0x54
    code = [(load, 4, None, None),  # seccomp_data.arch
            (jeq, audit_arch, None, "enosys"),
            (load, 0, None, None),  # seccomp_data.nr
            (jge, 0x40000000, "enosys", None)]  # x32
    code += [(jeq, numbers[name], "eperm", None) for name in ("unshare", "setns")]
    code += [(jeq, numbers[name], "enosys", None) for name in ("clone3", *enosys)]
    code += [(jeq, numbers[name], f"mode{argument}", None)
             for name, argument in (("mknod", 1), ("mknodat", 2)) if name in numbers]
    code += [(jeq, numbers["clone"], None, "allow"),
             (load, 16, None, None),  # the low half of args[0]: clone's flags
             (jset, CLONE_NEW_FLAGS, "eperm", None),
             (ret, 0x7FFF0000, None, None)]
    labels = {}
    for argument in (1, 2):  # mknod's mode is args[1], mknodat's args[2]: refused for devices
        labels[f"mode{argument}"] = len(code)
        code += [(load, 16 + 8 * argument, None, None), (and_, S_IFMT, None, None),
                 (jeq, S_IFCHR, "eperm", None), (jeq, S_IFBLK, "eperm", "allow")]
    errno_eperm, errno_enosys = 1, 38
    labels.update({"allow": len(code), "eperm": len(code) + 1, "enosys": len(code) + 2})
    code += [(ret, 0x7FFF0000, None, None), (ret, 0x00050000 | errno_eperm, None, None),
             (ret, 0x00050000 | errno_enosys, None, None)]
    program = b"".join(
        struct.pack("=HBBI", op, labels[true] - at - 1 if true else 0, labels[false] - at - 1 if false else 0, k)
        for at, (op, k, true, false) in enumerate(code))
    import ctypes

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    return Program(len(code), program)


def install_filter():
    """Install the run's seccomp filter in this process; False if there is none or it failed."""
    if not _filter or _filter[0] is None or libc() is None:
        return False
    import ctypes

    ulong = ctypes.c_ulong
    return (libc().prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) == 0
            and libc().prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(_filter[0]), ulong(0),
                             ulong(0)) == 0)


def filter_works():
    """Whether a forked process can install the filter (tried once, when the runner starts)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if install_filter() else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def input_descriptor(text):
    """A readable descriptor holding the run's input (an anonymous in-memory file)."""
    fd = os.memfd_create("nanogrid-input", os.MFD_CLOEXEC)
    write_all(fd, text.encode("utf-8", "surrogatepass"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def print_user_traceback(exc):
    """Print the traceback with the user's own frames only: not the runner's, nanogrid_ai's or the
    import machinery's (importlib, frozen modules), in every exception of the chain."""
    import traceback

    hidden = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(importlib.__file__) + os.sep,
              "<frozen")
    shown = traceback.TracebackException.from_exception(exc)
    pending, seen = [shown], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not frame.filename.startswith(hidden)])
        pending += [chained for chained in (current.__cause__, current.__context__) if chained is not None]
    sys.stderr.write("".join(shown.format()))


def exit_code_of(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_user_code(code_dir, spec, result_fd):
    # The runner runs with -I (PYTHONPATH ignored); its own folder holds nanogrid_ai.
    sys.path[:0] = [code_dir, os.path.dirname(os.path.abspath(__file__))]
    sys.argv = [os.path.join(code_dir, "main.py")]
    sys.dont_write_bytecode = True
    handler = spec.get("handler")
    try:
        if spec.get("ai"):  # this run's AI channel (socket path, timeout), for nanogrid_ai
            importlib.import_module("nanogrid_ai").configure(**spec["ai"])
        if handler is None:
            import runpy

            runpy.run_path(sys.argv[0], run_name="__main__")
            return 0
        module = importlib.import_module("main")
        function = getattr(module, handler)
        event = json.load(sys.stdin)
        value = function(event, Context(**spec["context"]))
        if isinstance(value, types.CoroutineType):  # an async handler
            import asyncio

            value = asyncio.run(value)
        if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
            payload = stream_items(value, result_fd)
        else:
            payload = result_payload(value, "return value")
        write_all(result_fd, HEADER.pack(RESULT, len(payload)) + payload)
        return 0
    except SystemExit as exc:
        return exit_code_of(exc)
    except MemoryError as exc:
        print_user_traceback(exc)
        payload = json.dumps({"ok": False, "error": "memory_limit", "message": "MemoryError"}).encode()
        write_all(result_fd, HEADER.pack(RESULT, len(payload)) + payload)
        return 1
    except BaseException as exc:  # noqa: B036 - everything the user raises is reported, then exit 1
        print_user_traceback(exc)
        return 1


def result_payload(value, what):
    try:
        return json.dumps({"ok": True, "value": value}, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        return json.dumps({"ok": False, "error": "invalid_result",
                           "message": f"the handler's {what} is not JSON-serialisable: {exc}"}).encode()


def stream_items(generator, result_fd):
    """Send each item a streaming handler yields as it comes; the result records how many."""
    if isinstance(generator, types.AsyncGeneratorType):
        generator = _async_items(generator)
    count = 0
    for item in generator:
        try:
            payload = json.dumps(item, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            return json.dumps({"ok": False, "error": "invalid_result",
                               "message": f"item {count} the handler yielded is not JSON-serialisable: {exc}"}).encode()
        write_all(result_fd, HEADER.pack(ITEM, len(payload)) + payload)
        count += 1
    return json.dumps({"ok": True, "streamed": count}).encode()


def _async_items(generator):
    """An async generator's items, each as soon as it yields, from a loop of this process's own."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(generator.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def child(code_dir, spec, input_fd, pipes, out_fd):
    nonce[:] = bytes(NONCE_SIZE)  # before anything else: the run's own processes never know it
    install_filter()
    # The user code gets an ordinary process: readable /proc/self, core-dump rules as usual.
    prctl(PR_SET_DUMPABLE, 1)
    (r_out, w_out), (r_err, w_err), (r_res, w_res) = pipes
    for fd in (r_out, r_err, r_res, out_fd):
        os.close(fd)
    os.dup2(w_out, 1)
    os.dup2(w_err, 2)
    os.close(w_out)
    os.close(w_err)
    # Unbuffered: what the user code prints reaches the worker (and anyone watching) as it prints it.
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=old.encoding,
                                            errors=old.errors, line_buffering=True, write_through=True))
    # The input replaces the runner's stdin, so the user code has no way to the request stream.
    os.dup2(input_fd, 0)
    os.close(input_fd)
    os.chdir(code_dir)
    # Python ignores SIGXFSZ and raises EFBIG instead; the default action lets the worker see
    # the file size limit as what it is.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    os.environ.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    code = run_user_code(code_dir, spec, w_res)
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
                stat_line = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ")" are safe.
        fields = stat_line[stat_line.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(name))
    return found


def kill_orphans():
    """Kill what the user code left running; True once none is left (they were reparented here)."""
    deadline = time.monotonic() + ORPHAN_KILL_S
    while True:
        reap(None)
        pids = children()
        if not pids:
            return True
        if time.monotonic() >= deadline:
            return False
        for orphan in pids:
            try:
                os.kill(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def remove_tree(path):
    """Delete path, whatever the run did to it (modes included); True if it is gone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
    try:
        if info.st_mode & 0o700 != 0o700:
            os.chmod(path, 0o700)  # a run may have taken its own directory's permissions away
        names = os.listdir(path)
    except OSError:
        return False
    ok = True
    for name in names:
        ok = remove_tree(os.path.join(path, name)) and ok
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return ok


def scrub(directories):
    """Empty each directory (it stays); True if everything in them could be removed."""
    ok = True
    for top in directories:
        try:
            names = os.listdir(top)
        except FileNotFoundError:
            continue
        except OSError:
            ok = False
            continue
        for name in names:
            try:
                ok = remove_tree(os.path.join(top, name)) and ok
            except RecursionError:  # nested deeper than the interpreter recurses
                ok = False
    return ok


def scrub_ipc():
    """Remove the System V IPC objects of this (private) IPC namespace; True if none is left."""
    tables = (("/proc/sysvipc/shm", 1, "shmctl"), ("/proc/sysvipc/msg", 1, "msgctl"),
              ("/proc/sysvipc/sem", 1, "semctl"))
    found = []
    for path, column, call in tables:
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        found += [(call, int(line.split()[column])) for line in lines if line.split()]
    if not found:
        return True
    if libc() is None:
        return False
    for call, ident in found:
        if call == "semctl":
            libc().semctl(ident, 0, IPC_RMID)
        else:
            getattr(libc(), call)(ident, IPC_RMID, None)
    return all(not open(path).read().splitlines()[1:] for path, _, _ in tables if os.path.exists(path))


def oom_kills():
    """The sandbox's cgroup oom_kill counter, or None when it cannot be read (no cgroup of its own)."""
    for path in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


class ResultRecords:
    """The child's result pipe: items forwarded as they come, the result kept; the user code can
    write anything there, so whatever is not a record of the two kinds, or is too large, ends it."""

    def __init__(self, out_fd):
        self.out_fd = out_fd
        self.buffer = bytearray()
        self.size = 0  # item and result bytes so far, against RESULT_CAP
        self.result = None
        self.broken = None  # why the records stopped making sense

    def feed(self, data):
        if self.broken is not None:
            return
        self.buffer += data
        while len(self.buffer) >= HEADER.size and self.broken is None:
            kind, length = HEADER.unpack_from(self.buffer)
            if kind not in (ITEM, RESULT) or self.result is not None:
                self.broken = "the handler's result channel was written to by something else"
            elif self.size + length > RESULT_CAP:
                self.broken = f"the handler's return value is over {RESULT_CAP} bytes of JSON"
            elif len(self.buffer) >= HEADER.size + length:
                payload = bytes(self.buffer[HEADER.size:HEADER.size + length])
                del self.buffer[:HEADER.size + length]
                self.size += length
                if kind == ITEM:
                    frame(self.out_fd, ITEM, payload)
                else:
                    self.result = payload
                continue
            return
        if self.broken is not None:
            self.buffer.clear()

    def final(self):
        """The result record for the worker (None in script mode)."""
        if self.broken is None and self.buffer:
            self.broken = "the handler's result channel ended in the middle of a record"
        if self.broken is not None:
            return json.dumps({"ok": False, "error": "invalid_result", "message": self.broken}).encode()
        return self.result


def relay(pid, pipes, out_fd, control_fd):
    """Relay the run's output until it ends; Stop if stdin moves meanwhile (the worker is gone)."""
    readers = {pipes[0][0]: b"o", pipes[1][0]: b"e", pipes[2][0]: b"r"}
    records = ResultRecords(out_fd)
    status = usage = None
    exited_at = None
    while readers:
        ready, _, _ = select.select([*readers, control_fd], [], [], 0.05 if status is not None else 0.5)
        if control_fd in ready:
            # The worker writes nothing during a run: this is the end of its stream (or a broken one).
            raise Stop("stdin ended during a run" if not os.read(control_fd, 1) else "unexpected input during a run")
        for fd in ready:
            data = os.read(fd, CHUNK)
            if not data:
                del readers[fd]
                os.close(fd)
            elif readers[fd] == b"r":
                records.feed(data)
            else:
                frame(out_fd, readers[fd], data)
        if status is None:
            reaped = reap(pid)
            if reaped is not None:
                (status, usage), exited_at = reaped, time.monotonic()
        # A double-forked orphan can hold the pipes open forever: stop shortly after the child ends.
        elif not ready or time.monotonic() - exited_at > DRAIN_S * 5:
            break
    for fd in readers:
        os.close(fd)
    if status is None:
        _, status, usage = os.wait4(pid, 0)
    return status, usage, records.final()


def run_once(code_dir, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable=True):
    """One run, start to exit frame; returns whether the sandbox is clean for the next run.

    ipc_verifiable is False where IPC objects can be neither listed nor refused (no listing and no
    seccomp filter): then no run is clean, and the sandbox serves only one."""
    spec = request["spec"]
    oom_before = oom_kills()
    input_fd = input_descriptor(request.get("input") or "null")
    pipes = [os.pipe(), os.pipe(), os.pipe()]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(code_dir, spec, input_fd, pipes, out_fd)
    os.close(input_fd)
    for _, w in pipes:
        os.close(w)
    try:
        status, usage, result = relay(pid, pipes, out_fd, control_fd)
    except Stop:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_orphans()
        raise
    clean = kill_orphans()
    clean = scrub(scrub_dirs) and clean
    if ipc:
        clean = scrub_ipc() and ipc_verifiable and clean
    oom_after = oom_kills()
    # The user process's own accounting (its waited-for descendants included): per run, where
    # the container's cgroup figures would span every run the container served.
    exit_info = {"exit_code": None, "signal": None, "memory_error": False,
                 "max_rss_kb": usage.ru_maxrss, "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
                 "oom_kill": None if oom_before is None or oom_after is None else oom_after > oom_before,
                 "clean": clean, "nonce": nonce.hex()}
    if os.WIFSIGNALED(status):
        exit_info["signal"] = os.WTERMSIG(status)
    else:
        exit_info["exit_code"] = os.WEXITSTATUS(status)
    if result:
        try:  # the user code can write anything into its result pipe
            exit_info["memory_error"] = json.loads(result).get("error") == "memory_limit"
        except (ValueError, RecursionError, AttributeError):
            pass
        frame(out_fd, b"r", result)
    frame(out_fd, b"x", json.dumps(exit_info).encode())
    return clean


def parse_arguments(argv):
    code_dir, scrub_dirs, ipc = None, [], False
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--scrub":
            scrub_dirs.append(next(arguments))
        elif argument == "--scrub-ipc":
            ipc = True
        elif code_dir is None:
            code_dir = argument
        else:
            raise SystemExit(f"runner: unexpected argument {argument!r}")
    if code_dir is None:
        raise SystemExit("usage: runner.py CODE_DIR [--scrub DIR]... [--scrub-ipc]")
    return code_dir, scrub_dirs, ipc


def main():
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    code_dir, scrub_dirs, ipc = parse_arguments(sys.argv[1:])
    unlisted = []  # the IPC calls whose objects this runner could not find again to remove them
    if ipc:
        if os.path.isdir("/dev/mqueue"):
            scrub_dirs.append("/dev/mqueue")  # POSIX message queues: files of the namespace's mqueue fs
        else:
            unlisted.append("mq_open")  # gVisor: queues exist, but no mqueue fs lists them
        if not os.path.isdir("/proc/sysvipc"):
            unlisted += ["shmget", "semget", "msgget"]  # gVisor: no /proc/sysvipc
    try:
        _filter.append(seccomp_filter(unlisted))
    except (ImportError, OSError):
        _filter.append(None)
    ipc_verifiable = not unlisted or filter_works()
    out_fd = os.dup(1)
    control_fd = 0
    # Everything loaded so far stays out of the collector's way: a collection in a run's process
    # would otherwise touch (and so copy) every object inherited from this one.
    gc.freeze()
    while True:
        try:
            request = read_request(control_fd)
        except ProtocolError as exc:
            print(f"runner: {exc}", file=sys.stderr, flush=True)
            return 2
        if request is None:
            return 0
        try:
            clean = run_once(code_dir, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable)
        except Stop as exc:
            print(f"runner: {exc}; the run was killed", file=sys.stderr, flush=True)
            return 3
        if not clean:
            print("runner: the run left something that could not be removed; not serving again",
                  file=sys.stderr, flush=True)
            return 4


if __name__ == "__main__":
    sys.exit(main())
