"""The `nanogrid` command: run the platform (dev, api, worker, image) and use it (deploy, invoke, job)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from nanogrid import client
from nanogrid.config import DOCKER_RUNTIMES, ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("worker", "builder", "api", "scaling", "flower", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args, extra)
    except client.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of the output went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


class UsageError(Exception):
    """The command cannot run as asked (the message says what to do instead)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogrid", description="NanoGrid: self-hosted functions on Celery.")
    sub = parser.add_subparsers(dest="command")

    dev = sub.add_parser("dev", help="run API + worker + embedded services on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--data-dir", type=Path, default=Path("~/.nanogrid"))
    dev.add_argument("--sandbox", choices=("auto", "docker", "process"), default="auto")
    dev.add_argument("--runtime", choices=DOCKER_RUNTIMES, default=None,
                     help="the Docker sandbox's OCI runtime (default: $NANOGRID_DOCKER_RUNTIME, else runc)")
    dev.set_defaults(run=cmd_dev)

    api = sub.add_parser("api", help="run the REST API under gunicorn (extra arguments go to gunicorn)")
    api.set_defaults(run=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker (extra arguments go to celery worker)")
    worker.set_defaults(run=cmd_worker)
    builder = sub.add_parser("builder", help="build the functions' dependency layers: a Celery worker on the "
                                             "builds queue (extra arguments go to celery worker)")
    builder.set_defaults(run=cmd_builder)

    scheduler = sub.add_parser("scheduler", help="fire the functions' schedules (run one on each controller; "
                                                 "several fire every tick once)")
    scheduler.set_defaults(run=cmd_scheduler)

    status = sub.add_parser("status", help="queue depth, workers, active runs and recent failures")
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for workers to answer")
    status.add_argument("--failures", type=int, default=10, help="recent failures to show (50 are kept)")
    status.set_defaults(run=cmd_status)

    flower = sub.add_parser("flower", help="run Flower (celery -A nanogrid flower); needs authentication "
                                           "(FLOWER_BASIC_AUTH, FLOWER_AUTH, --basic-auth or --auth); "
                                           "extra arguments go to flower")
    flower.add_argument("--unauthenticated-dev", action="store_true",
                        help="start without authentication (development on a trusted host only)")
    flower.set_defaults(run=cmd_flower)

    scaling = sub.add_parser("scaling", add_help=False,
                             help="publish the backlog metric, or simulate scaling policies (see: scaling --help)")
    scaling.add_argument("args", nargs=argparse.REMAINDER)
    scaling.set_defaults(run=cmd_scaling)

    bench = sub.add_parser("bench", add_help=False,
                           help="benchmark warm and cold runs against the floor on this machine (see: bench --help)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(run=cmd_bench)

    image = sub.add_parser("image", help="the runtime image the Docker sandbox runs")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build the runtime image (Dockerfile, or offline from a Debian rootfs)")
    build.add_argument("--method", choices=("auto", "dockerfile", "rootfs"), default="auto")
    build.set_defaults(run=cmd_image_build)

    ai_check = sub.add_parser("ai-check", help="check that the AI node (AI_ENDPOINT, Ollama) answers; list its models")
    ai_check.add_argument("--endpoint", help="check this URL instead of AI_ENDPOINT")
    ai_check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    ai_check.add_argument("--json", action="store_true", help="print the raw JSON document")
    ai_check.set_defaults(run=cmd_ai_check)

    keys = sub.add_parser("keys", help="API keys and tenants: create, list, revoke (talks to the key store "
                                       "with the same environment as the API)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_create = keys_sub.add_parser("create", help="create a key for a tenant and print it alone on stdout "
                                                     "(shown once; only its hash is stored)")
    keys_create.add_argument("--tenant", required=True, help="the tenant the key acts for ([A-Za-z0-9_-], 1-64)")
    keys_create.add_argument("--label", default="", help="a note shown by `keys list` (who or what uses the key)")
    keys_create.set_defaults(run=cmd_keys_create)
    keys_list = keys_sub.add_parser("list", help="every key: id, tenant, label, created, revoked (never a secret)")
    keys_list.add_argument("--json", action="store_true", help="print the list as JSON")
    keys_list.set_defaults(run=cmd_keys_list)
    keys_revoke = keys_sub.add_parser("revoke", help="revoke a key (at once for new API processes, within "
                                                     "seconds for running ones)")
    keys_revoke.add_argument("key_id", help="the key's id (the part after ng_), or the whole key")
    keys_revoke.set_defaults(run=cmd_keys_revoke)

    reindex = sub.add_parser("reindex", help="rebuild the Redis side of the jobs (status keys, tenant quotas) "
                                             "from the durable job store, after a Redis loss")
    reindex.set_defaults(run=cmd_reindex)

    dlq = sub.add_parser("dlq", help="messages no worker could process (the dead letters): list them, or send "
                                     "them back to the task queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="the dead letters: why each is there, its task and body")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.add_argument("--json", action="store_true", help="print the list as JSON")
    dlq_list.set_defaults(run=cmd_dlq_list)
    dlq_redrive = dlq_sub.add_parser("redrive", help="send the dead letters back to the task queue (after the "
                                                     "cause was fixed, e.g. a worker that knows the task)")
    dlq_redrive.add_argument("--limit", type=int, default=1000)
    dlq_redrive.set_defaults(run=cmd_dlq_redrive)

    for name, help_text, handler in (
        ("deploy", "upload a function (.py or .zip)", cmd_deploy),
        ("invoke", "run a function and print its result", cmd_invoke),
        ("job", "show a job", cmd_job),
        ("logs", "print a job's output (--follow: as it comes, until the job ends)", cmd_logs),
        ("jobs", "list recent jobs, newest first", cmd_jobs),
        ("build", "show a function's dependency build (--follow: until it ends)", cmd_build),
        ("versions", "list a function's kept versions, newest first, with their aliases", cmd_versions),
        ("alias", "point an alias of a function at a version (--weight V=SHARE sends a share to another)",
         cmd_alias),
        ("rollback", "move an alias back to the version it pointed at before", cmd_rollback),
        ("functions", "the functions: list, show NAME, delete NAME", cmd_functions),
        ("secrets", "the tenant's secrets: set NAME (the value from stdin), list, delete NAME", cmd_secrets),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=None, help="the API (default: $NANOGRID_URL, else http://127.0.0.1:8080)")
        p.add_argument("--api-key", default=None, help="the API key to send (default: $NANOGRID_API_KEY)")
        p.add_argument("--json", action="store_true", help="print the raw JSON document")
        p.set_defaults(run=handler)
        if name == "deploy":
            p.add_argument("file", type=Path)
            p.add_argument("--name", required=True)
            p.add_argument("--handler")
            p.add_argument("--timeout", type=float, dest="timeout_s")
            p.add_argument("--memory", type=int, dest="memory_mb")
            p.add_argument("--requirements", type=Path, help="a requirements.txt: the packages the function imports")
            p.add_argument("--init", choices=("once", "per_run"),
                           help="import main.py once per warm sandbox (default) or for every run")
        elif name == "invoke":
            p.add_argument("function", help="function name or id")
            p.add_argument("--input", default=None, help="the event, as JSON (default: {})")
            p.add_argument("--async", action="store_true", dest="run_async", help="return the job id at once")
            p.add_argument("--wait", type=float, default=None,
                           help="seconds to wait for the run to end (default: until it ends)")
            p.add_argument("--follow", action="store_true", help="print the output as it comes")
        elif name == "logs":
            p.add_argument("job_id")
            p.add_argument("--follow", "-f", action="store_true", help="follow the output until the job ends")
        elif name in ("versions", "rollback"):
            p.add_argument("function", help="function name or id")
            if name == "rollback":
                p.add_argument("--alias", required=True, help="the alias to move back (e.g. prod)")
        elif name == "alias":
            p.add_argument("function", help="function name or id")
            p.add_argument("alias", help="the alias's name (e.g. prod)")
            p.add_argument("version", type=int, help="the version it points at")
            p.add_argument("--weight", action="append", default=[], metavar="VERSION=SHARE",
                           help="send SHARE (0 to 1) of the alias's runs to VERSION (repeatable)")
        elif name == "secrets":
            p.add_argument("action", choices=("set", "list", "delete"))
            p.add_argument("name", nargs="?", help="the secret's name (set, delete)")
        elif name == "functions":
            p.add_argument("action", nargs="?", choices=("list", "show", "delete"), default="list")
            p.add_argument("function", nargs="?", help="function name or id (show, delete)")
        elif name == "build":
            p.add_argument("function", help="function name or id")
            p.add_argument("--follow", "-f", action="store_true", help="wait until the build ends")
        elif name == "jobs":
            p.add_argument("--function", help="only this function's (name or id)")
            p.add_argument("--status", choices=("PENDING", "PROCESSING", "SUCCESS", "FAILED"))
            p.add_argument("--limit", type=int, default=20, help="how many (at most 200)")
        else:
            p.add_argument("job_id")
            p.add_argument("--wait", type=float, nargs="?", const=-1, default=None,
                           help="wait for the job to end (at most this many seconds, if given)")
    return parser


def cmd_dev(args, _extra) -> int:
    from nanogrid import dev

    return dev.run(args.host, args.port, args.data_dir, args.sandbox, args.runtime)


def cmd_api(_args, extra) -> int:
    from nanogrid import dev, metrics

    settings = Settings.from_env()  # a bad setting stops here, not in every gunicorn worker
    metrics.prepare_multiproc_dir(settings, os.environ)  # before gunicorn and prometheus_client start
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(dev.GUNICORN_CONF), *extra, "wsgi:app"])


def cmd_worker(_args, extra) -> int:
    from nanogrid import metrics
    from nanogrid.errors import Unavailable
    from nanogrid.sandbox import EngineUnavailable
    from nanogrid.services import Services

    settings = Settings.from_env()
    try:
        Services(settings).sandbox.check_runtime()
    except EngineUnavailable as exc:
        print(f"warning: {exc}; the worker starts and takes runs once the engine answers", file=sys.stderr)
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # JSON logs: no startup banner either, so every line of the worker's output is one JSON object.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    metrics.prepare_multiproc_dir(settings, os.environ)  # shared by the pool children and the main process
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "nanogrid", *quiet, "worker", "--loglevel", "INFO",
                              *extra])


