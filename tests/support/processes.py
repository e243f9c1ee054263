"""Commands run the way an operator runs them: each in its own session, its output in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 60


def children(parent: int) -> list[int]:
    """The processes whose parent is parent (whichever of its threads started them), in pid order."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue  # it has just exited
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == parent:
                found.append(int(name))
    return sorted(found)


def command_line(pid: int) -> str:
    """The process's command line, its arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Process:
    """One command in a session of its own, so that it and everything it starts (pool processes,
    gunicorn workers) can be signalled or killed together. Started by Processes.start."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO):
        self.name = name
        self.log_path = log_path
        # Appended to, so a process restarted under the same name keeps its predecessor's lines;
        # log() reads from where this one started.
        self._log = open(log_path, "ab")
        self._log_start = self._log.tell()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything this process has written so far."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ({self.log_path}):\n{self.log()[-chars:]}"

    def wait_for(self, text: str, timeout_s: float = 90) -> None:
        """Return once the process has logged text; fail at once if it exits first."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if not self.alive():
                pytest.fail(f"{self.name} exited with {self.popen.returncode} before logging {text!r}\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not log {text!r} within {timeout_s:g} s\n{self.tail()}")
            time.sleep(0.1)

    def environ(self) -> dict[str, str]:
        """The environment the process runs with now (`nanogrid api|worker` exec gunicorn|celery)."""
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)

    def send(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Ask it to stop with sig; its exit status (see wait_stopped)."""
        self.send(sig)
        return self.wait_stopped(timeout_s)

    def wait_stopped(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Its exit status once it has exited; fails when that takes longer than timeout_s (its
        whole session is killed first, so nothing outlives the test)."""
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not exit within {timeout_s:g} s\n{self.tail()}")
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """A crash: SIGKILL to the process and every process of its session at once, nothing cleaned up."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole session has already exited
        self.popen.wait()
        self._log.close()


class Processes:
    """Starts every process a test runs, and kills whatever is still running when the session ends.

    Tests reach it only through the `processes` fixture, which is how their `processes` marker is
    derived (support.needs)."""

    def __init__(self):
        self.started: list[Process] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO) -> Process:
        process = Process(name, argv, env, log_dir / f"{name}.log", cwd)
        self.started.append(process)
        return process

    def kill_leftovers(self) -> None:
        for process in self.started:
            if process.alive():
                process.kill()
