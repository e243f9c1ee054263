"""The names of NanoGrid's Celery tasks: the contract between whoever sends a task and the worker.

Stable strings, so messages already queued survive code moves. Nothing else lives here, so the
API, the reaper and the log formatter can name a task without importing the worker.
"""

RUN_TASK = "nanogrid.run_job"
ARCHIVE_TASK = "nanogrid.archive_code"
CALLBACK_TASK = "nanogrid.deliver_callback"
BUILD_TASK = "nanogrid.build_layer"  # on the builds queue (Settings.build_queue_name), for `nanogrid builder`
