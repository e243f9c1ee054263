"""The janitor's sweep of a host's sandbox state folder (nanogrid/sandbox/janitor.py): the AI and
stem-cell code folders of worker processes that are gone are removed, a live process's stay."""

from __future__ import annotations

import os
import subprocess
import sys

from nanogrid.sandbox.janitor import ContainerJanitor


def test_folders_of_gone_processes_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    folders = {name: tmp_path / kind / name for kind, name in
               (("ai", f"{gone}-ai"), ("stem", f"{gone}-stem"), ("stem", f"{os.getpid()}-stem"))}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "main.py").write_text("x = 1\n")
    ContainerJanitor(None, "instance", tmp_path)._drop_stale_records()
    assert sorted(p.name for p in tmp_path.glob("*/*")) == [f"{os.getpid()}-stem"]
