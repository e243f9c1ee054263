"""Errors shared by the storage adapters and the code that calls them.

Adapters translate their provider's exceptions (botocore, google-cloud, sqlite3, redis) into
these, so that callers never import a provider SDK.
"""


class NotFound(LookupError):
    """The object, function or job does not exist."""


class Conflict(Exception):
    """A uniqueness rule or an optimistic-concurrency check failed."""


class Unavailable(Exception):
    """A dependency (S3, DynamoDB, Redis, Docker, ...) could not be reached."""


class NotConfigured(Unavailable):
    """A feature this installation has not been set up for; the message (fit for any client: it
    names a setting, nothing of the installation) says what the operator must set."""
