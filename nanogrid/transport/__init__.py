"""Broker transports of NanoGrid.

`nanogrid.transport.sqs` is kombu's SQS transport plus what Celery's remote control (pidbox)
and monitoring events need from a broker: broadcast over SNS, replies routed to the caller's
queue, and cleanup of the per-worker and per-caller queues. It is selected with the Celery
setting ``broker_transport = SQS_TRANSPORT`` (see nanogrid.transport.app); the broker URL
stays ``sqs://``. This module imports nothing heavy, so configuration code can name the transport
without loading boto3.
"""

#: Value of Celery's ``broker_transport`` (kombu's ``transport`` argument) for the SQS broker.
SQS_TRANSPORT = "nanogrid.transport.sqs:Transport"

#: Name prefix of every SNS topic and SQS queue the transport creates at run time, so IAM
#: policies can be scoped to ``arn:...:sns:...:<prefix>*`` and ``arn:...:sqs:...:<prefix>*``.
#: It matches the ``dynamic_queue_prefix`` default of deploy/terraform.
DYNAMIC_PREFIX = "nanogrid-fanout-"
