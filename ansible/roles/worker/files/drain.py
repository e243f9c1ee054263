#!/usr/bin/env python3
"""Drain this worker before Auto Scaling terminates it.

The worker group has a termination lifecycle hook, so a worker chosen for scale-in (or replaced
by an instance refresh) waits in Terminating:Wait. This service polls the instance metadata for
that, then: marks the worker as draining (so systemd will not restart it), sends Celery its warm
shutdown (SIGTERM: take no new job, finish the running ones), renews the hook's heartbeat while
jobs still run, and completes the lifecycle action when the worker has stopped.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time
import urllib.request

import boto3

IMDS = "http://169.254.169.254"


def imds_token() -> str:
    request = urllib.request.Request(
        f"{IMDS}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
    )
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.read().decode()


def imds_get(path: str) -> str:
    request = urllib.request.Request(f"{IMDS}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": imds_token()})
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.read().decode().strip()


def unit_active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0


def drain(args: argparse.Namespace) -> None:
    instance_id = imds_get("instance-id")
    autoscaling = boto3.client("autoscaling", region_name=args.region)
    action = {"LifecycleHookName": args.hook, "AutoScalingGroupName": args.asg, "InstanceId": instance_id}
    pathlib.Path(args.flag).touch()
    subprocess.run(["systemctl", "kill", "--kill-whom=main", "--signal=SIGTERM", args.unit], check=False)
    started = last_beat = time.monotonic()
    while unit_active(args.unit) and time.monotonic() - started < args.max_drain_s:
        if time.monotonic() - last_beat >= args.heartbeat_s:
            autoscaling.record_lifecycle_action_heartbeat(**action)
            last_beat = time.monotonic()
        time.sleep(5)
    autoscaling.complete_lifecycle_action(LifecycleActionResult="CONTINUE", **action)
    print(f"drained in {time.monotonic() - started:.0f} s; termination continues", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--asg", required=True)
    parser.add_argument("--hook", required=True)
    parser.add_argument("--unit", default="nanogrid-worker.service")
    parser.add_argument("--flag", required=True)
    parser.add_argument("--max-drain-s", type=float, default=86400)
    parser.add_argument("--heartbeat-s", type=float, default=300)
    parser.add_argument("--poll-s", type=float, default=5)
    args = parser.parse_args(argv)
    while True:
        try:
            state = imds_get("autoscaling/target-lifecycle-state")
        except OSError as exc:  # metadata service hiccup: try again
            print(f"metadata: {exc}", file=sys.stderr, flush=True)
            state = ""
        if state == "Terminated":
            drain(args)
            return 0
        time.sleep(args.poll_s)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
