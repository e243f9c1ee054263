"""Cross-checks between the code, the IAM policies in deploy/terraform and the Ansible templates.

- Every AWS API action the code can call (boto3 calls found by scanning the source that each
  process runs, nanogrid/transport/ included) is granted to the IAM role of the instances that
  run it, and every granted action is needed: called by that code, by kombu's SQS transport on
  its behalf (a short list, each entry checked against kombu's source), or implied by a call
  (listed with its evidence).
- The broadcast transport's grants on the dynamic prefix (nanogrid-fanout-*) are exactly the
  queue actions the role needs, minus those its processes never perform on a per-process queue
  (listed with the reason), and sqs:ListQueues is scoped to the account's queues of the region.
- Every environment variable a process reads is set by the Ansible template of the role that
  runs it, or is on an explicit list of optional settings, each with the reason its default is
  right in production; the rendered files load with Settings.from_env.
"""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import botocore.loaders
import jinja2
import kombu
import pytest
import yaml
from botocore.stub import Stubber

import codescan
from fleetlib import ANSIBLE, PACKAGE, REPO, root_default, single, tf_module
from nanogrid import aws, cli, keys
from nanogrid.config import Settings
from nanogrid.errors import NotFound
from nanogrid.storage.dynamodb import DynamoDBTable
from nanogrid.storage.s3 import S3BlobStore
from nanogrid.transport import SQS_TRANSPORT, sqs
from nanogrid.transport.app import make_celery
from support.app import App

# --- Who runs what ------------------------------------------------------------------------------

# Each process: the modules it starts from, the Ansible role and env template that configure it,
# the systemd unit that runs it (and what its ExecStart must contain), and the IAM role of the
# instances it runs on.
PROCESSES = {
    "api": {
        "entries": ["wsgi", "nanogrid.api.gunicorn_conf"],
        "role": "controller", "env": "controller.env.j2",
        "unit": "controller/templates/nanogrid-api.service.j2", "exec": "/bin/nanogrid api",
        "iam": "controller",
    },
    "scheduler": {
        "entries": ["nanogrid.scheduler"],
        "role": "controller", "env": "controller.env.j2",
        "unit": "controller/templates/nanogrid-scheduler.service.j2", "exec": "/bin/nanogrid scheduler",
        "iam": "controller",
    },
    "publisher": {
        "entries": ["nanogrid.scaling.__main__"],
        "role": "controller", "env": "controller.env.j2",
        "unit": "controller/templates/nanogrid-scaling-publisher.service.j2", "exec": "-m nanogrid.scaling publish",
        "iam": "controller",
    },
    "flower": {
        "entries": ["celeryconfig", "nanogrid.celery"],
        "role": "flower", "env": "flower.env.j2",
        "unit": "flower/templates/nanogrid-flower.service.j2", "exec": "/bin/celery -A nanogrid flower",
        "iam": "controller",
    },
    "worker": {
        "entries": ["celeryconfig", "nanogrid.celery", "nanogrid.worker.tasks", "nanogrid.sandbox.image"],
        "role": "worker", "env": "worker.env.j2",
        "unit": "worker/templates/nanogrid-worker.service.j2", "exec": "/bin/nanogrid worker",
        "iam": "worker",
    },
    # `nanogrid builder`: a Celery worker on the builds queue only, on the worker instances, with
    # the worker's env file.
    "builder": {
        "entries": ["celeryconfig", "nanogrid.celery", "nanogrid.worker.tasks"],
        "role": "worker", "env": "worker.env.j2",
        "unit": "worker/templates/nanogrid-builder.service.j2", "exec": "/bin/nanogrid builder",
        "iam": "worker",
    },
}

# Inventory group -> IAM role of its instances (deploy/terraform/modules/compute).
GROUP_IAM = {"controllers": "controller", "flower": "controller", "workers": "worker", "ai_nodes": "ai"}

# Actions kombu's SQS transport calls on the code's behalf (Celery publishes and consumes through
# it). Each maps to the client method that must appear in kombu's transport source.
LIBRARY_ACTIONS = {
    "sqs:SendMessage": ("send_message", "Celery publishes run tasks; the worker's reaper re-dispatches unclaimed jobs; workers send control replies"),
    "sqs:GetQueueAttributes": ("get_queue_attributes", "kombu reads the queue size on declare and the RedrivePolicy before deleting a rejected message"),
    "sqs:ChangeMessageVisibility": ("change_message_visibility", "kombu returns messages received after a consumer was cancelled (warm shutdown)"),
    "sqs:ReceiveMessage": ("receive_message", "kombu's asynchronous consumer polls the task queue"),
    "sqs:DeleteMessage": ("delete_message", "kombu acknowledges a message by deleting it"),
}
# Only when the broadcast transport is on (supports_fanout): kombu's SNS fanout.
FANOUT_LIBRARY_ACTIONS = {
    "sns:CreateTopic": ("create_topic", "kombu creates the SNS topic of a fanout exchange (get-or-create)"),
    "sns:Subscribe": ("subscribe", "kombu subscribes a broadcast queue to its exchange's topic"),
    "sns:Publish": ("publish", "kombu publishes a broadcast message to the topic"),
    "sns:Unsubscribe": ("unsubscribe", "kombu removes stale subscriptions of a topic"),
    "sns:ListSubscriptionsByTopic": ("list_subscriptions_by_topic", "kombu lists a topic's subscriptions to clean them up"),
    "sqs:SetQueueAttributes": ("set_queue_attributes", "kombu lets the topic deliver to a subscribed queue (queue policy)"),
    "sqs:GetQueueUrl": ("get_queue_url", "kombu resolves the URL of a subscribed queue"),
}
# Actions kombu's fanout needs through a parameter of one of its calls, as botocore documents it
# (codescan.parameter_actions): action -> (client method, keyword, reason). Each is checked: kombu
# passes that keyword to that method, and botocore still says the keyword needs the action.
FANOUT_LIBRARY_PARAMETER_ACTIONS = {
    "sns:TagResource": ("create_topic", "Tags", "kombu creates each broadcast topic with its own tags (CreateTopic Tags=...)"),
}
# Actions a call needs without being its name: (reason, a check, below, that the code still relies on it).
IMPLIED_ACTIONS = {
    "s3:ListBucket": ("S3BlobStore.get maps NoSuchKey to NotFound; without s3:ListBucket S3 answers a missing key with AccessDenied",
                      lambda: s3_get_needs_list_bucket()),
}
# Actions the role's code can reach but never calls on that role's instances: (reason, the objects
# whose .delete(...) must not be called in the role's own modules, which would mean the reason
# no longer holds).
NOT_GRANTED = {
    "worker": {
        "s3:DeleteObject": ("BlobStore.delete is called only by FunctionRegistry.delete and LayerRegistry.delete, "
                            "from the API's DELETE /functions route",
                            {"functions", "code", "outputs", "layers", "registry", "store"}),
    },
}
# The only actions granted on every resource: IAM offers no resource-level permission for them.
RESOURCE_STAR_ACTIONS = {"cloudwatch:PutMetricData", "autoscaling:DescribeAutoScalingGroups", "secretsmanager:ListSecrets"}
# The secret store on AWS (module, class): the API and the workers reach it only as the Services
# attribute `secrets` (services().secrets.M(...)), each through a few of its methods. A role needs
# the actions of the methods its own processes call, not every call of the module: the worker
# only reads (get), the API never does (put, metadata, list, delete).
SECRET_STORE = ("nanogrid.storage.secretsmanager", "SecretsManagerStore")
SECRET_STORE_ATTRIBUTE = "secrets"
# Actions an adapter's call needs through one of its parameters, as botocore's documentation of the
# operation says (its "Required permissions"): action -> (client method, keyword, reason). Checked:
# the code passes that keyword to that method, and botocore still names the action.
ADAPTER_PARAMETER_ACTIONS = {
    "secretsmanager:TagResource": ("create_secret", "Tags", "SecretsManagerStore.put creates a secret with its "
                                                            "tenant tag (CreateSecret Tags=...)"),
}
# Actions without resource-level permissions that AWS still authorizes against an account-wide
# resource: granted on exactly that (local name -> the ARN it must hold).
ACCOUNT_SCOPED_ACTIONS = {
    "sqs:ListQueues": ("account_queues_arn", "arn:${var.partition}:sqs:${var.region}:${var.account_id}:*"),
}
# Queue actions a role needs (on the task queue) but never performs on a per-process queue of the
# broadcast transport: action -> reason. Everything else the role needs on SQS, it needs on the
# dynamic prefix too (kombu serves those queues like any other: receive, delete, release, size,
# policy), except sqs:ListQueues, which is not a queue action.
NOT_ON_DYNAMIC_QUEUES = {
    "controller": {
        "sqs:SendMessage": "only a Celery worker answers remote control, into the caller's reply queue; the "
                           "controllers' processes send tasks to the task queue, and control commands and "
                           "task events through SNS",
    },
}

