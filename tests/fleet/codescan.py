"""Static scans of the code for the fleet cross-checks: imports, boto3 calls, environment reads.

Everything is read from the source at test time, so the checks follow the code as it grows:
- an import graph over nanogrid/ and the top-level modules (celeryconfig, wsgi), counting
  imports inside functions and module names written as strings (Celery's include=[...] and
  config_from_object("...")), to know which modules each process can run;
- boto3 client calls: clients come from a call with a service-name literal (boto3.client("s3"),
  aws.client(settings, "sqs")), from functions returning such a call (def _s3(self): return ...),
  and from names and self attributes bound to either; the methods called on them are mapped to
  API operations with botocore's own service models, then to IAM actions;
- environment reads: os.environ / os.getenv / env.get("X"), the config reader's
  read.str/int/float/choice("X") and read.limit("X") (two names), and name tuples tested against
  the environment in a comprehension.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import botocore.session

# Methods of a boto3 client that are not API operations (or are handled separately).
CLIENT_NON_API = {"get_paginator", "get_waiter", "can_paginate", "close", "exceptions", "meta", "generate_presigned_url",
                  "generate_presigned_post"}
# S3 managed transfers (boto3.s3.transfer) and operations authorized by another action name.
S3_ACTIONS = {
    "upload_file": ["PutObject"], "upload_fileobj": ["PutObject"],
    "download_file": ["GetObject"], "download_fileobj": ["GetObject"],
    "HeadObject": ["GetObject"], "HeadBucket": ["ListBucket"], "ListObjects": ["ListBucket"],
    "ListObjectsV2": ["ListBucket"], "DeleteObjects": ["DeleteObject"], "CopyObject": ["GetObject", "PutObject"],
}
IAM_PREFIX = {"monitoring": "cloudwatch"}
# Clients handed around by name (a parameter `sqs`, an attribute `entry.sns`, kombu's channel
# method `self.sqs(queue=...)`, `self.sns.get_client()`): the identifier names the service.
NAMED_CLIENTS = {"sqs": "sqs", "asynsqs": "sqs", "sns": "sns", "s3": "s3", "dynamodb": "dynamodb",
                 "cloudwatch": "cloudwatch", "autoscaling": "autoscaling", "secretsmanager": "secretsmanager"}
ENV_RECEIVERS = {"os.environ", "environ", "env", "self.env", "read", "os"}
ENV_METHODS = {"get", "str", "int", "float", "choice", "pop", "setdefault", "getenv", "bool"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")


# --- botocore ------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _session():
    return botocore.session.get_session()


@lru_cache(maxsize=None)
def services() -> frozenset[str]:
    return frozenset(_session().get_available_services())


@lru_cache(maxsize=None)
def method_map(service: str) -> dict[str, str]:
    """snake_case client method -> API operation name, from botocore's service model."""
    client = _session().create_client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return dict(client.meta.method_to_api_mapping)


def waiter_operation(service: str, waiter: str) -> str:
    config = _session().get_waiter_model(service)
    name = next(n for n in config.waiter_names if re.sub(r"(?<!^)(?=[A-Z])", "_", n).lower() == waiter)
    return config.get_waiter(name).operation


def iam_actions(service: str, method: str) -> list[str]:
    """IAM actions a client method needs; raises KeyError for a method botocore does not know."""
    prefix = IAM_PREFIX.get(service, service)
    if service == "s3" and method in S3_ACTIONS:
        return [f"s3:{a}" for a in S3_ACTIONS[method]]
    operation = method_map(service)[method]
    if service == "s3" and operation in S3_ACTIONS:
        return [f"s3:{a}" for a in S3_ACTIONS[operation]]
    return [f"{prefix}:{operation}"]


# --- Source files ----------------------------------------------------------------------------------


@dataclass
class SourceModule:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)


