"""The worker's Celery app, found by `celery -A nanogrid worker|inspect|flower`."""

from celery import Celery

app = Celery("nanogrid", include=["nanogrid.worker.tasks"])
app.config_from_object("celeryconfig")

from nanogrid.worker.reaper import ReaperStep  # noqa: E402 - the step needs the app's module loaded

app.steps["worker"].add(ReaperStep)
