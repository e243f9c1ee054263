# Instance roles. Each statement names the code that needs it; tests/fleet/test_crosscheck.py
# scans the code for boto3 calls and fails when a called action is missing here, or when an
# action here is called by nothing (code, kombu, or the boot scripts of the role).

locals {
  worker_asg_name     = "${var.name}-workers"
  worker_asg_arn      = "arn:${var.partition}:autoscaling:${var.region}:${var.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.worker_asg_name}"
  dynamic_topic_arn   = "arn:${var.partition}:sns:${var.region}:${var.account_id}:${var.dynamic_queue_prefix}*"
  dynamic_queue_arn   = "arn:${var.partition}:sqs:${var.region}:${var.account_id}:${var.dynamic_queue_prefix}*"
  fixed_queue_arns    = [var.task_queue.arn, var.dead_letter_queue.arn, var.build_queue.arn]
  lifecycle_hook_name = "${var.name}-worker-drain"

  # sqs:ListQueues is authorized on the region's queues of the account as a whole: the SQS
  # Developer Guide ("Amazon SQS API permissions: Actions and resource reference") gives its
  # resource as arn:aws:sqs:region:account_id:*, and the Service Authorization Reference lists
  # no resource type for it. A queue-name prefix (not even the call's QueueNamePrefix) cannot
  # narrow it; this is the tightest resource it takes: this account, this region.
  account_queues_arn = "arn:${var.partition}:sqs:${var.region}:${var.account_id}:*"

  # The tenants' secrets (nanogrid/storage/secretsmanager.py): <prefix><tenant>/<name>. A secret's
  # ARN ends in the name plus "-" and six random characters, which the trailing * matches. The
  # "*/*" asks for a "/" after the prefix, which every tenant secret has and the fleet's own
  # secrets (nanogrid/redis-auth, nanogrid/gcp-credentials: no second "/") do not, so the API
  # cannot overwrite or delete those. They are encrypted with the AWS managed key
  # aws/secretsmanager (the code passes no KmsKeyId), which needs no kms: grant; the fleet's
  # customer managed key (modules/observability) is for the logs and the alarm topic only.
  tenant_secrets_arn = "arn:${var.partition}:secretsmanager:${var.region}:${var.account_id}:secret:${var.secrets_prefix}*/*"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "controller" {
  name               = "${var.name}-controller"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role" "worker" {
  name               = "${var.name}-worker"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role" "ai" {
  name               = "${var.name}-ai"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

# Session Manager replaces SSH on every instance.
resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = {
    controller = aws_iam_role.controller.name
    worker     = aws_iam_role.worker.name
    ai         = aws_iam_role.ai.name
  }

  role       = each.value
  policy_arn = "arn:${var.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# --- Controller: the API (gunicorn), Flower and the scaling publisher ------------------------
data "aws_iam_policy_document" "controller" {
  statement {
    sid       = "CodeBucketReadWrite"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = ["${var.code_bucket.arn}/*"]
  }

  statement {
    sid       = "UserDataRead"
    actions   = ["s3:GetObject"]
    resources = ["${var.user_data_bucket.arn}/*"]
  }

  # Without s3:ListBucket on a bucket, S3 answers GetObject/HeadObject on a missing key with
  # 403 AccessDenied instead of 404 NoSuchKey; nanogrid/storage/s3.py maps NoSuchKey to NotFound
  # (an unknown function, an expired output), so the role lists both buckets it reads from.
  statement {
    sid       = "BucketList"
    actions   = ["s3:ListBucket"]
    resources = [var.code_bucket.arn, var.user_data_bucket.arn]
  }

  statement {
    sid       = "Tables"
    actions   = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:Scan"]
    resources = [var.functions_table.arn, var.jobs_table.arn]
  }

  # The jobs table's indexes: `nanogrid status` and `nanogrid reindex` read the unfinished jobs.
  statement {
    sid       = "JobsTableIndexes"
    actions   = ["dynamodb:Query"]
    resources = ["${var.jobs_table.arn}/index/*"]
  }

  # API keys (nanogrid/keys.py through nanogrid/storage/dynamodb.py): `nanogrid keys create`
  # inserts (PutItem, conditional on a new key id), `keys revoke` reads and replaces (GetItem,
  # PutItem conditional on the rev), `keys list` and the API's "does any key exist" check scan,
  # and the API verifies a bearer key with GetItem. Keys are never deleted (a revoked key keeps
  # its item), so no DeleteItem here. The workers get nothing on this table.
  statement {
    sid       = "KeysTable"
    actions   = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Scan"]
    resources = [var.keys_table.arn]
  }

  # Celery publishes run tasks (SendMessage). GetQueueAttributes: the API's backpressure
  # (nanogrid/api/ratelimit.py, NANOGRID_MAX_QUEUE_DEPTH) and its /metrics (nanogrid/status.py)
  # read the queue's ApproximateNumberOfMessages, the scaling publisher reads the backlog, and
  # kombu reads the queue on declare.
  statement {
    sid       = "TaskQueuePublish"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [var.task_queue.arn]
  }

  # The API asks for a layer build when a function's requirements are new (nanogrid/api/routes.py
  # request_build): Celery publishes it to the builds queue (SendMessage); kombu reads the queue
  # when it declares it before publishing (GetQueueAttributes). Only the builders consume it.
  statement {
    sid       = "BuildQueuePublish"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [var.build_queue.arn]
  }

  # `nanogrid dlq list|redrive` on a controller (nanogrid/transport/deadletters.py): read the
  # dead letters and their count, hold them while listing or sending them back, delete the ones
  # sent back (they go to the task queue through TaskQueuePublish).
  statement {
    sid       = "DeadLetterQueueOperate"
    actions   = ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [var.dead_letter_queue.arn]
  }

  statement {
    sid       = "RedisAuthSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secrets.redis_auth.arn]
  }

  # Tenant secrets, from the API's /secrets routes: created with their tenant tag (CreateSecret
  # with Tags needs secretsmanager:TagResource too), overwritten, described, deleted. Never
  # read: secretsmanager:GetSecretValue on them is the workers' alone.
  statement {
    sid       = "TenantSecretsManage"
    actions   = ["secretsmanager:CreateSecret", "secretsmanager:PutSecretValue", "secretsmanager:DescribeSecret", "secretsmanager:DeleteSecret", "secretsmanager:TagResource"]
    resources = [local.tenant_secrets_arn]
  }

  # GET /secrets lists a tenant's secrets with ListSecrets (a name filter on the tenant's
  # prefix). ListSecrets has no resource-level permission (the Service Authorization Reference
  # lists no resource type for it): it takes "*" only. It returns names, tags and dates, never
  # values.
  statement {
    sid       = "TenantSecretsList"
    actions   = ["secretsmanager:ListSecrets"]
    resources = ["*"]
  }

  statement {
    sid       = "PublishBacklogMetric"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }

  statement {
    sid       = "ReadWorkerGroupSize"
    actions   = ["autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"]
  }

  # Broadcast (nanogrid/transport/sqs.py): kombu creates the SNS topic of each broadcast exchange
  # (get-or-create, with its own tags: tagging on creation needs sns:TagResource besides
  # sns:CreateTopic), publishes control commands and events to it, and subscribes each consuming
  # process's queue; the transport's sweeper lists and removes subscriptions of deleted queues.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutTopics"
      actions   = ["sns:CreateTopic", "sns:TagResource", "sns:Publish", "sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic"]
      resources = [local.dynamic_topic_arn]
    }
  }

  # The per-process queues (a worker's pidbox queue, a caller's reply queue, a monitor's event
  # queue): created with their tags (sqs:TagQueue), heartbeat tags refreshed and read back,
  # subscribed to a topic (kombu sets the queue policy), consumed, and deleted on exit or by
  # the sweeper.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutQueues"
      actions   = ["sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueueTags", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      resources = [local.dynamic_queue_arn]
    }
  }

  # No sqs:SendMessage on the per-process queues: only a Celery worker answers remote control
  # (into the caller's reply queue). The controllers' processes only ask; their control
  # commands and task events are published to SNS, which delivers them under the queue policy.

  # The sweeper finds abandoned per-process queues with ListQueues(QueueNamePrefix=...), an
  # action without resource-level permissions: see local.account_queues_arn.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutListQueues"
      actions   = ["sqs:ListQueues"]
      resources = [local.account_queues_arn]
    }
  }

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "ProtectFixedQueues"
      effect    = "Deny"
      actions   = ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes"]
      resources = local.fixed_queue_arns
    }
  }
}

