"""The worker side: Celery configuration, the run task, leases and the reaper."""


def serves_runs(worker) -> bool:
    """Whether this Celery worker consumes the runs' queue: `nanogrid builder` (builds queue only)
    has no sandboxes, so no reaper, heartbeat or run metrics of its own."""
    from nanogrid.services import current

    queues = worker.app.amqp.queues.consume_from or worker.app.amqp.queues
    return current().settings.queue_name in queues