def cmd_builder(_args, extra) -> int:
    """A Celery worker on the builds queue only: layer builds never take a run's slot."""
    settings = Settings.from_env()
    quiet = ["--quiet"] if settings.log_format == "json" else []
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "nanogrid", *quiet, "worker", "--loglevel", "INFO",
                              "-Q", settings.build_queue_name, "--concurrency", str(settings.build_concurrency),
                              *extra])


def cmd_scheduler(_args, _extra) -> int:
    from nanogrid import logs, scheduler

    settings = Settings.from_env()
    logs.configure(settings.log_format)
    return scheduler.run(settings)


def cmd_status(args, _extra) -> int:
    from nanogrid import status

    return status.main(args.json, args.timeout, args.failures)


FLOWER_AUTH_OPTIONS = ("--basic-auth", "--basic_auth", "--auth")


def flower_authenticated(extra: list[str], environ) -> bool:
    """environ: Settings.extra, where Flower's own FLOWER_BASIC_AUTH and FLOWER_AUTH are passed along."""
    if environ.get("FLOWER_BASIC_AUTH") or environ.get("FLOWER_AUTH"):
        return True
    for i, arg in enumerate(extra):
        name, eq, value = arg.partition("=")
        if name in FLOWER_AUTH_OPTIONS and (value if eq else i + 1 < len(extra) and extra[i + 1]):
            return True
    return False


