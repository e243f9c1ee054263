"""The installer adapter: pip, in a subprocess, installing wheels only for the sandbox's runtime.

Installing a wheel runs no code of the package (it is unpacked, not built), so a build on the
host is safe with `--only-binary=:all:`; `--platform`/`--python-version`/`--implementation`/
`--abi` make pip choose the wheels the runtime image loads, whatever the host runs. pip sees only
the options made here from Settings: its configuration files and the host's PIP_* variables are
left out (PIP_CONFIG_FILE=/dev/null and a minimal environment), so a build is the same on every
host and the index an operator configured is the only one used. Index URLs may hold credentials:
they are passed in pip's environment (PIP_INDEX_URL, ...), never in its arguments (visible to
every user of the host in /proc), and removed from everything pip prints before anyone sees it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nanogrid.config import Settings

PROGRESS_OFF = ("--progress-bar", "off")
NO_MATCH = re.compile(r"Could not find a version that satisfies the requirement (\S+) \(from versions: none\)")


@dataclass(frozen=True)
class Target:
    """The interpreter and platforms the wheels must fit."""

    python_version: str
    implementation: str
    abi: str
    platforms: Sequence[str]

    def options(self) -> list[str]:
        options = ["--only-binary=:all:", "--python-version", self.python_version,
                   "--implementation", self.implementation, "--abi", self.abi]
        for platform in self.platforms:
            options += ["--platform", platform]
        return options


@dataclass
class Installed:
    ok: bool
    log: str
    timed_out: bool = False
    # The requirement pip found no wheel for at all ("from versions: none"), if that is why it failed.
    no_match: str | None = None


class Pip:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.secrets = [url for url in (settings.pip_index_url, settings.pip_extra_index_url) if "@" in url]

    def environment(self, find_links: Sequence[Path] = ()) -> dict[str, str]:
        """pip's whole environment on the host: the index settings and nothing of the host's pip."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
               "LANG": "C.UTF-8", **self.index_environment()}
        links = " ".join([*(str(path) for path in find_links), *filter(None, [self.settings.pip_find_links])])
        if links:
            env["PIP_FIND_LINKS"] = links
        if self.settings.pip_cert:
            env["PIP_CERT"] = self.settings.pip_cert
        return env

    def index_environment(self) -> dict[str, str]:
        """The options that choose the index, as pip's variables (a source build's container gets these)."""
        env = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
               "PIP_NO_CACHE_DIR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        s = self.settings
        if s.pip_no_index:
            env["PIP_NO_INDEX"] = "1"
        if s.pip_index_url:
            env["PIP_INDEX_URL"] = s.pip_index_url
        if s.pip_extra_index_url:
            env["PIP_EXTRA_INDEX_URL"] = s.pip_extra_index_url
        if s.pip_trusted_host:
            env["PIP_TRUSTED_HOST"] = s.pip_trusted_host
        return env

    def install(self, requirements_file: Path, target_dir: Path, target: Target, timeout_s: float,
                find_links: Sequence[Path] = ()) -> Installed:
        """Wheels only, for target, into target_dir; find_links: folders of wheels to look in too."""
        command = [sys.executable, "-m", "pip", "install", "--no-compile", "--no-warn-script-location",
                   *PROGRESS_OFF, "--target", str(target_dir), *target.options(), "-r", str(requirements_file)]
        code, log, timed_out = self._run(command, timeout_s, self.environment(find_links))
        match = NO_MATCH.search(log)
        return Installed(code == 0 and not timed_out, log, timed_out, match.group(1) if match else None)

    def published(self, requirement: str, timeout_s: float = 60) -> bool:
        """Whether the index has any release of the requirement's project, in any format (a
        project whose releases are all source distributions has some, but no wheel)."""
        name = re.split(r"[\s<>=!~;\[(@]", requirement, maxsplit=1)[0]
        code, log, _ = self._run([sys.executable, "-m", "pip", "index", "versions", name], timeout_s,
                                 self.environment())
        return code == 0 and "Available versions:" in log

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _redacted(secret))
            # pip prints an index's URL with the password as ****, the user name as it is.
            user = secret.split("://", 1)[-1].split("@", 1)[0].split(":", 1)[0]
            if user:
                text = text.replace(f"{user}:****@", "****@").replace(f"{user}@", "****@")
        return text

    def _run(self, command: list[str], timeout_s: float, env: dict[str, str]) -> tuple[int | None, str, bool]:
        try:
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode("utf-8", "replace")
            return None, self.redact(output + f"\nthe build took longer than {timeout_s:g} s and was stopped\n"), True
        return done.returncode, self.redact(done.stdout.decode("utf-8", "replace")), False


def package_dir() -> Path:
    """The folder of the pip package this interpreter runs (mounted into a source build's container)."""
    spec = importlib.util.find_spec("pip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip is not installed for this interpreter")
    return Path(spec.submodule_search_locations[0])


def _redacted(url: str) -> str:
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://****@{rest.split('@', 1)[1]}" if scheme else f"****@{rest.split('@', 1)[1]}"
