# The task queue and its dead-letter queue. kombu 5.7 deletes a rejected message unless the
# queue has a RedrivePolicy; with one, SQS moves it here after maxReceiveCount receives.

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.task_queue_name}-dlq"
  message_retention_seconds = 1209600 # 14 days, the SQS maximum: time to inspect poison messages
  sqs_managed_sse_enabled   = true

  tags = { Name = "${var.task_queue_name}-dlq" }
}

resource "aws_sqs_queue" "tasks" {
  name                       = var.task_queue_name
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  message_retention_seconds  = 345600 # 4 days
  receive_wait_time_seconds  = 10     # long polling, as the Celery transport options ask
  max_message_size           = 262144
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.dlq_max_receive_count
  })

  tags = { Name = var.task_queue_name }
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.tasks.arn]
  })
}

# The builds queue: layer builds (pip) sent by the API, and again by a worker that finds one
# lost, consumed only by `nanogrid builder` on the workers, so a build never holds a run's slot.
# Named like the task queue plus "-builds": unset, NANOGRID_BUILD_QUEUE_URL is SQS_QUEUE_URL +
# "-builds" (nanogrid/config.py), so the instances need no URL of their own for it.
resource "aws_sqs_queue" "builds_dlq" {
  name                      = "${var.task_queue_name}-builds-dlq"
  message_retention_seconds = 1209600 # 14 days, the SQS maximum
  sqs_managed_sse_enabled   = true

  tags = { Name = "${var.task_queue_name}-builds-dlq" }
}

resource "aws_sqs_queue" "builds" {
  name = "${var.task_queue_name}-builds"
  # Longer than a build may take (NANOGRID_BUILD_TIMEOUT_S, 600 s by default), so a message
  # is never handed to a second builder while the first still works on it.
  visibility_timeout_seconds = var.build_queue_visibility_timeout_seconds
  message_retention_seconds  = 345600 # 4 days
  receive_wait_time_seconds  = 10     # long polling, as the Celery transport options ask
  max_message_size           = 262144
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.builds_dlq.arn
    maxReceiveCount     = var.dlq_max_receive_count
  })

  tags = { Name = "${var.task_queue_name}-builds" }
}

resource "aws_sqs_queue_redrive_allow_policy" "builds_dlq" {
  queue_url = aws_sqs_queue.builds_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.builds.arn]
  })
}