def cmd_flower(args, extra) -> int:
    if not args.unauthenticated_dev and not flower_authenticated(extra, Settings.from_env().extra):
        print("error: Flower can revoke tasks and shut workers down; refusing to start it without "
              "authentication. Set FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH with an OAuth provider), "
              "or pass --unauthenticated-dev on a trusted development host.", file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "nanogrid", "flower", *extra])


def cmd_scaling(args, extra) -> int:
    from nanogrid import scaling

    return scaling.main(args.args + extra)


def cmd_bench(args, extra) -> int:
    """bench/run.py of the source tree (the benchmark starts its own stacks; it is not packaged)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        print(f"error: {script} not found: the benchmark ships with NanoGrid's source tree", file=sys.stderr)
        return 2
    # Its options as given (argparse would split REMAINDER and unknown options apart).
    argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else args.args + extra
    return runpy.run_path(str(script), run_name="nanogrid_bench")["main"](argv)


def cmd_image_build(args, _extra) -> int:
    from nanogrid.sandbox import image

    tag = image.build_image(Settings.from_env(), method=args.method)
    print(tag)
    return 0


def cmd_ai_check(args, _extra) -> int:
    from nanogrid.ai import client as ai_client

    environ = {**os.environ, **({"AI_ENDPOINT": args.endpoint} if args.endpoint else {})}
    settings = Settings.from_env(environ)
    check = ai_client.check(settings, timeout=args.timeout)
    if args.json:
        print(json.dumps(check.document(), indent=2))
    elif not check.endpoint:
        print("AI: AI_ENDPOINT is not set, so functions have no AI node (set it to Ollama's URL, "
              "e.g. http://127.0.0.1:11434)")
    elif not check.ok:
        print(f"AI node at {check.endpoint} does not answer: {check.error}")
    else:
        version = f" (Ollama {check.version})" if check.version else ""
        print(f"AI node at {check.endpoint} answers{version}; {len(check.models)} model(s):")
        for model in check.models:
            print(f"  {model}")
        if check.allowed is not None:
            print(f"functions may use (NANOGRID_AI_MODELS): {', '.join(check.allowed) or 'none of them'}")
        if check.error:
            print(f"warning: {check.error}")
    return 0 if check.ok else 1


STORE_VARIABLES = ("NANOGRID_STORAGE", "NANOGRID_DATA_DIR", "NANOGRID_KEYS_TABLE")


def _key_store():
    """The key store of the installation this environment names, and how to say which it is.

    It never guesses: with none of STORE_VARIABLES set, the keys would land in a store the API may
    not use (a dev start with --data-dir, a controller's DynamoDB table), so it refuses."""
    from nanogrid import keys, storage

    settings = Settings.from_env()
    if not set(STORE_VARIABLES) & settings.given:
        raise UsageError("which installation? Set its environment first (for `nanogrid dev`: source "
                         "<data dir>/operator.env; on a controller: /etc/nanogrid/controller.env), "
                         "or NANOGRID_DATA_DIR for a local one")
    where = (f"DynamoDB table {settings.keys_table} ({settings.aws_region})" if settings.storage == "aws"
             else f"the local store in {settings.data_dir}")
    return keys.KeyStore(storage.key_table(settings)), where


def _keys_command(run) -> int:
    from nanogrid.errors import Unavailable

    try:
        return run()
    except (ConfigError, Unavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_keys_create(args, _extra) -> int:
    from nanogrid.keys import DEFAULT_TENANT

    def run() -> int:
        store, where = _key_store()
        first = not store.any_keys()
        try:
            key, doc = store.create(args.tenant, args.label)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(key)  # alone on stdout: `export NANOGRID_API_KEY=$(nanogrid keys create --tenant t)`
        print(f"created key {doc['key_id']} for tenant {doc['tenant']} in {where}; it is shown only now: "
              "store it safely.", file=sys.stderr)
        if first:
            print("This is the first key: an API using this store now requires a key on every route but "
                  "/health (within 5 s for a running one).", file=sys.stderr)
            if doc["tenant"] != DEFAULT_TENANT:
                print(f"Functions and jobs made while it was open belong to the tenant '{DEFAULT_TENANT}': this key "
                      f"cannot see them; reach them with a key for that tenant "
                      f"(nanogrid keys create --tenant {DEFAULT_TENANT}).", file=sys.stderr)
        return 0

    return _keys_command(run)


def cmd_keys_list(args, _extra) -> int:
    from nanogrid import keys

    def run() -> int:
        store, where = _key_store()
        docs = [keys.public(doc) for doc in store.list()]
        if args.json:
            print(json.dumps(docs, indent=2))
        elif not docs:
            print(f"no API keys in {where}: an API using it is open (every request acts for the tenant 'default')")
        else:
            print(f"{'KEY ID':<18} {'TENANT':<20} {'CREATED':<21} {'STATUS':<30} LABEL")
            for d in docs:
                status = f"revoked {d['revoked_at']}" if d["revoked_at"] else "active"
                print(f"{d['key_id']:<18} {d['tenant']:<20} {d['created_at']:<21} {status:<30} {d['label']}")
        return 0

    return _keys_command(run)


def cmd_keys_revoke(args, _extra) -> int:
    from nanogrid import keys
    from nanogrid.errors import NotFound

    def run() -> int:
        match = keys.KEY_PATTERN.match(args.key_id)
        key_id = match.group(1) if match else args.key_id
        store, where = _key_store()
        try:
            doc = store.revoke(key_id)
        except NotFound:
            print(f"error: no key {key_id} in {where}", file=sys.stderr)
            return 1
        print(f"revoked key {doc['key_id']} of tenant {doc['tenant']} in {where}")
        return 0

    return _keys_command(run)


def cmd_reindex(_args, _extra) -> int:
    from nanogrid.errors import Unavailable
    from nanogrid.services import Services

    try:
        done = Services(Settings.from_env()).jobs.reindex()
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"reindexed {done['unfinished_jobs']} unfinished jobs from the job store; removed "
          f"{done['stale_entries_removed']} stale quota entries")
    return 0


def _dead_letters():
    from nanogrid.transport.broker import Broker

    settings = Settings.from_env()
    where = settings.dead_letter_queue if settings.uses_sqs else f"{settings.broker_url} (queue {settings.queue_name})"
    return Broker(settings), where


def cmd_dlq_list(args, _extra) -> int:
    from nanogrid.errors import Unavailable

    broker, where = _dead_letters()
    try:
        letters = [letter.document() for letter in broker.dead_letters().list(max(1, args.limit))]
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(letters, indent=2))
        return 0
    print(f"dead letters of {where}: {len(letters)}{' (at most --limit)' if len(letters) >= args.limit else ''}")
    for letter in letters:
        print(f"  {letter['at']}  {letter['reason']}  task={letter['task'] or '-'}  {letter['error']}")
        print(f"    {letter['body']}")
    return 0


