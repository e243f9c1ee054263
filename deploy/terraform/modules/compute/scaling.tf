# Queue-depth autoscaling of the workers.
#
# step (default): the founding document's two alarms and +1/-1 policies with a 300 s cooldown.
#   They are SimpleScaling policies because AWS honours a policy cooldown only for that type
#   (StepScaling ignores `cooldown` and uses warm-up instead); each adds or removes one worker.
# target: target tracking on backlog per instance, the AWS-recommended pattern for queue
#   workers. The metric is published by `nanogrid scaling publish` on the controllers:
#   visible messages / in-service workers.

locals {
  step_scaling   = var.scaling_policy == "step"
  target_scaling = var.scaling_policy == "target"
}

resource "aws_autoscaling_policy" "scale_out" {
  count = local.step_scaling ? 1 : 0

  name                   = "${var.name}-scale-out"
  autoscaling_group_name = aws_autoscaling_group.worker.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ChangeInCapacity"
  scaling_adjustment     = 1
  cooldown               = var.scaling_cooldown_seconds
}

resource "aws_autoscaling_policy" "scale_in" {
  count = local.step_scaling ? 1 : 0

  name                   = "${var.name}-scale-in"
  autoscaling_group_name = aws_autoscaling_group.worker.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ChangeInCapacity"
  scaling_adjustment     = -1
  cooldown               = var.scaling_cooldown_seconds
}

resource "aws_cloudwatch_metric_alarm" "sqs_high" {
  count = local.step_scaling ? 1 : 0

  alarm_name          = "${var.name}-sqs-high"
  alarm_description   = "Visible messages >= ${var.scale_out_threshold}: add a worker"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.task_queue.name }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = var.scale_out_evaluation_periods
  threshold           = var.scale_out_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.scale_out[0].arn]
}

resource "aws_cloudwatch_metric_alarm" "sqs_low" {
  count = local.step_scaling ? 1 : 0

  alarm_name          = "${var.name}-sqs-low"
  alarm_description   = "No visible messages for ${var.scale_in_evaluation_periods * var.alarm_period_seconds} s: remove a worker"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.task_queue.name }
  statistic           = "Maximum"
  period              = var.alarm_period_seconds
  evaluation_periods  = var.scale_in_evaluation_periods
  threshold           = var.scale_in_threshold
  comparison_operator = "LessThanOrEqualToThreshold"
  # SQS stops sending metrics for a queue that has been idle for hours: that is "empty" too.
  treat_missing_data = "breaching"
  alarm_actions      = [aws_autoscaling_policy.scale_in[0].arn]
}

resource "aws_autoscaling_policy" "backlog_target" {
  count = local.target_scaling ? 1 : 0

  name                      = "${var.name}-backlog-per-instance"
  autoscaling_group_name    = aws_autoscaling_group.worker.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = var.instance_warmup_seconds

  target_tracking_configuration {
    target_value = var.backlog_target_per_instance

    customized_metric_specification {
      namespace   = var.metric_namespace
      metric_name = var.backlog_metric_name
      statistic   = "Average"

      metric_dimension {
        name  = "QueueName"
        value = var.task_queue.name
      }
    }
  }
}