# --- Environment: what may stay unset, and why --------------------------------------------------

AI_LIMITS_REASON = ("per-run limits of the AI channel (only workers' sandboxed runs use it); the defaults in "
                    "nanogrid/config.py are the documented ones (README: Private AI)")
WARM_POOL_REASON = ("warm sandbox pool of each worker process (nanogrid/sandbox/warm.py; only workers run "
                    "sandboxes): reuse bounded per process by idle containers per function version, containers, "
                    "the sum of their memory limits and idle time, at the defaults of nanogrid/config.py; "
                    "NANOGRID_WARM_POOL_SIZE=0 turns reuse off")
PIP_REASON = ("empty means pip's default index (PyPI); operators with a private mirror or a wheelhouse set "
              "nanogrid_pip_index_url (and the other nanogrid_pip_* variables) in the inventory, which both env "
              "files then set: the API names a layer after them, the builders install with them")
LAYER_LIMITS_REASON = ("a layer's installed size and file count; the defaults in nanogrid/config.py are the "
                       "documented ones (a build past either fails)")
OPTIONAL_EVERYWHERE = {
    "AWS_DEFAULT_REGION": "fallback when AWS_REGION is unset; the templates always set AWS_REGION",
    "AWS_ENDPOINT_URL": "points boto3 at a local emulator (moto); must stay unset against AWS",
    "STORAGE_EMULATOR_HOST": "points the GCS client at a local emulator; must stay unset in production",
    "NANOGRID_BROKER_URL": "derived: sqs:// whenever SQS_QUEUE_URL is set",
    "NANOGRID_MAX_CODE_BYTES": "upload limit; the 10 MB default is the documented product limit",
    "NANOGRID_MAX_INPUT_BYTES": "run input limit; the 256 KiB default keeps SQS-era sizes",
    "NANOGRID_MAX_ZIP_MEMBERS": "archive safety limit; default 1000",
    "NANOGRID_MAX_UNPACKED_BYTES": "archive safety limit; default 50 MB",
    "NANOGRID_DEFAULT_WAIT_S": "synchronous run wait; default 30 s",
    "NANOGRID_MAX_WAIT_S": "synchronous run wait ceiling; default 300 s, under the ALB idle timeout of 330 s",
    "NANOGRID_INLINE_OUTPUT_BYTES": "outputs above 64 KiB go to the user-data bucket; the default is right",
    "NANOGRID_LEASE_S": "exactly-once lease; the 30 s default is what the reliability tests prove",
    "NANOGRID_REAPER_INTERVAL_S": "reaper period; default 5 s",
    "NANOGRID_REDISPATCH_AFTER_S": "re-dispatch of unclaimed jobs; default 300 s",
    "NANOGRID_PENDING_TIMEOUT_S": "how long a job may wait unstarted before it fails; default 6 h",
    "NANOGRID_BIND": "gunicorn bind; derived from NANOGRID_HOST:NANOGRID_PORT",
    "NANOGRID_API_WORKERS": "gunicorn worker processes of the API, default 2 (one per core of the controller type)",
    "NANOGRID_API_THREADS": "threads per API worker, default 16: each synchronous run request holds one while it waits",
    "NANOGRID_URL": "the CLI's way to a running API (nanogrid deploy|invoke|job); no service reads it",
    "NANOGRID_API_KEY": "the CLI's API key; no service reads it",
    "FLOWER_BASIC_AUTH": "Flower's own authentication, checked by `nanogrid flower`; on the fleet Flower listens on "
                         "localhost only (test_flower_listens_on_localhost) and is reached through an SSH tunnel",
    "FLOWER_AUTH": "Flower's OAuth alternative to FLOWER_BASIC_AUTH (see there)",
    "NANOGRID_JOB_RETENTION_DAYS": "default 7, Terraform's job_retention_days, which sets the jobs table's TTL and the "
                                   "user-data bucket's expiry of stored outputs to the same (checked by "
                                   "test_the_job_retention_is_the_same_in_terraform_and_the_code)",
    "NANOGRID_INSTANCE_ID": "labels this installation's sandboxes; unset it is derived from the Redis address, which "
                            "is stable on the fleet (only `nanogrid dev`, whose Redis port changes, sets it)",
    "NANOGRID_FLOWER_URL": "only a link in the web console; on the fleet Flower listens on the controller alone and "
                           "is reached through an SSM port forward (roles/flower), an address each operator has",
    "NANOGRID_DEAD_LETTER_QUEUE_URL": "unset it is SQS_QUEUE_URL + '-dlq', the name Terraform gives the dead-letter "
                                      "queue (checked by test_the_dead_letter_queue_is_the_one_terraform_makes)",
    "NANOGRID_CALLBACK_ALLOWED_NETWORKS": "set only when nanogrid_callback_allowed_networks lists networks; unset, "
                                          "callbacks reach every address but loopback, link-local and the platform's",
    "NANOGRID_CALLBACK_TIMEOUT_S": "how long a callback waits for its receiver; the 10 s default is what receivers "
                                   "are told to answer within (README)",
    "NANOGRID_CALLBACK_MAX_ATTEMPTS": "callback attempts; 8, from 2 s doubled, spans about 4 minutes (README)",
    "NANOGRID_CALLBACK_BACKOFF_S": "the first wait between callback attempts; default 2 s, doubled each time",
    "NANOGRID_SHUTDOWN_GRACE_S": "unset: a worker's warm shutdown lets the runs in progress finish (the drain hook "
                                 "waits for them); `nanogrid dev` sets it to stop quickly",
    "NANOGRID_SCALING_INTERVAL_S": "publisher period; default 60 s",
    "NANOGRID_REDIS_URL": "built from REDIS_HOST and REDIS_PORT unless Redis needs TLS and AUTH",
    "NANOGRID_LOG_FORMAT": "json (the default) writes one object per line for the journal; text is for a terminal",
    "PROMETHEUS_MULTIPROC_DIR": "`nanogrid api|worker` make a private directory per service start (in the unit's "
                                "PrivateTmp) and remove it at exit; set only to choose the directory",
    "NANOGRID_METRICS_PRIVATE_DIR": "internal: NanoGrid sets it beside PROMETHEUS_MULTIPROC_DIR when it made that "
                                    "directory itself; never set by hand",
    "NANOGRID_WORKER_METRICS_PORT": "the worker's /metrics exporter, default 9808 (0: off); nothing in the "
                                    "architecture scrapes it, so no template or security group names it",
    "NANOGRID_WORKER_METRICS_HOST": "default 127.0.0.1: the worker's exporter is reachable only on the instance",
    "NANOGRID_AI_CONNECT_TIMEOUT_S": AI_LIMITS_REASON,
    "NANOGRID_AI_TIMEOUT_S": AI_LIMITS_REASON,
    "NANOGRID_AI_MAX_CALLS": AI_LIMITS_REASON,
    "NANOGRID_AI_MAX_TOKENS": AI_LIMITS_REASON,
    "NANOGRID_AI_MAX_REQUEST_BYTES": AI_LIMITS_REASON,
    "NANOGRID_AI_MODELS": "empty allows every model the AI node serves, which are the ones the ai_node role pulls "
                          "(runs cannot pull models: the channel refuses model management)",
    "NANOGRID_RATE_LIMIT": "API requests per key (or per client address without a valid key), counted in Redis "
                           "across every API process; the default, 1000 per 5 minutes, is the founding document's "
                           "figure and the WAF's per-address rule (test_the_api_rate_limit_default_is_the_waf_rule)",
    "NANOGRID_TENANT_MAX_RUNNING": "per-tenant quota of runs in progress, default 100 (README: API security): above "
                                   "the fleet's run slots (worker_max_size x worker_concurrency, checked by "
                                   "test_the_tenant_running_quota_is_above_the_fleets_run_slots), so a tenant's "
                                   "running jobs are bounded by the slots and its backlog by NANOGRID_TENANT_MAX_QUEUED",
    "NANOGRID_TENANT_MAX_QUEUED": "per-tenant quota of queued runs, default 1000 (README: API security)",
    # Named like a run limit (NANOGRID_MAX_x) but it is not one: listed here with its own reason.
    "NANOGRID_MAX_QUEUE_DEPTH": "the API's backpressure: run requests get 503 while the task queue holds this many "
                                "waiting messages, default 10000 (README: API security); the API reads the depth "
                                "with sqs:GetQueueAttributes on the task queue, which the controller role has",
    "NANOGRID_WARM_POOL_SIZE": WARM_POOL_REASON,
    "NANOGRID_WARM_IDLE_TTL_S": WARM_POOL_REASON,
    "NANOGRID_WARM_MAX_CONTAINERS": WARM_POOL_REASON,
    "NANOGRID_WARM_MEMORY_BUDGET_MB": WARM_POOL_REASON,
    "NANOGRID_STEM_CELLS": "stem cells per worker process (nanogrid/sandbox/warm.py): one pre-started container of "
                           "the default limits, within the warm pool's bounds; a builder (no runs queue) keeps none",
    "NANOGRID_KEEP_VERSIONS": "20 versions of each function kept besides those an alias points at (the default); "
                              "older ones and their code are removed by the API when a new version is made",
    "NANOGRID_BUILD_QUEUE_URL": "unset it is SQS_QUEUE_URL + '-builds', the name Terraform gives the builds queue "
                                "(checked by test_the_builds_queue_is_the_one_terraform_makes)",
    "NANOGRID_BUILD_TIMEOUT_S": "a build's pip run may take 600 s by default, less than the builds queue's visibility "
                                "timeout (checked by test_the_builds_queue_is_the_one_terraform_makes) and the "
                                "builder unit's stop timeout",
    "NANOGRID_BUILD_CONCURRENCY": "one build at a time per worker host (the default): pip's downloads and unpacking "
                                  "take one core beside the runs, and a host's builds queue up behind each other",
    "NANOGRID_LAYER_MAX_MB": LAYER_LIMITS_REASON,
    "NANOGRID_LAYER_MAX_FILES": LAYER_LIMITS_REASON,
    "NANOGRID_LAYER_CACHE_MB": "unpacked layers a worker host keeps, default 8 GiB of its 30 GB root volume (the "
                               "launch template's), least recently used ones removed first",
    "NANOGRID_PIP_INDEX_URL": PIP_REASON,
    "NANOGRID_PIP_EXTRA_INDEX_URL": PIP_REASON,
    "NANOGRID_PIP_FIND_LINKS": PIP_REASON,
    "NANOGRID_PIP_CERT": PIP_REASON,
    "NANOGRID_PIP_NO_INDEX": PIP_REASON,
    "NANOGRID_PIP_TRUSTED_HOST": PIP_REASON,
    "NANOGRID_BUILD_FROM_SOURCE": "off by default: a package with no wheel fails its build and says so; "
                                  "nanogrid_build_from_source in the inventory turns source builds on",
    "NANOGRID_BUILD_NETWORK": "Docker's bridge, the engine's default network, is how a source build's container "
                              "reaches the package index",
    "NANOGRID_SECRETS_KEY": "the embedded secret store's Fernet key, used only with NANOGRID_STORAGE=local; on the "
                            "fleet (NANOGRID_STORAGE=aws) the secrets are in Secrets Manager, encrypted by its key",
    "NANOGRID_TASK_EVENTS": "Celery task events from the start, off by default because they cost CPU on every run "
                            "(nanogrid/transport/app.py); Flower on the controllers turns worker events on in "
                            "the workers it watches (its --enable_events default), which is when anything reads them",
}
RUN_LIMITS_REASON = "per-run sandbox limits (NANOGRID_DEFAULT_x / NANOGRID_MAX_x); the defaults in nanogrid/config.py are the documented ones"
# Set by systemd or the OS, not by the templates.
SYSTEM = {"PATH": "set by systemd for every service", "HOME": "set by systemd from the service user"}
OPTIONAL_BY_PROCESS = {
    "api": {
        "AI_ENDPOINT": "only sandboxed runs on the workers call the AI node",
        "GCP_BUCKET_NAME": "NANOGRID_ARCHIVE=none: only workers archive, so the controllers get no GCP key",
        "GOOGLE_APPLICATION_CREDENTIALS": "NANOGRID_ARCHIVE=none: only workers archive",
        "NANOGRID_SANDBOX": "only workers run sandboxes",
        "NANOGRID_RUNTIME_IMAGE": "only workers run sandboxes",
        "NANOGRID_DOCKER_RUNTIME": "only workers run sandboxes",
        "NANOGRID_WORKER_CONCURRENCY": "only workers consume the queue",
        "NANOGRID_LAYER_CACHE_DIR": "only workers unpack layers (worker.env sets it outside the units' private /var/tmp)",
    },
    "worker": {
        "NANOGRID_WORKER_ASG": "only the scaling publisher on the controllers reads the worker group",
        "NANOGRID_METRIC_NAMESPACE": "only the scaling publisher on the controllers publishes the backlog metric",
        "NANOGRID_BACKLOG_METRIC": "only the scaling publisher on the controllers publishes the backlog metric",
        "NANOGRID_HOST": "only the API listens",
        "NANOGRID_PORT": "only the API listens",
        "NANOGRID_KEYS_TABLE": "only the API and `nanogrid keys` (run on a controller, with controller.env) use the "
                               "key store; the worker role has no grant on the keys table",
        "NANOGRID_TRUSTED_PROXIES": "only the API takes client addresses (for its rate limit) from X-Forwarded-For",
    },
}
OPTIONAL_BY_PROCESS["flower"] = {
    **OPTIONAL_BY_PROCESS["api"], **OPTIONAL_BY_PROCESS["worker"],
    "NANOGRID_SECRETS_PREFIX": "Flower uses no secret store (only the API and the workers do, and controller.env and "
                               "worker.env set it to Terraform's secrets_prefix); its default is that prefix's too",
}
OPTIONAL_BY_PROCESS["publisher"] = OPTIONAL_BY_PROCESS["flower"]
OPTIONAL_BY_PROCESS["scheduler"] = OPTIONAL_BY_PROCESS["flower"]
OPTIONAL_BY_PROCESS["builder"] = OPTIONAL_BY_PROCESS["worker"]
# Names the production templates must set whatever the code does: the backends.
ALWAYS_REQUIRED = {"NANOGRID_STORAGE", "NANOGRID_ARCHIVE", "AWS_REGION"}
PUBLISHER_REQUIRED = {"NANOGRID_WORKER_ASG"}


