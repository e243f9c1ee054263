"""The `nanogrid` command: run the platform (dev, api, worker, image) and use it (deploy, invoke, job)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nanogrid import client

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("worker", "api", "scaling"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args, extra)
    except client.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanogrid", description="NanoGrid: self-hosted functions on Celery.")
    sub = parser.add_subparsers(dest="command")

    dev = sub.add_parser("dev", help="run API + worker + embedded services on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--data-dir", type=Path, default=Path("~/.nanogrid"))
    dev.add_argument("--sandbox", choices=("auto", "docker", "process"), default="auto")
    dev.set_defaults(run=cmd_dev)

    api = sub.add_parser("api", help="run the REST API under gunicorn (extra arguments go to gunicorn)")
    api.set_defaults(run=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker (extra arguments go to celery worker)")
    worker.set_defaults(run=cmd_worker)

    scaling = sub.add_parser("scaling", add_help=False,
                             help="publish the backlog metric, or simulate scaling policies (see: scaling --help)")
    scaling.add_argument("args", nargs=argparse.REMAINDER)
    scaling.set_defaults(run=cmd_scaling)

    image = sub.add_parser("image", help="the runtime image the Docker sandbox runs")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build the runtime image (Dockerfile, or offline from a Debian rootfs)")
    build.add_argument("--method", choices=("auto", "dockerfile", "rootfs"), default="auto")
    build.set_defaults(run=cmd_image_build)

    for name, help_text, handler in (
        ("deploy", "upload a function (.py or .zip)", cmd_deploy),
        ("invoke", "run a function and print its result", cmd_invoke),
        ("job", "show a job", cmd_job),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=os.environ.get("NANOGRID_URL", DEFAULT_URL))
        p.add_argument("--json", action="store_true", help="print the raw JSON document")
        p.set_defaults(run=handler)
        if name == "deploy":
            p.add_argument("file", type=Path)
            p.add_argument("--name", required=True)
            p.add_argument("--handler")
            p.add_argument("--timeout", type=float, dest="timeout_s")
            p.add_argument("--memory", type=int, dest="memory_mb")
        elif name == "invoke":
            p.add_argument("function", help="function name or id")
            p.add_argument("--input", default=None, help="the event, as JSON")
            p.add_argument("--async", action="store_true", dest="run_async", help="return the job id at once")
            p.add_argument("--wait", type=float, default=None, help="seconds to wait for the result")
        else:
            p.add_argument("job_id")
    return parser


def cmd_dev(args, _extra) -> int:
    from nanogrid import dev

    return dev.run(args.host, args.port, args.data_dir, args.sandbox)


def cmd_api(_args, extra) -> int:
    from nanogrid import dev

    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(dev.GUNICORN_CONF), *extra, "wsgi:app"])


def cmd_worker(_args, extra) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "nanogrid", "worker", "--loglevel", "INFO", *extra])


def cmd_scaling(args, extra) -> int:
    from nanogrid import scaling

    return scaling.main(args.args + extra)


def cmd_image_build(args, _extra) -> int:
    from nanogrid.config import Settings
    from nanogrid.sandbox import image

    tag = image.build_image(Settings.from_env(), method=args.method)
    print(tag)
    return 0


def cmd_deploy(args, _extra) -> int:
    options = {k: getattr(args, k) for k in ("handler", "timeout_s", "memory_mb") if getattr(args, k) is not None}
    doc = client.Client(args.url).deploy(args.file, args.name, options)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"deployed {doc['name']} ({doc['function_id']}) version {doc['version']}, "
              f"{'handler ' + doc['handler'] if doc['handler'] else 'script mode'}")
    return 0


def cmd_invoke(args, _extra) -> int:
    api = client.Client(args.url)
    try:
        event = json.loads(args.input) if args.input is not None else None
    except ValueError as exc:
        raise client.ClientError(f"--input is not valid JSON: {exc}") from None
    wait_s = 0 if args.run_async else args.wait
    job = api.invoke(api.resolve(args.function), event, wait_s)
    return show_job(job, args.json)


def cmd_job(args, _extra) -> int:
    return show_job(client.Client(args.url).job(args.job_id), args.json)


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
    return 1 if job["status"] == "FAILED" else 0


if __name__ == "__main__":
    sys.exit(main())