def cmd_dlq_redrive(args, _extra) -> int:
    from nanogrid.errors import Unavailable

    broker, where = _dead_letters()
    try:
        moved = broker.dead_letters().redrive(broker.publish_raw, max(1, args.limit))
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"sent {moved} dead letters of {where} back to the task queue")
    return 0


def api_client(args) -> client.Client:
    """The API the CLI talks to: --url and --api-key, else NANOGRID_URL and NANOGRID_API_KEY."""
    settings = Settings.from_env()
    return client.Client(args.url or settings.url, api_key=args.api_key or settings.api_key or None)


def cmd_deploy(args, _extra) -> int:
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file (a .py source file, or a .zip with main.py)")
    options = {k: getattr(args, k) for k in ("handler", "timeout_s", "memory_mb", "init") if getattr(args, k) is not None}
    if args.requirements is not None:
        try:
            options["requirements"] = args.requirements.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{args.requirements}: cannot be read as UTF-8 text: {exc}") from None
    doc = api_client(args).deploy(args.file, args.name, options)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        build = f"; build {doc['build']['status']} (nanogrid build {doc['name']} --follow)" if doc.get("build") else ""
        print(f"deployed {doc['name']} ({doc['function_id']}) version {doc['version']}, "
              f"{'handler ' + doc['handler'] if doc['handler'] else 'script mode'}{build}")
    return 0