# --- Building blocks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules():
    return codescan.load_modules(REPO)


def process_modules(modules, process: str) -> set[str]:
    return codescan.reachable(modules, PROCESSES[process]["entries"])


def sqs_channel() -> sqs.Channel:
    """NanoGrid's SQS channel with the transport options Celery is configured with for an SQS
    broker, built without connecting: its own properties say what it does."""
    app = make_celery(Settings.from_env({
        "SQS_QUEUE_URL": "https://sqs.ap-northeast-2.amazonaws.com/123456789012/nanogrid-task-queue"}))
    assert app.conf.broker_transport == SQS_TRANSPORT
    channel = sqs.Channel.__new__(sqs.Channel)
    channel.connection = types.SimpleNamespace(client=app.connection_for_write())  # where it reads its options
    return channel


def policy_statements(name: str, fanout: bool) -> list[dict]:
    document = tf_module("modules/compute").data["aws_iam_policy_document"][name]
    statements = list(document.get("statement", []))
    for block in document.get("dynamic", []):
        body = block["statement"]
        assert body["for_each"] == "${var.celery_sns_fanout ? [1] : []}", body["for_each"]
        if fanout:
            statements.append(single(body["content"]))
    return statements


def granted(name: str, fanout: bool) -> dict[str, list[str]]:
    actions: dict[str, list[str]] = {}
    for statement in policy_statements(name, fanout):
        if statement.get("effect", "Allow") != "Allow":
            continue
        for action in statement["actions"]:
            actions.setdefault(action, []).extend(statement["resources"])
    return actions


def roles_of_groups() -> dict[str, set[str]]:
    """Ansible role -> IAM roles of the instances whose plays include it."""
    result: dict[str, set[str]] = {}
    for playbook in ANSIBLE.glob("*.yml"):
        for play in yaml.safe_load(playbook.read_text()) or []:
            if "hosts" not in play:
                continue
            for role in play.get("roles", []):
                role_name = role["role"] if isinstance(role, dict) else role
                result.setdefault(role_name, set()).add(GROUP_IAM[play["hosts"]])
    return result


def script_actions() -> dict[str, dict[str, list[str]]]:
    """IAM role -> actions called by the scripts the Ansible roles install on its instances."""
    by_iam: dict[str, dict[str, list[str]]] = {}
    for role, iam_roles in roles_of_groups().items():
        for script in sorted((ANSIBLE / "roles" / role / "files").glob("*.py")):
            calls, problems = codescan.script_calls(script)
            assert not problems, problems
            for action, where in codescan.actions_of(calls).items():
                for iam in iam_roles:
                    by_iam.setdefault(iam, {}).setdefault(action, []).extend(f"{role}/{w}" for w in where)
    return by_iam


