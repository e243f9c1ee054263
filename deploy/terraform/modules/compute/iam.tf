# Instance roles. Each statement names the code that needs it; tests/fleet/test_crosscheck.py
# scans the code for boto3 calls and fails when a called action is missing here, or when an
# action here is called by nothing (code, kombu, or the boot scripts of the role).

locals {
  worker_asg_name     = "${var.name}-workers"
  worker_asg_arn      = "arn:${var.partition}:autoscaling:${var.region}:${var.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.worker_asg_name}"
  dynamic_topic_arn   = "arn:${var.partition}:sns:${var.region}:${var.account_id}:${var.dynamic_queue_prefix}*"
  dynamic_queue_arn   = "arn:${var.partition}:sqs:${var.region}:${var.account_id}:${var.dynamic_queue_prefix}*"
  fixed_queue_arns    = [var.task_queue.arn, var.dead_letter_queue.arn]
  lifecycle_hook_name = "${var.name}-worker-drain"
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

  statement {
    sid       = "TaskQueuePublish"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [var.task_queue.arn]
  }

  statement {
    sid       = "RedisAuthSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secrets.redis_auth.arn]
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

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutTopics"
      actions   = ["sns:CreateTopic", "sns:Publish", "sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic"]
      resources = [local.dynamic_topic_arn]
    }
  }

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutQueues"
      actions   = ["sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueueTags", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes", "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      resources = [local.dynamic_queue_arn]
    }
  }

  # ListQueues (the sweep of abandoned per-process queues, by prefix) has no resource-level
  # permissions in IAM.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutListQueues"
      actions   = ["sqs:ListQueues"]
      resources = ["*"]
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

# --- Worker: the Celery worker, its reaper, and the drain script ----------------------------
data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "CodeBucketRead"
    actions   = ["s3:GetObject"]
    resources = ["${var.code_bucket.arn}/*"]
  }

  statement {
    sid       = "UserDataReadWrite"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${var.user_data_bucket.arn}/*"]
  }

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

  statement {
    sid       = "FunctionsTableRead"
    actions   = ["dynamodb:GetItem"]
    resources = [var.functions_table.arn]
  }

  statement {
    sid       = "TaskQueueConsume"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"]
    resources = [var.task_queue.arn]
  }

  statement {
    sid       = "Secrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secrets.gcp_credentials.arn, var.secrets.redis_auth.arn]
  }

  statement {
    sid       = "DrainBeforeTermination"
    actions   = ["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"]
    resources = [local.worker_asg_arn]
  }

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutTopics"
      actions   = ["sns:CreateTopic", "sns:Publish", "sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic"]
      resources = [local.dynamic_topic_arn]
    }
  }

  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutQueues"
      actions   = ["sqs:CreateQueue", "sqs:TagQueue", "sqs:ListQueueTags", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes", "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      resources = [local.dynamic_queue_arn]
    }
  }

  # ListQueues (the sweep of abandoned per-process queues, by prefix) has no resource-level
  # permissions in IAM.
  dynamic "statement" {
    for_each = var.celery_sns_fanout ? [1] : []
    content {
      sid       = "FanoutListQueues"
      actions   = ["sqs:ListQueues"]
      resources = ["*"]
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