BUILD_POLL_S = 1.0


def cmd_versions(args, _extra) -> int:
    api = api_client(args)
    versions = api.versions(api.resolve(args.function))
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    for v in versions:
        aliases = f"  <- {', '.join(v['aliases'])}" if v["aliases"] else ""
        build = f"  build {v['build']['status']}" if v.get("build") else ""
        print(f"v{v['version']}  {v['created_at']}  {v['code_sha256'][:12]}  "
              f"{v['handler'] or 'script mode'}{build}{aliases}")
    return 0


def cmd_alias(args, _extra) -> int:
    weights = {}
    for item in args.weight:
        version, _, share = item.partition("=")
        try:
            weights[str(int(version))] = float(share)
        except ValueError:
            raise UsageError(f"--weight {item!r}: expected VERSION=SHARE, e.g. --weight 4=0.1") from None
    api = api_client(args)
    alias = api.set_alias(api.resolve(args.function), args.alias, args.version, weights)
    return show_alias(alias, args.json)


def cmd_rollback(args, _extra) -> int:
    api = api_client(args)
    function_id = api.resolve(args.function)
    alias = api.alias(function_id, args.alias)
    if alias["previous"] is None:
        raise UsageError(f"alias {args.alias} has not been moved: there is no earlier version to go back to")
    return show_alias(api.set_alias(function_id, args.alias, alias["previous"]), args.json)


