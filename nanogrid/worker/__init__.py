"""The worker side: Celery configuration, the run task, leases and the reaper."""
