"""Jobs: the record of every run (records), its durable store and transitions (store), and its
Redis side (index)."""

from nanogrid.jobs.index import QuotaExceeded
from nanogrid.jobs.records import TERMINAL, ErrorType, JobRecord, Status, is_job_id
from nanogrid.jobs.store import IdempotencyConflict, JobStore

__all__ = ["TERMINAL", "ErrorType", "IdempotencyConflict", "JobRecord", "JobStore", "QuotaExceeded", "Status",
           "is_job_id"]
