"""ansible/: syntax check and ansible-lint on every playbook, and the properties the issue asks for."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from fleetlib import ANSIBLE, TERRAFORM, find_tool, single, tf_module, tool_env

PLAYBOOKS = sorted(p.name for p in ANSIBLE.glob("*.yml"))
ROLES = {"common", "nanogrid", "controller", "worker", "ai_node", "flower"}
GROUPS = {"controller.yml": "controllers", "worker.yml": "workers", "ai_node.yml": "ai_nodes", "flower.yml": "flower"}


def test_layout():
    assert set(PLAYBOOKS) == {"site.yml", *GROUPS}
    assert {p.name for p in (ANSIBLE / "roles").iterdir() if p.is_dir()} == ROLES
    for role in ROLES:
        assert (ANSIBLE / "roles" / role / "tasks" / "main.yml").exists(), role
        assert (ANSIBLE / "roles" / role / "meta" / "main.yml").exists(), role
    assert (ANSIBLE / "inventories" / "example" / "hosts.yml").exists()
    dynamic = yaml.safe_load((ANSIBLE / "inventories" / "aws" / "aws_ec2.yml").read_text())
    assert dynamic["plugin"] == "amazon.aws.aws_ec2"
    assert set(dynamic["groups"]) == set(GROUPS.values())


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook):
    ansible_playbook = find_tool("ansible-playbook", "ANSIBLE_PLAYBOOK")
    proc = subprocess.run(
        [ansible_playbook, "--syntax-check", "-i", "inventories/example/hosts.yml", playbook],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=120, env=tool_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_passes_on_every_playbook():
    ansible_lint = find_tool("ansible-lint", "ANSIBLE_LINT")
    proc = subprocess.run(
        [ansible_lint, "--offline", "--nocolor", *PLAYBOOKS],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=300, env=tool_env(),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "production" in proc.stderr + proc.stdout  # the strictest profile (see .ansible-lint)


def test_each_group_has_its_playbook_and_roles():
    for playbook, group in GROUPS.items():
        plays = yaml.safe_load((ANSIBLE / playbook).read_text())
        assert [p["hosts"] for p in plays] == [group]
        roles = [r["role"] for r in plays[0]["roles"]]
        assert roles[0] == "common"
        assert plays[0]["become"] is True
    site = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    assert [p["ansible.builtin.import_playbook"] for p in site] == ["controller.yml", "flower.yml", "worker.yml", "ai_node.yml"]
    hosts = yaml.safe_load((ANSIBLE / "inventories" / "example" / "hosts.yml").read_text())
    assert set(hosts["all"]["children"]) == set(GROUPS.values())


def _tasks(role: str) -> list[dict]:
    """Every task of a role, handlers included, and those inside blocks."""
    found = []
    for name in ("tasks", "handlers"):
        path = ANSIBLE / "roles" / role / name / "main.yml"
        if path.exists():
            found.extend(_flattened(yaml.safe_load(path.read_text()) or []))
    return found


def _flattened(tasks: list[dict]) -> list[dict]:
    flat = []
    for task in tasks:
        flat.append(task)
        for section in ("block", "rescue", "always"):
            flat.extend(_flattened(task.get(section) or []))
    return flat


def _commands(role: str) -> list[dict]:
    return [t for t in _tasks(role) if "ansible.builtin.command" in t or "ansible.builtin.shell" in t]


def test_commands_declare_when_they_change_something():
    """Idempotence: every command reports change only when it made one (or says it always does)."""
    commands = [(role, task) for role in sorted(ROLES) for task in _commands(role)]
    # The commands this is about are among those inspected (a check of no task would pass).
    assert {(role, task["name"]) for role, task in commands} >= {
        ("ai_node", "Pull the missing models"), ("nanogrid", "Read the Redis AUTH token from Secrets Manager"),
        ("worker", "Build the runtime image"), ("worker", "Rebuild the runtime image")}
    for role, task in commands:
        module = task.get("ansible.builtin.command") or task.get("ansible.builtin.shell")
        creates = isinstance(module, dict) and "creates" in module
        assert "changed_when" in task or creates, f"{role}: {task['name']}"


def test_no_secrets_in_the_repository():
    pattern = re.compile(r"BEGIN [A-Z ]*PRIVATE KEY|aws_secret_access_key|\"private_key\"|AKIA[0-9A-Z]{16}|password\s*[:=]\s*\S", re.I)
    for path in ANSIBLE.rglob("*"):
        if path.is_file():
            assert not pattern.search(path.read_text()), path
    # Secrets are read at run time from Secrets Manager, and never logged.
    reads = [task for role in ("nanogrid", "worker") for task in _commands(role)
             if "fetch-secret.py" in str(task.get("ansible.builtin.command", ""))]
    assert reads, "no task reads a secret with fetch-secret.py"
    for task in reads:
        if "--output" not in str(task["ansible.builtin.command"]):  # a secret read into a variable
            assert task.get("no_log") is True, task["name"]
    for role, env_file in (("controller", "controller.env.j2"), ("worker", "worker.env.j2"), ("flower", "flower.env.j2")):
        write = next(t for t in _tasks(role) if t.get("ansible.builtin.template", {}).get("src") == env_file)
        assert write["ansible.builtin.template"]["mode"] == "0640"
        assert write.get("no_log") is True


def _unit(path: str) -> dict[str, str]:
    text = (ANSIBLE / "roles" / path).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_worker_runs_celery_under_systemd_with_a_graceful_stop():
    unit = _unit("worker/templates/nanogrid-worker.service.j2")
    assert "nanogrid worker" in unit["ExecStart"]
    assert unit["KillSignal"] == "SIGTERM"  # Celery's warm shutdown
    assert unit["KillMode"] == "mixed"  # SIGTERM to the main process, SIGKILL to all only at the end
    assert unit["TimeoutStopSec"] == "{{ worker_stop_timeout_s }}"
    assert "draining" in unit["ExecCondition"] or "drain" in unit["ExecCondition"]
    assert unit["Requires"] == "docker.service"
    tasks = {t["name"]: t for t in _tasks("worker")}
    assert tasks["Install the Docker engine"]["ansible.builtin.apt"]["name"] == "docker.io"
    assert "image" in tasks["Build the runtime image"]["ansible.builtin.command"]["argv"]
    drain = _unit("worker/templates/nanogrid-drain.service.j2")
    assert "--hook {{ nanogrid_worker_lifecycle_hook }}" in drain["ExecStart"]
    defaults = yaml.safe_load((ANSIBLE / "roles" / "worker" / "defaults" / "main.yml").read_text())
    hook = single(tf_module("modules/compute").resource("aws_autoscaling_group", "worker")["initial_lifecycle_hook"])
    assert hook["name"] == "${local.lifecycle_hook_name}"
    assert defaults["worker_drain_heartbeat_s"] < 900  # renewed well within the hook's timeout


def test_controller_runs_gunicorn_under_systemd_with_an_env_file():
    unit = _unit("controller/templates/nanogrid-api.service.j2")
    assert unit["ExecStart"].endswith("/bin/nanogrid api")
    assert unit["EnvironmentFile"] == "{{ controller_env_file }}"
    assert unit["User"] == "{{ nanogrid_user }}"
    tasks = {t["name"]: t for t in _tasks("controller")}
    assert tasks["Wait for the API to answer /health/live"]["ansible.builtin.uri"]["url"].endswith("/health/live")


def test_ai_node_pulls_the_models_of_a_variable():
    defaults = yaml.safe_load((ANSIBLE / "roles" / "ai_node" / "defaults" / "main.yml").read_text())
    assert isinstance(defaults["ai_node_models"], list) and defaults["ai_node_models"]
    assert defaults["ai_node_listen"].endswith(":11434")
    pull = next(t for t in _tasks("ai_node") if t["name"] == "Pull the missing models")
    assert pull["loop"] == "{{ ai_node_models }}" and "when" in pull
    assert "ollama_models" in str(tf_module("modules/compute").locals["bootstrap"]["ai"])
    assert "ai_node_models" in str(tf_module("modules/compute").locals["bootstrap"]["ai"])


def test_flower_listens_on_localhost():
    defaults = yaml.safe_load((ANSIBLE / "roles" / "flower" / "defaults" / "main.yml").read_text())
    assert defaults["flower_address"] == "127.0.0.1"


def test_instances_configure_themselves_at_boot_with_ansible_pull():
    template = (TERRAFORM / "modules" / "compute" / "templates" / "user_data.sh.tftpl").read_text()
    assert "ansible-pull" in template and "ansible/site.yml" in template
    assert "--extra-vars @/etc/nanogrid/bootstrap.json" in template
    assert (ANSIBLE / "site.yml").exists()
    bootstrap = tf_module("modules/compute").locals["bootstrap"]
    groups = {g for b in bootstrap.values() for g in b["inventory_groups"]}
    assert groups == set(GROUPS.values())
    version = tf_module().variables["ansible_core_version"]["default"]
    import ansible

    assert ansible.__version__ == version, "the boot-time ansible-core should be the one CI lints with"
