"""Static scans of the code for the fleet cross-checks: imports, boto3 calls, environment reads.

Everything is read from the source at test time, so the checks follow the code as it grows:
- an import graph over nanogrid/ and the top-level modules (celeryconfig, wsgi), counting
  imports inside functions and module names written as strings (Celery's include=[...] and
  config_from_object("...")), to know which modules each process can run;
- boto3 client calls: clients come from a call with a service-name literal (boto3.client("s3"),
  aws.client(settings, "sqs")), from functions returning such a call (def _s3(self): return ...),
  and from names and self attributes bound to either; the methods called on them are mapped to
  API operations with botocore's own service models, then to IAM actions. A request parameter
  that botocore documents as needing more permissions (tags on creation: CreateQueue(tags=...)
  needs sqs:TagQueue, CreateTopic(Tags=...) needs sns:TagResource) adds those actions;
- in the kombu transports (nanogrid/transport/), one more rule: there the clients come from
  kombu's channel, never from a client("...") call of ours (self.sqs(queue=...),
  self.asynsqs(...), self.fanout.get_client(), and parameters or attributes such as `sqs` and
  `entry.sns` holding what those returned), so an identifier named after a service (`sqs`,
  `asynsqs`, `sns`) or an object whose get_client() hands out one (`fanout`) is a client of that
  service. Only there: elsewhere `self.s3` may well be a blob store, not a client.
  transport_misses() lists the calls there whose method is an SQS or SNS operation but which
  no rule attributed to a client, so a new way of reaching a client cannot go unseen;
- environment reads: Settings (nanogrid.config) declares every variable it reads and is asked for
  them; anywhere else, os.environ / os.getenv / env.get("X") and name tuples tested against the
  environment in a comprehension are found in the source, so a read outside Settings shows up. The
  name may be a literal or a module-level string constant, of the module itself or imported from
  another. A read whose name is neither is reported as dynamic, for every environment-like receiver.
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
# The kombu transports: modules of this package get the named-client rule below.
TRANSPORT_PACKAGE = "nanogrid.transport"
# In the transports, clients handed around by name: kombu's channel methods self.sqs(queue=...)
# and self.asynsqs(...), a parameter `sqs`, an attribute `entry.sns`. The identifier names the service.
NAMED_CLIENTS = {"sqs": "sqs", "asynsqs": "sqs", "sns": "sns"}
# In the transports, objects whose get_client() returns a client: kombu's SNS fanout helper
# (channel.fanout, an instance of kombu.transport.SQS.SNS.SNS) and its `sns` back-reference.
CLIENT_HOLDERS = {"fanout": "sns", "sns": "sns"}
# The services whose operation names transport_misses() looks for.
TRANSPORT_SERVICES = ("sqs", "sns")
# kombu's own helpers in the transports: their methods (self.fanout.publish(...),
# self.fanout.subscriptions.subscribe_queue(...), a kombu producer's publish(...)) are kombu's, not
# clients', and the AWS calls they
# make are on the test's list of kombu's actions, each checked against kombu's source.
KOMBU_HELPERS = {"fanout", "subscriptions", "producer"}
ENV_RECEIVERS = {"os.environ", "environ", "env", "self.env", "os"}
ENV_METHODS = {"get", "pop", "setdefault", "getenv"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
CONFIG_MODULE = "nanogrid.config"  # Settings: the one reader of the environment


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


PARAMETER_PERMISSIONS = re.compile(r"you must have the (.+?) permissions", re.S)


@lru_cache(maxsize=None)
def parameter_actions(service: str, operation: str) -> dict[str, tuple[str, ...]]:
    """Request parameter -> the further IAM actions using it needs, as botocore's service model
    documents them ("To be able to tag a queue on creation, you must have the sqs:CreateQueue
    and sqs:TagQueue permissions"). The operation's own action is left out."""
    model = _session().get_service_model(service).operation_model(operation)
    own = f"{IAM_PREFIX.get(service, service)}:{operation}"
    found: dict[str, tuple[str, ...]] = {}
    for name, shape in (model.input_shape.members.items() if model.input_shape else ()):
        match = PARAMETER_PERMISSIONS.search(shape.documentation or "")
        if match:
            named = re.findall(r"<code>([a-z0-9-]+:[A-Za-z0-9]+)</code>", match.group(1))
            actions = tuple(a for a in named if a != own)
            if actions:
                found[name] = actions
    return found


def iam_actions(service: str, method: str, keywords: tuple[str, ...] = ()) -> list[str]:
    """IAM actions a client method needs, called with these keyword arguments; raises KeyError
    for a method botocore does not know."""
    prefix = IAM_PREFIX.get(service, service)
    if service == "s3" and method in S3_ACTIONS:
        return [f"s3:{a}" for a in S3_ACTIONS[method]]
    operation = method_map(service)[method]
    if service == "s3" and operation in S3_ACTIONS:
        return [f"s3:{a}" for a in S3_ACTIONS[operation]]
    extra = parameter_actions(service, operation)
    return [f"{prefix}:{operation}"] + [a for k in keywords for a in extra.get(k, ())]


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
    keywords: tuple[str, ...] = ()  # the keyword arguments passed (tags=... may need more actions)


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


def is_transport(module_name: str) -> bool:
    return module_name == TRANSPORT_PACKAGE or module_name.startswith(TRANSPORT_PACKAGE + ".")


def api_calls(module_name: str, tree: ast.AST, wrappers: dict[str, str],
              named_clients: bool | None = None) -> tuple[list[ApiCall], list[str]]:
    """Client method calls in one module, and the problems (unknown methods) found.

    named_clients: apply the transports' rule (an identifier named after a service is a client);
    by default for the modules of nanogrid/transport/ only."""
    named_clients = is_transport(module_name) if named_clients is None else named_clients
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
            if named_clients and fname in NAMED_CLIENTS:
                return NAMED_CLIENTS[fname]  # self.sqs(), self.sqs(queue=...), self.sqs(name)
            if named_clients and fname == "get_client" and isinstance(func, ast.Attribute):
                return CLIENT_HOLDERS.get(_dotted(func.value).rpartition(".")[2])  # self.fanout.get_client()
            return None
        dotted = _dotted(expr)
        if dotted in bound:
            return bound[dotted]
        if named_clients and dotted:
            return NAMED_CLIENTS.get(dotted.rpartition(".")[2])  # sqs.list_queues(), entry.sns.unsubscribe()
        return None

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
        keywords = tuple(sorted(k.arg for k in node.keywords if k.arg))
        try:
            iam_actions(service, method, keywords)
        except KeyError:
            problems.append(f"{module_name}:{node.lineno}: {service} client has no method {method}")
            continue
        calls.append(ApiCall(module_name, node.lineno, service, method, keywords))
    return calls, problems


def transport_misses(module_name: str, tree: ast.AST, calls: list[ApiCall]) -> list[str]:
    """Calls in a transport module whose method is an SQS or SNS client method, on a line where
    the scan attributed no call to a client: a client reached some way the rules do not know."""
    operations = {m for service in TRANSPORT_SERVICES for m in method_map(service)}
    seen = {(c.line, c.method) for c in calls if c.module == module_name}
    seen |= {(c.line, "get_paginator") for c in calls if c.module == module_name}
    misses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if _dotted(node.func.value).rpartition(".")[2] in KOMBU_HELPERS:
                continue
            if (method in operations or method == "get_paginator") and (node.lineno, method) not in seen:
                misses.append(f"{module_name}:{node.lineno}: {_dotted(node.func) or method}(...)")
    return misses


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
        for action in iam_actions(call.service, call.method, call.keywords):
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


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" bindings."""
    found: dict[str, str] = {}
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value.value
    return found


def _constant_scope(module: SourceModule, modules: dict[str, SourceModule]) -> tuple[dict[str, str], dict[str, str]]:
    """What a name can refer to in `module`: its string constants plus those it imports by name
    (from m import NAME [as alias]); and the aliases of the modules it imports (import m as alias,
    from pkg import m), for alias.NAME. Imports inside functions count too."""
    constants = dict(_module_constants(module.tree))
    aliases: dict[str, str] = {}
    is_package = module.path.name == "__init__.py"
    package = module.name if is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                local = alias.asname or alias.name
                if f"{origin}.{alias.name}" in modules:
                    aliases[local] = f"{origin}.{alias.name}"
                elif origin in modules:
                    value = _module_constants(modules[origin].tree).get(alias.name)
                    if value is not None:
                        constants.setdefault(local, value)
    return constants, aliases


def env_reads(modules: dict[str, SourceModule], names: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Environment variable -> where it is read; and reads whose name is neither a literal nor a
    string constant the scan can resolve."""
    reads: dict[str, list[str]] = {}
    dynamic: list[str] = []

    def note(name: str, where: str) -> None:
        reads.setdefault(name, []).append(where)

    for module_name in sorted(names):
        if module_name == CONFIG_MODULE:
            # Settings declares every variable it reads in one table: ask it.
            from nanogrid.config import Settings

            for name in Settings.environment_names():
                note(name, CONFIG_MODULE)
            continue
        tree = modules[module_name].tree
        constants, aliases = _constant_scope(modules[module_name], modules)

        def resolve(expr: ast.AST | None) -> str | None:
            if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
                return expr.value
            if isinstance(expr, ast.Name):
                return constants.get(expr.id)
            if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in aliases:
                return _module_constants(modules[aliases[expr.value.id]].tree).get(expr.attr)
            return None

        for node in ast.walk(tree):
            where = f"{module_name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = _dotted(node.func.value)
                method = node.func.attr
                first = node.args[0] if node.args else None
                literal = resolve(first)
                if method in ENV_METHODS and receiver in ENV_RECEIVERS:
                    if receiver == "os" and method != "getenv":
                        continue
                    if literal and ENV_NAME.match(literal):
                        note(literal, where)
                    elif first is not None and literal is None:
                        dynamic.append(where)
            elif isinstance(node, ast.Subscript) and _dotted(node.value) in ("os.environ", "env", "environ"):
                if isinstance(node.ctx, ast.Load):
                    key = resolve(node.slice)
                    if key is not None and ENV_NAME.match(key):
                        note(key, where)
                    elif key is None:
                        dynamic.append(where)
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
                                    value = resolve(element)
                                    if value is not None and ENV_NAME.match(value):
                                        note(value, where)
    return reads, dynamic