resource "aws_iam_role_policy" "controller" {
  name   = "${var.name}-controller"
  role   = aws_iam_role.controller.id
  policy = data.aws_iam_policy_document.controller.json
}

# --- Worker: the Celery worker, its reaper, the layer builder, and the drain script ----------------------------
data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "CodeBucketRead"
    actions   = ["s3:GetObject"]
    resources = ["${var.code_bucket.arn}/*"]
  }

  # Dependency layers (nanogrid/worker/build.py): `nanogrid builder` stores a built layer under
  # layers/<sha256>.tar.gz; the workers read it through CodeBucketRead, and the API deletes it
  # with the last function that uses it. Function code stays read-only to the workers: code keys
  # are <tenant>/functions/<id>/v<n>.zip, and a tenant may be named "layers", so the grant names
  # the layers' suffix too.
  statement {
    sid       = "LayersWrite"
    actions   = ["s3:PutObject"]
    resources = ["${var.code_bucket.arn}/layers/*.tar.gz"]
  }

  statement {
    sid       = "UserDataReadWrite"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${var.user_data_bucket.arn}/*"]
  }

  # Without s3:ListBucket on a bucket, S3 answers GetObject/HeadObject on a missing key with
  # 403 AccessDenied instead of 404 NoSuchKey; nanogrid/storage/s3.py maps NoSuchKey to NotFound
  # (an unknown function, an expired output), so the role lists both buckets it reads from.
  statement {
    sid       = "BucketList"
    actions   = ["s3:ListBucket"]
    resources = [var.code_bucket.arn, var.user_data_bucket.arn]
  }

  statement {
    sid       = "JobsTable"
    actions   = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:Scan"]
    resources = [var.jobs_table.arn]
  }

  # The reaper sweeps the unfinished jobs (the `due` index), whatever Redis holds.
  statement {
    sid       = "JobsTableIndexes"
    actions   = ["dynamodb:Query"]
    resources = ["${var.jobs_table.arn}/index/*"]
  }

  # Functions and layer documents (layer:<sha256> items) are read; the builder claims and
  # finishes a build by replacing its layer document (nanogrid/layers.py LayerRegistry.claim and
  # finish: DocumentTable.replace, a PutItem conditional on the document's rev).
  statement {
    sid       = "FunctionsTable"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem"]
    resources = [var.functions_table.arn]
  }

  statement {
    sid       = "TaskQueueConsume"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"]
    resources = [var.task_queue.arn]
  }

  # `nanogrid builder` (a Celery worker on the builds queue only) consumes it like the task
  # queue; a worker that finds a run's build message lost sends it again
  # (nanogrid/worker/execute.py wait_for_layer).
  statement {
    sid       = "BuildQueueConsume"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"]
    resources = [var.build_queue.arn]
  }

  # A message no worker can process goes to the dead-letter queue (nanogrid/worker/deadletters.py).
  statement {
    sid       = "DeadLetterQueueSend"
    actions   = ["sqs:SendMessage"]
    resources = [var.dead_letter_queue.arn]
  }

  statement {
    sid       = "Secrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secrets.gcp_credentials.arn, var.secrets.redis_auth.arn]
  }

  # A run's tenant secrets (nanogrid/worker/execute.py reads the ones its function lists).
  statement {
    sid       = "TenantSecretsRead"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [local.tenant_secrets_arn]
  }

  statement {
    sid       = "DrainBeforeTermination"
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
    resources = [local.worker_asg_arn]
  }

  # Broadcast (nanogrid/transport/sqs.py): kombu creates the SNS topic of each broadcast exchange
  # (get-or-create, with its own tags: tagging on creation needs sns:TagResource besides
  # sns:CreateTopic), publishes control commands and events to it, and subscribes each consuming
  # process's queue; the transport's sweeper lists and removes subscriptions of deleted queues.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutTopics"
      actions   = ["sns:CreateTopic", "sns:TagResource", "sns:Publish", "sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic"]
      resources = [local.dynamic_topic_arn]
    }
  }

  # The per-process queues (a worker's pidbox queue, a caller's reply queue, a monitor's event
  # queue): created with their tags (sqs:TagQueue), heartbeat tags refreshed and read back,
  # subscribed to a topic (kombu sets the queue policy), consumed, and deleted on exit or by
  # the sweeper.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutQueues"
      actions   = ["sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueueTags", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      resources = [local.dynamic_queue_arn]
    }
  }

  # Replies to remote control (celery inspect/control, Flower) go to the caller's reply queue
  # (<caller id>.reply.celery.pidbox under the prefix): only workers answer.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutReplies"
      actions   = ["sqs:SendMessage"]
      resources = [local.dynamic_queue_arn]
    }
  }

  # The sweeper finds abandoned per-process queues with ListQueues(QueueNamePrefix=...), an
  # action without resource-level permissions: see local.account_queues_arn.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutListQueues"
      actions   = ["sqs:ListQueues"]
      resources = [local.account_queues_arn]
    }
  }

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "ProtectFixedQueues"
      effect    = "Deny"
      actions   = ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes"]
      resources = local.fixed_queue_arns
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "${var.name}-worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

# The AI node calls no AWS API: Session Manager is all it gets.

resource "aws_iam_instance_profile" "controller" {
  name = "${var.name}-controller"
  role = aws_iam_role.controller.name
}

resource "aws_iam_instance_profile" "worker" {
  name = "${var.name}-worker"
  role = aws_iam_role.worker.name
}

resource "aws_iam_instance_profile" "ai" {
  name = "${var.name}-ai"
  role = aws_iam_role.ai.name
}