def load_modules(repo: Path, package: str = "nanogrid", top_level: tuple[str, ...] = ("celeryconfig", "wsgi")) -> dict[str, SourceModule]:
    modules: dict[str, SourceModule] = {}
    for path in sorted((repo / package).rglob("*.py")):
        parts = list(path.relative_to(repo).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = SourceModule(name, path, ast.parse(path.read_text(), str(path)))
    for name in top_level:
        path = repo / f"{name}.py"
        if path.exists():
            modules[name] = SourceModule(name, path, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        module.imports = _imports(module, modules)
    return modules


def _imports(module: SourceModule, known: dict[str, SourceModule]) -> set[str]:
    found: set[str] = set()
    is_package = module.path.name == "__init__.py"
    package = module.name if is_package else module.name.rpartition(".")[0]

    def add(name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:i])
            if prefix in known:
                found.add(prefix)

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            add(origin)
            for alias in node.names:
                add(f"{origin}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # include=["nanogrid.worker.tasks"], config_from_object("celeryconfig"), and
            # "module:attr" references such as broker_transport = "nanogrid.transport.sqs:Transport".
            target = node.value.partition(":")[0]
            if target in known:
                add(target)
    found.discard(module.name)
    return found


def reachable(modules: dict[str, SourceModule], entries: list[str]) -> set[str]:
    missing = [e for e in entries if e not in modules]
    assert not missing, f"entry modules not found: {missing}"
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(modules[name].imports - seen)
    return seen


# --- boto3 calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCall:
    module: str
    line: int
    service: str
    method: str


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _factory_service(call: ast.Call) -> str | None:
    """The service of a client-creating call: client("sqs"), x.client(settings, "s3"), ..."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "client":
        return None
    literals = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    literals += [k.value.value for k in call.keywords
                 if k.arg == "service_name" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)]
    for value in literals:
        if value in services():
            return value
    return None


def client_wrappers(modules: dict[str, SourceModule]) -> dict[str, str]:
    """Functions whose return value is a client: name -> service."""
    wrappers: dict[str, str] = {}
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return)):
                    if isinstance(ret.value, ast.Call):
                        service = _factory_service(ret.value)
                        if service:
                            wrappers[node.name] = service
    return wrappers


def api_calls(module_name: str, tree: ast.AST, wrappers: dict[str, str]) -> tuple[list[ApiCall], list[str]]:
    """Client method calls in one module, and the problems (unknown methods) found."""
    calls: list[ApiCall] = []
    problems: list[str] = []
    bound: dict[str, str] = {}  # local names and self attributes bound to a client

    def service_of(expr: ast.AST) -> str | None:
        if isinstance(expr, ast.Call):
            service = _factory_service(expr)
            if service:
                return service
            func = expr.func
            fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if fname in wrappers and not expr.args:
                return wrappers[fname]
            if fname in NAMED_CLIENTS and not expr.args:
                return NAMED_CLIENTS[fname]  # self.sqs(), self.sqs(queue=...)
            if fname == "get_client" and isinstance(func, ast.Attribute):
                return NAMED_CLIENTS.get(_dotted(func.value).rpartition(".")[2])
            return None
        dotted = _dotted(expr)
        if dotted in bound:
            return bound[dotted]
        return NAMED_CLIENTS.get(dotted.rpartition(".")[2]) if dotted else None

    # Two passes: bindings first (module-wide, simple but sufficient for straight-line code).
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            service = service_of(node.value)
            if service:
                for target in node.targets:
                    if _dotted(target):
                        bound[_dotted(target)] = service
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        service = service_of(node.func.value)
        if not service:
            continue
        method = node.func.attr
        if method in ("get_paginator", "get_waiter"):
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                problems.append(f"{module_name}:{node.lineno}: {method} with a non-literal name")
                continue
            if method == "get_paginator":
                calls.append(ApiCall(module_name, node.lineno, service, arg.value))
            else:
                operation = waiter_operation(service, arg.value)
                snake = next(m for m, op in method_map(service).items() if op == operation)
                calls.append(ApiCall(module_name, node.lineno, service, snake))
            continue
        if method in CLIENT_NON_API:
            continue
        try:
            iam_actions(service, method)
        except KeyError:
            problems.append(f"{module_name}:{node.lineno}: {service} client has no method {method}")
            continue
        calls.append(ApiCall(module_name, node.lineno, service, method))
    return calls, problems


def calls_in(modules: dict[str, SourceModule], names: set[str], wrappers: dict[str, str] | None = None):
    wrappers = client_wrappers(modules) if wrappers is None else wrappers
    calls: list[ApiCall] = []
    problems: list[str] = []
    for name in sorted(names):
        found, trouble = api_calls(name, modules[name].tree, wrappers)
        calls.extend(found)
        problems.extend(trouble)
    return calls, problems


def actions_of(calls: list[ApiCall]) -> dict[str, list[str]]:
    """IAM action -> where it is called."""
    actions: dict[str, list[str]] = {}
    for call in calls:
        for action in iam_actions(call.service, call.method):
            actions.setdefault(action, []).append(f"{call.module}:{call.line} {call.method}")
    return actions


def script_calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    wrappers: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return)):
                if isinstance(ret.value, ast.Call) and _factory_service(ret.value):
                    wrappers[node.name] = _factory_service(ret.value)
    return api_calls(str(path.name), tree, wrappers)


# --- Environment reads ------------------------------------------------------------------------------


def _limit_templates(modules: dict[str, SourceModule]) -> list[tuple[str, str]]:
    """(prefix, suffix) pairs of the f-strings in a `def limit(self, suffix, ...)` reader method."""
    templates = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef) and node.name == "limit":
                for js in (n for n in ast.walk(node) if isinstance(n, ast.JoinedStr)):
                    parts = js.values
                    if len(parts) == 2 and isinstance(parts[0], ast.Constant) and isinstance(parts[1], ast.FormattedValue):
                        templates.append((parts[0].value, ""))
    return templates


def env_reads(modules: dict[str, SourceModule], names: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Environment variable -> where it is read; and reads whose name is not a literal."""
    reads: dict[str, list[str]] = {}
    dynamic: list[str] = []
    limit_prefixes = [p for p, _ in _limit_templates(modules)]

    def note(name: str, where: str) -> None:
        reads.setdefault(name, []).append(where)

    for module_name in sorted(names):
        tree = modules[module_name].tree
        for node in ast.walk(tree):
            where = f"{module_name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = _dotted(node.func.value)
                method = node.func.attr
                first = node.args[0] if node.args else None
                literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
                if method == "limit" and receiver == "read" and literal:
                    for prefix in limit_prefixes:
                        note(prefix + literal, where)
                elif method in ENV_METHODS and receiver in ENV_RECEIVERS:
                    if receiver == "os" and method != "getenv":
                        continue
                    if literal and ENV_NAME.match(literal):
                        note(literal, where)
                    elif receiver in ("os.environ", "os") and first is not None and not literal:
                        dynamic.append(where)
            elif isinstance(node, ast.Subscript) and _dotted(node.value) in ("os.environ", "env", "environ"):
                key = node.slice
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and ENV_NAME.match(key.value):
                    if isinstance(node.ctx, ast.Load):
                        note(key.value, where)
            elif isinstance(node, (ast.DictComp, ast.ListComp, ast.SetComp, ast.GeneratorExp)):
                over_env = any(
                    isinstance(gen.iter, ast.Call) and isinstance(gen.iter.func, ast.Attribute)
                    and gen.iter.func.attr == "items" and _dotted(gen.iter.func.value) in ENV_RECEIVERS
                    for gen in node.generators
                )
                if over_env:
                    for compare in (n for n in ast.walk(node) if isinstance(n, ast.Compare)):
                        for op, right in zip(compare.ops, compare.comparators):
                            if isinstance(op, ast.In) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                                for element in right.elts:
                                    if isinstance(element, ast.Constant) and isinstance(element.value, str) and ENV_NAME.match(element.value):
                                        note(element.value, where)
    return reads, dynamic
