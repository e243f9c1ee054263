"""The queue-depth metric publisher: `nanogrid scaling publish [--once]`.

It sends the backlog-per-instance metric that the target tracking policy follows (AWS's
recommended pattern for queue workers): the task queue's visible messages divided by the workers
in service, every NANOGRID_SCALING_INTERVAL_S (a minute), to CloudWatch, under
NANOGRID_METRIC_NAMESPACE and NANOGRID_BACKLOG_METRIC (Terraform's metric_namespace and
backlog_metric_name), for the group NANOGRID_WORKER_ASG.
"""

from __future__ import annotations

import json
import sys
import time

from nanogrid import aws
from nanogrid.config import Settings
from nanogrid.transport.depth import queue_depth


def measure(settings: Settings) -> dict:
    """Visible messages, in-service workers and their ratio, read from SQS and Auto Scaling."""
    visible = queue_depth(settings, in_flight=False).visible
    autoscaling = aws.client(settings, "autoscaling")
    with aws.unavailable_on_outage(f"Auto Scaling group {settings.worker_asg}"):
        groups = autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[settings.worker_asg])["AutoScalingGroups"]
    if not groups:
        raise RuntimeError(f"Auto Scaling group {settings.worker_asg!r} not found")
    in_service = sum(1 for i in groups[0].get("Instances", []) if i.get("LifecycleState") == "InService")
    # No worker in service and jobs waiting: report the whole queue so the group scales out.
    return {"visible": visible, "in_service": in_service, "backlog_per_instance": visible / max(in_service, 1)}


def publish_once(settings: Settings) -> dict:
    sample = measure(settings)
    dimensions = [{"Name": "QueueName", "Value": settings.queue_name}]
    with aws.unavailable_on_outage("CloudWatch put metric data"):
        aws.client(settings, "cloudwatch").put_metric_data(
            Namespace=settings.metric_namespace,
            MetricData=[
                {"MetricName": settings.backlog_metric, "Dimensions": dimensions,
                 "Value": float(sample["backlog_per_instance"]), "Unit": "Count"},
                {"MetricName": "QueueBacklog", "Dimensions": dimensions,
                 "Value": float(sample["visible"]), "Unit": "Count"},
                {"MetricName": "InServiceWorkers", "Dimensions": dimensions,
                 "Value": float(sample["in_service"]), "Unit": "Count"},
            ],
        )
    return sample


def problem(settings: Settings) -> str | None:
    """What keeps these settings from publishing, if anything."""
    if not settings.sqs_queue_url:
        return "scaling publish needs SQS_QUEUE_URL"
    if not settings.worker_asg:
        return "scaling publish needs NANOGRID_WORKER_ASG (the worker Auto Scaling group's name)"
    return None


def run(settings: Settings, once: bool) -> int:
    refused = problem(settings)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    while True:
        started = time.monotonic()
        try:
            sample = publish_once(settings)
            print(json.dumps(sample), flush=True)
        except Exception as exc:  # noqa: BLE001 - keep publishing: one failed minute must not stop scaling
            if once:
                print(f"error: scaling publish: {exc}", file=sys.stderr)
                return 1
            print(f"scaling publish: {exc}", file=sys.stderr, flush=True)
        if once:
            return 0
        time.sleep(max(0.0, settings.scaling_interval_s - (time.monotonic() - started)))
