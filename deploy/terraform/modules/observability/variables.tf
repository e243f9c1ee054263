variable "name" {
  description = "Prefix for resource names (the project name)."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "partition" {
  description = "AWS partition."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the log groups."
  type        = number
}

variable "alarm_email" {
  description = "Address subscribed to the operations alarm topic; empty subscribes nobody."
  type        = string
}

variable "dead_letter_queue_name" {
  description = "Name of the dead-letter queue (alarm on any message)."
  type        = string
}

variable "task_queue_name" {
  description = "Name of the task queue (oldest-message alarm)."
  type        = string
}

variable "queue_age_alarm_seconds" {
  description = "Alarm when the oldest queued message is older than this."
  type        = number
}

variable "alb_arn_suffix" {
  description = "ALB ARN suffix (CloudWatch dimension)."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "Target group ARN suffix (CloudWatch dimension)."
  type        = string
}

variable "redis_replication_group_id" {
  description = "ElastiCache replication group ID (memory alarm)."
  type        = string
}

variable "worker_asg_name" {
  description = "Worker ASG name (dashboard)."
  type        = string
}

variable "backlog_metric" {
  description = "The published backlog metric, and whether the scaling depends on it (alarm when it stops arriving)."
  type = object({
    namespace = string
    name      = string
    required  = bool
  })
}