def show_alias(alias: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(alias, indent=2))
    else:
        split = "".join(f", {share:.0%} to v{version}" for version, share in alias["weights"].items())
        was = f" (was v{alias['previous']})" if alias["previous"] is not None else ""
        print(f"{alias['name']} -> v{alias['version']}{split}{was}")
    return 0


def cmd_secrets(args, _extra) -> int:
    """Values only from stdin: an argument would be in the shell's history and in every process list."""
    api = api_client(args)
    if args.action == "list":
        listed = api.secrets()
        print(json.dumps(listed, indent=2) if args.json else
              "\n".join(f"{s['name']}  updated {s['updated_at']}" for s in listed) or "no secrets")
        return 0
    if args.name is None:
        raise UsageError(f"secrets {args.action} needs the secret's name")
    if args.action == "delete":
        api.delete_secret(args.name)
        print(f"deleted secret {args.name}")
        return 0
    if sys.stdin.isatty():
        print(f"value of {args.name} (then Enter; not echoed):", file=sys.stderr)
        import getpass

        value = getpass.getpass(prompt="")
    else:
        value = sys.stdin.read().removesuffix("\n")
    if not value:
        raise UsageError("the value read from stdin is empty")
    api.set_secret(args.name, value)
    print(f"secret {args.name} set")
    return 0


def cmd_functions(args, _extra) -> int:
    api = api_client(args)
    if args.action == "list":
        docs = api.functions()
        if args.json:
            print(json.dumps(docs, indent=2))
        for doc in [] if args.json else docs:
            print(f"{doc['name']}  {doc['function_id']}  v{doc['version']}  {doc['handler'] or 'script mode'}")
        return 0
    if args.function is None:
        raise UsageError(f"functions {args.action} needs a function name or id")
    function_id = api.resolve(args.function)
    if args.action == "delete":
        api.delete_function(function_id)
        print(f"deleted {args.function} ({function_id}), its versions and aliases")
        return 0
    print(json.dumps(api.function(function_id), indent=2))
    return 0


def cmd_build(args, _extra) -> int:
    """Exit 0 when the build is ready, 1 when it failed, STILL_RUNNING while it goes on (no --follow)."""
    api = api_client(args)
    function_id = api.resolve(args.function)
    build = api.build(function_id)
    while args.follow and build["status"] in ("pending", "building"):
        time.sleep(BUILD_POLL_S)
        build = api.build(function_id)
    if args.json:
        print(json.dumps(build, indent=2))
    else:
        size = f", {build['size_bytes'] / 2**20:.1f} MiB" if build.get("size_bytes") else ""
        print(f"build {build['status']} (layer {build['layer_sha256'][:12]}{size})")
        if build["status"] in ("ready", "failed") and build.get("log"):
            print(build["log"].rstrip())
        if build.get("error"):
            print(f"error: {build['error']}")
    return {"ready": 0, "failed": 1}.get(build["status"], STILL_RUNNING)


WAIT_STEP_S = 30  # one request's wait; the CLI asks again until the run ends or its own bound
TERMINAL = ("SUCCESS", "FAILED")
STILL_RUNNING = 3  # exit status while the job has not ended


