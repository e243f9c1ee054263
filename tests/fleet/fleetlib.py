"""Shared pieces of the fleet tests: parsed Terraform, the Ansible tree, the lint tools."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "deploy" / "terraform"
ANSIBLE = REPO / "ansible"
TRACES = REPO / "deploy" / "traces"
PACKAGE = REPO / "nanogrid"


def find_tool(name: str, env_var: str) -> str:
    """Path of a command-line tool; fails (never skips) when it is not installed.

    Looked up in $env_var, next to the running Python, then on PATH. checkov pins an old boto3,
    so it usually lives in a virtualenv of its own whose bin directory is put on PATH.
    """
    explicit = os.environ.get(env_var)
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"{env_var}={explicit} is not an executable")
        return explicit
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: the fleet tests need it (see deploy/terraform/README.md)")
    return found


def tool_env() -> dict:
    """Environment for the tools: the running Python's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("ANSIBLE_LOCAL_TEMP", str(Path(tempfile.gettempdir()) / "nanogrid-ansible-tmp"))
    return env


# --- Terraform ----------------------------------------------------------------------------------


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def normalize(node):
    """python-hcl2 8 keeps the quotes of string literals and marks blocks; drop both."""
    if isinstance(node, dict):
        return {_unquote(k): normalize(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [normalize(v) for v in node]
    return _unquote(node)


class Module:
    """The parsed .tf files of one directory, merged."""

    def __init__(self, path: Path):
        import hcl2

        self.path = path
        self.files: dict[str, dict] = {}
        self.resources: dict[str, dict[str, dict]] = {}
        self.data: dict[str, dict[str, dict]] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.modules: dict[str, dict] = {}
        self.terraform: list[dict] = []
        for tf in sorted(path.glob("*.tf")):
            with tf.open() as fh:
                parsed = normalize(hcl2.load(fh))
            self.files[tf.name] = parsed
            for block in parsed.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources.setdefault(rtype, {})[name] = body
            for block in parsed.get("data", []):
                for dtype, named in block.items():
                    for name, body in named.items():
                        self.data.setdefault(dtype, {})[name] = body
            for block in parsed.get("variable", []):
                self.variables.update(block)
            for block in parsed.get("output", []):
                self.outputs.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)
            for block in parsed.get("module", []):
                self.modules.update(block)
            self.terraform.extend(parsed.get("terraform", []))

    def resource(self, rtype: str, name: str) -> dict:
        try:
            return self.resources[rtype][name]
        except KeyError:
            raise AssertionError(f"{self.path.name}: no resource {rtype}.{name}") from None

    def default(self, variable: str):
        return self.variables[variable].get("default")


@lru_cache(maxsize=None)
def tf_module(relative: str = "") -> Module:
    return Module(TERRAFORM / relative if relative else TERRAFORM)


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def root_default(variable: str):
    return tf_module().default(variable)


def single(value):
    """hcl2 represents a nested block as a list of one dict."""
    if isinstance(value, list):
        assert len(value) == 1, value
        return value[0]
    return value


