"""The in-sandbox runner: runs function invocations, one at a time, and reports each as frames.

Usage: python3 -I -B runner.py CODE_DIR [--lib DIR]... [--scrub DIR]... [--scrub-ipc] [--secrets DIR]

CODE_DIR holds one function version's bundle (main.py, ...), read-only and shared by every run
of that version; each --lib DIR (a layer: installed third-party packages, a pip --target tree,
read-only) goes on the user code's sys.path right after CODE_DIR and before the runtime's own
folder, in every run. Requests arrive on stdin as frames with the same header as the output frames:
type b"q", a 4-byte big-endian length, then JSON {"spec": {"handler", "env", "context", "ai",
"init", "init_timeout_s", "secrets"}, "input": "<the event as JSON text>"}, followed by a frame of type b"n" holding the run's nonce
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
from the same state (no module cache, no globals, no environment changes of a run carry over),
its files are deleted and its processes killed. What is reused is the container and this
interpreter, whose start is what a run no longer pays for, and in handler mode main.py's import
(Init once, below). If the clean-up cannot finish (a process that will not
die, a file that cannot be removed), the exit frame says so ("clean": false) and the runner
exits, so the worker never hands the sandbox to another run. EOF on stdin during a run (the
worker is gone) kills the run and ends the runner.

The runner makes itself non-dumpable, so the user code (same uid) can neither ptrace it nor open
its file descriptors through /proc to read requests or forge frames; in a container it is PID 1
(no init in between holding the same pipes), which also makes it immune to the user code's
signals (on Linux: gVisor delivers them, so there a function can kill its own runner, which ends
its own run and container). It is a child subreaper, so processes the user code double-forks into
the background stay its descendants.

Init once, fork per run. In handler mode ("handler" not null) with "init": "once" (the default;
"per_run" keeps the import in every run's own process, and script mode always does), main.py is
imported ONCE per runner, in a zygote, and every run is forked from the zygote, so module-level
work (imports, loading a model) is paid by the sandbox's first run only and every run starts from
the same post-init state. The runner forks the zygote when it starts, before it reads any
request, so no request, input or nonce was ever in its memory (which it shares copy-on-write
with the runner: a zygote costs the sandbox little memory); one started later, to replace a
zygote found dead, is a fresh interpreter exec'd from a fork (`runner.py --zygote FD`) for the
same reason. It is named nanogrid-zygote (/proc/<pid>/comm), stays non-dumpable (is not a
subreaper), installs the seccomp filter before any user code, its stdin and stdout are
/dev/null, and its only way to the runner is a socketpair (SOCK_SEQPACKET), which no run's
process inherits. A runner whose first request does not initialise once ends its zygote. Per run the runner sends it the run's own descriptors with
SCM_RIGHTS (the spec and the input in memfds; the stdout, stderr and result pipes), never a
nonce. The zygote forks the run twice over (its first parent exits at once), so the run is
reparented to this subreaper before it starts, and reports its pid; the run makes itself
dumpable like any run. Its parent is thus the runner, as for a run forked from it (PID 1 of a
container, deaf to the run's signals), and its exit status and rusage are the runner's own wait4
(the run's own accounting; the first run's adds what the zygote says the init used). The runner
relays, cleans and writes the exit frame as for any run, and stays the only writer of frames: the
zygote, the user's own code, can at most lie about its own init (its accounting, or failing),
and anything from it that is not a report in order retires the sandbox. The
zygote stays non-dumpable: a run (same uid) can neither ptrace it nor open its memory or its
descriptors through /proc. The clean-up after each run kills everything but the zygote,
including any child of the zygote (what its init left running, or forked since); processes a run
leaves are reparented to this subreaper.
- The init's output goes to the sandbox's first run (its job shows it); its environment is the
  first run's "env" and its AI channel the first run's "ai" (each run then applies its own).
- Before the first run, the runner kills what the init left running and empties the --scrub
  directories and the IPC namespace: files the init wrote to /tmp or /dev/shm are gone, so every
  run sees the same filesystem (keep what the import needs in memory, or in the code or a layer).
- A failed init (an exception or SystemExit at import, the zygote's death, or an import that
  takes longer than "init_timeout_s", which this runner stops) ends that run with "init_error"
  in its exit frame ("exception", "exit", "died", "timeout"), the user's traceback (user frames
  only) on its stderr; the runner then retires ("retire": true in the exit frame, and it exits),
  so the sandbox is not reused. So it does when a run killed its zygote or the zygote broke its
  protocol. A zygote that died between runs (its own threads) is replaced by a new one if the
  runner reaped it before the next run; if the next run finds it gone, that run ends without an
  exit status (a sandbox error) and the sandbox retires.
- Threads started at import do not survive the fork: a run has only its main thread (libraries
  that start worker threads lazily, or re-create them in an at-fork hook, work). They do keep
  running in the zygote itself, between and during runs, where they can see what the zygote
  sees (the writable places, each run's descriptors for the moment they pass through it).
  Descriptors the import opened (files, sockets) are inherited by every run and share their file
  offsets: reopen per run what a run reads or writes.

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
import socket
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


def setup_interpreter(code_dir, libs):
    """The user code's import path: its code, then its layers (--lib), then the runtime's own folder
    (which holds nanogrid_ai). The runner runs with -I, so PYTHONPATH is ignored."""
    sys.path[:0] = [code_dir, *libs, os.path.dirname(os.path.abspath(__file__))]
    sys.argv = [os.path.join(code_dir, "main.py")]
    sys.dont_write_bytecode = True


def run_user_code(code_dir, libs, spec, result_fd, module=None):
    """Run the request in this process; its exit code. module: main, already imported (by the
    zygote, before this process was forked from it), else it is imported here."""
    if module is None:
        setup_interpreter(code_dir, libs)
    handler = spec.get("handler")
    try:
        if spec.get("ai"):  # this run's AI channel (socket path, timeout), for nanogrid_ai
            importlib.import_module("nanogrid_ai").configure(**spec["ai"])
        if handler is None:
            import runpy

            runpy.run_path(sys.argv[0], run_name="__main__")
            return 0
        if module is None:
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


def output_to(w_out, w_err):
    """Make w_out and w_err this process's stdout and stderr (fds 1 and 2)."""
    os.dup2(w_out, 1)
    os.dup2(w_err, 2)
    os.close(w_out)
    os.close(w_err)