def cmd_invoke(args, _extra) -> int:
    api = api_client(args)
    try:
        event = json.loads(args.input) if args.input is not None else client.NO_INPUT
    except ValueError as exc:
        raise UsageError(f"--input is not valid JSON: {exc}") from None
    if args.run_async:
        return show_job(api.invoke(api.resolve(args.function), event, 0), args.json)
    if args.follow:
        return follow_events(api.run_events(api.resolve(args.function), event), args.json)
    deadline = None if args.wait is None else time.monotonic() + args.wait
    job = api.invoke(api.resolve(args.function), event, _step(deadline))
    return show_job(follow(api, job, deadline), args.json)


def cmd_job(args, _extra) -> int:
    api = api_client(args)
    job = api.job(args.job_id)
    if args.wait is not None:
        job = follow(api, job, None if args.wait < 0 else time.monotonic() + args.wait)
    return show_job(job, args.json)


def cmd_logs(args, _extra) -> int:
    api = api_client(args)
    if args.follow:
        return follow_events(api.job_events(args.job_id), args.json, summary=False)
    job = api.job(args.job_id)
    if args.json:
        print(json.dumps({"stdout": job["stdout"], "stderr": job["stderr"]}, indent=2))
    else:
        sys.stdout.write(job["stdout"])
        sys.stderr.write(job["stderr"])
    return 0


def cmd_jobs(args, _extra) -> int:
    api = api_client(args)
    if not 1 <= args.limit <= 200:
        raise UsageError("--limit must be from 1 to 200")
    function_id = api.resolve(args.function) if args.function else None
    page = api.jobs(function_id=function_id, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(page["jobs"], indent=2))
        return 0
    if not page["jobs"]:
        print("no jobs")
    for job in page["jobs"]:
        error = f"  {job['error']['type']}" if job["error"] else ""
        took = f"{job['duration_ms']} ms" if job["duration_ms"] is not None else "-"
        print(f"{job['created_at']}  {job['job_id']}  {job['function_id']}  {job['status']:<10} {took:>9}{error}")
    return 0


def follow_events(events, as_json: bool, summary: bool = True) -> int:
    """Print a run's output as its events come; the exit status is the run's (0 SUCCESS, 1 FAILED)."""
    streamed = False
    for kind, data in events:
        if as_json:
            print(json.dumps({"event": kind, "data": data}), flush=True)
        elif kind == "stdout":
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        elif kind == "stderr":
            sys.stderr.write(data["text"])
            sys.stderr.flush()
        elif kind == "result":
            streamed = True
            print(json.dumps(data["item"]), flush=True)
        if kind == "end":
            if summary and not as_json:
                took = f" in {data['duration_ms']} ms" if data["duration_ms"] else ""
                print(f"--- job {data['job_id']}: {data['status']}{took}")
                if data["error"]:
                    print(f"--- error: {data['error']['type']}: {data['error']['message']}")
                elif not streamed and data["result"] is not None:
                    print("--- result\n" + json.dumps(data["result"], indent=2))
            return 1 if data["status"] == "FAILED" else 0
    return STILL_RUNNING


def _step(deadline: float | None) -> float:
    return WAIT_STEP_S if deadline is None else max(0.0, min(WAIT_STEP_S, deadline - time.monotonic()))


def follow(api: client.Client, job: dict, deadline: float | None) -> dict:
    """The job once it has ended, or as it is at the deadline (None: no deadline)."""
    while job["status"] not in TERMINAL and (deadline is None or time.monotonic() < deadline):
        job = api.job(job["job_id"], wait_s=_step(deadline))
    return job


def show_job(job: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(job, indent=2))
    else:
        print(f"job {job['job_id']}: {job['status']}" + (f" in {job['duration_ms']} ms" if job["duration_ms"] else ""))
        if job["stdout"]:
            print("--- stdout\n" + job["stdout"].rstrip("\n"))
        if job["stderr"]:
            print("--- stderr\n" + job["stderr"].rstrip("\n"))
        if job["error"]:
            print(f"--- error: {job['error']['type']}: {job['error']['message']}")
        elif job["status"] == "SUCCESS":
            print("--- result\n" + json.dumps(job["result"], indent=2))
    if job["status"] not in TERMINAL:
        print(f"the job has not ended; follow it with: nanogrid job {job['job_id']} --wait", file=sys.stderr)
        return STILL_RUNNING
    return 1 if job["status"] == "FAILED" else 0


if __name__ == "__main__":
    sys.exit(main())