def kombu_calls() -> tuple[list[ast.Call], set[str]]:
    """The calls in kombu's SQS transport and its string constants (a method may be named by one)."""
    calls, strings = [], set()
    for path in sorted((Path(kombu.__file__).parent / "transport" / "SQS").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                calls.append(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return calls, strings


def method_calls(calls: list[ast.Call], method: str) -> list[ast.Call]:
    return [call for call in calls if isinstance(call.func, ast.Attribute) and call.func.attr == method]


def deletes_on(tree: ast.AST, receivers: set[str]) -> list[str]:
    """The calls X.delete(...) in tree where X is named one of receivers (a.b.X or X)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "delete":
            holder = node.func.value
            name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", None)
            if name in receivers:
                found.append(ast.unparse(node))
    return found


def s3_get_needs_list_bucket() -> None:
    """S3BlobStore.get turns S3's NoSuchKey into NotFound, and only that: the AccessDenied S3 sends
    instead when the caller lacks s3:ListBucket is no NotFound."""
    settings = Settings(storage="aws", aws_region="ap-northeast-2")
    aws._clients.clear()
    try:
        with Stubber(aws.client(settings, "s3")) as s3:
            s3.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
            s3.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
            with pytest.raises(NotFound):
                S3BlobStore(settings, "bucket").get("missing")
            with pytest.raises(Exception) as denied:
                S3BlobStore(settings, "bucket").get("missing")
            assert not isinstance(denied.value, NotFound), denied.value
    finally:
        aws._clients.clear()


def call_actions(calls: list) -> dict[str, list[str]]:
    """codescan.actions_of, plus the actions ADAPTER_PARAMETER_ACTIONS says a call's keyword needs."""
    actions = codescan.actions_of(calls)
    for action, (method, keyword, _) in ADAPTER_PARAMETER_ACTIONS.items():
        for call in calls:
            if call.method == method and keyword in call.keywords:
                actions.setdefault(action, []).append(f"{call.module}:{call.line} {call.method}({keyword}=...)")
    return actions


def class_method_actions(modules, module_name: str, class_name: str) -> dict[str, set[str]]:
    """Method of an adapter class -> the IAM actions of its boto3 calls, with those of the methods it calls."""
    module = modules[module_name]
    wrappers = codescan.client_wrappers(modules)
    cls = next(n for n in module.tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    actions: dict[str, set[str]] = {}
    inner: dict[str, set[str]] = {}  # method -> the methods of the class it calls (self.x(...))
    for method in [n for n in cls.body if isinstance(n, ast.FunctionDef)]:
        # One method at a time; the wrappers map knows what self._client() and the like return.
        calls, problems = codescan.api_calls(module.name, method, wrappers)
        assert not problems, problems
        actions[method.name] = set(call_actions(calls))
        inner[method.name] = {node.func.attr for node in ast.walk(method)
                                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                                and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"}
    # What the methods a method calls call counts as its own (DynamoDB's insert and replace write
    # through _put_if; the secret store's put returns metadata, a DescribeSecret).
    changed = True
    while changed:
        changed = False
        for name, called in inner.items():
            for other in called & set(actions):
                if not actions[other] <= actions[name]:
                    actions[name] |= actions[other]
                    changed = True
    return actions


def _is_services(node: ast.AST) -> bool:
    """services() or services: the process's Services (nanogrid/services.py)."""
    if isinstance(node, ast.Call) and not node.args and not node.keywords:
        node = node.func
    return isinstance(node, ast.Name) and node.id == "services"


def secret_store_calls(modules, names: set[str]) -> dict[str, list[str]]:
    """Secret store method -> where the given modules call it as services().secrets.M(...)."""
    found: dict[str, list[str]] = {}
    for name in sorted(names):
        for node in ast.walk(modules[name].tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                holder = node.func.value
                if isinstance(holder, ast.Attribute) and holder.attr == SECRET_STORE_ATTRIBUTE \
                        and _is_services(holder.value):
                    found.setdefault(node.func.attr, []).append(f"{name}:{node.lineno} {node.func.attr}")
    return found


# Task bodies: run only by a Celery worker (`nanogrid worker|builder`). Flower imports them (for
# the task names) and runs none, and no controller unit runs a Celery worker
# (test_controller_processes_run_no_worker), so a controller process never makes their secret
# store calls: the controller role gets no GetSecretValue on the tenants' secrets.
TASK_PACKAGE = "nanogrid.worker"


def secret_store_callers(modules, process: str) -> set[str]:
    """The modules of a process whose secret store calls it can make."""
    names = process_modules(modules, process)
    if PROCESSES[process]["iam"] == "worker":
        return names
    return {n for n in names if n != TASK_PACKAGE and not n.startswith(TASK_PACKAGE + ".")}


def secret_store_escapes(modules) -> list[str]:
    """Ways to the secret store that secret_store_calls would not see: services().secrets other
    than as the receiver of a method call, the store built outside Services, the AWS store built
    outside nanogrid.storage.secret_store."""
    escapes = []
    for name, module in modules.items():
        receivers = {id(node.func.value) for node in ast.walk(module.tree)
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and node.attr == SECRET_STORE_ATTRIBUTE and _is_services(node.value) \
                    and id(node) not in receivers:
                escapes.append(f"{name}:{node.lineno} {ast.unparse(node)} used as a value")
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if called == "secret_store" and name != "nanogrid.services":
                    escapes.append(f"{name}:{node.lineno} secret_store(...)")
                if called == SECRET_STORE[1] and name != "nanogrid.storage":
                    escapes.append(f"{name}:{node.lineno} {SECRET_STORE[1]}(...)")
    return escapes


def required(modules, iam: str, fanout: bool) -> dict[str, str]:
    """Action -> why it is needed, for one IAM role."""
    needs: dict[str, str] = {}
    store_actions = class_method_actions(modules, *SECRET_STORE)
    for process, spec in PROCESSES.items():
        if spec["iam"] != iam:
            continue
        calls, problems = codescan.calls_in(modules, process_modules(modules, process) - {SECRET_STORE[0]})
        assert not problems, problems
        for action, where in call_actions(calls).items():
            needs.setdefault(action, f"called by {where[0]}")
        for method, where in secret_store_calls(modules, secret_store_callers(modules, process)).items():
            for action in sorted(store_actions[method]):
                needs.setdefault(action, f"{SECRET_STORE[1]}.{method}, called by {where[0]}")
    for action, where in script_actions().get(iam, {}).items():
        needs.setdefault(action, f"called by {where[0]}")
    library = {**LIBRARY_ACTIONS, **(FANOUT_LIBRARY_ACTIONS if fanout else {})}
    for action, (_, reason) in library.items():
        needs.setdefault(action, f"kombu: {reason}")
    for action, (_, _, reason) in (FANOUT_LIBRARY_PARAMETER_ACTIONS if fanout else {}).items():
        needs.setdefault(action, f"kombu: {reason}")
    for action, (reason, _) in IMPLIED_ACTIONS.items():
        if action.split(":")[0] in {a.split(":")[0] for a in needs}:
            needs.setdefault(action, reason)
    for action in NOT_GRANTED.get(iam, {}):
        needs.pop(action, None)
    return needs


# --- IAM ----------------------------------------------------------------------------------------


def test_the_scanner_sees_the_storage_adapters(modules):
    calls, problems = codescan.calls_in(modules, set(modules))
    assert not problems, problems
    actions = codescan.actions_of(calls)
    # Guards against a scanner that silently finds nothing.
    for action in ("s3:PutObject", "s3:GetObject", "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Scan"):
        assert action in actions, action


def test_the_scanner_sees_the_transport(modules):
    """The broadcast transport gets its clients from kombu's channel (self.sqs(...),
    self.fanout.get_client(), registry entries' .sqs/.sns): the calls on them are found, and no
    call of an SQS or SNS operation there is left unattributed."""
    transport = {name for name in modules if codescan.is_transport(name)}
    assert "nanogrid.transport.sqs" in transport
    calls, problems = codescan.calls_in(modules, transport)
    assert not problems, problems
    actions = codescan.actions_of(calls)
    for action in ("sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueueTags", "sqs:ListQueues", "sqs:DeleteQueue",
                   "sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sns:Unsubscribe",
                   "sns:ListSubscriptionsByTopic"):
        assert action in actions, action
    misses = [m for name in sorted(transport) for m in codescan.transport_misses(name, modules[name].tree, calls)]
    assert not misses, f"SQS/SNS operations called on something the scan does not know as a client: {misses}"
    for process in ("api", "flower", "worker"):
        assert "nanogrid.transport.sqs" in process_modules(modules, process), process


def test_scanner_rules_for_transport_clients():
    import ast

    source = (
        "class C:\n"
        "    def f(self, sqs, entry, name):\n"
        "        self.sqs(name).create_queue(QueueName='q', tags={})\n"
        "        sqs.list_queues()\n"
        "        entry.sns.unsubscribe(SubscriptionArn='a')\n"
        "        self.fanout.get_client().publish(TopicArn='t', Message='m')\n"
        "        other = self.conn\n"
        "        other.send_message(QueueUrl='u', MessageBody='b')\n"
    )
    tree = ast.parse(source)
    calls, problems = codescan.api_calls("nanogrid.transport.example", tree, {})
    assert not problems, problems
    found = codescan.actions_of(calls)
    assert set(found) == {"sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueues", "sns:Unsubscribe", "sns:Publish"}
    misses = codescan.transport_misses("nanogrid.transport.example", tree, calls)
    assert len(misses) == 1 and "send_message" in misses[0], misses
    # Outside the transports, a name is not a client: only client("...") calls and what they bind are.
    calls, _ = codescan.api_calls("nanogrid.storage.example", tree, {})
    assert calls == []


def test_units_run_the_processes_the_checks_assume():
    for process, spec in PROCESSES.items():
        unit = (ANSIBLE / "roles" / spec["unit"]).read_text()
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        assert spec["exec"] in exec_start, (process, exec_start)


def test_library_actions_are_really_called_by_kombu():
    calls, strings = kombu_calls()
    for action, (method, _) in {**LIBRARY_ACTIONS, **FANOUT_LIBRARY_ACTIONS}.items():
        assert method_calls(calls, method) or method in strings, f"{action}: kombu no longer calls {method}"
    for action, (method, keyword, _) in FANOUT_LIBRARY_PARAMETER_ACTIONS.items():
        made = method_calls(calls, method)
        assert made, f"{action}: kombu no longer calls {method}"
        assert any(keyword in {k.arg for k in call.keywords} for call in made), (
            f"{action}: kombu no longer passes {keyword}= to {method}")
        service = action.split(":")[0]
        assert action in codescan.iam_actions(service, method, (keyword,)), (
            f"{action}: botocore no longer documents {method}({keyword}=...) as needing it")


def test_implied_and_withheld_actions_still_hold(modules):
    for action, (_, check) in IMPLIED_ACTIONS.items():
        check()
    for iam, withheld in NOT_GRANTED.items():
        own = set()
        for process, spec in PROCESSES.items():
            if spec["iam"] == iam:
                own |= {m for m in process_modules(modules, process) if m.startswith(f"nanogrid.{iam}")}
        assert own, iam
        for action, (_, receivers) in withheld.items():
            for name in own:
                assert not deletes_on(modules[name].tree, receivers), f"{iam} now calls {action} in {name}"


def test_fanout_permissions_follow_the_code():
    channel = sqs_channel()
    assert root_default("celery_sns_fanout") is channel.supports_fanout, (
        "deploy/terraform celery_sns_fanout must match whether the Celery transport enables supports_fanout")
    assert root_default("dynamic_queue_prefix") == channel.dynamic_prefix


@pytest.mark.parametrize("iam", ["controller", "worker"])
def test_every_called_action_is_granted_and_nothing_more(modules, iam):
    fanout = root_default("celery_sns_fanout")
    needs = required(modules, iam, fanout)
    grants = granted(iam, fanout)
    missing = {a: why for a, why in needs.items() if a not in grants}
    assert not missing, f"{iam} role lacks: " + "; ".join(f"{a} ({why})" for a, why in sorted(missing.items()))
    extra = sorted(set(grants) - set(needs))
    assert not extra, f"{iam} role grants actions nothing calls: {extra}"


@pytest.mark.parametrize("iam", ["controller", "worker"])
def test_grants_are_scoped_to_resources(iam):
    fanout = root_default("celery_sns_fanout")
    for statement in policy_statements(iam, fanout):
        actions, resources = statement["actions"], statement["resources"]
        assert all("*" not in a for a in actions), actions
        if statement.get("effect", "Allow") == "Deny":
            continue
        if resources in (["*"], "*"):
            assert set(actions) <= RESOURCE_STAR_ACTIONS, actions
            if "cloudwatch:PutMetricData" in actions:
                condition = single(statement["condition"])
                assert condition["variable"] == "cloudwatch:namespace"
            continue
        for action in actions:
            if action in ACCOUNT_SCOPED_ACTIONS:
                local, arn = ACCOUNT_SCOPED_ACTIONS[action]
                assert resources == [f"${{local.{local}}}"], (action, resources)
                assert tf_module("modules/compute").locals[local] == arn, (local, arn)
            if action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
                # Objects of a bucket: all of them, or the dependency layers' keys.
                assert all((r.endswith("/*") or r.endswith("/layers/*.tar.gz")) and "bucket" in r
                           for r in resources), (action, resources)
            if action == "s3:ListBucket":
                assert all("bucket" in r and not r.endswith("/*") for r in resources), resources
            if action.startswith("sns:"):
                assert resources == ["${local.dynamic_topic_arn}"], resources
            if action.startswith("dynamodb:"):
                assert all("table" in r for r in resources), resources
            if action.startswith("secretsmanager:"):
                # The fleet's own secrets, or the tenants' (local.tenant_secrets_arn, on its own).
                assert resources == ["${local.tenant_secrets_arn}"] or all("secrets." in r for r in resources), \
                    (action, resources)
    if fanout:
        deny = [s for s in policy_statements(iam, fanout) if s.get("effect") == "Deny"]
        assert deny and deny[0]["resources"] == "${local.fixed_queue_arns}"
        assert "sqs:DeleteQueue" in deny[0]["actions"]


def granted_on(iam: str, fanout: bool, resource: str) -> set[str]:
    return {a for a, resources in granted(iam, fanout).items() if resource in resources}


@pytest.mark.parametrize("iam", ["controller", "worker"])
def test_dynamic_prefix_grants_are_what_the_transport_does_there(modules, iam):
    fanout = root_default("celery_sns_fanout")
    if not fanout:
        assert not granted_on(iam, fanout, "${local.dynamic_queue_arn}")
        return
    needs = required(modules, iam, fanout)
    withheld = NOT_ON_DYNAMIC_QUEUES.get(iam, {})
    assert set(withheld) <= set(needs), f"{iam}: withheld from the dynamic queues but not needed at all: {withheld}"
    expected = {a for a in needs if a.startswith("sqs:")} - set(ACCOUNT_SCOPED_ACTIONS) - set(withheld)
    on_prefix = granted_on(iam, fanout, "${local.dynamic_queue_arn}")
    assert on_prefix == expected, (
        f"{iam} on the per-process queues: missing {sorted(expected - on_prefix)}, "
        f"not needed there {sorted(on_prefix - expected)}")
    topics = {a for a in needs if a.startswith("sns:")}
    on_topics = granted_on(iam, fanout, "${local.dynamic_topic_arn}")
    assert on_topics == topics, f"{iam} on the topics: missing {sorted(topics - on_topics)}, extra {sorted(on_topics - topics)}"


def test_controller_processes_run_no_worker():
    """NOT_ON_DYNAMIC_QUEUES["controller"] holds while no controller unit runs a Celery worker
    (`nanogrid worker`, or `nanogrid builder`, a Celery worker on the builds queue)."""
    for process, spec in PROCESSES.items():
        unit = (ANSIBLE / "roles" / spec["unit"]).read_text()
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        runs_worker = re.search(r"\b(worker|builder)\b", exec_start.split("=", 1)[1].split("--")[0]) is not None
        assert runs_worker == (spec["iam"] == "worker"), (process, exec_start)


def test_only_workers_read_the_gcp_secret_and_the_ai_node_calls_nothing():
    compute = tf_module("modules/compute")
    documents = compute.data["aws_iam_policy_document"]
    assert "ai" not in documents  # the AI node has no inline policy
    assert set(compute.resources["aws_iam_role_policy"]) == {"controller", "worker"}
    controller = str(documents["controller"])
    assert "gcp_credentials" not in controller
    assert "gcp_credentials" in str(documents["worker"])
    attachments = compute.resources["aws_iam_role_policy_attachment"]
    assert [a["policy_arn"].rsplit("/", 1)[1] for a in attachments.values()] == ["AmazonSSMManagedInstanceCore"]


def key_store_table_methods() -> set[str]:
    """The DocumentTable methods nanogrid.keys.KeyStore calls on its table (self.table.X(...))."""
    tree = ast.parse((PACKAGE / "keys.py").read_text())
    store = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KeyStore")
    methods = set()
    for node in ast.walk(store):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            holder = node.func.value
            if isinstance(holder, ast.Attribute) and holder.attr == "table" \
                    and isinstance(holder.value, ast.Name) and holder.value.id == "self":
                methods.add(node.func.attr)
    return methods


def dynamodb_table_actions(modules) -> dict[str, set[str]]:
    """DynamoDBTable method (the DocumentTable methods, same names) -> the IAM actions of its boto3 calls."""
    return class_method_actions(modules, "nanogrid.storage.dynamodb", "DynamoDBTable")


def test_the_keys_table_grants_are_exactly_what_the_key_store_calls(modules, monkeypatch):
    """The API and `nanogrid keys` reach the keys table only through KeyStore: the controller role
    gets on that table exactly the actions of the DocumentTable methods KeyStore calls, and no
    other role gets anything on it."""
    used = key_store_table_methods()
    assert used and used <= {"insert", "get", "replace", "delete", "scan"}, used
    by_method = dynamodb_table_actions(modules)
    expected = set().union(*(by_method[m] for m in used))
    assert expected, by_method
    fanout = root_default("celery_sns_fanout")
    on_table = granted_on("controller", fanout, "${var.keys_table.arn}")
    assert on_table == expected, (f"controller on the keys table: missing {sorted(expected - on_table)}, "
                                  f"not called by KeyStore {sorted(on_table - expected)}")
    for statement in policy_statements("controller", fanout):
        if "${var.keys_table.arn}" in statement["resources"]:
            assert statement["resources"] == ["${var.keys_table.arn}"], statement
    assert not granted_on("worker", fanout, "${var.keys_table.arn}")
    assert "keys_table" not in str(tf_module("modules/compute").data["aws_iam_policy_document"]["worker"])
    # Both ways in, the API's guard and `nanogrid keys`, use the keys table of their settings.
    for store in key_stores_of_the_api_and_the_cli(monkeypatch):
        assert isinstance(store, keys.KeyStore) and isinstance(store.table, DynamoDBTable), store
        assert (store.table.table_name, store.table.key_name) == ("KeysOfTheCheck", "keyId")


def key_stores_of_the_api_and_the_cli(monkeypatch) -> list[keys.KeyStore]:
    """The key store the API's guard holds and the one `nanogrid keys` opens, both on DynamoDB with
    the keys table named KeysOfTheCheck (nothing is called: the tables connect on first use)."""
    env = {"NANOGRID_STORAGE": "aws", "NANOGRID_KEYS_TABLE": "KeysOfTheCheck", "AWS_REGION": "ap-northeast-2"}
    settings = Settings.from_env(env)
    api = App(settings)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store, _where = cli._key_store()
    return [api.keys, store]


def test_the_api_reads_the_queue_depth_it_is_granted(modules):
    """Backpressure (NANOGRID_MAX_QUEUE_DEPTH) reads the task queue's depth from the API process:
    sqs:GetQueueAttributes on the task queue is granted to the controller role."""
    calls, problems = codescan.calls_in(modules, {"nanogrid.transport.depth"})
    assert not problems, problems
    assert "sqs:GetQueueAttributes" in codescan.actions_of(calls)
    assert {"nanogrid.api.ratelimit", "nanogrid.transport.depth"} <= process_modules(modules, "api")
    assert "sqs:GetQueueAttributes" in granted_on("controller", root_default("celery_sns_fanout"), "${var.task_queue.arn}")


TENANT_SECRETS = "${local.tenant_secrets_arn}"
TENANT_SECRETS_ARN = ("arn:${var.partition}:secretsmanager:${var.region}:${var.account_id}:"
                      "secret:${var.secrets_prefix}*/*")


def iam_matches(pattern: str, value: str) -> bool:
    """IAM's ARN wildcards: * any run of characters ("/" included), ? one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def test_the_secret_store_is_reached_only_the_way_the_scan_follows(modules):
    """required() counts the secret store's actions per method a role's processes call on
    services().secrets: that holds while nothing reaches the store another way."""
    assert not secret_store_escapes(modules), secret_store_escapes(modules)
    assert set(secret_store_calls(modules, process_modules(modules, "api"))) == {"put", "metadata", "list", "delete"}
    for process in ("worker", "builder"):
        assert set(secret_store_calls(modules, secret_store_callers(modules, process))) == {"get"}, process
    for process in ("scheduler", "publisher", "flower"):
        called = set(secret_store_calls(modules, secret_store_callers(modules, process)))
        assert "get" not in called, (process, called)


def test_adapter_parameter_actions_still_hold():
    tree = ast.parse((PACKAGE / "storage" / "secretsmanager.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    for action, (method, keyword, _) in ADAPTER_PARAMETER_ACTIONS.items():
        made = method_calls(calls, method)
        assert made and any(keyword in {k.arg for k in call.keywords} for call in made), (
            f"{action}: the code no longer passes {keyword}= to {method}")
        service, name = action.split(":")
        operation = codescan.method_map(service)[method]
        model = botocore.loaders.Loader().load_service_model(service, "service-2")
        documentation = model["operations"][operation]["documentation"]
        assert re.search(rf"If you include tags.*?you also need <code>{re.escape(action)}</code>", documentation), (
            f"{action}: botocore no longer documents {operation} with {keyword} as needing it")
    # No KmsKeyId: the secrets are encrypted with the AWS managed key aws/secretsmanager, which
    # needs no kms: grant (another key would need kms:GenerateDataKey and kms:Decrypt).
    for call in method_calls(calls, "create_secret"):
        assert "KmsKeyId" not in {k.arg for k in call.keywords}, ast.unparse(call)
    assert not [a for iam in ("controller", "worker")
                for a in granted(iam, root_default("celery_sns_fanout")) if a.startswith("kms:")]


def test_tenant_secrets_are_managed_by_the_api_and_read_by_the_workers_alone(modules):
    """The controller role manages the tenants' secrets and cannot read one (no GetSecretValue on
    them); the worker role can only read them. Both on the prefix's secrets alone."""
    from nanogrid.config import Settings
    from nanogrid.storage.secretsmanager import SecretsManagerStore

    compute = tf_module("modules/compute")
    assert compute.locals["tenant_secrets_arn"] == TENANT_SECRETS_ARN
    assert tf_module().modules["compute"]["secrets_prefix"] == "${var.secrets_prefix}"
    assert root_default("secrets_prefix") == Settings.secrets_prefix
    fanout = root_default("celery_sns_fanout")
    store = class_method_actions(modules, *SECRET_STORE)

    controller = granted_on("controller", fanout, TENANT_SECRETS)
    api_methods = set(secret_store_calls(modules, process_modules(modules, "api")))
    assert controller == set().union(*(store[m] for m in api_methods)) - {"secretsmanager:ListSecrets"} == {
        "secretsmanager:CreateSecret", "secretsmanager:PutSecretValue", "secretsmanager:DescribeSecret",
        "secretsmanager:DeleteSecret", "secretsmanager:TagResource"}, controller
    assert "secretsmanager:GetSecretValue" not in controller
    # The controller's one GetSecretValue is on the Redis AUTH token, which its boot reads.
    assert granted("controller", fanout)["secretsmanager:GetSecretValue"] == ["${var.secrets.redis_auth.arn}"]
    # ListSecrets has no resource-level permission; it gives names, tags and dates, never values.
    assert granted("controller", fanout)["secretsmanager:ListSecrets"] == ["*"]

    worker = granted("worker", fanout)
    assert granted_on("worker", fanout, TENANT_SECRETS) == {"secretsmanager:GetSecretValue"}
    assert {a for a in worker if a.startswith("secretsmanager:")} == {"secretsmanager:GetSecretValue"}
    for iam in ("controller", "worker"):
        for statement in policy_statements(iam, fanout):
            if TENANT_SECRETS in statement["resources"]:
                assert statement["resources"] == [TENANT_SECRETS], statement

    # The pattern, with the prefix, holds every tenant secret (its ARN ends in "-" and six random
    # characters) and none of the fleet's own secrets, which the API must not overwrite.
    prefix = root_default("secrets_prefix")
    arn = TENANT_SECRETS_ARN.replace("${var.secrets_prefix}", prefix).replace("${var.partition}", "aws") \
        .replace("${var.region}", "ap-northeast-2").replace("${var.account_id}", "123456789012")
    base = "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:"
    secret_id = SecretsManagerStore(Settings(storage="aws", secrets_prefix=prefix))._id("acme", "DB_PASSWORD")
    assert secret_id == f"{prefix}acme/DB_PASSWORD"
    assert iam_matches(arn, f"{base}{secret_id}-AbC12d")
    assert not iam_matches(arn, f"{base}other/acme/DB_PASSWORD-AbC12d")
    for own in ("gcp_credentials_secret_name", "redis_auth_secret_name"):
        assert not iam_matches(arn, f"{base}{root_default(own)}-AbC12d"), own


# --- Environment ----------------------------------------------------------------------------------


def _ansible_bool(value) -> bool:
    """Ansible's `bool` filter, for rendering the templates without a play."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true", "y")


def _jinja(**options) -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, **options)
    env.filters["bool"] = _ansible_bool
    return env


def _role_vars(*roles: str) -> dict:
    context: dict = {}
    for role in roles:
        defaults = ANSIBLE / "roles" / role / "defaults" / "main.yml"
        if defaults.exists():
            context.update(yaml.safe_load(defaults.read_text()) or {})
    context.update(yaml.safe_load((ANSIBLE / "inventories" / "example" / "group_vars" / "all.yml").read_text()))
    context["nanogrid_redis_auth"] = {"stdout": "example-token/with+specials"}
    context["ansible_managed"] = "Ansible managed"
    env = _jinja()
    for _ in range(5):  # defaults refer to other variables
        for key, value in list(context.items()):
            if isinstance(value, str) and "{{" in value:
                context[key] = env.from_string(value).render(context)
    return context


def render_env(process: str) -> dict[str, str]:
    spec = PROCESSES[process]
    context = _role_vars("common", "nanogrid", spec["role"])
    # Ansible's template module renders with trim_blocks on.
    env = _jinja(trim_blocks=True)
    path = ANSIBLE / "roles" / spec["role"] / "templates" / spec["env"]
    text = env.from_string(path.read_text()).render(context)
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}: bad line {line!r}"
        assert key not in values, f"{path.name}: {key} set twice"
        values[key] = value
    return values


def config_names(modules) -> set[str]:
    reads, _ = codescan.env_reads(modules, {"nanogrid.config"})
    return set(reads)


def production_required(modules, process: str) -> set[str]:
    """The founding document's names Settings reads, minus emulator-only ones and those a process
    does not use, plus the backend selectors."""
    founding = {n for n in config_names(modules) if not n.startswith("NANOGRID_")}
    needed = founding - set(OPTIONAL_EVERYWHERE) - set(OPTIONAL_BY_PROCESS.get(process, {}))
    needed |= ALWAYS_REQUIRED
    if process == "publisher":
        needed |= PUBLISHER_REQUIRED
    return needed


def test_the_env_scanner_sees_the_settings(modules):
    names = config_names(modules)
    for name in ("SQS_QUEUE_URL", "REDIS_HOST", "REDIS_PORT", "S3_CODE_BUCKET", "GCP_BUCKET_NAME", "AI_ENDPOINT",
                 "GOOGLE_APPLICATION_CREDENTIALS", "NANOGRID_STORAGE", "NANOGRID_DEFAULT_TIMEOUT_S", "NANOGRID_MAX_MEMORY_MB"):
        assert name in names, name


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_every_variable_a_process_reads_is_set_or_optional_with_a_reason(modules, process):
    reads, dynamic = codescan.env_reads(modules, process_modules(modules, process))
    assert not dynamic, f"environment reads with computed names: {dynamic}"
    rendered = render_env(process)
    limits = {n for n in config_names(modules) if re.fullmatch(r"NANOGRID_(DEFAULT|MAX)_[A-Z_]+", n)
              and n not in OPTIONAL_EVERYWHERE}
    optional = {**OPTIONAL_EVERYWHERE, **OPTIONAL_BY_PROCESS.get(process, {}), **SYSTEM,
                **{n: RUN_LIMITS_REASON for n in limits}}
    unset = sorted(n for n in reads if n not in rendered and n not in optional)
    assert not unset, f"{process} reads {unset} but {PROCESSES[process]['env']} does not set them " + \
        "(set them, or add them to the optional list with the reason their default is right)"
    missing = sorted(production_required(modules, process) - set(rendered))
    assert not missing, f"{PROCESSES[process]['env']} must set {missing}"
    for key, value in rendered.items():
        assert value.strip(), f"{key} is empty"


def test_optional_lists_name_only_variables_the_code_reads(modules):
    everything, _ = codescan.env_reads(modules, set(modules))
    stale = [n for n in list(OPTIONAL_EVERYWHERE) + [n for m in OPTIONAL_BY_PROCESS.values() for n in m]
             if n not in everything]
    assert not stale, f"optional names the code no longer reads: {sorted(set(stale))}"


@pytest.mark.parametrize("env_file", ["controller.env.j2", "worker.env.j2", "flower.env.j2"])
def test_templates_set_only_variables_their_processes_read(modules, env_file):
    processes = [p for p, spec in PROCESSES.items() if spec["env"] == env_file]
    read: set[str] = set()
    for process in processes:
        read |= set(codescan.env_reads(modules, process_modules(modules, process))[0])
    rendered = render_env(processes[0])
    dead = sorted(set(rendered) - read)
    assert not dead, f"{env_file} sets {dead}, which no process using it reads"


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_rendered_environment_loads_as_production_settings(process):
    from nanogrid.config import Settings

    rendered = render_env(process)
    settings = Settings.from_env(rendered)
    assert settings.storage == "aws"
    assert settings.uses_sqs and settings.queue_name == root_default("task_queue_name")
    assert settings.redis_url.startswith("rediss://") and "ssl_cert_reqs=required" in settings.redis_url
    assert settings.functions_table == root_default("functions_table_name")
    assert settings.jobs_table == root_default("jobs_table_name")
    assert settings.aws_region == root_default("region")
    assert settings.aws_endpoint_url is None
    if PROCESSES[process]["env"] == "worker.env.j2":
        assert settings.archive == "gcs" and settings.gcp_bucket_name
        assert settings.extra["GOOGLE_APPLICATION_CREDENTIALS"].startswith("/etc/nanogrid/")
        assert settings.ai_endpoint.endswith(":11434")
        assert settings.sandbox == "docker"
    else:
        assert settings.archive == "none"
    if process == "api":
        assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    if PROCESSES[process]["env"] == "controller.env.j2":
        assert settings.keys_table == root_default("keys_table_name")
        assert settings.trusted_proxies == 1  # the ALB (test_the_api_trusts_exactly_the_alb)
    else:
        assert "NANOGRID_KEYS_TABLE" not in rendered and "NANOGRID_TRUSTED_PROXIES" not in rendered


def test_the_secrets_prefix_is_terraforms():
    """Both env files set NANOGRID_SECRETS_PREFIX to the prefix Terraform scopes the grants to:
    passed to the playbooks at boot, and the same default on both sides."""
    from nanogrid.config import Settings

    assert tf_module("modules/compute").locals["common_vars"]["nanogrid_secrets_prefix"] == "${var.secrets_prefix}"
    for process, spec in PROCESSES.items():
        rendered = render_env(process)
        assert "NANOGRID_SECRETS_KEY" not in rendered, process
        if spec["env"] == "flower.env.j2":
            continue
        assert rendered["NANOGRID_SECRETS_PREFIX"] == root_default("secrets_prefix") == Settings.secrets_prefix, process
        assert Settings.from_env(rendered).secrets_prefix == root_default("secrets_prefix")


def test_the_api_trusts_exactly_the_alb():
    """NANOGRID_TRUSTED_PROXIES=1 on the controllers is right only while the ALB is the one proxy in
    front of them, appends the client's address to X-Forwarded-For, and is the only way in to 8080."""
    assert render_env("api")["NANOGRID_TRUSTED_PROXIES"] == "1"
    alb = tf_module("modules/edge").resource("aws_lb", "this")
    assert alb.get("xff_header_processing_mode", "append") == "append"
    ingress = tf_module("modules/network").resources["aws_vpc_security_group_ingress_rule"]
    to_api = [r for r in ingress.values()
              if "aws_security_group.controller.id" in r["security_group_id"] and r["from_port"] <= 8080 <= r["to_port"]]
    assert to_api and all(r.get("referenced_security_group_id") == "${aws_security_group.alb.id}" for r in to_api), to_api


def test_the_api_rate_limit_default_is_the_waf_rule():
    """NANOGRID_RATE_LIMIT stays unset: its default is the WAF's per-address rule."""
    from nanogrid.config import RateLimit, Settings

    assert Settings.rate_limit == RateLimit(root_default("waf_rate_limit"), root_default("waf_rate_window_seconds"))
    for process in PROCESSES:
        assert "NANOGRID_RATE_LIMIT" not in render_env(process), process


def test_the_tenant_running_quota_is_above_the_fleets_run_slots():
    """The reason NANOGRID_TENANT_MAX_RUNNING may stay unset: at most worker_max_size x
    worker_concurrency runs are in progress at once, fewer than the quota."""
    from nanogrid.config import Settings

    defaults = yaml.safe_load((ANSIBLE / "roles" / "worker" / "defaults" / "main.yml").read_text())
    slots = root_default("worker_max_size") * int(defaults["worker_concurrency"])
    assert Settings.tenant_max_running == 0 or Settings.tenant_max_running > slots, (Settings.tenant_max_running, slots)


def test_the_worker_metrics_exporter_stays_on_the_instance(modules):
    """Nothing in the architecture scrapes the workers' exporter (no Prometheus), so it keeps its
    loopback default, no template moves it, and no security group opens its port
    (test_terraform checks the worker group has no ingress at all)."""
    from nanogrid.config import Settings

    assert Settings.worker_metrics_host == "127.0.0.1"
    for process in PROCESSES:
        rendered = render_env(process)
        assert "NANOGRID_WORKER_METRICS_HOST" not in rendered, process
    ingress = tf_module("modules/network").resources["aws_vpc_security_group_ingress_rule"]
    assert not [n for n, r in ingress.items() if "aws_security_group.worker.id" in r["security_group_id"]]


def test_terraform_passes_every_deployment_value_the_playbooks_need():
    """ansible-pull at boot gets its values from Terraform: the same keys as the example inventory."""
    inventory = yaml.safe_load((ANSIBLE / "inventories" / "example" / "group_vars" / "all.yml").read_text())
    passed = set(tf_module("modules/compute").locals["common_vars"])
    missing = sorted(set(inventory) - passed)
    assert not missing, f"Terraform's bootstrap vars lack {missing}"
    defaults = yaml.safe_load((ANSIBLE / "roles" / "nanogrid" / "defaults" / "main.yml").read_text())
    for name in defaults["nanogrid_required_vars"]:
        assert name in passed, name


def test_the_sandbox_runtime_choice_is_the_same_in_terraform_ansible_and_the_code():
    """NANOGRID_DOCKER_RUNTIME: Terraform's variable accepts exactly what Settings accepts, passes it
    to the workers' playbook, and the worker role can register every runtime it may be given."""
    from nanogrid.config import DOCKER_RUNTIMES, Settings

    variable = tf_module().variables["worker_docker_runtime"]
    assert variable["default"] == Settings.docker_runtime == "runc"
    [validation] = variable["validation"]
    assert set(re.findall(r'"(\w+)"', validation["condition"])) == set(DOCKER_RUNTIMES)
    assert tf_module().modules["compute"]["worker_docker_runtime"] == "${var.worker_docker_runtime}"
    assert "worker_docker_runtime = var.worker_docker_runtime" in " ".join(
        str(tf_module("modules/compute").locals["bootstrap"]["worker"]["vars"]).split())
    defaults = yaml.safe_load((ANSIBLE / "roles" / "worker" / "defaults" / "main.yml").read_text())
    assert defaults["worker_docker_runtime"] == Settings.docker_runtime
    assert set(defaults["worker_docker_runtimes"]) == set(DOCKER_RUNTIMES) - {"runc"}  # runc comes with Docker
    assert render_env("worker")["NANOGRID_DOCKER_RUNTIME"] == Settings.docker_runtime


def test_the_job_retention_is_the_same_in_terraform_and_the_code():
    """The records expire by the table's TTL and the stored outputs by the bucket's lifecycle, after
    the retention the applications assume (NANOGRID_JOB_RETENTION_DAYS stays unset on the fleet)."""
    from nanogrid.config import Settings

    assert root_default("job_retention_days") == Settings.job_retention_days
    assert tf_module().modules["data"]["job_retention_days"] == "${var.job_retention_days}"
    assert tf_module("modules/data").modules["user_data_bucket"]["expire_prefixes"] == {
        "jobs/": "${ceil(var.job_retention_days)}"}
    for process in PROCESSES:
        assert "NANOGRID_JOB_RETENTION_DAYS" not in render_env(process), process


@pytest.mark.parametrize(("iam", "actions"), [
    ("worker", {"sqs:SendMessage"}),  # nanogrid/worker/deadletters.py buries a message there
    ("controller", {"sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes"}),  # `nanogrid dlq list|redrive`
])
def test_the_dead_letter_queue_is_granted_to_who_uses_it(iam, actions):
    """The action check above names actions, not queues: an action granted on the task queue alone
    would pass it and still be refused on the dead-letter queue."""
    on_the_queue = {action for statement in policy_statements(iam, root_default("celery_sns_fanout"))
                    if statement.get("effect", "Allow") == "Allow"
                    and statement["resources"] == ["${var.dead_letter_queue.arn}"]
                    for action in statement["actions"]}
    assert on_the_queue == actions


def test_the_dead_letter_queue_is_the_one_terraform_makes():
    """Unset, NANOGRID_DEAD_LETTER_QUEUE_URL is the task queue's URL with '-dlq': the queue Terraform
    creates as the task queue's redrive target, where SQS itself also moves a message received
    too often."""
    from nanogrid.config import Settings

    sqs = tf_module("modules/data")
    assert sqs.resource("aws_sqs_queue", "dlq")["name"] == "${var.task_queue_name}-dlq"
    assert "aws_sqs_queue.dlq.arn" in sqs.resource("aws_sqs_queue", "tasks")["redrive_policy"]
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/nanogrid-task-queue"
    assert Settings.from_env({"SQS_QUEUE_URL": url}).dead_letter_queue == url + "-dlq"
    for process in PROCESSES:
        assert "NANOGRID_DEAD_LETTER_QUEUE_URL" not in render_env(process), process


@pytest.mark.parametrize(("iam", "actions"), [
    # `nanogrid builder` consumes it like the task queue; a worker re-sends a lost build message
    ("worker", {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes", "sqs:SendMessage"}),
    # the API publishes build requests (kombu reads the queue when it declares it)
    ("controller", {"sqs:SendMessage", "sqs:GetQueueAttributes"}),
])
def test_the_builds_queue_is_granted_to_who_uses_it(iam, actions):
    """Like the dead-letter queue: the action check names actions, not queues, so an action
    granted on the task queue alone would pass it and still be refused on the builds queue."""
    on_the_queue = {action for statement in policy_statements(iam, root_default("celery_sns_fanout"))
                    if statement.get("effect", "Allow") == "Allow"
                    and statement["resources"] == ["${var.build_queue.arn}"]
                    for action in statement["actions"]}
    assert on_the_queue == actions
    assert "${var.build_queue.arn}" in tf_module("modules/compute").locals["fixed_queue_arns"]


def test_the_builds_queue_is_the_one_terraform_makes():
    """Unset, NANOGRID_BUILD_QUEUE_URL is the task queue's URL with '-builds': the queue Terraform
    creates beside the task queue, whose visibility timeout outlasts a build, with a dead-letter
    queue of its own like the task queue's."""
    from nanogrid.config import Settings

    data = tf_module("modules/data")
    builds = data.resource("aws_sqs_queue", "builds")
    assert builds["name"] == "${var.task_queue_name}-builds"
    assert builds["sqs_managed_sse_enabled"] is True
    assert "deadLetterTargetArn = aws_sqs_queue.builds_dlq.arn" in builds["redrive_policy"]
    assert re.search(r"maxReceiveCount\s*=\s*var.dlq_max_receive_count", builds["redrive_policy"])
    assert data.resource("aws_sqs_queue", "builds_dlq")["name"] == "${var.task_queue_name}-builds-dlq"
    assert "aws_sqs_queue.builds.arn" in str(data.resource("aws_sqs_queue_redrive_allow_policy", "builds_dlq"))
    assert builds["visibility_timeout_seconds"] == "${var.build_queue_visibility_timeout_seconds}"
    assert tf_module().modules["data"]["build_queue_visibility_timeout_seconds"] == \
        "${var.build_queue_visibility_timeout_seconds}"
    stop = yaml.safe_load((ANSIBLE / "roles" / "worker" / "defaults" / "main.yml").read_text())
    assert root_default("build_queue_visibility_timeout_seconds") > Settings.build_timeout_s
    assert int(stop["worker_builder_stop_timeout_s"]) > Settings.build_timeout_s
    assert tf_module().modules["compute"]["build_queue"] == "${module.data.build_queue}"
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/nanogrid-task-queue"
    settings = Settings.from_env({"SQS_QUEUE_URL": url})
    assert settings.build_queue == url + "-builds"
    assert settings.build_queue_name == root_default("task_queue_name") + "-builds"
    for process in PROCESSES:
        assert "NANOGRID_BUILD_QUEUE_URL" not in render_env(process), process


def test_the_workers_write_only_the_layers_in_the_code_bucket():
    """The builder stores layers/<sha256>.tar.gz (nanogrid/layers.py archive_key) in the code
    bucket; the worker role may put exactly those keys there, never a function's code."""
    from nanogrid import layers
    from nanogrid.functions import code_key

    assert re.fullmatch(r"layers/[0-9a-f]+\.tar\.gz", layers.archive_key("ab" * 32))
    assert not code_key("layers", "f", 1).endswith(".tar.gz")  # a tenant named "layers" keeps its code
    puts = [statement["resources"] for statement in policy_statements("worker", root_default("celery_sns_fanout"))
            if "s3:PutObject" in statement["actions"] and any("code_bucket" in r for r in statement["resources"])]
    assert puts == [["${var.code_bucket.arn}/layers/*.tar.gz"]], puts
    controller = granted("controller", root_default("celery_sns_fanout"))
    assert "${var.code_bucket.arn}/*" in controller["s3:DeleteObject"]  # LayerRegistry.delete, from the API


def layer_registry_table_methods() -> set[str]:
    """The DocumentTable methods nanogrid.layers.LayerRegistry calls on its table (self.table.X(...))."""
    tree = ast.parse((PACKAGE / "layers.py").read_text())
    registry = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LayerRegistry")
    return {node.func.attr for node in ast.walk(registry)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "table"}


def test_layer_documents_are_writable_by_who_writes_them(modules):
    """Layer documents live in the functions table: the API inserts and replaces them, the
    builder (on the workers) replaces them to claim and finish a build, the workers read them.
    Both roles get on that table the actions of the DocumentTable methods LayerRegistry calls
    (except delete, which only the API's DELETE /functions route reaches)."""
    used = layer_registry_table_methods()
    assert {"get", "insert", "replace", "delete"} <= used, used
    by_method = dynamodb_table_actions(modules)
    fanout = root_default("celery_sns_fanout")
    for iam, methods in (("controller", used), ("worker", used - {"delete", "insert"})):
        expected = set().union(*(by_method[m] for m in methods))
        on_table = granted_on(iam, fanout, "${var.functions_table.arn}")
        assert expected <= on_table, f"{iam} on the functions table lacks {sorted(expected - on_table)}"
    assert "dynamodb:DeleteItem" not in granted_on("worker", fanout, "${var.functions_table.arn}")
