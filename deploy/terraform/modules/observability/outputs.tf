output "alarm_topic_arn" {
  description = "ARN of the operations alarm topic."
  value       = aws_sns_topic.alarms.arn
}

output "ops_kms_key_arn" {
  description = "ARN of the KMS key of the log groups and the alarm topic."
  value       = aws_kms_key.ops.arn
}