def unbuffered_streams():
    # Unbuffered: what the user code prints reaches the worker (and anyone watching) as it prints it.
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=old.encoding,
                                            errors=old.errors, line_buffering=True, write_through=True))


def flush_and_exit(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not change the exit code
            pass
    os._exit(code & 0xFF if code >= 0 else 1)


def user_env(spec):
    return {str(k): str(v) for k, v in (spec.get("env") or {}).items()}


def child(code_dir, libs, spec, input_fd, pipes, closed):
    nonce[:] = bytes(NONCE_SIZE)  # before anything else: the run's own processes never know it
    install_filter()
    # The user code gets an ordinary process: readable /proc/self, core-dump rules as usual.
    prctl(PR_SET_DUMPABLE, 1)
    (r_out, w_out), (r_err, w_err), (r_res, w_res) = pipes
    for fd in (r_out, r_err, r_res, *closed):  # the runner's output, the zygote's channel
        os.close(fd)
    output_to(w_out, w_err)
    unbuffered_streams()
    # The input replaces the runner's stdin, so the user code has no way to the request stream.
    os.dup2(input_fd, 0)
    os.close(input_fd)
    os.chdir(code_dir)
    # Python ignores SIGXFSZ and raises EFBIG instead; the default action lets the worker see
    # the file size limit as what it is.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    os.environ.update(user_env(spec))
    flush_and_exit(run_user_code(code_dir, libs, spec, w_res))


def reap(pid):
    """Reap every exited child (orphans reparented to this subreaper included); pid's (status, rusage) or None.

    The zygote's own end is kept in its Zygote (its `ended`), whoever reaped it."""
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
        elif _zygote and done == _zygote[0].pid:
            _zygote[0].ended = (status, usage)
        else:
            _reaped[done] = (status, usage)  # a zygote run's, perhaps, before its pid was reported


def children(parent=None):
    """The live children of parent (default: this process), from /proc (the task's children file
    needs a kernel option). Zombies are left out: killed already, they wait for their parent."""
    me = os.getpid() if parent is None else parent
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
        if len(fields) > 1 and int(fields[1]) == me and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def kill_orphans(keep=None):
    """Kill what the user code left running; True once none is left (they were reparented here).

    keep: the zygote's pid; it stays, but every child of its own (processes its init left running,
    or forked since) is killed too."""
    deadline = time.monotonic() + ORPHAN_KILL_S
    while True:
        reap(None)
        pids = [pid for pid in children() if pid != keep]
        if keep is not None:
            pids += children(keep)
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


def write_secrets(directory, secrets):
    """The run's secrets as files of the secrets directory, readable by the run's user only (0400)."""
    if not secrets:
        return
    if directory is None:
        raise ProtocolError("the request has secrets but the runner was started without --secrets DIR")
    for name, value in secrets.items():
        if not isinstance(name, str) or not name.isidentifier() or not isinstance(value, str):
            raise ProtocolError("secrets must be {NAME: value} with names like ENV variables")
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            write_all(fd, value.encode("utf-8", "surrogatepass"))
        finally:
            os.close(fd)


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


def forward(ready, readers, records, out_fd, control_fd):
    """Relay what select found ready: the run's output as frames, its result pipe's records; a
    reader that ended is closed and dropped. The worker writes nothing during a run, so input on
    the control descriptor is the end of its stream (or a broken one): Stop."""
    if control_fd in ready:
        raise Stop("stdin ended during a run" if not os.read(control_fd, 1) else "unexpected input during a run")
    for fd in ready:
        if fd not in readers:  # the zygote's channel, which its caller reads
            continue
        data = os.read(fd, CHUNK)
        if not data:
            del readers[fd]
            os.close(fd)
        elif readers[fd] == b"r":
            records.feed(data)
        else:
            frame(out_fd, readers[fd], data)


def relay(pid, pipes, out_fd, control_fd):
    """Relay the run's output until it ends; Stop if stdin moves meanwhile (the worker is gone)."""
    readers = {pipes[0][0]: b"o", pipes[1][0]: b"e", pipes[2][0]: b"r"}
    records = ResultRecords(out_fd)
    status = usage = None
    exited_at = None
    while readers:
        ready, _, _ = select.select([*readers, control_fd], [], [], 0.05 if status is not None else 0.5)
        forward(ready, readers, records, out_fd, control_fd)
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


def exit_report(status, usage, clean, oom_before, **extra):
    """The exit frame's payload (nonce included). usage: (utime, stime, maxrss) of the user process."""
    oom_after = oom_kills()
    utime, stime, maxrss = usage
    # The user process's own accounting (its waited-for descendants included): per run, where
    # the container's cgroup figures would span every run the container served.
    exit_info = {"exit_code": None, "signal": None, "memory_error": False,
                 "max_rss_kb": int(maxrss), "cpu_ms": int((utime + stime) * 1000),
                 "oom_kill": None if oom_before is None or oom_after is None else oom_after > oom_before,
                 "clean": clean, **extra, "nonce": nonce.hex()}
    if status is None:
        pass
    elif os.WIFSIGNALED(status):
        exit_info["signal"] = os.WTERMSIG(status)
    else:
        exit_info["exit_code"] = os.WEXITSTATUS(status)
    return exit_info


def send_exit(out_fd, exit_info, result):
    if result:
        try:  # the user code can write anything into its result pipe
            exit_info["memory_error"] = exit_info["memory_error"] or json.loads(result).get("error") == "memory_limit"
        except (ValueError, RecursionError, AttributeError):
            pass
        frame(out_fd, b"r", result)
    frame(out_fd, b"x", json.dumps(exit_info).encode())


def cleaned(scrub_dirs, ipc, ipc_verifiable, keep=None):
    """Kill what is left (but the zygote, keep) and empty the writable places; True if all went."""
    clean = kill_orphans(keep)
    clean = scrub(scrub_dirs) and clean
    if ipc:
        clean = scrub_ipc() and ipc_verifiable and clean
    return clean


def run_once(code_dir, libs, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable=True, zygote_args=()):
    """One run, start to exit frame; returns (clean, retire): whether the sandbox is clean for the
    next run, and whether it must not serve another all the same (its zygote is gone or broken).

    ipc_verifiable is False where IPC objects can be neither listed nor refused (no listing and no
    seccomp filter): then no run is clean, and the sandbox serves only one."""
    spec = request["spec"]
    if spec.get("handler") is not None and spec.get("init", "once") != "per_run":
        return run_in_zygote(code_dir, libs, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable,
                             zygote_args)
    oom_before = oom_kills()
    input_fd = input_descriptor(request.get("input") or "null")
    pipes = [os.pipe(), os.pipe(), os.pipe()]
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(code_dir, libs, spec, input_fd, pipes, [out_fd, *(z.sock.fileno() for z in _zygote)])
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
    keep = _zygote[0].pid if _zygote else None
    clean = cleaned(scrub_dirs, ipc, ipc_verifiable, keep)
    send_exit(out_fd, exit_report(status, (usage.ru_utime, usage.ru_stime, usage.ru_maxrss), clean, oom_before),
              result)
    return clean, False


# -- init once: the zygote ------------------------------------------------------------------------

# The live zygote, if any (at most one): Zygote.
_zygote = []
# What reap() collected of other processes during a zygote run, by pid (emptied per run).
_reaped = {}
ZYGOTE_MESSAGE_CAP = 4096
INIT_ERRORS = ("exception", "exit")


class Zygote:
    """The runner's side of its zygote: the process (a child of the runner) and the channel to it."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock
        self.initialised = False
        self.ended = None  # (status, rusage) once reaped

    def kill(self):
        """Kill the zygote and wait for it; its (status, rusage)."""
        if self.ended is None:  # once reaped, its pid may be another process's
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                _, status, usage = os.wait4(self.pid, 0)
                self.ended = (status, usage)
            except ChildProcessError:
                pass
        self.sock.close()
        if _zygote and _zygote[0] is self:
            _zygote.clear()
        return self.ended


ZYGOTE_NAME = b"nanogrid-zygote"  # its /proc/<pid>/comm (a run forked from it gets the runner's back)
PR_SET_NAME = 15
_runner_name = []


def set_name(name):
    try:
        import ctypes

        libc().prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (AttributeError, ImportError):
        pass


def start_zygote(code_dir, libs, zygote_args, out_fd, fresh=False):
    """A new zygote, with one end of a socketpair. The runner forks its first one when it starts,
    before it has read any request: nothing of a request or nonce is in its memory, which it
    shares (copy-on-write) with the runner. A later one (fresh: the first one is gone) is a fresh
    interpreter exec'd from a fork, running this file in zygote mode, for the same reason."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            nonce[:] = bytes(NONCE_SIZE)
            ours.close()
            os.close(out_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            # Neither the request stream nor the frame stream: stdin and stdout are /dev/null. Its
            # stderr stays the runner's until the zygote's init replaces it (a crash of its own shows).
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            if not fresh:
                code = zygote_main(theirs, code_dir, libs)
                os._exit(code or 0)
            os.set_inheritable(theirs.fileno(), True)
            arguments = [sys.executable, "-I", "-B", os.path.abspath(__file__), "--zygote", str(theirs.fileno()),
                         code_dir, *(f"--lib={lib}" for lib in libs), *zygote_args]
            os.execv(sys.executable, arguments)
        finally:
            os._exit(127)
    theirs.close()
    zygote = Zygote(pid, ours)
    _zygote[:] = [zygote]
    return zygote


def zygote_message(zygote):
    """The zygote's next message (a dict), or None when it is gone or said something that is not one."""
    try:
        data, fds, _, _ = socket.recv_fds(zygote.sock, ZYGOTE_MESSAGE_CAP, 4)
    except OSError:
        return None
    for fd in fds:  # it has nothing to hand over
        os.close(fd)
    if not data:
        return None
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


def number(value, kind=int):
    return value if isinstance(value, kind) and not isinstance(value, bool) and value >= 0 else None


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    fields = stat_line[stat_line.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def run_in_zygote(code_dir, libs, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable, zygote_args):
    """A handler run forked from the zygote (started, and main imported in it, by the first such run)."""
    spec = request["spec"]
    oom_before = oom_kills()
    zygote = _zygote[0] if _zygote else None
    if zygote is not None and zygote.ended is not None:
        zygote.kill()
        zygote = None
    if zygote is None:
        zygote = start_zygote(code_dir, libs, zygote_args, out_fd, fresh=True)
    input_fd = input_descriptor(request.get("input") or "null")
    spec_fd = os.memfd_create("nanogrid-spec", os.MFD_CLOEXEC)
    write_all(spec_fd, json.dumps(spec).encode())
    os.lseek(spec_fd, 0, os.SEEK_SET)
    pipes = [os.pipe(), os.pipe(), os.pipe()]
    # Exactly this run's own descriptors; never its nonce.
    handed = [spec_fd, input_fd, *(w for _, w in pipes)]
    try:
        socket.send_fds(zygote.sock, [b'{"op": "run"}'], handed)
        sent = True
    except OSError:
        sent = False  # the zygote is gone (its own code ended it): the run below reports so
    for fd in handed:
        os.close(fd)
    try:
        outcome = zygote_relay(zygote, sent, pipes, out_fd, control_fd, float(spec.get("init_timeout_s") or 60),
                               scrub_dirs, ipc, ipc_verifiable)
    except Stop:
        zygote.kill()
        kill_orphans()
        raise
    status, usage, result, extra, clean = outcome
    retire = bool(extra.get("init_error") or extra.get("retire"))
    if retire:
        ended = zygote.kill()
        if extra.get("init_error") and ended is not None:
            # The init's process was the zygote itself: how it ended, and what it used.
            status = ended[0] if status is None else status
            usage = usage or (ended[1].ru_utime, ended[1].ru_stime, ended[1].ru_maxrss)
        if extra.get("init_error") == "timeout":
            status = None  # killed by this runner, not by itself
    keep = None if retire else zygote.pid
    clean = cleaned(scrub_dirs, ipc, ipc_verifiable, keep) and clean
    if retire:
        extra["retire"] = True
    send_exit(out_fd, exit_report(status, usage or (0, 0, 0), clean, oom_before, **extra), result)
    return clean, retire


def zygote_relay(zygote, sent, pipes, out_fd, control_fd, init_timeout_s, scrub_dirs, ipc, ipc_verifiable):
    """Relay a zygote run's output until it ends, and follow the zygote's reports: (status, usage,
    result, extra exit-frame fields, clean). The zygote is the user's code: what it says is
    believed only about its own init; the run itself is this runner's child (the zygote hands it
    over), so its exit status and accounting are this runner's own wait4. Anything from the
    zygote that is not a report in order retires the sandbox."""
    readers = {pipes[0][0]: b"o", pipes[1][0]: b"e", pipes[2][0]: b"r"}
    records = ResultRecords(out_fd)
    initialising = not zygote.initialised
    init_deadline = time.monotonic() + init_timeout_s
    init_usage = (0.0, 0.0, 0)
    phase = "init" if initialising else "fork"  # then "run", then "done"
    pid = status = usage = None
    extra, clean = {}, True
    lost = not sent
    ended_at = None
    channel = zygote.sock.fileno()
    _reaped.clear()
    while True:
        if phase == "done":
            ended_at = ended_at or time.monotonic()
            if not readers:
                break
        wait = 0.05 if phase == "done" else 0.5
        if phase == "init":
            wait = max(0.0, min(wait, init_deadline - time.monotonic()))
        watched = [*readers, control_fd] + ([channel] if not lost else [])
        ready, _, _ = select.select(watched, [], [], wait)
        forward(ready, readers, records, out_fd, control_fd)
        if channel in ready:
            message = zygote_message(zygote)
            if message is None:
                lost = True
            elif phase == "init" and message.get("ready") is True:
                zygote.initialised = True
                init_usage = (number(message.get("utime"), float) or 0.0, number(message.get("stime"), float) or 0.0,
                              number(message.get("maxrss")) or 0)
                # Before the first run: whatever the init left running, and left in the writable
                # places, goes (the zygote stays), so every run starts from the same sandbox.
                clean = cleaned(scrub_dirs, ipc, ipc_verifiable, zygote.pid)
                try:
                    zygote.sock.send(b'{"op": "go"}')
                    phase = "fork"
                except OSError:
                    lost = True
            elif phase == "init" and message.get("init_error") in INIT_ERRORS:
                extra["init_error"] = message["init_error"]
                code = number(message.get("exit_code"))
                status = (min(code, 255) << 8) if code is not None else None
                if message.get("memory_error") is True:
                    extra["memory_error_at_init"] = True
                phase = "done"
            elif (phase == "fork" and number(message.get("pid")) and message["pid"] != os.getpid()
                  # handed over: this runner's child, or already reaped here (a quick run)
                  and (message["pid"] in _reaped or parent_of(message["pid"]) == os.getpid())):
                pid, phase = message["pid"], "run"
                if pid in _reaped:
                    (status, raw_usage), phase = _reaped.pop(pid), "done"
                    usage = (raw_usage.ru_utime, raw_usage.ru_stime, raw_usage.ru_maxrss)
            elif phase == "fork" and message.get("no_run") is True:
                status, phase = 1 << 8, "done"  # it could not fork the run (and said why on its stderr)
            else:
                lost = True  # not a report in order: the zygote is not to be trusted with another run
            if lost:
                extra["retire"] = True
        if phase == "init" and time.monotonic() >= init_deadline:
            zygote.kill()
            extra["init_error"] = "timeout"
            phase, lost = "done", True
        # Orphans are reaped as they end, and so is the run: this subreaper's child. Its output
        # ends just before it does (as in relay): then it is waited for.
        reaped = reap(pid)
        if phase == "run" and reaped is None and not readers:
            _, raw_status, raw_usage = os.wait4(pid, 0)
            reaped = (raw_status, raw_usage)
        if phase == "run" and reaped is not None:
            status, raw_usage = reaped
            usage = (raw_usage.ru_utime, raw_usage.ru_stime, raw_usage.ru_maxrss)
            phase = "done"
        if lost and phase in ("init", "fork"):
            extra["retire"] = True
            if phase == "init":
                extra["init_error"] = "died"  # at import: os._exit, a signal, the kernel
            phase = "done"  # before it handed the run over: nothing of the run ran
        if phase == "done" and ended_at is not None and (not ready or time.monotonic() - ended_at > DRAIN_S * 5):
            break  # a double-forked orphan can hold the pipes open forever
    for fd in readers:
        os.close(fd)
    if initialising and extra.get("init_error") is None:
        usage = usage or (0.0, 0.0, 0)
        # The first run pays for the init: its CPU time and memory are that run's too.
        usage = (usage[0] + init_usage[0], usage[1] + init_usage[1], max(usage[2], init_usage[2]))
    if extra.pop("memory_error_at_init", False):
        extra["memory_error"] = True
    return status, usage, records.final(), extra, clean


def exec_zygote_main(channel_fd, code_dir, libs, enosys):
    """A zygote exec'd by the runner (start_zygote, fresh)."""
    prctl(PR_SET_DUMPABLE, 0)  # execve made it dumpable again: no run may ptrace it or open its fds
    # A fresh image: the nonce buffer is all zeros, and the runner never sends a nonce here.
    try:
        _filter.append(seccomp_filter(enosys))
    except (ImportError, OSError):
        _filter.append(None)
    return zygote_main(socket.socket(fileno=channel_fd), code_dir, libs)


def zygote_main(sock, code_dir, libs):
    """The zygote: imports main once (with the first run's output, environment and AI channel),
    then forks each run from that state, hands it over to the runner and reports its pid. It
    stays non-dumpable (the runner's setting, kept across fork; exec_zygote_main sets it again)."""
    if not _runner_name:
        try:
            with open("/proc/self/comm", "rb") as f:
                _runner_name.append(f.read().strip())
        except OSError:
            _runner_name.append(b"python3")
    set_name(ZYGOTE_NAME)
    install_filter()  # before any user code
    devnull = os.open(os.devnull, os.O_RDWR)
    os.chdir(code_dir)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    module, init_s = None, 0.0

    def receive():
        try:
            data, fds, _, _ = socket.recv_fds(sock, ZYGOTE_MESSAGE_CAP, 8)
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)  # the runner is gone
        return json.loads(data), fds

    def send(**message):
        try:
            sock.send(json.dumps(message).encode())
        except OSError:
            os._exit(0)

    def reap_strays():
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    while True:
        message, fds = receive()
        if message.get("op") != "run" or len(fds) != 5:
            os._exit(2)
        spec_fd, input_fd, w_out, w_err, w_res = fds
        with os.fdopen(spec_fd, "rb") as f:
            spec = json.loads(f.read())
        if module is None:
            started = time.monotonic()
            os.dup2(w_out, 1)
            os.dup2(w_err, 2)
            unbuffered_streams()
            os.environ.update(user_env(spec))
            setup_interpreter(code_dir, libs)
            try:
                if spec.get("ai"):
                    importlib.import_module("nanogrid_ai").configure(**spec["ai"])
                module = importlib.import_module("main")
            except SystemExit as exc:
                code = exit_code_of(exc)
                print(f"main.py exited while it was being imported (SystemExit: {exc.code!r})", file=sys.stderr)
                error = {"init_error": "exit", "exit_code": code if 0 < code < 256 else 1}
            except BaseException as exc:  # noqa: B036 - everything the user raises at import is reported
                print_user_traceback(exc)
                error = {"init_error": "exception", "exit_code": 1, "memory_error": isinstance(exc, MemoryError)}
            else:
                error = None
            if error is not None:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:  # noqa: BLE001 - the report matters, not the stream
                        pass
                send(**error)
                os._exit(error["exit_code"])
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            # The zygote keeps no run's output open: each run's child gets its own.
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            init_s = time.monotonic() - started
            gc.freeze()  # what the init made stays out of the collector's way in every run
            import resource

            own = resource.getrusage(resource.RUSAGE_SELF)
            send(ready=True, utime=own.ru_utime, stime=own.ru_stime, maxrss=own.ru_maxrss)
            go, more = receive()
            for fd in more:
                os.close(fd)
            if go.get("op") != "go":
                os._exit(2)
        else:
            init_s = 0.0
        reap_strays()
        # The run is forked twice: its first parent exits at once, so it is reparented to the
        # runner (the subreaper), which waits for it itself. Its parent is then the runner (PID 1
        # of a container, deaf to the run's signals), as for a run forked from the runner, and
        # its exit status and accounting are the runner's own wait4, nothing the zygote says.
        # It waits on `gate` until the zygote has reported its pid (so the runner knows it
        # before it can end) and it has its new parent.
        gate_r, gate_w = os.pipe()
        pid_r, pid_w = os.pipe()
        try:
            middle = os.fork()
        except OSError as exc:
            middle = None
            os.write(w_err, f"cannot start the run: {exc}\n".encode())
        if middle == 0:
            os.close(gate_w)
            os.close(pid_r)
            try:
                pid = os.fork()
            except OSError as exc:
                os.write(w_err, f"cannot start the run: {exc}\n".encode())
                os._exit(1)
            if pid == 0:
                os.close(pid_w)
                while os.read(gate_r, 1):
                    pass
                os.close(gate_r)
                run_forked(sock, devnull, code_dir, libs, spec, module, init_s, input_fd, w_out, w_err, w_res)
            os.write(pid_w, str(pid).encode())
            os._exit(0)
        for fd in (input_fd, w_out, w_err, w_res, gate_r, pid_w):
            os.close(fd)
        if middle is not None:
            os.waitpid(middle, 0)  # gone: the run is the runner's child now
        handed = os.read(pid_r, 32)
        os.close(pid_r)
        send(pid=int(handed)) if handed else send(no_run=True)
        os.close(gate_w)  # the run may start


def run_forked(sock, devnull, code_dir, libs, spec, module, init_s, input_fd, w_out, w_err, w_res):
    """A run's process, forked from the zygote: the state right after main's import, its own
    descriptors, environment, context and AI channel; no way to the zygote's channel."""
    sock.close()
    os.close(devnull)
    set_name(_runner_name[0])
    prctl(PR_SET_DUMPABLE, 1)  # an ordinary process, as a run forked from the runner
    output_to(w_out, w_err)
    os.dup2(input_fd, 0)
    os.close(input_fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=sys.stdin.encoding,
                                 errors=sys.stdin.errors)
    os.environ.update(user_env(spec))
    context = spec.get("context")
    if init_s and isinstance(context, dict) and isinstance(context.get("deadline"), (int, float)):
        context["deadline"] += init_s  # the init was not part of the run's own time
    flush_and_exit(run_user_code(code_dir, libs, spec, w_res, module=module))


def parse_arguments(argv):
    code_dir, scrub_dirs, ipc, libs, zygote_fd, enosys, secrets_dir = None, [], False, [], None, [], None
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--scrub":
            scrub_dirs.append(next(arguments))
        elif argument == "--scrub-ipc":
            ipc = True
        elif argument == "--lib":
            libs.append(next(arguments))
        elif argument.startswith("--lib="):
            libs.append(argument.removeprefix("--lib="))
        elif argument == "--secrets":
            secrets_dir = next(arguments)
        elif argument == "--zygote":
            zygote_fd = int(next(arguments))
        elif argument.startswith("--enosys="):
            enosys = [name for name in argument.removeprefix("--enosys=").split(",") if name]
        elif code_dir is None:
            code_dir = argument
        else:
            raise SystemExit(f"runner: unexpected argument {argument!r}")
    if code_dir is None:
        raise SystemExit("usage: runner.py CODE_DIR [--lib DIR]... [--scrub DIR]... [--scrub-ipc] [--secrets DIR]")
    return code_dir, scrub_dirs, ipc, libs, zygote_fd, enosys, secrets_dir


def main():
    prctl(PR_SET_DUMPABLE, 0)
    code_dir, scrub_dirs, ipc, libs, zygote_fd, enosys, secrets_dir = parse_arguments(sys.argv[1:])
    if zygote_fd is not None:
        return exec_zygote_main(zygote_fd, code_dir, libs, enosys)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
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
    zygote_args = [f"--enosys={','.join(unlisted)}"]
    out_fd = os.dup(1)
    control_fd = 0
    # Everything loaded so far stays out of the collector's way: a collection in a run's process
    # would otherwise touch (and so copy) every object inherited from this one.
    gc.freeze()
    # The zygote, before any request is read (see start_zygote); it imports main.py when the first
    # handler run that initialises once comes, and goes when the first run does not.
    start_zygote(code_dir, libs, zygote_args, out_fd)
    first = True
    while True:
        try:
            request = read_request(control_fd)
        except ProtocolError as exc:
            print(f"runner: {exc}", file=sys.stderr, flush=True)
            return 2
        if request is None:
            return 0
        spec = request["spec"]
        # The run's secrets become files before it starts and are gone before the next request
        # is read; the zygote, which gets the spec, never sees them in it.
        secrets = spec.pop("secrets", None) or {}
        try:
            write_secrets(secrets_dir, secrets)
        except (ProtocolError, OSError) as exc:
            print(f"runner: cannot hand the run its secrets: {exc}", file=sys.stderr, flush=True)
            return 2
        if first and _zygote and (spec.get("handler") is None or spec.get("init", "once") == "per_run"):
            _zygote[0].kill()  # a sandbox serves one function version, in one mode: no zygote needed
        first = False
        try:
            clean, retire = run_once(code_dir, libs, request, out_fd, control_fd, scrub_dirs, ipc, ipc_verifiable,
                                     zygote_args)
        except Stop as exc:
            print(f"runner: {exc}; the run was killed", file=sys.stderr, flush=True)
            return 3
        if secrets_dir is not None:
            clean = scrub([secrets_dir]) and clean
        if not clean:
            print("runner: the run left something that could not be removed; not serving again",
                  file=sys.stderr, flush=True)
            return 4
        if retire:
            print("runner: the function's init failed, or its zygote is gone or broke the protocol; not serving "
                  "again", file=sys.stderr, flush=True)
            return 5


if __name__ == "__main__":
    sys.exit(main())
